"""Shared fixtures: where the real test images live, and small image files of every awkward kind."""

from __future__ import annotations

import io
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def interruptible() -> None:
    """``preexec_fn`` of a child process a test will Ctrl-C: SIGINT as a terminal's foreground job
    has it. A test run started in the background inherits SIGINT ignored, and Python keeps an
    ignored SIGINT ignored, so the child would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def one_thread():
    """One torch thread: small models gain nothing from more on a shared 2-core runner, and the same
    thread count in every process keeps float reductions — and so trained weights — identical."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test images not found at {SHARED_DATA}")
    return SHARED_DATA


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_header_only(width: int, height: int) -> bytes:
    """A 50-byte PNG whose header claims width x height: a decompression-bomb probe."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 8))
            + _chunk(b"IEND", b""))


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def awkward_images() -> dict[str, bytes]:
    """Bytes of images that a real dataset folder may hold, keyed by what is odd about them."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    good = _png(Image.fromarray(rgb))
    rgba = np.concatenate([rgb, np.full((40, 50, 1), 128, np.uint8)], axis=2)
    sixteen = (rng.integers(0, 65536, (40, 50), dtype=np.uint16))
    return {
        "good": good,
        "zero_byte": b"",
        "truncated": good[: len(good) // 2],
        "not_an_image": b"this is a text file, not a picture\n" * 4,
        "tiny_1x1": _png(Image.fromarray(rgb[:1, :1])),
        "rgba": _png(Image.fromarray(rgba, "RGBA")),
        "palette": _png(Image.fromarray(rgb).convert("P")),
        "gray16": _png(Image.fromarray(sixteen)),
        "gray": _png(Image.fromarray(rgb[..., 0])),
        "bomb": png_header_only(10000, 10000),
        "huge_bomb": png_header_only(20000, 20000),
    }
