"""Score a restorer on test sets and print the papers' table: PSNR/SSIM per dataset and the average.

    python -m restore.evaluate [--checkpoint RUN_OR_CHECKPOINT] --manifest M.parquet [M2.parquet ...]
                               [--shards SPEC] [--preset tiny|default|quality|analysis-only]
                               [--split test] [--convention both|lmdir|promptir] [--y-channel]
                               [--tile 0] [--out DIR] [--limit N]

Manifests are made by ``pipeline.manifest`` (``manifests/three_task.yaml``, ``five_task.yaml``,
``shared_testsets.yaml`` for the real test images in ../shared/data). Priors come from ``--shards``
(extracted from the same manifest) when a sample is there, else they are computed on the fly
with ``--preset``'s models (default: the preset the model was trained with, falling back to the
weight-free analysis when its weights are not available).

Images are restored whole, as the papers restore them: MDTA's attention is global, so tiles
change the result. ``--tile N`` restores in N-pixel tiles when memory demands it, and the
table says so. Scores follow the conventions of restore.metrics: ``lmdir`` (ours: outputs
rounded to 8 bits, Gaussian SSIM, whole images; ``--y-channel`` scores the BT.601 luma as the
deraining papers do) and ``promptir`` (the all-in-one papers' numbers: outputs clipped but not
rounded, as PromptIR's test.py scores the network's float output; scikit-image's default 7×7
uniform-window SSIM; RGB always; degraded and clean images centre-cropped to multiples of 16
before restoring, as PromptIR's ``crop_img`` does, so an image whose sides are not multiples
of 16 is restored a second time, cropped). The default is ``both``: the table is read beside
published all-in-one tables (PromptIR's convention) and beside our training validation
(ours), and numbers of the two conventions differ by as much as methods do, so each column
carries both and the footer says which is which.

A column is a dataset and degradation; variants with fixed parameters (σ=15/25/50) get a
column each. Rows without GT (real degraded photos) cannot be scored against a reference: they
are restored whole and listed with a no-reference indicator, the weight-free analysis's "clean"
score of the input and of the output.

A progress bar with a time estimate goes to stderr. With ``--out``, each image's result is
appended to ``results.jsonl`` as soon as it is measured (with ``restored/KEY.png``, the
restoration of the first convention scored), so an interrupted run keeps what it measured;
``results.md`` (the table) is written at the end, or on Ctrl-C for the images done so far.
Evaluation does not resume: a rerun scores every image again and starts results.jsonl afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import cli
from pipeline import manifest as manifest_io
from pipeline.analysis.analyze import analyze
from pipeline.image_files import decode_rgb, read_bytes, save_png
from pipeline.sample_format import Sample
from pipeline.shard_cache import ShardUnavailable
from restore import checkpoint, data, metrics
from restore.model import Restorer
from restore.priors_online import ANALYSIS_ONLY, PRESET_CHOICES, OnlinePriors, load_or_analysis_only
from restore.validate import restore_sample, to_uint8

# A (dataset, degradation) whose parameters take at most this many distinct values, each shared
# by several images, is a set of fixed-parameter variants (noise σ 15/25/50): a column each.
MAX_VARIANTS = 4
CONVENTION_CHOICES = ("both", "lmdir", "promptir")
DEFAULT_CONVENTION = "both"
RESULTS_FILE = "results.jsonl"
SCORES = ("psnr_in", "ssim_in", "psnr", "ssim")


@dataclass(frozen=True)
class Setup:
    """How a run scores: the ``--convention`` choice, ours on RGB or Y, whole images (tile 0) or tiles."""

    convention: str = DEFAULT_CONVENTION
    y_channel: bool = False
    tile: int = 0

    def conventions(self) -> tuple[metrics.Convention, ...]:
        """Ours first when both: its restoration is the whole image, the one saved and analysed."""
        ours = metrics.lmdir(self.y_channel)
        chosen = {"both": (ours, metrics.PROMPTIR), "lmdir": (ours,), "promptir": (metrics.PROMPTIR,)}
        if self.convention not in chosen:
            raise ValueError(f"convention {self.convention!r}: expected one of {', '.join(CONVENTION_CHOICES)}")
        return chosen[self.convention]

    def footer(self) -> list[str]:
        """The table's footer: what every number was measured with."""
        restoring = (f"restored in {self.tile}×{self.tile} tiles (tiles change the result: attention is global)"
                     if self.tile else "restored whole (no tiles)")
        return ([f"PSNR (dB) / SSIM; (n) = images; {restoring}."]
                + [f"- {c.describe()}" for c in self.conventions()])


