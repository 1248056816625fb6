"""Score a restorer on test sets and print the papers' table: PSNR/SSIM per dataset and the average.

    python -m restore.evaluate --checkpoint RUN_OR_CHECKPOINT --manifest M.parquet [M2.parquet ...]
                               [--shards SPEC] [--preset tiny|default|quality|analysis-only]
                               [--split test] [--y-channel] [--tile 512] [--out DIR] [--limit N]

Manifests are made by ``pipeline.manifest`` (``manifests/three_task.yaml``, ``five_task.yaml``,
``shared_testsets.yaml`` for the real test images in ../shared/data). Priors come from ``--shards``
(extracted from the same manifest) when a sample is there, else they are computed on the fly
with ``--preset``'s models (default: the preset the model was trained with, falling back to the
weight-free analysis when its weights are not available). Scores follow the all-in-one
convention (restore.metrics): RGB, [0, 1], outputs rounded to 8 bits, no border crop.

A column is a dataset and degradation; variants with fixed parameters (σ=15/25/50) get a
column each. Rows without GT (real degraded photos) cannot be scored against a reference: they
are restored and listed with a no-reference indicator, the weight-free analysis's "clean" score
of the input and of the output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import manifest as manifest_io
from pipeline.analysis.analyze import analyze
from pipeline.image_files import decode_rgb, read_bytes, save_png
from pipeline.sample_format import Sample
from restore import checkpoint, data, metrics
from restore.model import Restorer
from restore.priors_online import ANALYSIS_ONLY, PRESET_CHOICES, OnlinePriors, load_or_analysis_only
from restore.validate import restore_sample, to_uint8

# A (dataset, degradation) whose parameters take at most this many distinct values, each shared
# by several images, is a set of fixed-parameter variants (noise σ 15/25/50): a column each.
MAX_VARIANTS = 4


@dataclass(frozen=True)
class ImageResult:
    """One test image: its column, input and output scores (NaN without GT), no-reference scores."""

    column: str
    key: str
    has_gt: bool
    psnr_in: float = math.nan
    ssim_in: float = math.nan
    psnr: float = math.nan
    ssim: float = math.nan
    clean_in: float = math.nan
    clean_out: float = math.nan


def _variant(params: str) -> str:
    try:
        applied = json.loads(params or "[]")
    except json.JSONDecodeError:
        return ""
    parts = []
    for step in applied:
        # "kind" repeats the degradation (noise, motion-blur, ...) the column already names.
        values = ",".join(f"{k}={v}" for k, v in sorted((step.get("params") or {}).items()) if k != "kind")
        if values:
            parts.append(values)
    return " ".join(parts)


def column_labels(rows: list[dict]) -> dict[str, str]:
    """Table column of each manifest row (by key): ``dataset degradation [fixed parameters]``."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["degradation"])].append(row)
    labels = {}
    for (dataset, degradation), members in groups.items():
        variants = Counter(_variant(r["params"]) for r in members)
        # Fixed parameters repeat over the images of a set; parameters drawn per image do not.
        split = 1 < len(variants) <= MAX_VARIANTS and min(variants.values()) > 1
        for r in members:
            suffix = f" {_variant(r['params'])}" if split else ""
            labels[r["key"]] = f"{dataset} {degradation}{suffix}"
    return labels


def load_restorer(path: str | Path, device: torch.device) -> tuple[Restorer, str | None]:
    """The restorer at ``path`` (run or checkpoint folder) in eval mode, and the prior preset
    its training shards were extracted with (None when the checkpoint does not say)."""
    folder = checkpoint.find(path)
    state = checkpoint.read_state(folder) or {}
    return Restorer.from_pretrained(folder, device).eval(), state.get("prior_preset")


def add_device_arguments(ap: argparse.ArgumentParser) -> None:
    """--device and --threads, for the commands that run the restorer."""
    ap.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda, cuda:1, …")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (default: torch's own; 1 on a machine shared with other jobs)")


def use_threads(threads: int | None) -> None:
    """Set torch's CPU thread count when one is given."""
    if threads:
        torch.set_num_threads(threads)


