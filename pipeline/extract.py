"""Prior extraction on Ray: a dataset manifest in, webdataset shards of prior samples out.

    python -m pipeline.extract --manifest M.parquet --out DIR [--preset offline|tiny|default|quality]
                               [--config YAML] [--set stages.describer.num_gpus=1 ...] [--retry-failed]
    ray job submit --working-dir . -- python -m pipeline.extract --manifest ... --out /shared/priors

The Ray Data graph: manifest rows → decode/validate (CPU tasks) → weight-free analysis (CPU) →
degradation describer (MLLM) → captioner (MLLM) → reference synthesizer (diffusion) → embeddings
(CLIP and/or a sentence encoder) → the driver, which gathers each shard's rows and writes the
shard (pipeline.shards). A preset without an MLLM (``offline``) takes the analysis's sentence as
the degradation text and has no caption; without a diffusion model there is no reference stage.
With no cluster to join, ``ray.init`` starts a local one.

Rerunning the same command skips complete shards; ``--retry-failed`` re-processes only the rows
whose status is error and rewrites their shards with the earlier good samples kept. So Ctrl-C
loses only the shards in progress: the program says how many are complete and exits with 130.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import pipeline
from pipeline import cli, extract_config, manifest, shards, stages, typed_config
from pipeline.extract_config import ExtractConfig, StageResources
from pipeline.sample_format import GT, LQ, REF, SampleFormatError, SampleMeta, encode_record

STAGE_NAMES = ("decode", "analysis", "describer", "captioner", "reference", "clip")
MODEL_STAGES = ("describer", "captioner", "reference", "clip")


class ExtractError(Exception):
    """A run that cannot start as asked: names the folder or setting and what to do instead."""


@dataclass
class Work:
    """What this run must do: rows to process by shard, and good records kept from earlier runs."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    expected: dict[int, int] = field(default_factory=dict)  # shard -> rows to gather this run
    kept_records: dict[int, list[dict]] = field(default_factory=dict)
    kept_status: dict[int, list[shards.StatusRow]] = field(default_factory=dict)


def plan_work(rows: list[dict], out: Path, samples_per_shard: int, retry_failed: bool) -> tuple[Work, int]:
    """Assign shards from the manifest and decide what is left to do in ``out``."""
    by_key = {r["key"]: r for r in rows}
    planned = shards.plan(list(by_key), samples_per_shard)
    done = shards.completed(out)
    work = Work()
    for shard, keys in enumerate(planned):
        todo = keys
        if shard in done:
            if not retry_failed:
                continue
            status = shards.read_status(out, shard)
            failed = {s.key for s in status if s.status == "error"}
            if not failed:
                continue
            kept = shards.read_records(out / shards.tar_name(shard))
            work.kept_records[shard] = [r for k, r in kept.items() if k not in failed]
            work.kept_status[shard] = [s for s in status if s.status == "ok"]
            todo = [k for k in keys if k in failed]
        work.expected[shard] = len(todo)
        work.rows.extend({**by_key[k], "shard": shard} for k in todo)
    return work, len(planned)


@dataclass(frozen=True)
class Step:
    """One stage of extraction: its name in ``config.stages``, the function or actor class of
    ``pipeline.stages`` that runs it, and the arguments it is built or called with."""

    name: str
    fn: Any
    actor: bool
    kwargs: dict


def stage_plan(config: ExtractConfig, models: Any) -> list[Step]:
    """The stages a preset runs, in order: components a preset leaves out are skipped (no MLLM:
    the analysis's sentence is the degradation text; no diffusion: no reference)."""
    steps = [Step("decode", stages.decode_batch, False, {"max_pixels": config.max_pixels}),
             Step("analysis", stages.AnalysisStage, True, {})]
    if models.mllm is not None:
        steps += [Step("describer", stages.DescriberStage, True, {"settings": models.mllm,
                                                                   "use_hint": config.analysis_hint}),
                  Step("captioner", stages.CaptionerStage, True, {"settings": models.mllm})]
    else:
        steps.append(Step("describer", stages.analysis_text, False, {}))
    if config.reference and models.diffusion is not None:
        steps.append(Step("reference", stages.ReferenceStage, True, {"settings": models.diffusion}))
    if models.clip is not None or models.text is not None:
        steps.append(Step("clip", stages.EmbedStage, True, {"models": models}))
    return steps