@dataclass(frozen=True)
class ImageResult:
    """One test image: its column, input and output scores in each convention (NaN without GT or
    when the convention was not asked for; ours unprefixed), no-reference scores, and the setup
    it was measured with, so that every line of results.jsonl says how it was measured."""

    column: str
    key: str
    has_gt: bool
    psnr_in: float = math.nan
    ssim_in: float = math.nan
    psnr: float = math.nan
    ssim: float = math.nan
    clean_in: float = math.nan
    clean_out: float = math.nan
    promptir_psnr_in: float = math.nan
    promptir_ssim_in: float = math.nan
    promptir_psnr: float = math.nan
    promptir_ssim: float = math.nan
    convention: str = DEFAULT_CONVENTION
    y_channel: bool = False
    tile: int = 0

    @property
    def setup(self) -> Setup:
        return Setup(self.convention, self.y_channel, self.tile)


def _prefix(convention: str) -> str:
    """Ours is unprefixed in ImageResult (as before there were two conventions); others are prefixed."""
    return "" if convention == "lmdir" else f"{convention}_"


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


def load_restorer(path: str | Path | None, device: torch.device) -> tuple[Restorer, str | None]:
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


def _rows(manifests: list[str], split: str | None, limit: int | None) -> list[dict]:
    rows = [r for m in manifests for r in manifest_io.read(m) if split is None or r["split"] == split]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{', '.join(manifests)}: no rows of split {split!r}")
    # Before the model and the prior models load: a manifest of images that are not there (test
    # sets not downloaded, or moved) is one error, not a failure minutes later at the first image.
    local = [u for r in rows for u in (r["lq_uri"], r["gt_uri"]) if u and ("://" not in u or u.startswith("file://"))]
    missing = [u for u in local if not Path(u.removeprefix("file://")).is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(manifests)}: {len(missing)} of {len(local)} image files do not "
                                f"exist, e.g. {missing[0]}")
    return rows


def _samples_from_shards(shards: str, rows: list[dict]) -> dict[str, Sample]:
    wanted = {r["key"] for r in rows}
    return {s.key: s for s in data.read_samples(data.resolve(shards).urls) if s.key in wanted}


