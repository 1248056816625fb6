"""PSNR and SSIM agree with scikit-image in both conventions: ours (Gaussian SSIM) and PromptIR's."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.degrade import apply
from pipeline.image_files import load_rgb
from restore import metrics


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float64) / 255.0).permute(2, 0, 1)[None]


def chw(img: np.ndarray) -> torch.Tensor:
    """Float (H, W, 3) in [0, 1] → (1, 3, H, W)."""
    return torch.from_numpy(img).permute(2, 0, 1)[None]


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
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim(torch.rand(1, 3, 6, 8), torch.rand(1, 3, 6, 8), window="uniform")


@pytest.fixture
def photo(shared_data) -> np.ndarray:
    """A real test photo (Kodak24), 333×250 so that both sides leave a remainder modulo 16."""
    return load_rgb(str(shared_data / "denoise/Kodak24/kodim01.png")).pixels[:333, :250]


def test_promptir_crops_to_multiples_of_16_centred_like_its_crop_img(photo):
    cropped = metrics.crop_to_multiple(photo, 16)
    # 333 = 20·16 + 13: 6 rows off the top, 7 off the bottom; 250 = 15·16 + 10: 5 columns each side.
    assert np.array_equal(cropped, photo[6:326, 5:245])
    assert metrics.crop_to_multiple(cropped, 16).shape == cropped.shape == (320, 240, 3)
    assert metrics.PROMPTIR.crop_base == 16 and metrics.lmdir().crop_base == 1


def test_promptir_scores_are_scikit_image_defaults_on_unrounded_outputs(photo):
    clean = metrics.crop_to_multiple(photo, 16) / 255.0
    rng = np.random.default_rng(0)
    restored = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1)  # a float output, not on the 8-bit grid
    expected_ssim = structural_similarity(clean, restored, data_range=1, channel_axis=-1)  # PromptIR's call
    expected_psnr = peak_signal_noise_ratio(clean, restored, data_range=1)
    got_psnr, got_ssim = metrics.score(chw(restored), chw(clean), metrics.PROMPTIR)
    assert float(got_ssim[0]) == pytest.approx(expected_ssim, abs=1e-6)
    assert float(got_psnr[0]) == pytest.approx(expected_psnr, abs=1e-4)
    # Ours rounds to 8 bits and uses the Gaussian window: a different number on the same pair.
    ours = metrics.score(chw(restored), chw(clean), metrics.lmdir())[1]
    rounded = np.round(restored * 255) / 255
    assert float(ours[0]) == pytest.approx(structural_similarity(
        clean, rounded, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False), abs=1e-6)
    assert abs(float(ours[0]) - expected_ssim) > 0.005


def test_footer_lines_name_the_channel_window_and_crop():
    assert "Y (BT.601)" in metrics.lmdir(y_channel=True).describe()
    assert "RGB" not in metrics.lmdir(y_channel=True).describe()
    papers = metrics.PROMPTIR.describe()
    assert "RGB" in papers and "7×7 uniform" in papers and "multiples of 16" in papers and "not rounded" in papers
    assert "11×11 Gaussian" in metrics.lmdir().describe() and "whole images" in metrics.lmdir().describe()
