"""An image → the fixed-length vector of classical measurements the classifier reads.

Pixel-scale cues (noise, JPEG lattice, edge width, streaks, bright lines, flakes) are measured at
the native resolution on a central window of at most ``WINDOW`` pixels a side, cut on the 8-pixel
JPEG grid so a compressed image's blocks stay aligned; frame-wide cues (exposure, haze) on a copy
of the whole frame shrunk to at most ``SMALL`` pixels a side. That bounds the cost whatever the
size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.analysis import estimators as est

WINDOW = 512
SMALL = 256
# The half-scale noise estimate needs 5×5 patches with room to spare.
MIN_SIDE = 16

FEATURE_NAMES: tuple[str, ...] = (
    "noise_sigma", "noise_sigma_half_ratio",
    "jpeg_lattice", "jpeg_quality", "blockiness",
    "edge_width", "edge_sharpness", "reblur",
    "exp_mean", "exp_logmean", "exp_p1", "exp_p10", "exp_p25", "exp_p50", "exp_p75", "exp_p90", "exp_p99",
    "exp_dark", "exp_shadow", "exp_bright",
    "haze_dark", "haze_airlight", "haze_transmission", "saturation", "contrast",
    "streak_energy", "streak_coherence", "streak_along", "streak_across", "streak_verticality",
    "streak_bright_share", "streak_peak", "streak_peak_count", "streak_peak_along", "streak_peak_across",
    "streak_patch_share", "streak_patch_balance", "streak_patch_coherence", "streak_patch_verticality",
    "line_excess", "line_patch_share", "line_patch_balance",
    "blob_density", "blob_white_density", "blob_dog_p99", "blob_tophat", "blob_large_density", "blob_grey_share",
)


@dataclass(frozen=True)
class Measurements:
    """The named measurements of one image: FEATURE_NAMES and a few reported-only values."""

    values: dict[str, float]

    def vector(self) -> np.ndarray:
        return np.array([self.values[n] for n in FEATURE_NAMES], np.float32)


def central_window(pixels: np.ndarray, size: int = WINDOW) -> np.ndarray:
    """The central ≤ size×size crop, its corner on the 8-pixel grid of the full image."""
    h, w = pixels.shape[:2]
    top = max((h - size) // 2, 0) // 8 * 8
    left = max((w - size) // 2, 0) // 8 * 8
    return pixels[top: top + size, left: left + size]


def shrink(pixels: np.ndarray, size: int = SMALL) -> np.ndarray:
    """The whole frame, area-averaged so that its longer side is at most ``size``."""
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return pixels
    return cv2.resize(pixels, (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)),
                      interpolation=cv2.INTER_AREA)


def measure(pixels: np.ndarray) -> Measurements:
    """All measurements of an 8-bit RGB image (H, W, 3)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) pixels, got {pixels.dtype} {pixels.shape}")
    if min(pixels.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image is {pixels.shape[1]}x{pixels.shape[0]}; the analysis needs at least "
                         f"{MIN_SIDE} pixels a side")
    window = central_window(pixels).astype(np.float32)
    small = shrink(pixels).astype(np.float32)
    y = est.luminance(window)

    sigma = est.noise_sigma(window)
    half = cv2.resize(window, (window.shape[1] // 2, window.shape[0] // 2), interpolation=cv2.INTER_AREA)
    # White noise halves under 2×2 averaging; correlated noise and texture do not.
    sigma_half = est.noise_sigma(half, patch=5, stride=3)

    blockiness, row0, col0 = est.block_grid(y)
    quality, lattice = est.quality_from_pixels(y, row0, col0)
    width, sharpness = est.edge_width(y)
    exp = est.exposure(small)
    haze = est.dark_channel(small)
    streak = est.streaks(y)
    lines = est.bright_lines(y)
    blobs = est.bright_blobs(window, y)
    values = {
        "noise_sigma": sigma, "noise_sigma_half_ratio": 2 * sigma_half / max(sigma, 0.1),
        "jpeg_lattice": lattice, "jpeg_quality": quality, "blockiness": blockiness,
        "edge_width": width, "edge_sharpness": sharpness, "reblur": est.reblur_loss(y),
        **{f"exp_{k}": v for k, v in exp.items()},
        "haze_dark": haze["dark"], "haze_airlight": haze["airlight"], "haze_transmission": haze["transmission"],
        "saturation": haze["saturation"], "contrast": haze["contrast"],
        "streak_energy": streak["energy"], "streak_coherence": streak["coherence"],
        "streak_along": streak["along"], "streak_across": streak["across"],
        "streak_verticality": float(abs(np.sin(np.radians(streak["angle"])))),
        "streak_bright_share": streak["bright_share"], "streak_angle": streak["angle"],
        "streak_peak": streak["peak"], "streak_peak_count": streak["peak_count"],
        "streak_peak_along": streak["peak_along"], "streak_peak_across": streak["peak_across"],
        **{f"streak_{k}": v for k, v in streak.items() if k.startswith("patch_")},
        **{f"line_{k}": v for k, v in lines.items()},
        **{f"blob_{k}": v for k, v in blobs.items()},
    }
    return Measurements(values)
