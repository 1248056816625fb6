"""Shard files of an extraction run: the plan, the tar writer, per-shard status and stats, the index.

Layout of an output folder::

    000000.tar               webdataset shard: members sorted by key, fixed mtime/owner (same bytes on rerun)
    000000_status.parquet    one row per manifest row of the shard: ok, or error with stage and message
    000000_stats.json        written last: its presence marks the shard complete (resume skips it)
    index.json               the dataset: shards, sample counts, bytes, sha256, models, config hash
    config.json              the resolved run configuration

Shard ids come from the manifest alone (rows sorted by key, cut every ``samples_per_shard``), so a
rerun, a resumed run and a run on another cluster assign every sample to the same shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def plan(keys: Sequence[str], samples_per_shard: int) -> list[list[str]]:
    """Keys cut into shards, in key order. Raises on duplicate keys (they would collide in a tar)."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be ≥ 1, got {samples_per_shard}")
    ordered = sorted(keys)
    for a, b in zip(ordered, ordered[1:]):
        if a == b:
            raise ValueError(f"duplicate sample key {a!r} in the manifest")
    return [ordered[i:i + samples_per_shard] for i in range(0, len(ordered), samples_per_shard)]


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


def tar_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    """A reproducible tar of webdataset records (``__key__`` + member bytes): members sorted by key
    then member, fixed mtime, owner and mode, GNU format for long names."""
    members = []
    for record in records:
        key = record["__key__"]
        members.extend((f"{key}.{m}", data) for m, data in record.items() if not m.startswith("__"))
    members.sort(key=lambda nm: _member_order(nm[0]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read_records(path: str | Path) -> dict[str, dict[str, bytes]]:
    """Records of one of our own shards, by key (used to keep ok samples when retrying failures).

    Only regular-file members named ``key.member`` are accepted; anything else is an error, so a
    tar we did not write is never half-read.
    """
    records: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isreg() or "/" in info.name or ".." in info.name or "." not in info.name:
                raise ValueError(f"{path}: unexpected tar member {info.name!r}")
            key, _, member = info.name.partition(".")
            f = tar.extractfile(info)
            records.setdefault(key, {"__key__": key})[member] = f.read() if f else b""
    return records


def write_shard(out_dir: str | Path, shard: int, records: Sequence[dict[str, Any]], status: Sequence[StatusRow],
                extra_stats: dict[str, Any]) -> dict[str, Any]:
    """Write one shard's tar and status atomically, then its stats file (the completion marker).

    Returns the stats. ``status`` must hold one row per manifest row of the shard.
    """
    out = Path(out_dir)
    data = tar_bytes(records)
    atomic_write(out / tar_name(shard), data)
    table = pa.Table.from_pylist([asdict(s) for s in sorted(status, key=lambda s: s.key)], schema=STATUS_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(out / status_name(shard), sink.getvalue().to_pybytes())
    ok = sum(s.status == "ok" for s in status)
    stats = {
        "shard": shard, "name": tar_name(shard), "samples": ok, "failed": len(status) - ok,
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra_stats,
    }
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
