"""Shard files of an extraction run: the plan, the tar writer, per-shard status and stats, the index.

Layout of an output folder::

    000000.tar               webdataset shard: members sorted by key, fixed mtime/owner (same bytes on rerun)
    000000_status.parquet    one row per manifest row of the shard: ok, or error with stage and message
    000000_stats.json        written last: its presence marks the shard complete (resume skips it)
    index.json               the dataset: shards, sample counts, bytes, sha256, models, config hash
    config.json              the resolved run configuration
    _parts/000000/*.tar|json a shard's rows while it is being written (pipeline.shard_assembly)

Shard ids come from the manifest alone (its rows in file order, cut every ``samples_per_shard``),
so a rerun, a resumed run and a run on another cluster assign every sample to the same shard.
``pipeline.manifest`` writes rows in an order drawn from a hash of their keys, so consecutive rows,
and so each shard, mix the manifest's datasets and tasks.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sample_format import FORMAT_VERSION, MEMBERS

# 2000-01-01: any fixed time keeps tar bytes reproducible; 0 upsets some tar tools.
FIXED_MTIME = 946684800
INDEX = "index.json"
STATUS_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.int32()), ("status", pa.string()),
    ("stage", pa.string()), ("error", pa.string()),
])


def tar_name(shard: int) -> str:
    return f"{shard:06d}.tar"


def status_name(shard: int) -> str:
    return f"{shard:06d}_status.parquet"


def stats_name(shard: int) -> str:
    return f"{shard:06d}_stats.json"


def plan(num_rows: int, samples_per_shard: int) -> list[tuple[int, int]]:
    """Each shard's rows, as a [start, stop) range of the manifest's row order."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be ≥ 1, got {samples_per_shard}")
    return [(start, min(start + samples_per_shard, num_rows)) for start in range(0, num_rows, samples_per_shard)]


def completed(out_dir: str | Path) -> set[int]:
    """Shards whose stats file exists: finished by an earlier run."""
    found = set()
    for p in Path(out_dir).glob("*_stats.json"):
        stem = p.name[: -len("_stats.json")]
        if stem.isdigit():
            found.add(int(stem))
    return found


@dataclass(frozen=True)
class StatusRow:
    key: str
    shard: int
    status: str  # "ok" or "error"
    stage: str = ""
    error: str = ""


def _member_order(name: str) -> tuple[str, int]:
    key, _, member = name.partition(".")
    return key, MEMBERS.index(member) if member in MEMBERS else len(MEMBERS)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers never see half of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# A member to write: its name ("key.member"), its size and a function giving its bytes when the
# tar reaches it, so a shard streams from its sources instead of being held in memory.
Member = tuple[str, int, Callable[[], BinaryIO]]


class _HashingFile(io.RawIOBase):
    """A write-only file that also counts and hashes what goes through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.size += len(b)
        return len(b)


def write_tar(path: Path, members: Iterable[Member]) -> tuple[int, str]:
    """Write a reproducible tar of ``members`` atomically: sorted by key then member, fixed mtime,
    owner and mode, GNU format for long names. Returns (bytes, sha256) of the file."""
    ordered = sorted(members, key=lambda m: _member_order(m[0]))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        sink = _HashingFile(f)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, size, open_data in ordered:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = size, FIXED_MTIME, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open_data() as data:
                    tar.addfile(info, data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return sink.size, sink.sha.hexdigest()


def record_members(records: Iterable[dict[str, Any]]) -> list[Member]:
    """The members of webdataset records held in memory (``__key__`` + member bytes)."""
    return [(f"{r['__key__']}.{m}", len(data), functools.partial(io.BytesIO, data))
            for r in records for m, data in r.items() if not m.startswith("__")]


def tar_members(tar: tarfile.TarFile, keep: Callable[[str], bool] = lambda key: True) -> list[Member]:
    """The members of one of our own shards (or parts) whose key passes ``keep``, read lazily.

    Only regular-file members named ``key.member`` are accepted; anything else is an error, so a
    tar we did not write is never half-read.
    """
    found = []
    for info in tar.getmembers():
        if not info.isreg() or "/" in info.name or ".." in info.name or "." not in info.name:
            raise ValueError(f"{tar.name}: unexpected tar member {info.name!r}")
        if keep(info.name.partition(".")[0]):
            found.append((info.name, info.size, functools.partial(tar.extractfile, info)))
    return found


def tar_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    """The bytes ``write_tar`` writes for records held in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.tar"
        write_tar(path, record_members(records))
        return path.read_bytes()


def read_records(path: str | Path) -> dict[str, dict[str, bytes]]:
    """Records of one of our own shards, by key, in memory (for tests and small tools)."""
    records: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, mode="r:") as tar:
        for name, _, open_data in tar_members(tar):
            key, _, member = name.partition(".")
            with open_data() as data:
                records.setdefault(key, {"__key__": key})[member] = data.read()
    return records


def write_status(out_dir: str | Path, shard: int, status: Sequence[StatusRow]) -> None:
    table = pa.Table.from_pylist([asdict(s) for s in sorted(status, key=lambda s: s.key)], schema=STATUS_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(Path(out_dir) / status_name(shard), sink.getvalue().to_pybytes())


def write_shard(out_dir: str | Path, shard: int, members: Iterable[Member], status: Sequence[StatusRow],
                extra_stats: dict[str, Any]) -> dict[str, Any]:
    """Write one shard's tar and status atomically, then its stats file (the completion marker).

    An existing stats file is removed first: a shard being rewritten (``--retry-failed``) is
    incomplete until its new stats are written, so a crash in between never leaves the old
    sha256 and size describing a new tar. Returns the stats. ``status`` must hold one row per
    manifest row of the shard.
    """
    out = Path(out_dir)
    (out / stats_name(shard)).unlink(missing_ok=True)
    size, sha = write_tar(out / tar_name(shard), members)
    write_status(out, shard, status)
    ok = sum(s.status == "ok" for s in status)
    stats = {"shard": shard, "name": tar_name(shard), "samples": ok, "failed": len(status) - ok,
             "bytes": size, "sha256": sha, **extra_stats}
    atomic_write(out / stats_name(shard), json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def read_status(out_dir: str | Path, shard: int) -> list[StatusRow]:
    return [StatusRow(**r) for r in pq.read_table(Path(out_dir) / status_name(shard)).to_pylist()]


def read_stats(out_dir: str | Path, shard: int) -> dict[str, Any]:
    with open(Path(out_dir) / stats_name(shard)) as f:
        return json.load(f)


def write_index(out_dir: str | Path, name: str, shard_count: int, header: dict[str, Any]) -> dict[str, Any]:
    """Write ``index.json`` from the stats of shards ``0..shard_count-1`` (all must be complete)."""
    shards = [read_stats(out_dir, i) for i in range(shard_count)]
    index = {
        "format_version": FORMAT_VERSION, "name": name, **header,
        "samples": sum(s["samples"] for s in shards), "failed": sum(s["failed"] for s in shards),
        "shards": [{k: s[k] for k in ("name", "samples", "failed", "bytes", "sha256")} for s in shards],
    }
    atomic_write(Path(out_dir) / INDEX, json.dumps(index, indent=1, sort_keys=True).encode())
    return index
