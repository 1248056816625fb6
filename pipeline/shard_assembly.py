"""Workers write the shards: image bytes never travel to the driver.

The last stage of extraction (``write_parts``) runs where the rows are: it turns each batch's
finished rows into records and writes them, per shard, as a *part* (a tar of records and a json
of status rows and stage times) under ``<out>/_parts/<shard>/``. It hands the driver back only
small rows: key, shard, ok or error, stage times. When every row of a shard has come back, the
driver starts ``assemble`` as a Ray task (spread over the nodes): it streams the parts — and, for
``--retry-failed``, the good samples of the shard's earlier tar — into the shard's reproducible tar
(``shards.write_shard``), writes status and stats, and removes the parts.

A part is complete when its json exists (written after its tar). Parts of an interrupted run are
removed when the next run starts: the rows of every incomplete shard are processed again.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tarfile
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

import pipeline
from pipeline import shards, stages
from pipeline.sample_format import (
    EMBEDDINGS_MEMBER,
    GT,
    LQ,
    META,
    REF,
    SampleFormatError,
    SampleMeta,
    encode_record,
    parse_degradations,
)

PARTS = "_parts"
STAGE_NAMES = ("decode", "analysis", "describer", "reference", "clip")
# The models a sample's provenance names: the describer and the captioner are one MLLM stage
# asked two questions, and each keeps its own entry.
MODEL_ROLES = ("describer", "captioner", "reference", "clip")
# The columns a worker hands back to the driver per row: nothing that grows with the image.
STATUS_COLUMNS = ("key", "shard", stages.ERROR, stages.FAILED_STAGE, *(f"t_{s}" for s in STAGE_NAMES))
# Each row's position in the manifest, carried from the reading to the parts: of two rows with one
# key, the earlier one is the sample whichever block finishes first.
MANIFEST_ROW = "manifest_row"


def parts_dir(out: Path, shard: int) -> Path:
    return out / PARTS / f"{shard:06d}"


def _provenance(row: dict, config_hash: str) -> dict:
    models = {stage: json.loads(row[f"prov_{stage}"]) for stage in MODEL_ROLES if row.get(f"prov_{stage}")}
    return {
        "models": models,
        "seeds": {"reference": stages.reference_seed(row["key"]) if row.get("ref_png") else None,
                  "synthesis": None if int(row["seed"]) < 0 else int(row["seed"])},
        "code_version": pipeline.__version__, "config_hash": config_hash,
    }


def _manifest_value(row: dict, column: str, parse: Any) -> Any:
    """A manifest column's value parsed, or a SampleFormatError naming the column and the value
    (the manifest may come from anywhere: a null or a malformed value fails its row, not the job)."""
    try:
        return parse(row[column])
    except (TypeError, ValueError) as e:
        raise SampleFormatError(row["key"], META, f"manifest column {column!r} holds {row[column]!r:.80}: {e}") from None


def to_record(row: dict, config_hash: str) -> dict:
    """The webdataset record of a finished row (raises SampleFormatError if it breaks the format)."""
    meta = SampleMeta(
        key=row["key"], dataset=row["dataset"], split=row["split"], task=row["task"],
        width=_manifest_value(row, "width", int), height=_manifest_value(row, "height", int),
        source={"lq": row["lq_uri"], "gt": row["gt_uri"] or None, "lq_sha256": row["lq_sha256"],
                "gt_sha256": row["gt_sha256"] or None},
        degradations=_manifest_value(row, "params", parse_degradations), degradation_text=row["degradation_text"],
        degradation_types=stages.merge_types(row["degradation_text"], row["analysis"]),
        caption=row["caption"], analysis=json.loads(row["analysis"]) if row["analysis"] else None,
        provenance=_provenance(row, config_hash),
    )
    pngs = {LQ: row["lq_png"]}
    if row["gt_png"]:
        pngs[GT] = row["gt_png"]
    if row.get("ref_png"):
        pngs[REF] = row["ref_png"]
    return encode_record(meta, pngs, row.get("npz") or None)


def _duplicate(entry: dict, first: int) -> dict:
    """A part's status entry failed as a repeat of the key of manifest row ``first``."""
    return {**entry, "status": "error", "stage": "write",
            "error": f"write: duplicate key in the manifest (row {entry[MANIFEST_ROW]} repeats row {first})"}


