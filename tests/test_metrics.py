"""PSNR and SSIM agree with scikit-image in the all-in-one papers' convention."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.degrade import apply
from restore import metrics


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float64) / 255.0).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    clean = np.ascontiguousarray(skimage.data.astronaut()[100:196, 150:230])
    noisy = apply(clean, "noise:sigma=25", seed=3)[0]
    return clean, noisy


def test_psnr_and_ssim_match_scikit_image(pair):
    clean, noisy = pair
    a, b = clean / 255.0, noisy / 255.0
    expected_psnr = peak_signal_noise_ratio(a, b, data_range=1.0)
    expected_ssim = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False)
    assert float(metrics.psnr(as_tensor(noisy), as_tensor(clean))[0]) == pytest.approx(expected_psnr, abs=1e-4)
    assert float(metrics.ssim(as_tensor(noisy), as_tensor(clean))[0]) == pytest.approx(expected_ssim, abs=1e-5)


def test_y_channel_is_bt601_luma_as_scikit_image_computes_it(pair):
    clean, noisy = pair
    y_clean = skimage.color.rgb2ycbcr(clean / 255.0)[..., 0] / 255.0
    y_noisy = skimage.color.rgb2ycbcr(noisy / 255.0)[..., 0] / 255.0
    assert np.allclose(metrics.rgb_to_y(as_tensor(clean))[0, 0].numpy(), y_clean, atol=1e-9)
    expected = structural_similarity(y_clean, y_noisy, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    got = float(metrics.ssim(as_tensor(noisy), as_tensor(clean), y_channel=True)[0])
    assert got == pytest.approx(expected, abs=1e-5)
    assert float(metrics.psnr(as_tensor(noisy), as_tensor(clean), y_channel=True)[0]) == pytest.approx(
        peak_signal_noise_ratio(y_clean, y_noisy, data_range=1.0), abs=1e-4)


def test_batches_score_each_image_and_identity_is_perfect(pair):
    clean, noisy = pair
    batch = torch.cat([as_tensor(clean), as_tensor(noisy)])
    target = torch.cat([as_tensor(clean), as_tensor(clean)])
    psnr, ssim = metrics.psnr(batch, target), metrics.ssim(batch, target)
    assert psnr.shape == ssim.shape == (2,)
    assert torch.isinf(psnr[0]) and ssim[0] == pytest.approx(1.0)
    assert psnr[1] < 25 and ssim[1] < 0.9


def test_quantize_rounds_to_8_bits_and_small_images_are_refused():
    x = torch.tensor([-0.1, 0.5, 0.5019, 1.3]).view(1, 1, 2, 2)
    assert torch.equal(metrics.quantize(x) * 255, torch.tensor([0.0, 128.0, 128.0, 255.0]).view(1, 1, 2, 2))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
