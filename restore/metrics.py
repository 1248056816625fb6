"""PSNR and SSIM in the two conventions restoration papers score with.

Both score images in [0, 1] with no border crop; PSNR is over all pixels (and channels) for data
range 1. They differ in what SSIM sees:

- ``lmdir`` (ours; training validation, ``restore.evaluate``): outputs rounded to 8 bits, as
  they are when scored from saved PNGs, and the Gaussian SSIM of Wang et al. and MATLAB (11×11
  window, σ = 1.5, K1 = 0.01, K2 = 0.03, population covariance) averaged per channel over the
  window positions that fit inside the image: scikit-image's ``structural_similarity(...,
  gaussian_weights=True, use_sample_covariance=False, data_range=1, channel_axis=-1)``. RGB, or
  the BT.601 luma with ``y_channel=True`` as the Restormer line of deraining papers score.
- ``promptir`` (the all-in-one papers: AirNet, PromptIR): PromptIR's ``utils/val_utils.py``
  calls ``structural_similarity(clean, restored, data_range=1, multichannel=True)`` with
  scikit-image's defaults, a 7×7 *uniform* window with sample covariance, on RGB outputs
  clipped to [0, 1] but not rounded; its test loaders crop every image, degraded and clean,
  to a multiple of 16 first (``crop_img``). On noisy images that SSIM sits ~0.03 above the
  Gaussian one, as much as the gaps between methods in their tables: numbers of the two
  conventions are not comparable.

Inputs are (B, 3, H, W) float tensors in [0, 1]; results are (B,) tensors, one value per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
UNIFORM_WINDOW = 7  # scikit-image's default window when gaussian_weights=False
WINDOWS = ("gaussian", "uniform")


@dataclass(frozen=True)
class Convention:
    """How one family of papers turns a restored image and its GT into PSNR and SSIM."""

    name: str
    y_channel: bool  # score the BT.601 luma instead of RGB
    window: str  # "gaussian" (11×11, σ 1.5, population covariance) or "uniform" (7×7, sample covariance)
    crop_base: int  # images (degraded and clean) are cropped to multiples of this before restoring; 1: none
    rounded: bool  # outputs are rounded to 8 bits before scoring (else only clipped to [0, 1])

    def describe(self) -> str:
        """One line for a table's footer: everything that moves the numbers."""
        space = "Y (BT.601) in [16/255, 235/255]" if self.y_channel else "RGB in [0, 1]"
        outputs = "outputs rounded to 8 bits" if self.rounded else "outputs clipped, not rounded"
        window = ("SSIM 11×11 Gaussian window (σ 1.5, population covariance)" if self.window == "gaussian"
                  else "SSIM 7×7 uniform window (sample covariance; scikit-image's default)")
        crop = (f"images centre-cropped to multiples of {self.crop_base} before restoring"
                if self.crop_base > 1 else "whole images")
        return f"{self.name}: {space}, {outputs}, {window}, {crop}, no border crop"


def lmdir(y_channel: bool = False) -> Convention:
    """Ours: rounded outputs, Gaussian SSIM, whole images; the Y channel for deraining tables."""
    return Convention("lmdir", y_channel, "gaussian", 1, True)


PROMPTIR = Convention("promptir", False, "uniform", 16, False)


def quantize(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def crop_to_multiple(image: np.ndarray, base: int) -> np.ndarray:
    """(H, W, ...) cropped to multiples of ``base``, centred as PromptIR's ``crop_img`` does: the
    top and left lose half the excess (rounded down), the bottom and right the rest."""
    h, w = image.shape[:2]
    dh, dw = h % base, w % base
    return image[dh // 2:h - dh + dh // 2, dw // 2:w - dw + dw // 2]


def rgb_to_y(x: Tensor) -> Tensor:
    """BT.601 luma of RGB in [0, 1], in [16/255, 235/255] like MATLAB's rgb2ycbcr: (B, 1, H, W)."""
    weights = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True) / 255.0 + 16.0 / 255.0


def _prepare(restored: Tensor, target: Tensor, y_channel: bool) -> tuple[Tensor, Tensor]:
    if restored.shape != target.shape or restored.ndim != 4 or restored.shape[1] != 3:
        raise ValueError(f"need two (B, 3, H, W) tensors of one shape, got {tuple(restored.shape)} "
                         f"and {tuple(target.shape)}")
    restored, target = restored.double(), target.double()
    if y_channel:
        return rgb_to_y(restored), rgb_to_y(target)
    return restored, target


def psnr(restored: Tensor, target: Tensor, y_channel: bool = False) -> Tensor:
    """Peak signal-to-noise ratio in dB for data range 1, per image; inf for identical images."""
    a, b = _prepare(restored, target, y_channel)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(1.0 / mse)).float()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Normalised 2-D Gaussian window (size, size), float64."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def _window(kind: str) -> tuple[Tensor, float]:
    """The SSIM window and the factor that turns its moments into (co)variances."""
    if kind == "gaussian":
        return gaussian_window(), 1.0
    if kind == "uniform":
        n = UNIFORM_WINDOW**2
        return torch.full((UNIFORM_WINDOW, UNIFORM_WINDOW), 1.0 / n, dtype=torch.float64), n / (n - 1)
    raise ValueError(f"SSIM window {kind!r}: expected one of {', '.join(WINDOWS)}")


def ssim(restored: Tensor, target: Tensor, y_channel: bool = False, window: str = "gaussian") -> Tensor:
    """Structural similarity per image (mean over channels and valid window positions).

    ``window`` is "gaussian" (ours) or "uniform" (scikit-image's default, PromptIR's). Images
    smaller than the window have no valid position and raise a ValueError.
    """
    a, b = _prepare(restored, target, y_channel)
    kernel, cov_norm = _window(window)
    size = kernel.shape[0]
    if min(a.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size}, got {tuple(a.shape[-2:])}")
    channels = a.shape[1]
    # Both windows are separable (an outer product of a 1-D window that sums to 1): two 1-D
    # passes give the same sums as the 2-D window, 5x faster in float64 (a 500² image's SSIM took
    # ~6 s with the 2-D window on a loaded CPU).
    line = kernel.sum(dim=1).to(a.device)
    rows = line.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = line.view(1, 1, 1, size).expand(channels, 1, 1, size)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, rows, groups=channels), cols, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = cov_norm * (blur(a * a) - mu_a**2)
    var_b = cov_norm * (blur(b * b) - mu_b**2)
    cov = cov_norm * (blur(a * b) - mu_a * mu_b)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1).float()


def score(restored: Tensor, target: Tensor, convention: Convention) -> tuple[Tensor, Tensor]:
    """(PSNR, SSIM) per image in ``convention``, of images it has already cropped (see crop_base)."""
    restored = quantize(restored) if convention.rounded else restored.clamp(0.0, 1.0)
    return (psnr(restored, target, convention.y_channel),
            ssim(restored, target, convention.y_channel, convention.window))
