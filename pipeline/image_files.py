"""Reading and writing image files safely: every decoder in lmdir goes through here.

One loader means one set of rules: what counts as unreadable, which modes are converted to 8-bit
RGB (and a note saying so), how large an image may be. Errors name the file and the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Far above any restoration benchmark image (GoPro is 0.9 MP, RealSR ~ 4 MP) and well below what
# would exhaust a worker's memory; a larger file is refused as a likely decompression bomb.
MAX_PIXELS = 64 * 1024 * 1024
# Below this the restorer's 3 down-sampling levels have nothing left to work on.
MIN_SIDE = 8
# File suffixes taken for images when a folder is listed (any format Pillow decodes may be named
# directly).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


def images_in(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder``, by IMAGE_SUFFIXES, sorted."""
    return sorted(f for f in Path(folder).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


class ImageError(ValueError):
    """An image that cannot be used, with the file (or sample) it came from and why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class LoadedImage:
    """8-bit RGB pixels (H, W, 3) plus notes on any conversion made to get them."""

    pixels: np.ndarray
    source_mode: str
    source_format: str
    notes: tuple[str, ...] = ()

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def read_bytes(uri: str) -> bytes:
    """The bytes of a local path or any fsspec URL (http, s3, gs, hf, ...)."""
    if "://" in uri and not uri.startswith("file://"):
        import fsspec

        with fsspec.open(uri, "rb") as f:
            return f.read()
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    with open(path, "rb") as f:
        return f.read()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (shards can be far larger than memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _to_rgb8(im: Image.Image, name: str) -> tuple[np.ndarray, list[str]]:
    mode = im.mode
    notes: list[str] = []
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8), notes
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        if mode == "I" and arr.max(initial=0) <= 255 and arr.min(initial=0) >= 0:
            gray = arr.astype(np.uint8)
        else:
            if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
                raise ImageError(name, f"integer image with values outside 0..65535 (mode {mode})")
            gray = ((arr * 255 + 32767) // 65535).astype(np.uint8)
            notes.append(f"16-bit image (mode {mode}) reduced to 8 bits")
        notes.append("grayscale expanded to RGB")
        return np.repeat(gray[..., None], 3, axis=2), notes
    if mode == "F":
        raise ImageError(name, "floating-point images (mode F) are not supported; save as 8- or 16-bit")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min(initial=255) < 255:
            notes.append(f"alpha channel dropped (mode {mode}, {int((alpha < 255).sum())} non-opaque pixels)")
        else:
            notes.append(f"opaque alpha channel dropped (mode {mode})")
        base = im.convert("RGBA").convert("RGB") if mode != "LA" else im.convert("L").convert("RGB")
        return np.asarray(base, dtype=np.uint8), notes
    if mode == "P":
        has_alpha = "transparency" in im.info
        notes.append("palette image converted to RGB" + (" (transparency dropped)" if has_alpha else ""))
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB").convert("RGB"), dtype=np.uint8), notes
    if mode in ("L", "1"):
        notes.append("grayscale expanded to RGB")
        return np.asarray(im.convert("L").convert("RGB"), dtype=np.uint8), notes
    try:
        converted = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(name, f"cannot convert mode {mode} to RGB: {e}") from e
    notes.append(f"mode {mode} converted to RGB")
    return np.asarray(converted, dtype=np.uint8), notes


def decode_rgb(data: bytes, name: str, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> LoadedImage:
    """Decode image bytes to 8-bit RGB, or raise ImageError naming ``name`` and the reason."""
    if len(data) == 0:
        raise ImageError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(
                    name, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                    "(possible decompression bomb; raise max_pixels if the image is genuine)")
            im.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError:
        raise ImageError(name, f"not a readable image ({len(data)} bytes, unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncation as OSError("image file is truncated ...").
        raise ImageError(name, f"corrupt or truncated image: {e}") from e
    if min(width, height) < min_side:
        raise ImageError(name, f"image is {width}x{height}; both sides must be at least {min_side} pixels")
    pixels, notes = _to_rgb8(im, name)
    return LoadedImage(np.ascontiguousarray(pixels), im.mode, im.format or "unknown", tuple(notes))


def load_rgb(uri: str, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> LoadedImage:
    """Read and decode an image file (path or URL) to 8-bit RGB; errors name the file."""
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise ImageError(uri, "file not found") from None
    except OSError as e:
        raise ImageError(uri, f"cannot read file: {e}") from e
    return decode_rgb(data, uri, max_pixels=max_pixels, min_side=min_side)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless, deterministic PNG bytes of an 8-bit RGB array (same pixels, same bytes)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header, without decoding it."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def save_png(pixels: np.ndarray, path: str) -> bytes:
    """Write ``pixels`` as PNG to ``path`` and return the bytes written."""
    data = encode_png(pixels)
    with open(path, "wb") as f:
        f.write(data)
    return data