def build_dataset(work: Work, config: ExtractConfig):
    """The Ray Data graph over this run's rows (lazy: nothing runs until iterated)."""
    import ray.data
    from ray.data import ActorPoolStrategy

    models = config.resolved_models()
    # Nulls would reach the stages as NaN in numpy batches: carry "" and -1 instead, undone in to_record.
    table = pa.Table.from_pylist([{**r, "gt_uri": r["gt_uri"] or "", "gt_sha256": r["gt_sha256"] or "",
                                   "seed": -1 if r["seed"] is None else r["seed"]} for r in work.rows])
    # Small blocks keep every stage busy early and bound the memory of a block of decoded images.
    block_rows = max(1, min(config.stages.decode.batch_size, 64))
    ds = ray.data.from_arrow([table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)])
    # Ray Data's high-memory note ("Operator ... uses N of memory per worker ... consider setting
    # memory=...") fires for any actor above ~2.6 GiB per CPU it reserves: with a quarter CPU per
    # stage every model actor passes that, as it must to hold its weights, and `memory=` is no
    # setting of this program. Off for this dataset (and those built from it) only.
    ds.context.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1

    def run(ds, fn, res: StageResources, actor: bool, **kwargs):
        options: dict[str, Any] = {"batch_size": res.batch_size, "batch_format": "numpy", "num_cpus": res.num_cpus}
        if res.num_gpus:
            options["num_gpus"] = res.num_gpus
        if actor:
            return ds.map_batches(fn, fn_constructor_kwargs=kwargs, compute=ActorPoolStrategy(size=res.concurrency),
                                  **options)
        return ds.map_batches(fn, fn_kwargs=kwargs, **options)

    for step in stage_plan(config, models):
        ds = run(ds, step.fn, getattr(config.stages, step.name), step.actor, **step.kwargs)
    return ds


def _provenance(row: dict, config_hash: str) -> dict:
    models = {stage: json.loads(row[f"prov_{stage}"]) for stage in MODEL_STAGES if row.get(f"prov_{stage}")}
    return {
        "models": models,
        "seeds": {"reference": stages.reference_seed(row["key"]) if row.get("ref_png") else None,
                  "synthesis": None if int(row["seed"]) < 0 else int(row["seed"])},
        "code_version": pipeline.__version__, "config_hash": config_hash,
    }


def to_record(row: dict, config_hash: str) -> dict:
    """The webdataset record of a finished row (raises SampleFormatError if it breaks the format)."""
    meta = SampleMeta(
        key=row["key"], dataset=row["dataset"], split=row["split"], task=row["task"],
        width=int(row["width"]), height=int(row["height"]),
        source={"lq": row["lq_uri"], "gt": row["gt_uri"] or None, "lq_sha256": row["lq_sha256"],
                "gt_sha256": row["gt_sha256"] or None},
        degradations=json.loads(row["params"]), degradation_text=row["degradation_text"],
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


@dataclass
class Totals:
    ok: int = 0
    failed: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    errors: list[str] = field(default_factory=list)


def _finish_shard(out: Path, shard: int, rows: list[dict], work: Work, config_hash: str, totals: Totals) -> dict:
    records = list(work.kept_records.get(shard, []))
    status = list(work.kept_status.get(shard, []))
    seconds: dict[str, float] = defaultdict(float)
    for row in rows:
        for stage in STAGE_NAMES:
            seconds[stage] += float(row.get(f"t_{stage}", 0.0) or 0.0)
        if not row["error"]:
            try:
                records.append(to_record(row, config_hash))
            except SampleFormatError as e:
                row["error"], row["failed_stage"] = f"write: {e}", "write"
        if row["error"]:
            status.append(shards.StatusRow(row["key"], shard, "error", row["failed_stage"], row["error"]))
            totals.failed += 1
            if len(totals.errors) < 20:
                totals.errors.append(f"{row['key']}: {row['error']}")
        else:
            status.append(shards.StatusRow(row["key"], shard, "ok"))
            totals.ok += 1
    for stage, t in seconds.items():
        totals.stage_seconds[stage] += t
    first = next((r for r in rows if not r["error"]), None)
    extra = {"config_hash": config_hash, "stage_seconds": dict(seconds), "finished": time.time()}
    if first is not None and first.get("npz"):
        with np.load(io.BytesIO(first["npz"]), allow_pickle=False) as z:
            extra["embedding_dims"] = {"W": int(z["caption_tokens"].shape[1]),
                                       **({"E": int(z["clip_image"].shape[0])} if "clip_image" in z.files else {})}
    if first is not None:
        extra["models"] = {stage: {"id": p["model"], "revision": p.get("revision"), "commit": p.get("resolved"),
                                   "class": p.get("class"), "dtype": p.get("dtype")}
                           for stage, p in ((s, json.loads(first[f"prov_{s}"])) for s in MODEL_STAGES
                                            if first.get(f"prov_{s}"))}
    return shards.write_shard(out, shard, records, status, extra)


def _check_config(out: Path, config: ExtractConfig, config_hash: str, manifest_path: str) -> None:
    saved = out / "config.json"
    if saved.exists():
        previous = json.loads(saved.read_text()).get("output_hash")
        if previous != config_hash:
            raise ExtractError(f"{out} holds shards of another configuration or manifest (hash {previous}, this "
                               f"run {config_hash}); use a new --out folder, or the same settings to resume")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"output_hash": config_hash, "manifest": str(manifest_path), **config.to_dict()},
                                indent=1, sort_keys=True, default=str))


