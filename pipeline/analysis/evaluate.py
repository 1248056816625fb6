"""Score degradation describers on labelled images: confusion matrix, top-1, parameter errors.

    python -m pipeline.analysis.evaluate --out eval_out --set synthetic   # held-out photos, degraded here
    python -m pipeline.analysis.evaluate --out eval_out --set real        # real degraded sets
    python -m pipeline.analysis.evaluate --out eval_out --set params      # σ and JPEG-quality MAE
    python -m pipeline.analysis.evaluate --out eval_out --manifest test.parquet
    python -m pipeline.analysis.evaluate --out eval_out --set real --describers analysis,mllm,clip --preset tiny
    python -m pipeline.analysis.evaluate --out eval_out --set real --weights new.safetensors   # other weights

A describer is any callable ``(pixels, jpeg_bytes) -> [types, most likely first]``
(``pipeline.analysis.describers``): the weight-free analysis, and the MLLM describer and CLIP
zero-shot describer of the extraction pipeline with the models of ``--preset``. Per describer the
command prints and writes a confusion matrix (markdown, CSV, PNG) and every image's prediction
(CSV); for the analysis it adds the mean absolute error of the noise σ and JPEG quality where the
labels carry them.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import cli, degrade
from pipeline.analysis import describers
from pipeline.analysis.analyze import estimates
from pipeline.analysis.classifier import ANALYSED_TYPES, Classifier
from pipeline.analysis.describers import Describer
from pipeline.image_files import ImageError, images_in, load_rgb, read_bytes

DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"
HELD_OUT_PHOTOS = ("denoise/Kodak24", "denoise/McMaster", "jpeg/LIVE1")
# Moderate severity: the upper part of each default range of pipeline.degrade (stated in the README).
MODERATE_SPECS: dict[str, tuple[str, ...]] = {
    "clean": ("",),
    "noise": ("noise:sigma=15..50",),
    "blur": ("motion-blur:length=9..25", "defocus-blur:radius=2.5..6"),
    "jpeg": ("jpeg:quality=10..50",),
    "low-light": ("low-light",),
    "haze": ("haze",),
    "rain": ("rain",),
    "snow": ("snow",),
}
PARAM_SPECS = ("noise:sigma=5..50", "jpeg:quality=10..90")
REAL_SETS: dict[str, tuple[str, ...]] = {
    "rain": ("derain/Rain100L_subset10/input", "derain/Rain12/input"),
    "blur": ("real/GoPro_blurry",),
    "low-light": ("real/lowlight_DICM", "real/lowlight_LIME"),
    "noise": ("real/noisy_RNI15",),
    "clean": ("derain/Rain100L_subset10/target", "derain/Rain12/target"),
}


@dataclass(frozen=True)
class LabelledImage:
    """One evaluation image: pixels, the file bytes when it is a JPEG, true types and parameters."""

    name: str
    pixels: np.ndarray
    jpeg_bytes: bytes | None
    types: tuple[str, ...]
    params: dict[str, float] = field(default_factory=dict)


def _true_params(applied: list[dict]) -> dict[str, float]:
    """σ of Gaussian noise and JPEG quality from degrade's ``{"type", "params"}`` records."""
    out = {}
    for a in applied:
        p = a.get("params", {})
        if p.get("kind") == "noise" and "sigma" in p:
            out["sigma"] = float(p["sigma"])
        if a.get("type") == "jpeg" and "quality" in p:
            out["quality"] = float(p["quality"])
    return out


def _load(path: str) -> tuple[np.ndarray, bytes | None]:
    loaded = load_rgb(path)
    return loaded.pixels, read_bytes(path) if loaded.source_format == "JPEG" else None


def synthetic(folders: Iterable[Path], specs: dict[str, tuple[str, ...]], seed: int = 0) -> Iterator[LabelledImage]:
    """Every clean photo in ``folders`` degraded by every label's spec (alternating a label's specs
    over photos); seeds come from the photo's folder and file names and the spec, so the set is the
    same on every run and wherever the data lives."""
    for folder in folders:
        for i, path in enumerate(images_in(folder)):
            clean = load_rgb(str(path)).pixels
            for options in specs.values():
                spec = options[i % len(options)]
                if not spec:
                    yield LabelledImage(f"{path}", clean, None, ("clean",))
                    continue
                photo = f"{path.parent.name}/{path.name}"
                img, applied = degrade.apply(clean, spec, degrade.seed_for(f"{photo}|{spec}|{seed}"))
                yield LabelledImage(f"{path}|{spec}", img, None, tuple(degrade.types_of(spec)), _true_params(applied))