def write_parts(batch: dict[str, Any], out: str, config_hash: str) -> dict[str, list]:
    """Ray Data stage: write the batch's rows as one part per shard; return their status rows."""
    n = len(batch["key"])
    rows = [{k: batch[k][i] for k in batch} for i in range(n)]
    by_shard: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_shard[int(row["shard"])].append(row)
    for shard, shard_rows in by_shard.items():
        records, status, seconds, first = [], [], defaultdict(float), {}
        for row in sorted(shard_rows, key=lambda r: int(r[MANIFEST_ROW])):
            for stage in STAGE_NAMES:
                seconds[stage] += float(row.get(f"t_{stage}", 0.0) or 0.0)
            entry = {"key": row["key"], "shard": shard, MANIFEST_ROW: int(row[MANIFEST_ROW])}
            if row["key"] in first:
                # Only the first row of a key may leave a record in the part (``assemble`` settles
                # repeats across parts the same way).
                status.append(_duplicate(entry, first[row["key"]]))
                row[stages.ERROR], row[stages.FAILED_STAGE] = status[-1]["error"], "write"
                continue
            first[row["key"]] = entry[MANIFEST_ROW]
            if not row[stages.ERROR]:
                try:
                    records.append(to_record(row, config_hash))
                except SampleFormatError as e:
                    row[stages.ERROR], row[stages.FAILED_STAGE] = f"write: {e}", "write"
            status.append({**entry, "status": "error" if row[stages.ERROR] else "ok",
                           "stage": row[stages.FAILED_STAGE], "error": row[stages.ERROR]})
        folder = parts_dir(Path(out), shard)
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        shards.write_tar(folder / f"{name}.tar", shards.record_members(records))
        shards.atomic_write(folder / f"{name}.json", json.dumps({"status": status, "seconds": seconds}).encode())
    return {c: [row.get(c, 0.0) for row in rows] for c in STATUS_COLUMNS}


def _first_sample_facts(members: list[shards.Member], ok: set[str]) -> dict[str, Any]:
    """The models and embedding widths of the shard's first good sample (read from its members)."""
    by_name = {name: open_data for name, _, open_data in members}
    key = min(ok, default=None)
    if key is None:
        return {}
    with by_name[f"{key}.{META}"]() as f:
        meta = json.loads(f.read())
    facts: dict[str, Any] = {"models": {stage: {"id": p["model"], "revision": p.get("revision"),
                                                "commit": p.get("resolved"), "class": p.get("class"),
                                                "dtype": p.get("dtype")}
                                        for stage, p in meta["provenance"]["models"].items()}}
    if f"{key}.{EMBEDDINGS_MEMBER}" in by_name:
        with by_name[f"{key}.{EMBEDDINGS_MEMBER}"]() as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            facts["embedding_dims"] = {"W": int(z["caption_tokens"].shape[1]),
                                       **({"E": int(z["clip_image"].shape[0])} if "clip_image" in z.files else {})}
    return facts


def _writer() -> dict[str, Any]:
    """Which process wrote a shard: the cluster node, the host and the pid."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"node_id": node, "host": socket.gethostname(), "pid": os.getpid()}


def assemble(out: str, shard: int, config_hash: str, retried: bool) -> dict[str, Any]:
    """Merge a shard's parts (and, when ``retried``, the good samples of its earlier tar) into the
    shard; returns its stats. Runs as a Ray task on any node that sees ``out``."""
    folder = Path(out)
    members: list[shards.Member] = []
    status: list[shards.StatusRow] = []
    seconds: dict[str, float] = defaultdict(float)
    with ExitStack() as stack:
        if retried:
            # Every row of a key with a good sample is kept (``plan_work`` retries the others).
            earlier = shards.read_status(folder, shard)
            kept = {s.key for s in earlier if s.status == "ok"}
            status += [s for s in earlier if s.key in kept]
            tar = stack.enter_context(tarfile.open(folder / shards.tar_name(shard)))
            members += shards.tar_members(tar, keep=kept.__contains__)
        parts = []
        for part in sorted(parts_dir(folder, shard).glob("*.json")):
            info = json.loads(part.read_text())
            parts.append((stack.enter_context(tarfile.open(part.with_suffix(".tar"))), info["status"]))
            for stage, t in info["seconds"].items():
                seconds[stage] += t
        # Two manifest rows with one key would collide in the tar: the earlier row is the sample
        # (or the failure) and the later ones fail as repeats, in whatever parts they landed.
        # (A retry reads only keys without a good sample: none of them is among those kept.)
        first: dict[str, int] = {}
        winners: dict[int, set[str]] = defaultdict(set)  # per part, the keys whose sample it holds
        for entry, p in sorted(((e, p) for p, (_, part_status) in enumerate(parts) for e in part_status),
                               key=lambda ep: ep[0][MANIFEST_ROW]):
            if entry["key"] in first:
                entry = _duplicate(entry, first[entry["key"]])
            else:
                first[entry["key"]] = entry[MANIFEST_ROW]
                if entry["status"] == "ok":
                    winners[p].add(entry["key"])
            status.append(shards.StatusRow(**{k: v for k, v in entry.items() if k != MANIFEST_ROW}))
        for p, (tar, _) in enumerate(parts):
            members += shards.tar_members(tar, keep=winners[p].__contains__)
        ok = {s.key for s in status if s.status == "ok"}
        extra = {"config_hash": config_hash, "stage_seconds": dict(seconds), "finished": time.time(),
                 "writer": _writer(), **_first_sample_facts(members, ok)}
        stats = shards.write_shard(folder, shard, members, status, extra)
    shutil.rmtree(parts_dir(folder, shard), ignore_errors=True)
    return stats
