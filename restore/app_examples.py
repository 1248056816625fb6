"""The example photos the web page offers: real photos that ship inside scikit-image, degraded
with one type each by ``pipeline.degrade`` (seeded, so every start writes the same files).

None of these scenes is in the shipped checkpoint's training photos (train/CBSD365), and nothing
needs downloading: the page works offline on a fresh install.
"""

from __future__ import annotations

from pathlib import Path

import skimage.data

from pipeline import degrade
from pipeline.image_files import save_png

# (scikit-image photo, degradation spec): one example per kind of problem people bring.
EXAMPLES = (
    ("chelsea", "noise:sigma=25"),
    ("coffee", "rain"),
    ("rocket", "haze:beta=1.5"),
    ("astronaut", "low-light"),
    ("hubble_deep_field", "jpeg:quality=15"),
)


def example_name(photo: str, spec: str) -> str:
    """File name of one example: the photo and the degradation's type, e.g. ``chelsea-noise.png``."""
    return f"{photo}-{degrade.types_of(spec)[0]}.png"


def write_examples(folder: str | Path) -> list[Path]:
    """Write (or reuse) the degraded example photos in ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for photo, spec in EXAMPLES:
        path = folder / example_name(photo, spec)
        if not path.is_file():
            pixels, _ = degrade.apply(getattr(skimage.data, photo)(), spec, degrade.seed_for(f"example/{photo}"))
            save_png(pixels, str(path))
        paths.append(path)
    return paths