def real(root: Path, sets: dict[str, tuple[str, ...]] = REAL_SETS) -> Iterator[LabelledImage]:
    """The real degraded images in shared/data, each folder labelled with one type."""
    for label, folders in sets.items():
        for folder in folders:
            for path in images_in(root / folder):
                pixels, data = _load(str(path))
                yield LabelledImage(str(path), pixels, data, (label,))


def from_manifest(path: str, limit: int | None = None) -> Iterator[LabelledImage]:
    """Samples of a dataset manifest parquet (``pipeline.manifest``)."""
    from pipeline import manifest

    for i, row in enumerate(manifest.read(path)):
        if limit is not None and i >= limit:
            return
        pixels, data = _load(row["lq_uri"])
        applied = json.loads(row["params"]) if row.get("params") else []
        types = tuple(t for t in row["degradation"].split("+") if t) or ("clean",)
        yield LabelledImage(row["key"], pixels, data, types, _true_params(applied))


@dataclass
class Tally:
    """Confusion counts (rows: first true type, columns: predicted top-1) and top-1 hits."""

    labels: tuple[str, ...]
    counts: np.ndarray
    hits: int = 0
    total: int = 0

    @classmethod
    def empty(cls, labels: tuple[str, ...]) -> Tally:
        return cls(labels, np.zeros((len(labels), len(labels) + 1), np.int64))

    def add(self, true: tuple[str, ...], predicted: list[str]) -> None:
        top = predicted[0] if predicted else "clean"
        row = self.labels.index(true[0]) if true[0] in self.labels else None
        col = self.labels.index(top) if top in self.labels else len(self.labels)  # last column: other
        if row is not None:
            self.counts[row, col] += 1
        self.hits += top in true
        self.total += 1

    @property
    def top1(self) -> float:
        return self.hits / max(self.total, 1)

    def markdown(self) -> str:
        cols = list(self.labels) + ["other"]
        lines = ["| true \\ predicted | " + " | ".join(cols) + " | recall |",
                 "|---" * (len(cols) + 2) + "|"]
        for i, label in enumerate(self.labels):
            n = int(self.counts[i].sum())
            if n == 0:
                continue
            recall = self.counts[i, i] / n
            lines.append(f"| {label} | " + " | ".join(str(int(c)) for c in self.counts[i]) + f" | {recall:.0%} |")
        return "\n".join(lines)

    def csv(self) -> str:
        cols = list(self.labels) + ["other"]
        return "\n".join([",".join(["true"] + cols)] + [
            ",".join([label] + [str(int(c)) for c in self.counts[i]]) for i, label in enumerate(self.labels)]) + "\n"

    def png(self, path: Path, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.counts.sum(1, keepdims=True)
        norm = self.counts / np.maximum(rows, 1)
        fig, ax = plt.subplots(figsize=(7.5, 6))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        cols = list(self.labels) + ["other"]
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
        ax.set_yticks(range(len(self.labels)), self.labels)
        for i in range(len(self.labels)):
            for j in range(len(cols)):
                if self.counts[i, j]:
                    ax.text(j, i, int(self.counts[i, j]), ha="center", va="center",
                            color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
        ax.set_xlabel("predicted (top-1)")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: top-1 {self.top1:.1%} of {self.total}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


@dataclass
class Report:
    """Per describer its confusion tally; the analysis' parameter errors; describer failures; and
    every (image, true types, describer, predicted types) row."""

    tallies: dict[str, Tally]
    errors: dict[str, list[float]]
    failures: list[str]
    predictions: list[tuple[str, str, str, str]] = field(default_factory=list)


def evaluate(samples: Iterable[LabelledImage], describers: dict[str, Describer]) -> Report:
    """Run every describer on every sample; collect confusion counts and the σ and quality errors
    of the analysis' estimates (no classifier takes part in those). A describer failing on one
    sample is recorded and counted as a miss."""
    tallies = {name: Tally.empty(ANALYSED_TYPES) for name in describers}
    errors: dict[str, list[float]] = {"sigma": [], "quality": []}
    failures: list[str] = []
    predictions: list[tuple[str, str, str, str]] = []
    for s in samples:
        for name, describe in describers.items():
            try:
                predicted = list(describe(s.pixels, s.jpeg_bytes))
            except ValueError as e:
                failures.append(f"{name} on {s.name}: {e}")
                predicted = ["other"]
            tallies[name].add(s.types, predicted)
            predictions.append((s.name, "+".join(s.types), name, "+".join(predicted)))
        if s.params:
            found = estimates(s.pixels, s.jpeg_bytes)
            if "sigma" in s.params and "jpeg" not in s.types:
                errors["sigma"].append(abs(found["noise_sigma"] - s.params["sigma"]))
            if "quality" in s.params and "noise" not in s.types:
                errors["quality"].append(abs(found["jpeg_quality"] - s.params["quality"]))
    return Report(tallies, errors, failures, predictions)


def write(report: Report, out: Path, title: str) -> str:
    """Write CSV, markdown and PNG per describer plus report.json to ``out``; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    parts, summary = [], {"title": title, "describers": {}, "parameter_mae": {}, "failures": report.failures}
    for name, tally in report.tallies.items():
        if tally.total == 0:
            continue
        (out / f"{name}_confusion.csv").write_text(tally.csv())
        (out / f"{name}_confusion.md").write_text(tally.markdown() + "\n")
        tally.png(out / f"{name}_confusion.png", f"{title} — {name}")
        parts.append(f"### {title} — {name}: top-1 {tally.top1:.1%} ({tally.hits}/{tally.total})\n\n{tally.markdown()}\n")
        summary["describers"][name] = {"top1": tally.top1, "n": tally.total, "confusion": tally.counts.tolist(),
                                       "labels": list(tally.labels) + ["other"]}
    rows = []
    for param, errs in report.errors.items():
        if errs:
            e = np.array(errs)
            summary["parameter_mae"][param] = {"mae": float(e.mean()), "max": float(e.max()), "n": len(e)}
            rows.append(f"| {param} | {e.mean():.2f} | {np.median(e):.2f} | {e.max():.2f} | {len(e)} |")
    if rows:
        parts.append("| parameter | MAE | median AE | max AE | n |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    with open(out / "predictions.csv", "w", newline="") as f:
        rows_out = csv.writer(f)
        rows_out.writerow(["image", "true", "describer", "predicted"])
        rows_out.writerows(report.predictions)
    return "\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.analysis.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the tables, PNGs and report.json")
    ap.add_argument("--set", choices=("synthetic", "real", "params"), help="a built-in labelled set")
    ap.add_argument("--manifest", help="a dataset manifest parquet to evaluate on")
    ap.add_argument("--photos", nargs="*", help="folders of clean photos (overrides the set's)")
    ap.add_argument("--data", default=str(DATA_ROOT), help="the shared data folder")
    ap.add_argument("--limit", type=int, help="at most this many manifest rows")
    ap.add_argument("--describers", default="analysis",
                    help=f"comma-separated, of {', '.join(describers.DESCRIBER_NAMES)}")
    ap.add_argument("--preset", default="tiny", help="model preset of the mllm and clip describers")
    ap.add_argument("--weights", type=Path,
                    help="classifier weights for the analysis describer (default: the shipped ones), "
                         "e.g. a file written by python -m pipeline.analysis.train --out")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = Path(args.data)
    photos = [Path(p) for p in args.photos] if args.photos else [data / p for p in HELD_OUT_PHOTOS]
    if args.manifest:
        samples, title = from_manifest(args.manifest, args.limit), Path(args.manifest).name
    elif args.set == "synthetic":
        samples, title = synthetic(photos, MODERATE_SPECS), "held-out photos, moderate synthetic degradations"
    elif args.set == "params":
        specs = {spec: (spec,) for spec in PARAM_SPECS}
        samples, title = synthetic(photos, specs), "held-out photos, parameter ranges"
    elif args.set == "real":
        samples, title = real(data), "real degraded images"
    else:
        return cli.fail("give --set or --manifest")
    try:
        model = Classifier.load(args.weights) if args.weights else None
        chosen = describers.build([n.strip() for n in args.describers.split(",") if n.strip()], args.preset, model)
    except (ValueError, OSError) as e:
        return cli.fail(e)
    try:
        # The samples are read lazily, so a missing folder or manifest surfaces here.
        report = evaluate(samples, chosen)
    except ImageError as e:
        return cli.fail(f"cannot read an evaluation image: {e}")
    except (FileNotFoundError, ValueError) as e:  # a missing folder, a missing or unusable manifest
        return cli.fail(e)
    print(write(report, Path(args.out), title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
