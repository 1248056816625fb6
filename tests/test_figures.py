"""Captioned pictures: images keep their size, each column gets its caption."""

from __future__ import annotations

import numpy as np
import pytest

from restore.figures import captioned_row


def test_images_keep_their_pixels_under_their_captions():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (300, w, 3), dtype=np.uint8) for w in (200, 120))
    row = captioned_row([a, b], ["input", "restored"], gap=8)
    strip = row.shape[0] - 300
    assert strip > 10 and row.shape[1] == 200 + 8 + 120
    assert (row[strip:, :200] == a).all() and (row[strip:, 208:] == b).all()
    assert (row[strip:, 200:208] == 255).all()
    # Each caption is drawn above its own image.
    assert (row[:strip, :200] < 128).any() and (row[:strip, 208:] < 128).any()
    empty = captioned_row([a, b], ["", ""], gap=8)
    assert (empty[:strip] == 255).all()


def test_mismatched_inputs_are_refused():
    a = np.zeros((30, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="heights"):
        captioned_row([a, np.zeros((20, 30, 3), np.uint8)], ["x", "y"])
    with pytest.raises(ValueError, match="captions"):
        captioned_row([a], ["x", "y"])
