"""Pictures people look at: images side by side, each under its caption.

Validation grids (LQ | restored | GT | reference), ``restore.infer --side-by-side`` (input |
restored) and the peers' grid caption their columns, so a picture read on its own says which
image is which.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = "DejaVuSans.ttf"  # Pillow looks for it among the system's fonts
GAP = 8  # white pixels between images


def fonts(sizes: tuple[int, ...]) -> tuple[list[ImageFont.ImageFont], bool]:
    """DejaVu Sans (it has σ) at ``sizes`` when the system has it, else Pillow's own font, which
    lacks Greek: the second value says whether labels may keep their non-ASCII letters."""
    try:
        return [ImageFont.truetype(FONT, size) for size in sizes], True
    except OSError:
        return [ImageFont.load_default(size=size) for size in sizes], False


def captioned_row(images: list[np.ndarray], captions: list[str], gap: int = GAP) -> np.ndarray:
    """uint8 RGB images of one height side by side, white gaps between, each with its caption on a
    white strip above it; images are not scaled (a full-size side by side stays full size)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    height = images[0].shape[0]
    if any(img.shape[0] != height for img in images):
        raise ValueError(f"images of different heights: {[img.shape[0] for img in images]}")
    size = max(12, min(28, height // 24))  # legible on a thumbnail row and on a 4000-px photo
    (font,), unicode = fonts((size,))
    strip = size + size // 2 + 4
    width = sum(img.shape[1] for img in images) + gap * (len(images) - 1)
    canvas = np.full((strip + height, width, 3), 255, np.uint8)
    draw_on = Image.fromarray(canvas[:strip])
    draw = ImageDraw.Draw(draw_on)
    left = 0
    for img, caption in zip(images, captions):
        text = caption if unicode else caption.encode("ascii", "replace").decode()
        draw.text((left + 4, 2), text, fill="black", font=font)
        canvas[strip:, left:left + img.shape[1]] = img
        left += img.shape[1] + gap
    canvas[:strip] = np.asarray(draw_on)
    return canvas
