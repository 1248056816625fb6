"""Restore your own images, with priors found automatically or stated by you.

    python -m restore.infer --checkpoint RUN_OR_CHECKPOINT photo.jpg [more.png ...] [--out restored]
                            [--degradation "heavy rain and some noise"] [--caption "a street at night"]
                            [--no-reference] [--tile 512] [--side-by-side] [--preset tiny|default|quality|analysis-only]
                            [--device auto|cpu|cuda] [--threads N]

Priors are computed with the prior models of ``--preset`` (default: the preset the model was
trained with), or, when their weights are not available, with the weight-free analysis only.
``--degradation`` replaces the MLLM's description (and sets the degradation vector through the
vocabulary), ``--caption`` the scene caption; ``--no-reference`` skips the diffusion reference.
Images larger than ``--tile`` are restored in overlapping tiles. Writes ``<out>/<name>.png`` and,
with ``--side-by-side``, ``<out>/<name>_side_by_side.png`` (input | restored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline.image_files import ImageError, decode_rgb, read_bytes, save_png
from pipeline.sample_format import make_key
from restore.evaluate import add_device_arguments, load_restorer, pick_device, use_threads
from restore.priors_online import (
    ANALYSIS_ONLY,
    NOTHING_STATED,
    PRESET_CHOICES,
    OnlinePriors,
    UserPriors,
    load_or_analysis_only,
)
from restore.validate import restore_sample, to_uint8


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    """Two same-height images with a white gap between them."""
    spacer = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def restore_images(checkpoint: str | Path, images: list[str], out: str | Path = "restored",
                   user: UserPriors = NOTHING_STATED, tile: int = 512, write_side_by_side: bool = False,
                   preset: str | None = None, device: str = "auto",
                   priors: OnlinePriors | None = None) -> list[Path]:
    """Restore each image file; returns the paths of the restored PNGs.

    ``priors`` reuses already loaded prior models (else they are loaded from ``preset``).
    """
    dev = pick_device(device)
    model, trained_preset = load_restorer(checkpoint, dev)
    priors = priors or load_or_analysis_only(preset or trained_preset or ANALYSIS_ONLY)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for image in images:
        raw = read_bytes(image)
        loaded = decode_rgb(raw, image)
        stem = Path(image).stem
        name, n = stem, 1
        while name in used:
            name, n = f"{stem}_{n}", n + 1
        used.add(name)
        sample = priors.sample(make_key("user", "infer", name), loaded.pixels,
                               raw if loaded.source_format == "JPEG" else None, user)
        restored = to_uint8(restore_sample(model, sample, dev, tile, use_reference=user.reference))
        path = out / f"{name}.png"
        save_png(restored, str(path))
        written.append(path)
        if write_side_by_side:
            save_png(side_by_side(loaded.pixels, restored), str(out / f"{name}_side_by_side.png"))
        print(f"{image} -> {path}  [priors {priors.preset}: {sample.meta.degradation_text!r}, "
              f"types {sample.meta.degradation_types}]")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m restore.infer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    ap.add_argument("images", nargs="+", help="image files to restore")
    ap.add_argument("--out", default="restored", help="output folder")
    ap.add_argument("--degradation", default=None, help="what is wrong with the images, in words")
    ap.add_argument("--caption", default=None, help="what the images show, in words")
    ap.add_argument("--no-reference", action="store_true", help="do not render or use a diffusion reference")
    ap.add_argument("--tile", type=int, default=512, help="tile size for large images")
    ap.add_argument("--side-by-side", action="store_true", help="also write input | restored PNGs")
    ap.add_argument("--preset", default=None, choices=PRESET_CHOICES, help="prior models to use")
    add_device_arguments(ap)
    args = ap.parse_args(argv)
    use_threads(args.threads)
    user = UserPriors(args.degradation, args.caption, not args.no_reference)
    try:
        restore_images(args.checkpoint, args.images, args.out, user, args.tile, args.side_by_side,
                       args.preset, args.device)
    except (ImageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
