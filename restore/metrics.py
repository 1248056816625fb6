"""PSNR and SSIM in the all-in-one restoration papers' convention.

AirNet, PromptIR and InstructIR score RGB images in [0, 1] with no border crop; SSIM uses an
11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, population (not sample) covariance,
computed per channel over the window positions that fit inside the image and averaged. That is
scikit-image's ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False,
data_range=1, channel_axis=-1)``. The Restormer line of deraining papers scores the BT.601 luma
(Y) channel instead: ``y_channel=True``.

Inputs are (B, 3, H, W) float tensors in [0, 1]; results are (B,) tensors, one value per image.
``quantize`` rounds to 8 bits first, as the papers do when they score saved PNG outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def quantize(x: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


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


def ssim(restored: Tensor, target: Tensor, y_channel: bool = False) -> Tensor:
    """Structural similarity per image (mean over channels and valid window positions).

    Images smaller than the 11×11 window have no valid position and raise a ValueError.
    """
    a, b = _prepare(restored, target, y_channel)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(a.shape[-2:])}")
    channels = a.shape[1]
    window = gaussian_window().to(a.device).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(dim=1).float()
