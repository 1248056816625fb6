"""The trainer's view of a published set: local, verified shard paths, fetched on demand."""

from __future__ import annotations

import pytest

from pipeline.download import DownloadOptions
from pipeline.publish import build_manifest
from pipeline.published import manifest_bytes
from pipeline.shard_cache import (
    ShardUnavailable,
    fingerprint,
    is_manifest,
    local_shards,
    open_cache,
)
from tests.test_download import Mirror, write_extraction

pytestmark = pytest.mark.timeout(120)

FAST = DownloadOptions(jobs=2, retries=2, backoff=0.01, backoff_max=0.05, timeout=5.0, progress=False)


@pytest.fixture
def served(tmp_path):
    """An extraction published on a local HTTP mirror that also serves the manifest itself."""
    extraction = write_extraction(tmp_path / "extraction")
    mirror = Mirror({p.name: p.read_bytes() for p in extraction.glob("*.tar")})
    manifest = build_manifest(extraction, [mirror.url], license="CC-BY-4.0")
    mirror.files["published.json"] = manifest_bytes(manifest)
    yield extraction, mirror, manifest
    mirror.stop()


def test_manifest_url_gives_verified_local_paths_and_a_reused_cache(served, tmp_path):
    extraction, mirror, manifest = served
    spec = f"{mirror.url}/published.json"
    assert is_manifest(spec) and not is_manifest(f"{mirror.url}/000000.tar")

    paths = local_shards(spec, cache_root=tmp_path / "cache", options=FAST)

    assert [p.rsplit("/", 1)[1] for p in paths] == ["000000.tar", "000001.tar", "000002.tar"]
    assert all(p.startswith(str(tmp_path / "cache" / f"demo-{fingerprint(manifest)[:16]}")) for p in paths)
    for p in paths:
        assert open(p, "rb").read() == (extraction / p.rsplit("/", 1)[1]).read_bytes()

    # Second time: the manifest is fetched again, no shard is.
    mirror.requests.clear()
    assert local_shards(spec, cache_root=tmp_path / "cache", options=FAST) == paths
    assert [path for _, path, _ in mirror.requests] == ["/set/published.json"]


def test_shards_are_fetched_only_when_asked_for(served, tmp_path):
    _, mirror, manifest = served
    cache = open_cache(manifest, cache_root=tmp_path / "cache", options=FAST)
    assert mirror.requests == []

    path = cache.path("000001.tar")

    assert path.endswith("/000001.tar")
    assert [p for _, p, _ in mirror.requests] == ["/set/000001.tar"]
    assert cache.path(1) == path and len(mirror.requests) == 1
    assert cache.paths([0, 1])[1] == path and len(mirror.requests) == 2
    with pytest.raises(KeyError, match="no shard named 'nope.tar'"):
        cache.path("nope.tar")


def test_a_shard_that_fails_verification_is_never_handed_out(served, tmp_path):
    _, mirror, manifest = served
    mirror.tampered.add("000002.tar")
    cache = open_cache(manifest, cache_root=tmp_path / "cache", options=FAST)

    with pytest.raises(ShardUnavailable, match="000002.tar: .*sha256 .* does not match"):
        cache.paths()

    assert not (cache.directory / "000002.tar").exists()
    assert cache.path(0).endswith("000000.tar")
