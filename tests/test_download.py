"""Downloading a published set from real HTTP servers on 127.0.0.1 that misbehave on request.

The helpers here (write_extraction, Mirror) are shared with test_publish.py and
test_download_shard_cache.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pipeline.download import DownloadOptions, download, main, parse_shard_range
from pipeline.publish import build_manifest
from pipeline.published import (
    PublishedSet,
    ShardEntry,
    load_manifest,
    manifest_bytes,
    save_manifest,
)
from pipeline.safe_tar import UnsafeTarError, check_tar
from pipeline.sample_format import Sample, SampleMeta, decode_sample, encode_sample, make_key
from tests.conftest import interruptible

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]

# Fast back-off so retries cost milliseconds; short timeouts so a hung test fails instead of waiting.
FAST = DownloadOptions(jobs=2, retries=3, backoff=0.01, backoff_max=0.05, timeout=5.0, progress=False)


def write_extraction(directory: Path, shards: int = 3, per_shard: int = 3, size: int = 32) -> Path:
    """An extraction output as pipeline.extract lays it out: shards, status files, index.json."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    entries = []
    for s in range(shards):
        name = f"{s:06d}.tar"
        with wds.TarWriter(str(directory / name), mtime=0) as writer:
            for i in range(per_shard):
                key = make_key("demo", "train", f"img{s}_{i}.png", "noise")
                gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                lq = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
                meta = SampleMeta(key=key, dataset="demo", split="train", task="denoise", width=size,
                                  height=size, degradation_types=["noise"], caption="random pixels")
                writer.write(encode_sample(Sample(meta=meta, lq=lq, gt=gt)))
        data = (directory / name).read_bytes()
        entries.append({"name": name, "samples": per_shard, "failed": 0, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
        (directory / f"{s:06d}_stats.json").write_text(json.dumps({"samples": per_shard}))
        (directory / f"{s:06d}_status.parquet").write_bytes(b"not published")
    index = {"format_version": 1, "name": "demo", "preset": "tiny", "config_hash": "0123abcd" * 8,
             "samples": shards * per_shard, "failed": 0, "shards": entries,
             "models": {"describer": {"id": "tiny/describer", "revision": "main", "commit": "abc123",
                                      "dtype": "float32"},
                        "clip": {"id": "tiny/clip", "revision": None}},
             "embedding_dims": {"E": 512, "W": 512}}
    (directory / "index.json").write_text(json.dumps(index))
    return directory


class Mirror:
    """A real HTTP server on 127.0.0.1 serving ``files`` under /set/, with faults to order.

    cut_after[name] = n: the next response for that file stops after n body bytes and the
    connection is closed (once). tampered: names served with one byte changed. down: every
    request gets 503. ignore_range: Range headers are ignored (200 with the whole file).
    trickle[name] = s: that file's body is sent in 20 pieces over s seconds (a slow link).
    requests records (method, path, Range header) of every request.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.cut_after: dict[str, int] = {}
        self.tampered: set[str] = set()
        self.down = False
        self.ignore_range = False
        self.trickle: dict[str, float] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/set"

    def ranges(self, name: str) -> list[str | None]:
        """The Range header of every GET for one file, in order."""
        return [r for m, p, r in self.requests if m == "GET" and p == f"/set/{name}"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _respond(self, handler: BaseHTTPRequestHandler, head_only: bool) -> None:
        range_header = handler.headers.get("Range")
        with self._lock:
            self.requests.append((handler.command, handler.path, range_header))
            name = handler.path.removeprefix("/set/")
            data = self.files.get(name) if handler.path.startswith("/set/") else None
            cut = self.cut_after.pop(name, None) if not head_only else None
            tampered = name in self.tampered
        if self.down:
            return self._send(handler, 503, b"down for maintenance")
        if data is None:
            return self._send(handler, 404, b"no such file")
        if tampered:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        start = 0
        if self.ignore_range:
            range_header = None
        if range_header:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return self._send(handler, 416, b"")
        handler.send_response(206 if range_header else 200)
        handler.send_header("Content-Length", str(len(data) - start))
        if range_header:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        if head_only:
            return
        body = data[start:] if cut is None else data[start:start + cut]
        pieces = 20 if name in self.trickle else 1
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            if i:
                time.sleep(self.trickle[name] / pieces)
            handler.wfile.write(body[i:i + step])
            handler.wfile.flush()
        if cut is not None:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror._respond(self, head_only=False)

            def do_HEAD(self) -> None:
                mirror._respond(self, head_only=True)

            def log_message(self, *args) -> None:
                pass

        return Handler


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused): a mirror that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/set"


@pytest.fixture
def extraction(tmp_path: Path) -> Path:
    return write_extraction(tmp_path / "extraction")


@pytest.fixture
def mirrors(extraction: Path):
    """Two mirrors serving the extraction's shards; stopped at teardown."""
    files = {p.name: p.read_bytes() for p in extraction.glob("*.tar")}
    started = [Mirror(files), Mirror(files)]
    yield started
    for m in started:
        m.stop()


def manifest_for(extraction: Path, *base_urls: str) -> PublishedSet:
    return build_manifest(extraction, list(base_urls), license="CC-BY-4.0")


def shard_requests(mirror: Mirror) -> list[tuple[str, str, str | None]]:
    return [r for r in mirror.requests if r[1].endswith(".tar")]


def test_full_download_then_second_run_makes_no_request(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    manifest_path = save_manifest(manifest_for(extraction, mirror.url), tmp_path / "published.json")
    dest = tmp_path / "dest"

    assert main([str(manifest_path), "--dest", str(dest), "--jobs", "2", "--no-progress"]) == 0

    for shard in sorted(extraction.glob("*.tar")):
        assert (dest / shard.name).read_bytes() == shard.read_bytes()
    assert not list(dest.glob("*.part"))
    assert not list(dest.glob("*_stats.json")), "only shards are published"
    assert len(shard_requests(mirror)) == 3
    # The shards read back as prior samples.
    keys = [decode_sample(r).key for r in wds.WebDataset(str(dest / "{000000..000002}.tar"), shardshuffle=False)]
    assert len(keys) == 9 and len(set(keys)) == 9

    # Everything is there: no request at all, not even HEAD, with or without --verify.
    mirror.requests.clear()
    assert main([str(manifest_path), "--dest", str(dest), "--no-progress"]) == 0
    assert main([str(manifest_path), "--dest", str(dest), "--verify", "--no-progress"]) == 0
    assert mirror.requests == []


def test_cli_leaves_an_index_the_trainer_reads_without_fetching(extraction, mirrors, tmp_path, capsys):
    from restore.data import read_samples, resolve

    mirror = mirrors[0]
    manifest = manifest_for(extraction, mirror.url)
    manifest_path = save_manifest(manifest, tmp_path / "published.json")
    dest = tmp_path / "dest"
    index = dest / "index.json"

    assert main([str(manifest_path), "--dest", str(dest), "--shards", "0-1", "--no-progress"]) == 0
    assert f"{index}: 2 of 3 shards; train on them with --shards {dest}" in capsys.readouterr().out
    source = resolve(str(dest))  # the folder, as the trainer's --shards gets it
    assert source.urls == (str(dest / "000000.tar"), str(dest / "000001.tar"))
    assert source.samples == 6 and source.prior_preset == "tiny" and source.embedding_dims == {"E": 512, "W": 512}
    assert load_manifest(dest / "published.json") == manifest

    # The rest of the set later: the index grows to all of it, still local files only.
    mirror.requests.clear()
    assert main([str(dest / "published.json"), "--dest", str(dest), "--no-progress"]) == 0
    assert [r[1] for r in shard_requests(mirror)] == ["/set/000002.tar"]
    source = resolve(str(dest))
    assert source.urls == tuple(str(dest / s.name) for s in manifest.shards) and source.samples == 9
    assert len(list(read_samples(source.urls))) == 9


def test_checking_an_extraction_against_its_manifest_keeps_its_own_index(extraction, tmp_path):
    manifest_path = save_manifest(manifest_for(extraction, "https://example.invalid/set"), tmp_path / "published.json")
    before = (extraction / "index.json").read_bytes()
    assert main([str(manifest_path), "--dest", str(extraction), "--verify", "--no-progress"]) == 0
    assert (extraction / "index.json").read_bytes() == before


def test_ctrl_c_says_what_is_complete_and_a_rerun_resumes(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    manifest_path = save_manifest(manifest_for(extraction, mirror.url), tmp_path / "published.json")
    dest = tmp_path / "dest"
    mirror.trickle["000001.tar"] = 4.0
    command = [sys.executable, "-m", "pipeline.download", str(manifest_path), "--dest", str(dest), "--jobs", "1",
               "--no-progress"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=interruptible)
    part = dest / "000001.tar.part"
    deadline = time.time() + 120
    while not part.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"interrupted: 1 of 3 shards are complete and verified in {dest}; partly downloaded ones are kept as "
        ".part files: rerun the same command to resume"]
    assert (dest / "000000.tar").is_file() and part.is_file()
    assert not (dest / "000001.tar").exists() and not (dest / "000002.tar").exists()

    mirror.trickle.clear()
    mirror.requests.clear()
    assert main([str(manifest_path), "--dest", str(dest), "--no-progress"]) == 0
    assert "/set/000000.tar" not in [r[1] for r in shard_requests(mirror)]
    for shard in sorted(extraction.glob("*.tar")):
        assert (dest / shard.name).read_bytes() == shard.read_bytes()


def test_progress_bars_count_files_and_bytes(extraction, mirrors, tmp_path, capsys):
    manifest = manifest_for(extraction, mirrors[0].url)
    report = download(manifest, tmp_path / "dest", options=DownloadOptions(jobs=2, progress=True, timeout=5))
    assert report.ok and len(report.downloaded) == 3
    err = capsys.readouterr().err
    assert "shards: 100%" in err and "3/3" in err
    assert "bytes: 100%" in err


def test_cut_connection_is_resumed_with_a_range_request(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    manifest = manifest_for(extraction, mirror.url)
    shard = manifest.shards[1]
    mirror.cut_after[shard.name] = 3000

    report = download(manifest, tmp_path / "dest", options=FAST)

    assert report.ok and set(report.downloaded) == {s.name for s in manifest.shards}
    assert mirror.ranges(shard.name) == [None, "bytes=3000-"]
    data = (tmp_path / "dest" / shard.name).read_bytes()
    assert len(data) == shard.bytes and hashlib.sha256(data).hexdigest() == shard.sha256


def test_part_file_left_by_an_earlier_run_is_resumed(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    manifest = manifest_for(extraction, mirror.url)
    shard = manifest.shards[0]
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / f"{shard.name}.part").write_bytes((extraction / shard.name).read_bytes()[:5000])

    report = download(manifest, dest, shards=[0], options=FAST)

    assert report.downloaded == (shard.name,)
    assert mirror.ranges(shard.name) == ["bytes=5000-"]
    assert (dest / shard.name).read_bytes() == (extraction / shard.name).read_bytes()


def test_server_ignoring_range_is_read_from_the_start(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    mirror.ignore_range = True
    manifest = manifest_for(extraction, mirror.url)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "000000.tar.part").write_bytes((extraction / "000000.tar").read_bytes()[:5000])

    report = download(manifest, dest, shards=[0], options=FAST)

    assert report.downloaded == ("000000.tar",) and report.rejected == ()
    assert mirror.ranges("000000.tar") == ["bytes=5000-"]
    assert (dest / "000000.tar").read_bytes() == (extraction / "000000.tar").read_bytes()


def test_verify_replaces_a_local_file_that_no_longer_matches(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    manifest = manifest_for(extraction, mirror.url)
    dest = tmp_path / "dest"
    assert download(manifest, dest, options=FAST).ok
    damaged = bytearray((dest / "000001.tar").read_bytes())
    damaged[100] ^= 0xFF
    (dest / "000001.tar").write_bytes(bytes(damaged))
    mirror.requests.clear()

    assert len(download(manifest, dest, options=FAST).present) == 3
    assert mirror.requests == [], "without verify, a file of the right size is trusted"
    report = download(manifest, dest, options=dataclasses.replace(FAST, verify=True))

    assert report.downloaded == ("000001.tar",) and len(report.present) == 2
    assert report.rejected[0].source == str(dest / "000001.tar")
    assert (dest / "000001.tar").read_bytes() == (extraction / "000001.tar").read_bytes()


def test_two_downloaders_sharing_a_directory_fetch_each_shard_once(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    manifest = manifest_for(extraction, mirror.url)
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(download(manifest, tmp_path / "dest", options=FAST)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert len(reports) == 2 and all(r.ok for r in reports)
    assert sum(len(r.downloaded) for r in reports) == 3
    assert len(shard_requests(mirror)) == 3


def test_stale_part_that_breaks_the_digest_is_refetched_from_zero(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    manifest = manifest_for(extraction, mirror.url)
    shard = manifest.shards[0]
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / f"{shard.name}.part").write_bytes(b"\0" * 5000)

    report = download(manifest, dest, shards=[0], options=FAST)

    assert report.downloaded == (shard.name,)
    assert [r.source for r in report.rejected] == [f"{mirror.url}/{shard.name}"]
    assert mirror.ranges(shard.name) == ["bytes=5000-", None]
    assert (dest / shard.name).read_bytes() == (extraction / shard.name).read_bytes()


def test_tampered_shard_is_deleted_reported_and_never_used(extraction, mirrors, tmp_path, capsys):
    mirror = mirrors[0]
    manifest_path = save_manifest(manifest_for(extraction, mirror.url), tmp_path / "published.json")
    mirror.tampered.add("000001.tar")
    dest = tmp_path / "dest"

    assert main([str(manifest_path), "--dest", str(dest), "--no-progress", "--retries", "2"]) == 1

    assert not (dest / "000001.tar").exists() and not (dest / "000001.tar.part").exists()
    assert (dest / "000000.tar").exists() and (dest / "000002.tar").exists()
    err = capsys.readouterr().err
    assert "rejected and deleted 000001.tar" in err and "does not match the manifest" in err
    assert "FAILED 000001.tar" in err
    # A digest mismatch on a fresh download is the mirror's fault: no point asking it again.
    assert mirror.ranges("000001.tar") == [None]


def test_tampered_mirror_falls_over_to_a_good_one(extraction, mirrors, tmp_path):
    bad, good = mirrors
    bad.tampered.update(bad.files)
    manifest = manifest_for(extraction, bad.url, good.url)

    report = download(manifest, tmp_path / "dest", options=FAST)

    assert report.ok and len(report.downloaded) == 3
    assert {r.shard for r in report.rejected} == {s.name for s in manifest.shards}
    assert all(r.source.startswith(bad.url) for r in report.rejected)
    for s in manifest.shards:
        assert (tmp_path / "dest" / s.name).read_bytes() == (extraction / s.name).read_bytes()


def test_missing_file_moves_to_the_next_mirror_without_retrying(extraction, mirrors, tmp_path):
    partial, good = mirrors
    del partial.files["000001.tar"]
    manifest = manifest_for(extraction, partial.url, good.url)

    report = download(manifest, tmp_path / "dest", options=FAST)

    assert report.ok and len(report.downloaded) == 3
    assert partial.ranges("000001.tar") == [None] and good.ranges("000001.tar") == [None]
    assert good.ranges("000000.tar") == []


def test_refused_connection_moves_to_the_next_mirror(extraction, mirrors, tmp_path):
    good = mirrors[1]
    manifest = manifest_for(extraction, closed_port_url(), good.url)

    report = download(manifest, tmp_path / "dest", options=FAST)

    assert report.ok and len(report.downloaded) == 3
    assert len(shard_requests(good)) == 3


def test_unavailable_mirror_is_retried_then_left_for_the_next(extraction, mirrors, tmp_path):
    down, good = mirrors
    down.down = True
    manifest = manifest_for(extraction, down.url, good.url)

    report = download(manifest, tmp_path / "dest", shards=[2], options=FAST)

    assert report.downloaded == ("000002.tar",)
    assert down.ranges("000002.tar") == [None] * FAST.retries
    assert good.ranges("000002.tar") == [None]


def test_all_mirrors_down_fails_with_every_reason_and_keeps_nothing(extraction, mirrors, tmp_path):
    for m in mirrors:
        m.down = True
    manifest = manifest_for(extraction, *(m.url for m in mirrors))

    report = download(manifest, tmp_path / "dest", shards=[0], options=FAST)

    assert not report.ok and report.paths == ()
    assert report.failed[0].reason.count("HTTP 503") == 2
    assert not (tmp_path / "dest" / "000000.tar").exists()


def test_mirror_serving_a_file_of_another_size_is_not_read(extraction, mirrors, tmp_path):
    mirror = mirrors[0]
    mirror.files["000000.tar"] += b"\0" * 1024
    manifest = manifest_for(extraction, mirror.url)

    report = download(manifest, tmp_path / "dest", shards=[0], options=FAST)

    assert not report.ok and "the manifest says" in report.failed[0].reason
    assert mirror.ranges("000000.tar") == [None]
    assert not (tmp_path / "dest" / "000000.tar.part").exists()


def test_file_scheme_mirror_goes_through_fsspec_and_resumes(extraction, tmp_path):
    manifest = manifest_for(extraction, extraction.resolve().as_uri())
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "000002.tar.part").write_bytes((extraction / "000002.tar").read_bytes()[:4096])

    report = download(manifest, dest, options=FAST)

    assert report.ok and len(report.downloaded) == 3
    for s in manifest.shards:
        assert (dest / s.name).read_bytes() == (extraction / s.name).read_bytes()


def _tar_bytes(*members: tarfile.TarInfo, data: bytes = b"payload") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


UNSAFE_MEMBERS = {
    "parent": (_member("../evil.json"), "'..'"),
    "nested-parent": (_member("a/../../evil.json"), "'..'"),
    "absolute": (_member("/etc/evil.json"), "absolute"),
    "symlink": (_member("key.json", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    "hardlink": (_member("key.json", tarfile.LNKTYPE, "other.json"), "link"),
    "device": (_member("key.json", tarfile.CHRTYPE), "device"),
    "fifo": (_member("key.json", tarfile.FIFOTYPE), "fifo"),
    "directory": (_member("keydir", tarfile.DIRTYPE), "directory"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_MEMBERS))
def test_check_tar_refuses_unsafe_members(tmp_path, case):
    info, reason = UNSAFE_MEMBERS[case]
    path = tmp_path / "000000.tar"
    path.write_bytes(_tar_bytes(_member("good.json"), info))

    with pytest.raises(UnsafeTarError) as e:
        check_tar(path)

    assert e.value.shard == "000000.tar" and e.value.member == info.name
    assert reason in str(e.value)


def test_check_tar_refuses_oversized_members_and_non_tars(tmp_path):
    path = tmp_path / "big.tar"
    path.write_bytes(_tar_bytes(_member("a.json"), data=b"x" * 2000))
    with pytest.raises(UnsafeTarError, match="2000 bytes exceeds the limit of 1000"):
        check_tar(path, max_member_bytes=1000)
    assert check_tar(path).samples == 1

    path.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UnsafeTarError, match="not a readable uncompressed tar"):
        check_tar(path)

    path.write_bytes(gzip.compress(_tar_bytes(_member("a.json"))))
    with pytest.raises(UnsafeTarError, match="not a readable uncompressed tar"):
        check_tar(path)


@pytest.mark.parametrize("case", ["parent", "symlink"])
def test_verified_shard_with_unsafe_members_is_refused_and_deleted(tmp_path, case):
    # A hostile publisher: the digest in the manifest is the tar's own, so only safe_tar stops it.
    data = _tar_bytes(_member("good.json"), UNSAFE_MEMBERS[case][0])
    mirror = Mirror({"000000.tar": data})
    try:
        honest = manifest_for(write_extraction(tmp_path / "x", shards=1, per_shard=1), mirror.url)
        manifest = dataclasses.replace(
            honest, shards=(ShardEntry("000000.tar", len(data), 1, hashlib.sha256(data).hexdigest()),))

        report = download(manifest, tmp_path / "dest", options=FAST)
    finally:
        mirror.stop()

    assert not report.ok and "unsafe tar" in report.failed[0].reason
    assert UNSAFE_MEMBERS[case][0].name in report.failed[0].reason
    assert not (tmp_path / "dest" / "000000.tar").exists()
    assert not (tmp_path / "dest" / "000000.tar.part").exists()


def _corrupt(raw: dict, case: str) -> dict:
    raw = json.loads(json.dumps(raw))
    if case == "sha256":
        raw["shards"][0]["sha256"] = "abc"
    elif case == "name-with-parent":
        raw["shards"][1]["name"] = "../000001.tar"
    elif case == "name-with-slash":
        raw["shards"][1]["name"] = "sub/000001.tar"
    elif case == "scheme":
        raw["base_urls"] = ["ftp://127.0.0.1/set"]
    elif case == "credentials":
        raw["base_urls"] = [raw["base_urls"][0].replace("http://", "http://user:secret@")]
    elif case == "bytes-negative":
        raw["shards"][2]["bytes"] = -1
    elif case == "bytes-huge":
        raw["shards"][2]["bytes"] = 1 << 50
    elif case == "bytes-bool":
        raw["shards"][2]["bytes"] = True
    elif case == "unknown-field":
        raw["shards"][0]["url"] = "http://elsewhere/x.tar"
    elif case == "missing-license":
        del raw["license"]
    elif case == "duplicate-shard":
        raw["shards"].append(raw["shards"][0])
    elif case == "format-version":
        raw["format_version"] = 99
    return raw


CORRUPTIONS = {
    "sha256": "shards[0].sha256", "name-with-parent": "shards[1].name", "name-with-slash": "shards[1].name",
    "scheme": "base_urls[0]", "credentials": "base_urls[0]", "bytes-negative": "shards[2].bytes",
    "bytes-huge": "shards[2].bytes", "bytes-bool": "shards[2].bytes", "unknown-field": "shards[0]",
    "missing-license": "(top level)", "duplicate-shard": "shards[3].name", "format-version": "format_version",
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_invalid_manifest_is_refused_before_any_request(extraction, mirrors, tmp_path, capsys, case):
    mirror = mirrors[0]
    raw = json.loads(manifest_bytes(manifest_for(extraction, mirror.url)))
    path = tmp_path / "published.json"
    path.write_text(json.dumps(_corrupt(raw, case)))

    assert main([str(path), "--dest", str(tmp_path / "dest"), "--no-progress"]) == 2

    assert f"{path}: {CORRUPTIONS[case]}:" in capsys.readouterr().err
    assert mirror.requests == []
    assert not (tmp_path / "dest").exists()


def test_duplicate_json_keys_are_refused(extraction, tmp_path, capsys):
    text = manifest_bytes(manifest_for(extraction, "https://example.invalid/set")).decode()
    path = tmp_path / "published.json"
    path.write_text(text.replace('"license": ', '"license": "MIT", "license": ', 1))
    assert main([str(path), "--dest", str(tmp_path / "dest")]) == 2
    assert "duplicate keys ['license']" in capsys.readouterr().err


def test_shard_ranges():
    assert parse_shard_range(None, 4) == [0, 1, 2, 3]
    assert parse_shard_range("0-1,3", 4) == [0, 1, 3]
    assert parse_shard_range("2,2-3", 4) == [2, 3]
    with pytest.raises(ValueError, match="outside 0-3"):
        parse_shard_range("2-4", 4)
    with pytest.raises(ValueError, match="not an index"):
        parse_shard_range("a-b", 4)


def test_check_tar_counts_the_samples_a_reader_makes(tmp_path):
    # Members without a suffix and metadata members belong to no sample, as the reader groups them.
    path = tmp_path / "000000.tar"
    path.write_bytes(_tar_bytes(_member("a.json"), _member("a.png"), _member("b.json"), _member("README"),
                                _member("__meta__/notes.json")))
    assert check_tar(path).samples == 2
