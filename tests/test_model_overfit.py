"""The tiny restorer, with every prior path on, can memorise one denoising batch on the CPU."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.degrade import apply
from restore.model import Restorer, tiny
from restore.model.priors import random_priors


def pattern(size: int, phase: float) -> np.ndarray:
    """A smooth colour pattern as an 8-bit RGB image."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * x + phase), 0.5 + 0.4 * np.cos(5 * y - phase),
                    0.5 + 0.3 * np.sin(4 * (x + y))], axis=-1)
    return np.rint(rgb * 255).astype(np.uint8)


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def test_tiny_model_overfits_one_batch():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clean = [pattern(32, phase) for phase in (0.0, 1.0)]
        noisy = [apply(img, "noise:sigma=25", seed=i)[0] for i, img in enumerate(clean)]
        gt, lq = as_batch(clean), as_batch(noisy)
        torch.manual_seed(0)
        config = tiny(token_width=32, clip_width=32)
        model = Restorer(config)
        priors = random_priors(config, 2, (32, 32), torch.Generator().manual_seed(0))
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        losses = []
        for _ in range(200):
            loss = (model(lq, priors) - gt).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(before)
    noise_level = (lq - gt).abs().mean().item()
    final = float(np.mean(losses[-10:]))
    assert losses[0] / final >= 10, (losses[0], final)
    # It has learned to remove the noise, not only to undo its random initial output.
    assert final < noise_level / 3, (final, noise_level)