def pick_device(name: str) -> torch.device:
    """"auto": the GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _read_image(uri: str) -> tuple[np.ndarray, bytes | None]:
    raw = read_bytes(uri)
    loaded = decode_rgb(raw, uri)
    return loaded.pixels, raw if loaded.source_format == "JPEG" else None


def evaluate(checkpoint_path: str | Path, manifests: list[str], shards: str | None = None,
             preset: str | None = None, split: str | None = "test", y_channel: bool = False, tile: int = 512,
             out: str | Path | None = None, limit: int | None = None, device: str = "auto") -> list[ImageResult]:
    """Restore and score every row of ``manifests`` (of ``split``; None: all rows)."""
    dev = pick_device(device)
    model, trained_preset = load_restorer(checkpoint_path, dev)
    rows = [r for m in manifests for r in manifest_io.read(m) if split is None or r["split"] == split]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{', '.join(manifests)}: no rows of split {split!r}")
    labels = column_labels(rows)
    from_shards: dict[str, Sample] = {}
    if shards:
        wanted = {r["key"] for r in rows}
        for sample in data.read_samples(data.resolve(shards).urls):
            if sample.key in wanted:
                from_shards[sample.key] = sample
    online: OnlinePriors | None = None
    if len(from_shards) < len(rows):
        online = load_or_analysis_only(preset or trained_preset or ANALYSIS_ONLY)
        print(f"priors: {len(from_shards)} samples from shards, {len(rows) - len(from_shards)} computed "
              f"on the fly ({online.preset})", file=sys.stderr)
    out_dir = Path(out) if out else None
    if out_dir:
        (out_dir / "restored").mkdir(parents=True, exist_ok=True)
    results = []
    for row in rows:
        pixels, jpeg = _read_image(row["lq_uri"])
        gt = _read_image(row["gt_uri"])[0] if row["gt_uri"] else None
        sample = from_shards.get(row["key"])
        if sample is None:
            sample = online.sample(row["key"], pixels, jpeg, gt=gt, dataset=row["dataset"], split=row["split"],
                                   task=row["task"])
        elif gt is not None:
            sample.gt = gt
        restored = metrics.quantize(restore_sample(model, sample, dev, tile))
        if out_dir:
            save_png(to_uint8(restored), str(out_dir / "restored" / f"{row['key']}.png"))
        if gt is None:
            results.append(ImageResult(labels[row["key"]], row["key"], False,
                                       clean_in=analyze(pixels, jpeg).scores["clean"],
                                       clean_out=analyze(to_uint8(restored)).scores["clean"]))
            continue
        target, lq = (torch.from_numpy(data.to_chw(img))[None] for img in (gt, pixels))
        results.append(ImageResult(
            labels[row["key"]], row["key"], True,
            psnr_in=float(metrics.psnr(lq, target, y_channel)[0]), ssim_in=float(metrics.ssim(lq, target, y_channel)[0]),
            psnr=float(metrics.psnr(restored, target, y_channel)[0]),
            ssim=float(metrics.ssim(restored, target, y_channel)[0])))
    if out_dir:
        with open(out_dir / "results.jsonl", "w") as f:
            for r in results:
                f.write(json.dumps(asdict(r)) + "\n")
    return results


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def averages(results: list[ImageResult]) -> dict[str, float]:
    """Average over datasets (each column weighs the same, as the papers average) of input and output."""
    columns: dict[str, list[ImageResult]] = defaultdict(list)
    for r in results:
        if r.has_gt:
            columns[r.column].append(r)
    per = {c: {k: _mean([getattr(r, k) for r in rs]) for k in ("psnr_in", "ssim_in", "psnr", "ssim")}
           for c, rs in columns.items()}
    return {k: _mean([p[k] for p in per.values()]) for k in ("psnr_in", "ssim_in", "psnr", "ssim")}


def table(results: list[ImageResult], method: str = "lmdir restorer") -> str:
    """Markdown: methods as rows, datasets as PSNR/SSIM columns, then the average; then the rows
    without GT with their no-reference scores."""
    columns: dict[str, list[ImageResult]] = defaultdict(list)
    no_ref: dict[str, list[ImageResult]] = defaultdict(list)
    for r in results:
        (columns if r.has_gt else no_ref)[r.column].append(r)
    lines = []
    if columns:
        names = sorted(columns)
        lines.append("| Method | " + " | ".join(f"{n} ({len(columns[n])})" for n in names) + " | Average |")
        lines.append("|---" * (len(names) + 2) + "|")
        avg = averages(results)
        for label, p, s in (("Input (degraded)", "psnr_in", "ssim_in"), (method, "psnr", "ssim")):
            cells = [f"{_mean([getattr(r, p) for r in columns[n]]):.2f} / {_mean([getattr(r, s) for r in columns[n]]):.4f}"
                     for n in names]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {avg[p]:.2f} / {avg[s]:.4f} |")
        lines.append("")
        lines.append("PSNR (dB) / SSIM, RGB in [0, 1], no border crop; (n) = images.")
    if no_ref:
        if lines:
            lines.append("")
        lines.append("| Without reference (restored only) | images | analysis 'clean' score: input → restored |")
        lines.append("|---|---|---|")
        for name in sorted(no_ref):
            rs = no_ref[name]
            lines.append(f"| {name} | {len(rs)} | {_mean([r.clean_in for r in rs]):.3f} → "
                         f"{_mean([r.clean_out for r in rs]):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m restore.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    ap.add_argument("--manifest", required=True, nargs="+", help="test-set manifest parquet(s)")
    ap.add_argument("--shards", default=None, help="prior shards extracted from these manifests")
    ap.add_argument("--preset", default=None, choices=PRESET_CHOICES,
                    help="prior models for samples without shards (default: the training shards' preset)")
    ap.add_argument("--split", default="test", help="manifest split to score ('all' for every row)")
    ap.add_argument("--y-channel", action="store_true", help="score the BT.601 Y channel (deraining papers)")
    ap.add_argument("--tile", type=int, default=512, help="restore in tiles of this size (bounded memory)")
    ap.add_argument("--out", default=None, help="folder for restored images, results.jsonl and results.md")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    add_device_arguments(ap)
    args = ap.parse_args(argv)
    use_threads(args.threads)
    results = evaluate(args.checkpoint, args.manifest, args.shards, args.preset,
                       None if args.split == "all" else args.split, args.y_channel, args.tile, args.out,
                       args.limit, args.device)
    text = table(results)
    print(text)
    if args.out:
        (Path(args.out) / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
