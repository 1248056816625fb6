"""Restore your own images, with priors found automatically or stated by you.

    python -m restore.infer photo.jpg [more.png folder/ ...] [--out restored] [--checkpoint RUN_OR_CHECKPOINT]
                            [--degradation "heavy rain and some noise"] [--caption "a street at night"]
                            [--no-reference] [--tile N] [--max-pixels N] [--side-by-side]
                            [--preset offline|tiny|default|quality|analysis-only]
                            [--device auto|cpu|cuda] [--threads N]

Without ``--checkpoint`` the restorer shipped inside the package (``restore/weights/lmdir-cpu``,
written by ``restore.export``) is used. A folder stands for the image files directly inside it.

Priors are computed with the prior models of ``--preset`` (default: the preset the restorer was
trained with, ``offline`` for the shipped one), or, when their weights are not available, with the
weight-free analysis only. ``--degradation`` replaces the described degradation (and sets the
degradation vector through the vocabulary), ``--caption`` the scene caption; ``--no-reference``
skips the diffusion reference.

Images of at most 1024 x 1024 pixels (``restore.model.tiling.WHOLE_IMAGE_PIXELS``) are restored
in one pass; larger ones in overlapping 512-px tiles with a progress bar, so memory stays at one
tile's worth whatever the size. ``--tile N`` always uses tiles of N px. Images over
``--max-pixels`` are refused as likely decompression bombs.

Writes ``<out>/<name>.png`` and, with ``--side-by-side``, ``<out>/<name>_side_by_side.png``
(input | restored). A file that cannot be restored (unreadable, empty, corrupt, truncated, too
large, out of memory) is reported with its reason and the others are still restored; the exit
status is 1 when any file failed, and the last line says how many and why.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import cli
from pipeline.analysis.features import MIN_SIDE as ANALYSIS_MIN_SIDE
from pipeline.image_files import (
    MAX_PIXELS,
    ImageError,
    LoadedImage,
    decode_rgb,
    images_in,
    read_bytes,
    save_png,
)
from pipeline.sample_format import Sample, make_key
from restore import checkpoint
from restore.data import sample_priors, to_chw
from restore.evaluate import add_device_arguments, load_restorer, pick_device, use_threads
from restore.figures import captioned_row
from restore.model import Restorer
from restore.model.tiling import choose_tile, restore_tiled
from restore.priors_online import (
    ANALYSIS_ONLY,
    NOTHING_STATED,
    PRESET_CHOICES,
    OnlinePriors,
    UserPriors,
    load_or_analysis_only,
    named_types,
    unused_words_note,
)
from restore.validate import to_uint8


@dataclass(frozen=True)
class Failure:
    """An input that could not be restored, and why."""

    image: str
    reason: str


def expand(images: list[str]) -> list[str]:
    """Image paths with each folder replaced by the image files directly inside it (a folder
    without any stays, to be reported)."""
    out = []
    for image in images:
        inside = images_in(image) if Path(image).is_dir() else []
        out.extend([str(p) for p in inside] or [image])
    return out


def read_image(image: str, max_pixels: int = MAX_PIXELS) -> tuple[bytes, LoadedImage]:
    """The file's bytes and its 8-bit RGB pixels; ImageError naming the file and the reason when it
    cannot be restored (a folder, unreadable, not an image, corrupt, too large or too small)."""
    if Path(image).is_dir():  # expand left it: nothing inside to restore
        raise ImageError(image, "a folder without image files")
    try:
        raw = read_bytes(image)
    except OSError as e:  # missing, no permission: the reason without the traceback
        raise ImageError(image, f"cannot read file: {e.strerror or e}") from e
    # Every prior preset runs the weight-free analysis, which needs a larger image than decoding.
    return raw, decode_rgb(raw, image, max_pixels=max_pixels, min_side=ANALYSIS_MIN_SIDE)


@torch.no_grad()
def restore_one(model: Restorer, sample: Sample, device: torch.device, tile: int | None = None,
                use_reference: bool = True, label: str | None = None) -> np.ndarray:
    """A decoded sample restored with its own priors, as uint8 RGB; tiled by choose_tile's rule
    (``tile`` None) with a progress bar labelled ``label`` over the tiles."""
    c = model.config
    height, width = sample.lq.shape[:2]
    size = choose_tile(height, width, tile)
    lq = torch.from_numpy(to_chw(sample.lq))[None].to(device)
    priors = sample_priors(sample, c.token_width, c.clip_width, use_reference).to(device)
    out = restore_tiled(model, lq, priors, tile=size, overlap=min(32, size // 4), progress=label)
    return to_uint8(out.float().clamp(0, 1).cpu())


def restore_images(checkpoint_path: str | Path | None, images: list[str], out: str | Path = "restored",
                   user: UserPriors = NOTHING_STATED, tile: int | None = None, write_side_by_side: bool = False,
                   preset: str | None = None, device: str = "auto", priors: OnlinePriors | None = None,
                   max_pixels: int = MAX_PIXELS, failures: list[Failure] | None = None) -> list[Path]:
    """Restore each image file; returns the paths of the restored PNGs.

    ``checkpoint_path`` None takes the shipped checkpoint. ``priors`` reuses already loaded prior
    models (else they are loaded from ``preset``, by default the one the restorer was trained
    with). ``tile`` None follows choose_tile's rule. A file that cannot be restored is reported on
    stderr, appended to ``failures`` when given, and skipped: one bad file never stops the batch.
    """
    dev = pick_device(device)
    model, trained_preset = load_restorer(checkpoint.find(checkpoint_path), dev)
    priors = priors or load_or_analysis_only(preset or trained_preset or ANALYSIS_ONLY)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for image in expand(images):
        stem = Path(image).stem
        name, n = stem, 1
        while name in used:
            name, n = f"{stem}_{n}", n + 1
        try:
            raw, loaded = read_image(image, max_pixels)
            sample = priors.sample(make_key("user", "infer", name), loaded.pixels,
                                   raw if loaded.source_format == "JPEG" else None, user)
            restored = restore_one(model, sample, dev, tile, user.reference, name)
            path = out / f"{name}.png"
            save_png(restored, str(path))
            if write_side_by_side:
                save_png(captioned_row([loaded.pixels, restored], ["input", "restored"]),
                         str(out / f"{name}_side_by_side.png"))
        except (ValueError, OSError, MemoryError, RuntimeError) as e:
            # ValueError: ImageError, or a prior model refusing this image; RuntimeError: torch's
            # allocators report running out of memory as one.
            reason = e.reason if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
            if isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(e):
                reason += " (out of memory: try a smaller --tile)"
            print(f"error: {image}: {reason}", file=sys.stderr)
            if failures is not None:
                failures.append(Failure(image, reason))
            continue
        used.add(name)
        written.append(path)
        notes = f"; {', '.join(loaded.notes)}" if loaded.notes else ""
        print(f"{image} -> {path}  [priors {priors.preset}: {sample.meta.degradation_text!r}, "
              f"types {sample.meta.degradation_types}{notes}]")
    return written


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m restore.infer", description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image files (or folders of them) to restore")
    ap.add_argument("--checkpoint", default=None,
                    help="run folder or checkpoint folder (default: the checkpoint shipped in the package)")
    ap.add_argument("--out", default="restored", help="output folder")
    ap.add_argument("--degradation", default=None, help="what is wrong with the images, in words")
    ap.add_argument("--caption", default=None, help="what the images show, in words")
    ap.add_argument("--no-reference", action="store_true", help="do not render or use a diffusion reference")
    ap.add_argument("--tile", type=int, default=None,
                    help="tile size in pixels (default: the whole image up to 1024x1024 pixels, tiles of 512 beyond)")
    ap.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                    help=f"refuse larger images as likely decompression bombs (default {MAX_PIXELS})")
    ap.add_argument("--side-by-side", action="store_true", help="also write input | restored PNGs")
    ap.add_argument("--preset", default=None, choices=PRESET_CHOICES,
                    help="prior models to use (default: the preset the restorer was trained with)")
    add_device_arguments(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.tile is not None and args.tile < 8:
        ap.error(f"--tile must be at least 8 pixels, got {args.tile}")
    use_threads(args.threads)
    user = UserPriors(args.degradation, args.caption, not args.no_reference)
    note = unused_words_note(user.degradation)
    if note:
        print(f"note: --degradation: {note}")
    elif user.degradation:
        types = named_types(user)
        print(f"--degradation {user.degradation!r} names {', '.join(types)}: the restorer reads the "
              f"analysis's measurement of {'it' if len(types) == 1 else 'each'} on every image")
    failures: list[Failure] = []
    try:
        written = restore_images(args.checkpoint, args.images, args.out, user, args.tile, args.side_by_side,
                                 args.preset, args.device, max_pixels=args.max_pixels, failures=failures)
    except (FileNotFoundError, ValueError) as e:  # the checkpoint: missing, unreadable, not a restorer
        return cli.fail(e, status=1)
    except KeyboardInterrupt:
        return cli.interrupted(f"images restored before Ctrl-C are in {args.out}; rerun with the rest")
    total = len(written) + len(failures)
    if failures:
        why = "; ".join(f"{f.image}: {f.reason}" for f in failures)
        print(f"restored {len(written)} of {total} images into {args.out}; {len(failures)} failed: {why}",
              file=sys.stderr)
        return 1
    print(f"restored {total} of {total} images into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
