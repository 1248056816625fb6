"""The embedded default dataset: real photos shipped with scikit-image (and matplotlib's one photo),
degraded with every type.

Built offline in seconds, so the demo and the tests have real (if few) photos to restore. Train,
validation and held-out (test) tiles come from *different* photos: validation, which picks the
trainer's best checkpoint, sees no test photo, and held-out scores are not memorised scenes.

    python -m pipeline.demo_data --out demo_out/data
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from pipeline import cli, manifest
from pipeline.image_files import MIN_SIDE, save_png

# skimage.data photos that ship inside the package (no download). ``cat`` is not among them: it is
# the very photo ``chelsea`` is, a held-out one.
TRAIN_PHOTOS = ("astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry",
                "retina", "camera")
VAL_PHOTOS = ("grace_hopper", "coins")
HELD_OUT_PHOTOS = ("coffee", "chelsea")
# Photos that matplotlib installs with its sample data.
MATPLOTLIB_PHOTOS = {"grace_hopper": "grace_hopper.jpg"}
# One spec per canonical type the synthesis covers; ranges give each tile its own strength.
DEMO_SPECS = ("noise:sigma=15..50", "motion-blur:length=7..15", "jpeg:quality=10..30", "low-light",
              "haze:beta=1.0..2.0", "rain", "snow")


@dataclass(frozen=True)
class DemoConfig:
    out: str = "demo_out/data"
    tile: int = 96
    train_tiles_per_photo: int = 4
    val_tiles_per_photo: int = 2
    held_out_tiles_per_photo: int = 2
    specs: tuple[str, ...] = DEMO_SPECS


def photo(name: str) -> np.ndarray:
    """A demo photo by name, as uint8 RGB (grey photos repeated over three channels)."""
    if name in MATPLOTLIB_PHOTOS:
        import matplotlib.cbook
        from PIL import Image

        with Image.open(matplotlib.cbook.get_sample_data(MATPLOTLIB_PHOTOS[name], asfileobj=False)) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs: take the left view
        img = img[0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def tiles(img: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """``count`` tiles of ``size``² spread evenly over the photo after scaling its short side to
    2·size (so tiles hold whole objects, not single textures)."""
    h, w = img.shape[:2]
    scale = 2 * size / min(h, w)
    img = cv2.resize(img, (max(size, round(w * scale)), max(size, round(h * scale))), interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    grid = int(np.ceil(np.sqrt(count)))
    ys = np.linspace(0, h - size, grid).round().astype(int)
    xs = np.linspace(0, w - size, grid).round().astype(int)
    corners = [(y, x) for y in ys for x in xs][:count]
    return [np.ascontiguousarray(img[y:y + size, x:x + size]) for y, x in corners]


def build(config: DemoConfig = DemoConfig()) -> str:
    """Write clean tiles, their degraded versions and ``manifest.parquet`` under ``config.out``."""
    out = Path(config.out)
    built = manifest.Manifest()
    for split, photos, count in (("train", TRAIN_PHOTOS, config.train_tiles_per_photo),
                                 ("val", VAL_PHOTOS, config.val_tiles_per_photo),
                                 ("test", HELD_OUT_PHOTOS, config.held_out_tiles_per_photo)):
        clean_dir = out / "clean" / split
        clean_dir.mkdir(parents=True, exist_ok=True)
        for name in photos:
            for i, tile in enumerate(tiles(photo(name), config.tile, count)):
                save_png(tile, str(clean_dir / f"{name}_{i}.png"))
        built.extend(manifest.from_clean_folder(str(clean_dir), config.specs, "demo", split, str(out / "lq")))
    path, _ = manifest.write(built, str(out / "manifest.parquet"))
    print(manifest.summarize(built))
    return path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.demo_data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DemoConfig.out,
                    help=f"folder for the tiles, their degraded versions and manifest.parquet (default: {DemoConfig.out})")
    ap.add_argument("--tile", type=int, default=DemoConfig.tile,
                    help=f"side of the square tiles in pixels (default: {DemoConfig.tile})")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tile < MIN_SIDE:
        return cli.fail(f"--tile {args.tile}: tiles need at least {MIN_SIDE} pixels a side")
    try:
        path = build(DemoConfig(out=args.out, tile=args.tile))
    except OSError as e:  # an --out that cannot be created or written
        return cli.fail(e)
    print(f"demo manifest: {os.path.abspath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