def _check_installed(config: ExtractConfig) -> None:
    """Fail in the driver, with the fix, when the sentence encoder's package is missing: inside a
    Ray actor the same error would surface as a failed actor pool."""
    text = config.resolved_models().text
    if text is None:
        return
    from pipeline.models.text_encoder import resolve_folder

    try:
        resolve_folder(text.model)
    except OSError as e:
        raise ExtractError(f"preset {config.preset!r}: {e}") from e


def extract(manifest_path: str, out_dir: str, config: ExtractConfig, retry_failed: bool = False,
            address: str | None = None, num_cpus: int | None = None) -> dict:
    """Run the extraction; returns the index written (``index.json``)."""
    import ray

    out = Path(out_dir)
    rows = manifest.read(manifest_path)
    _check_installed(config)
    manifest_sha = hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()
    config_hash = config.output_hash(manifest_sha)
    _check_config(out, config, config_hash, manifest_path)
    work, shard_count = plan_work(rows, out, config.samples_per_shard, retry_failed)
    print(f"{len(rows)} manifest rows in {shard_count} shards; {len(work.rows)} rows to process "
          f"in {len(work.expected)} shards, {shard_count - len(work.expected)} shards already complete")
    totals = Totals()
    start = time.time()
    if work.rows:
        if not ray.is_initialized():
            ray.init(address=address, num_cpus=num_cpus if not address else None, log_to_driver=False)
        gathered: dict[int, list[dict]] = defaultdict(list)
        for row in build_dataset(work, config).iter_rows():
            row = dict(row)
            shard = int(row["shard"])
            gathered[shard].append(row)
            if len(gathered[shard]) == work.expected[shard]:
                stats = _finish_shard(out, shard, gathered.pop(shard), work, config_hash, totals)
                print(f"shard {stats['name']}: {stats['samples']} ok, {stats['failed']} failed, {stats['bytes']} bytes")
        if gathered:
            raise RuntimeError(f"shards {sorted(gathered)} did not receive all their rows; rerun to resume")
    elapsed = time.time() - start
    models = config.resolved_models()
    all_stats = [shards.read_stats(out, i) for i in range(shard_count)]
    header = {"preset": config.preset, "config_hash": config_hash,
              "models": next((st["models"] for st in all_stats if "models" in st), {}),
              "settings": models.settings_summary(),
              "embedding_dims": next((st["embedding_dims"] for st in all_stats if "embedding_dims" in st), {})}
    index = shards.write_index(out, Path(out).name, shard_count, header)
    print(summary(index, totals, elapsed, len(work.rows)))
    return index


def summary(index: dict, totals: Totals, elapsed: float, processed: int) -> str:
    lines = ["== extraction summary ==",
             f"dataset: {index['samples']} ok + {index['failed']} failed = {index['samples'] + index['failed']} rows "
             f"in {len(index['shards'])} shards",
             f"this run: {totals.ok} ok, {totals.failed} failed of {processed} rows in {elapsed:.1f} s"
             + (f" ({processed / elapsed:.2f} samples/s)" if processed and elapsed > 0 else "")]
    if processed:
        total_stage = sum(totals.stage_seconds.values()) or 1.0
        lines.append("time per stage (summed over workers, per sample): " + ", ".join(
            f"{s} {totals.stage_seconds[s] / processed * 1000:.0f} ms ({totals.stage_seconds[s] / total_stage:.0%})"
            for s in STAGE_NAMES if s in totals.stage_seconds))
    for e in totals.errors:
        lines.append(f"  failed: {e}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True, help="dataset manifest parquet (pipeline.manifest)")
    ap.add_argument("--out", required=True, help="output folder for shards, status, stats and index.json")
    ap.add_argument("--preset", default=None,
                    help="model preset: offline, tiny, default or quality (default: tiny; see pipeline/models/presets.py)")
    ap.add_argument("--config", default=None, help="YAML extraction config (see pipeline/extract_config.py)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. stages.describer.num_gpus=1 or models.mllm.max_new_tokens=32")
    ap.add_argument("--samples-per-shard", type=int, default=None,
                    help="samples per shard (default 256); part of the output hash, so keep it to resume")
    ap.add_argument("--retry-failed", action="store_true", help="re-process only rows whose status is error")
    ap.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = {k: v for k, v in (("preset", args.preset), ("samples_per_shard", args.samples_per_shard)) if v is not None}
    try:
        config = extract_config.load(args.config, typed_config.parse_sets(args.set), **fields)
        index = extract(args.manifest, args.out, config, args.retry_failed, args.address, args.num_cpus)
    # ValueError: an unreadable manifest or config file, an unknown preset or setting; OSError: an
    # output folder that cannot be written.
    except (ExtractError, ValueError, OSError) as e:
        return cli.fail(e)
    except KeyboardInterrupt:
        done = len(shards.completed(args.out)) if Path(args.out).is_dir() else 0
        return cli.interrupted(f"{done} shards are complete in {args.out} and kept (each has its _stats.json); "
                               "rerun the same command to resume: complete shards are skipped")
    return 0 if index["samples"] else 1


if __name__ == "__main__":
    sys.exit(main())
