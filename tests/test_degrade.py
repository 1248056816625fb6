import numpy as np
import pytest

from pipeline import degrade
from pipeline.image_files import load_rgb


@pytest.fixture(scope="module")
def photo(shared_data):
    return load_rgb(str(shared_data / "deblur/Set3C/butterfly.png")).pixels


@pytest.mark.parametrize("spec", list(degrade.KINDS.keys() - {"kernel-blur"}) + ["rain+noise:sigma=10"])
def test_same_seed_same_bytes_and_parameters_reported(photo, spec):
    a, pa = degrade.apply(photo, spec, seed=7)
    b, pb = degrade.apply(photo, spec, seed=7)
    c, _ = degrade.apply(photo, spec, seed=8)
    assert a.dtype == np.uint8 and a.shape == photo.shape
    assert a.tobytes() == b.tobytes() and pa == pb
    assert not np.array_equal(a, photo)
    if spec not in ("jpeg",):  # jpeg at a fixed quality is seed-free only when the quality is fixed
        assert not np.array_equal(a, c) or "quality" in str(pa)
    assert all(set(d) == {"type", "params"} and d["params"]["kind"] for d in pa)


def test_gaussian_noise_follows_the_papers_convention():
    flat = np.full((256, 256, 3), 128, np.uint8)
    noisy, params = degrade.apply(flat, "noise:sigma=25", seed=0)
    assert params == [{"type": "noise", "params": {"kind": "noise", "sigma": 25}}]
    residual = noisy.astype(np.float64) - 128
    assert abs(residual.std() - 25) < 0.5 and abs(residual.mean()) < 0.3


def test_ranges_are_drawn_within_bounds_and_jpeg_quality_is_an_integer(photo):
    _, params = degrade.apply(photo, "jpeg:quality=10..40", seed=3)
    q = params[0]["params"]["quality"]
    assert isinstance(q, int) and 10 <= q <= 40
    _, params = degrade.apply(photo, "noise:sigma=5..50", seed=3)
    assert 5 <= params[0]["params"]["sigma"] <= 50


def test_composition_is_applied_in_physical_order_whatever_the_spelling(photo):
    a, pa = degrade.apply(photo, "noise:sigma=10+haze", seed=1)
    b, pb = degrade.apply(photo, "haze+noise:sigma=10", seed=1)
    assert np.array_equal(a, b) and [d["type"] for d in pa] == ["haze", "noise"]
    assert degrade.types_of("jpeg+rain+camera-noise") == ["rain", "noise", "jpeg"]


def test_standard_blur_kernels_from_the_shared_data(photo, shared_data):
    kernels = str(shared_data / "deblur/kernels/kernels.npz")
    out, params = degrade.apply(photo, "kernel-blur:name=levin09_0", seed=0, kernels=kernels)
    assert params[0]["params"]["name"] == "levin09_0" and params[0]["type"] == "blur"
    # Blur removes high frequencies: the Laplacian energy must fall.
    lap = lambda x: np.abs(np.diff(x.astype(float), 2, axis=0)).mean()  # noqa: E731
    assert lap(out) < 0.7 * lap(photo)


def test_bad_specs_are_refused_with_the_reason(photo):
    with pytest.raises(ValueError, match="unknown kind 'fog'"):
        degrade.apply(photo, "fog", seed=0)
    with pytest.raises(ValueError, match="expected param=value"):
        degrade.apply(photo, "noise:25", seed=0)
    with pytest.raises(ValueError, match="bad parameters"):
        degrade.apply(photo, "noise:strength=3", seed=0)
    with pytest.raises(ValueError, match="kernels npz"):
        degrade.apply(photo, "kernel-blur", seed=0)


def test_sensor_noise_has_its_sigma_and_survives_halving_unlike_white_noise():
    flat = np.full((256, 256, 3), 128, np.uint8)
    sensor, params = degrade.apply(flat, "sensor-noise:sigma=20,correlation=1.0,shared=0.5", seed=0)
    white, _ = degrade.apply(flat, "noise:sigma=20", seed=0)
    assert params[0]["type"] == "noise" and params[0]["params"]["kind"] == "sensor-noise"
    assert abs((sensor.astype(np.float64) - 128).std() - 20) < 1.0

    def halved(img):  # σ left after 2×2 averaging, as a fraction of the full-resolution σ
        x = img.astype(np.float64) - 128
        return (x.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))).std() / x.std()

    # White noise halves under 2×2 averaging; blurred noise keeps more of its σ.
    assert halved(white) < 0.55 < 0.8 < halved(sensor)


def test_defocused_translucent_rain_and_snow_are_fainter_than_crisp_and_default_to_crisp(photo):
    base = photo.astype(np.float32)
    for kind in ("rain", "snow"):
        crisp, params = degrade.apply(photo, f"{kind}:density=0.01", seed=3)
        soft, _ = degrade.apply(photo, f"{kind}:density=0.01,defocus=1.0,opacity=0.5", seed=3)
        assert params[0]["params"]["defocus"] == 0.0 and params[0]["params"]["opacity"] == 1.0
        assert 0 < np.abs(soft - base).mean() < np.abs(crisp - base).mean()


def test_wider_rain_streaks_brighten_more_pixels_and_default_to_one_pixel(photo):
    base = photo.astype(np.float32)
    thin, params = degrade.apply(photo, "rain:density=0.005,angle=90", seed=4)
    wide, _ = degrade.apply(photo, "rain:density=0.005,angle=90,width=3", seed=4)
    assert params[0]["params"]["width"] == 1.0
    lit = [float(((img.astype(np.float32) - base).mean(axis=2) > 8).mean()) for img in (thin, wide)]
    assert lit[1] > 1.8 * lit[0] > 0
