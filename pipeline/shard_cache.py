"""Local, verified copies of a published set's shards, fetched when a reader asks for them.

The trainer's ``--shards`` may name a published-set manifest (a path or URL ending in .json);
it then reads local paths from here instead of URLs. A shard is streamed from its mirrors into
the cache the first time it is asked for, verified (sha256, safe tar) before it appears under
its name, and reused afterwards. Reading webdataset tars straight from a URL would skip the
sha256 check, which can only be made over the whole file, so shards are always read from disk.

Each manifest gets its own directory, named by the set and a fingerprint of its shard list,
so two versions of a set never mix files. Ranks on one node may share the cache: shards are
locked while they are fetched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.download import DownloadOptions, download, fetch_manifest
from pipeline.published import PublishedSet, save_manifest


class ShardUnavailable(RuntimeError):
    """A shard that could not be fetched and verified; names the set, the shard and why."""


def default_cache_root() -> Path:
    """$LMDIR_CACHE/shards, else ~/.cache/lmdir/shards."""
    base = os.environ.get("LMDIR_CACHE") or Path.home() / ".cache" / "lmdir"
    return Path(base) / "shards"


def is_manifest(spec: str) -> bool:
    """Whether a ``--shards`` value names a published-set manifest rather than tar files."""
    return spec.split("?", 1)[0].endswith(".json")


def fingerprint(manifest: PublishedSet) -> str:
    """A digest of the shard list (names and sha256s): equal sets of bytes, equal fingerprints."""
    listing = "".join(f"{s.name} {s.sha256}\n" for s in manifest.shards)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ShardCache:
    """A published set's cache directory; ``path`` and ``paths`` fetch on demand."""

    manifest: PublishedSet
    directory: Path
    options: DownloadOptions

    def path(self, shard: int | str) -> str:
        """Local path of one shard (an index or a name), fetched and verified if not cached yet."""
        return self.paths([self._index(shard)])[0]

    def paths(self, shards: Sequence[int] | None = None) -> list[str]:
        """Local paths of the given shards (all by default), fetched in parallel where missing."""
        report = download(self.manifest, self.directory, shards, self.options)
        if not report.ok:
            reasons = "; ".join(f"{f.shard}: {f.reason}" for f in report.failed)
            raise ShardUnavailable(f"published set {self.manifest.name}: {len(report.failed)} shard(s) "
                                   f"could not be fetched and verified: {reasons}")
        return [str(p) for p in report.paths]

    def _index(self, shard: int | str) -> int:
        if isinstance(shard, int):
            if not 0 <= shard < len(self.manifest.shards):
                raise IndexError(f"published set {self.manifest.name} has {len(self.manifest.shards)} "
                                 f"shards; no shard {shard}")
            return shard
        for i, entry in enumerate(self.manifest.shards):
            if entry.name == shard:
                return i
        raise KeyError(f"published set {self.manifest.name} has no shard named {shard!r}")


def open_cache(spec: str | PublishedSet, cache_root: str | Path | None = None,
               options: DownloadOptions | None = None) -> ShardCache:
    """The cache for a manifest (path, URL or loaded PublishedSet); fetches the manifest, no shards."""
    options = options or DownloadOptions(progress=False)
    manifest = spec if isinstance(spec, PublishedSet) else fetch_manifest(spec, options.timeout)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    directory = root / f"{manifest.name}-{fingerprint(manifest)[:16]}"
    directory.mkdir(parents=True, exist_ok=True)
    # A copy of what the cached files were checked against, for whoever looks at the cache later.
    save_manifest(manifest, directory / "manifest.json")
    return ShardCache(manifest=manifest, directory=directory, options=options)


def local_shards(spec: str | PublishedSet, cache_root: str | Path | None = None,
                 shards: Sequence[int] | None = None, options: DownloadOptions | None = None) -> list[str]:
    """Verified local paths of a published set's shards, downloading what the cache lacks."""
    return open_cache(spec, cache_root, options).paths(shards)