def _restore(model: Restorer, sample: Sample, device: torch.device, tile: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: the whole image in one pass when ``tile`` is 0, else in tiles."""
    return restore_sample(model, sample, device, tile or max(8, *sample.lq.shape[:2]))


def _cropped(sample: Sample, base: int) -> Sample:
    """``sample`` with LQ and GT cropped to multiples of ``base`` (itself when they already are).
    The reference is brought to the LQ's size, as inference does, and cropped alike."""
    h, w = sample.lq.shape[:2]
    if h % base == 0 and w % base == 0:
        return sample
    return dataclasses.replace(
        sample, lq=metrics.crop_to_multiple(sample.lq, base),
        gt=None if sample.gt is None else metrics.crop_to_multiple(sample.gt, base),
        ref=None if sample.ref is None else metrics.crop_to_multiple(data.resize_rgb(sample.ref, w, h), base))


def _scores(convention: metrics.Convention, view: Sample, restored: torch.Tensor) -> dict[str, float]:
    """Input and output PSNR/SSIM of one (cropped) sample in ``convention``, by ImageResult field."""
    target, lq = (torch.from_numpy(data.to_chw(img))[None] for img in (view.gt, view.lq))
    values = (*metrics.score(lq, target, convention), *metrics.score(restored, target, convention))
    return {f"{_prefix(convention.name)}{name}": float(v[0]) for name, v in zip(SCORES, values)}


def _evaluate_sample(sample: Sample, jpeg: bytes | None, column: str, setup: Setup,
                     restore: Callable[[Sample], torch.Tensor], restored_dir: Path | None) -> ImageResult:
    """Restore and score one sample in each of ``setup``'s conventions, restoring once per distinct crop."""
    common = {"column": column, "key": sample.key, "convention": setup.convention, "y_channel": setup.y_channel,
              "tile": setup.tile}
    if sample.gt is None:
        restored = restore(sample)
        if restored_dir:
            save_png(to_uint8(restored), str(restored_dir / f"{sample.key}.png"))
        return ImageResult(has_gt=False, clean_in=analyze(sample.lq, jpeg).scores["clean"],
                           clean_out=analyze(to_uint8(restored)).scores["clean"], **common)
    restorations: dict[tuple[int, ...], torch.Tensor] = {}
    scores: dict[str, float] = {}
    for convention in setup.conventions():
        view = _cropped(sample, convention.crop_base)
        shape = view.lq.shape
        if shape not in restorations:
            restorations[shape] = restore(view)
        scores.update(_scores(convention, view, restorations[shape]))
    if restored_dir:
        save_png(to_uint8(next(iter(restorations.values()))), str(restored_dir / f"{sample.key}.png"))
    return ImageResult(has_gt=True, **scores, **common)


def evaluate_images(checkpoint_path: str | Path | None, manifests: list[str], shards: str | None = None,
                    preset: str | None = None, split: str | None = "test", y_channel: bool = False, tile: int = 0,
                    out: str | Path | None = None, limit: int | None = None, device: str = "auto",
                    convention: str = DEFAULT_CONVENTION) -> Iterator[ImageResult]:
    """Restore and score every row of ``manifests`` (of ``split``; None: all rows), yielding each
    image's result as soon as it is measured. With ``out``, each is first appended to
    ``out/results.jsonl`` (started afresh) and its restoration saved under ``out/restored``."""
    setup = Setup(convention, y_channel, tile)
    setup.conventions()  # an unknown convention fails before the model loads
    if tile < 0 or 0 < tile < 8:
        raise ValueError(f"tile {tile}: use 0 (whole images) or a tile size of at least 8 pixels")
    rows = _rows(manifests, split, limit)
    dev = pick_device(device)
    model, trained_preset = load_restorer(checkpoint_path, dev)
    labels = column_labels(rows)
    from_shards = _samples_from_shards(shards, rows) if shards else {}
    online: OnlinePriors | None = None
    if len(from_shards) < len(rows):
        online = load_or_analysis_only(preset or trained_preset or ANALYSIS_ONLY)
        print(f"priors: {len(from_shards)} samples from shards, {len(rows) - len(from_shards)} computed "
              f"on the fly ({online.preset})", file=sys.stderr)
    out_dir = Path(out) if out else None
    restored_dir = out_dir / "restored" if out_dir else None
    if restored_dir:
        restored_dir.mkdir(parents=True, exist_ok=True)
    restore = functools.partial(_restore, model, device=dev, tile=tile)
    with (open(out_dir / RESULTS_FILE, "w") if out_dir else contextlib.nullcontext()) as log, \
            tqdm(total=len(rows), desc="evaluate", unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        for row in rows:
            pixels, jpeg = _read_image(row["lq_uri"])
            gt = _read_image(row["gt_uri"])[0] if row["gt_uri"] else None
            sample = from_shards.get(row["key"])
            if sample is None:
                sample = online.sample(row["key"], pixels, jpeg, gt=gt, dataset=row["dataset"],
                                       split=row["split"], task=row["task"])
            elif gt is not None:
                sample.gt = gt
            result = _evaluate_sample(sample, jpeg, labels[row["key"]], setup, restore, restored_dir)
            if log:
                log.write(json.dumps(asdict(result)) + "\n")
                log.flush()
            bar.update()
            yield result


def evaluate(checkpoint_path: str | Path | None, manifests: list[str], shards: str | None = None,
             preset: str | None = None, split: str | None = "test", y_channel: bool = False, tile: int = 0,
             out: str | Path | None = None, limit: int | None = None, device: str = "auto",
             convention: str = DEFAULT_CONVENTION) -> list[ImageResult]:
    """Every result of ``evaluate_images`` (same arguments), once all images are scored."""
    return list(evaluate_images(checkpoint_path, manifests, shards, preset, split, y_channel, tile, out, limit,
                                device, convention))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _setup(results: list[ImageResult]) -> Setup:
    """The setup all ``results`` were measured with (the default one for no results)."""
    setups = {r.setup for r in results} or {Setup()}
    if len(setups) != 1:
        raise ValueError(f"results measured with {len(setups)} setups ({sorted(map(str, setups))}): "
                         "one table needs one")
    return setups.pop()


def averages(results: list[ImageResult], convention: str | None = None) -> dict[str, float]:
    """Average over datasets (each column weighs the same, as the papers average) of input and
    output: ``psnr_in``, ``ssim_in``, ``psnr``, ``ssim`` in ``convention`` ("lmdir" or
    "promptir"; default: the first the results were measured in, ours when both)."""
    prefix = _prefix(convention or _setup(results).conventions()[0].name)
    columns: dict[str, list[ImageResult]] = defaultdict(list)
    for r in results:
        if r.has_gt:
            columns[r.column].append(r)
    per = {c: {k: _mean([getattr(r, prefix + k) for r in rs]) for k in SCORES} for c, rs in columns.items()}
    return {k: _mean([p[k] for p in per.values()]) for k in SCORES}


def _score_rows(columns: dict[str, list[ImageResult]], names: list[str], method: str,
                convention: metrics.Convention, tag: str) -> list[str]:
    """The input and ``method`` rows of one convention."""
    prefix = _prefix(convention.name)
    avg = averages([r for rs in columns.values() for r in rs], convention.name)
    lines = []
    for label, p, s in ((f"Input (degraded){tag}", "psnr_in", "ssim_in"), (f"{method}{tag}", "psnr", "ssim")):
        cells = [f"{_mean([getattr(r, prefix + p) for r in columns[n]]):.2f} / "
                 f"{_mean([getattr(r, prefix + s) for r in columns[n]]):.4f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {avg[p]:.2f} / {avg[s]:.4f} |")
    return lines


def table(results: list[ImageResult], method: str = "lmdir restorer") -> str:
    """Markdown: methods as rows (an input and a ``method`` row per convention, tagged with its
    name when there are two), datasets as PSNR/SSIM columns, then the average; a footer naming
    the conventions and tiling the results were measured with; then the rows without GT with
    their no-reference scores."""
    columns: dict[str, list[ImageResult]] = defaultdict(list)
    no_ref: dict[str, list[ImageResult]] = defaultdict(list)
    for r in results:
        (columns if r.has_gt else no_ref)[r.column].append(r)
    lines = []
    if columns:
        setup = _setup(results)
        conventions = setup.conventions()
        names = sorted(columns)
        lines.append("| Method | " + " | ".join(f"{n} ({len(columns[n])})" for n in names) + " | Average |")
        lines.append("|---" * (len(names) + 2) + "|")
        for convention in conventions:
            tag = f" [{convention.name}]" if len(conventions) > 1 else ""
            lines.extend(_score_rows(columns, names, method, convention, tag))
        lines.append("")
        lines.extend(setup.footer())
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m restore.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None,
                    help="run folder or checkpoint folder (default: the checkpoint shipped in the package)")
    ap.add_argument("--manifest", required=True, nargs="+", help="test-set manifest parquet(s)")
    ap.add_argument("--shards", default=None, help="prior shards extracted from these manifests")
    ap.add_argument("--preset", default=None, choices=PRESET_CHOICES,
                    help="prior models for samples without shards (default: the training shards' preset)")
    ap.add_argument("--split", default="test", help="manifest split to score ('all' for every row)")
    ap.add_argument("--convention", default=DEFAULT_CONVENTION, choices=CONVENTION_CHOICES,
                    help="lmdir (ours), promptir (the all-in-one papers': uniform-window SSIM, images cropped "
                         "to multiples of 16, not rounded) or both (default)")
    ap.add_argument("--y-channel", action="store_true",
                    help="score ours on the BT.601 Y channel (deraining papers); PromptIR's stays RGB")
    ap.add_argument("--tile", type=int, default=0,
                    help="0 (default): restore whole images, as the papers do; N: in N-pixel tiles (bounded "
                         "memory, different numbers)")
    ap.add_argument("--out", default=None, help="folder for restored images, results.jsonl and results.md")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    add_device_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_threads(args.threads)
    results: list[ImageResult] = []
    status = 0
    try:
        for result in evaluate_images(args.checkpoint, args.manifest, args.shards, args.preset,
                                      None if args.split == "all" else args.split, args.y_channel, args.tile,
                                      args.out, args.limit, args.device, args.convention):
            results.append(result)
    except (FileNotFoundError, ValueError, ShardUnavailable) as e:  # the checkpoint, manifests, images, shards
        return cli.fail(e)
    except KeyboardInterrupt:
        # results.jsonl is started afresh by every run: there is nothing to resume from.
        kept = (f"their results are in {Path(args.out) / RESULTS_FILE} and the table below (also results.md)"
                if args.out else "the table below covers them (nothing was saved: no --out)")
        status = cli.interrupted(f"after {len(results)} images; {kept}; evaluation does not resume, "
                                 "a rerun scores every image again")
    if not results:
        return status
    text = table(results)
    if status:
        text += f"\n\nInterrupted: {len(results)} images scored."
    print(text)
    if args.out:
        (Path(args.out) / "results.md").write_text(text + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
