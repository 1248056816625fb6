"""The classical estimators on real photos with known synthetic degradations."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline import degrade
from pipeline.analysis import estimators as est
from pipeline.analysis.train import load_photo


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_photo("astronaut")[:256, :256].copy()


@pytest.mark.parametrize("sigma", [5, 15])
def test_noise_sigma_recovers_gaussian_sigma(photo, sigma):
    # Larger σ clips at 0 and 255 on this photo; the classifier's calibration corrects that.
    noisy, _ = degrade.apply(photo, f"noise:sigma={sigma}", seed=1)
    assert est.noise_sigma(noisy.astype(np.float32)) == pytest.approx(sigma, abs=1.5)


def test_noise_sigma_of_a_clean_photo_is_small(photo):
    assert est.noise_sigma(photo.astype(np.float32)) < 2.5


@pytest.mark.parametrize("quality", [10, 35, 60, 85])
def test_jpeg_quality_from_decoded_pixels(photo, quality):
    decoded, _ = degrade.apply(photo, f"jpeg:quality={quality}", seed=1)
    estimated, lattice = est.quality_from_pixels(est.luminance(decoded.astype(np.float32)))
    assert lattice > est.LATTICE_MIN
    assert estimated == pytest.approx(quality, abs=3)


def test_never_compressed_photo_has_no_lattice(photo):
    quality, lattice = est.quality_from_pixels(est.luminance(photo.astype(np.float32)))
    assert lattice < est.LATTICE_MIN and quality == 100


def test_quality_from_jpeg_bytes_reads_the_table(photo):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=37)
    assert est.quality_from_jpeg_bytes(buf.getvalue()) == 37
    png = io.BytesIO()
    Image.fromarray(photo).save(png, format="PNG")
    assert est.quality_from_jpeg_bytes(png.getvalue()) is None


def test_block_grid_finds_the_shifted_grid(photo):
    decoded, _ = degrade.apply(photo, "jpeg:quality=15", seed=1)
    ratio, row0, col0 = est.block_grid(est.luminance(decoded[3:, 5:].astype(np.float32)))
    assert ratio > 1.2 and (row0, col0) == (5, 3)


def test_blur_widens_edges_and_survives_reblurring(photo):
    sharp = photo.astype(np.float32)
    blurred = degrade.apply(photo, "defocus-blur:radius=4", seed=1)[0].astype(np.float32)
    y0, y1 = est.luminance(sharp), est.luminance(blurred)
    assert est.edge_width(y1)[0] > est.edge_width(y0)[0] + 1
    assert est.reblur_loss(y1) > est.reblur_loss(y0) + 0.15


def test_low_light_and_haze_move_their_statistics(photo):
    dark = degrade.apply(photo, "low-light", seed=1)[0].astype(np.float32)
    hazy = degrade.apply(photo, "haze:beta=2,airlight=0.9", seed=1)[0].astype(np.float32)
    assert est.exposure(dark)["mean"] < 0.5 * est.exposure(photo.astype(np.float32))["mean"]
    assert est.dark_channel(hazy)["transmission"] < est.dark_channel(photo.astype(np.float32))["transmission"] - 0.1


def test_rain_streaks_are_oriented_along_the_rain(photo):
    rainy = degrade.apply(photo, "rain:angle=90,density=0.02,intensity=0.9", seed=1)[0].astype(np.float32)
    s = est.streaks(est.luminance(rainy))
    assert abs(s["angle"] - 90) < 15
    slanted = degrade.apply(photo, "rain:angle=65,density=0.02,intensity=0.9", seed=1)[0].astype(np.float32)
    assert abs(est.streaks(est.luminance(slanted))["angle"] - 65) < 10
    assert s["coherence"] > est.streaks(est.luminance(photo.astype(np.float32)))["coherence"]


def test_faint_rain_puts_a_peak_into_the_streak_orientations(photo):
    # Faint, translucent rain barely moves the global coherence; the orientation histogram of the
    # thin bright lines still peaks at the rain's direction.
    rainy = degrade.apply(photo, "rain:angle=70,density=0.008,intensity=0.3", seed=2)[0]
    clean = est.streaks(est.luminance(photo.astype(np.float32)))
    faint = est.streaks(est.luminance(rainy.astype(np.float32)))
    assert faint["peak_count"] > 2 * clean["peak_count"]
    assert faint["peak_across"] < clean["peak_across"]


def test_patches_see_faint_rain_as_bright_lines_sharing_one_direction(photo):
    # Faint, soft rain: its patches hold thin bright lines that outweigh the dark ones and run
    # along the rain; the clean photo's fine detail is of both signs and runs every way.
    rainy = degrade.apply(photo, "rain:angle=100,density=0.01,intensity=0.4,defocus=0.6,width=2", seed=5)[0]
    clean = est.streaks(est.luminance(photo.astype(np.float32)))
    faint = est.streaks(est.luminance(rainy.astype(np.float32)))
    assert faint["patch_share"] > max(3 * clean["patch_share"], 0.1)
    assert faint["patch_balance"] > clean["patch_balance"] + 0.15
    assert faint["patch_coherence"] > clean["patch_coherence"] + 0.4
    assert faint["patch_verticality"] > 0.95 and faint["patch_angle"] == pytest.approx(100, abs=3)
    flat = est.streaks(np.full((64, 64), 128.0, np.float32))
    assert flat["patch_share"] == 0 and flat["patch_angle"] == -1


def test_bright_lines_see_rain_and_not_the_same_lines_dark(photo):
    # Faint rain adds long thin lines brighter than both sides; the very same lines subtracted
    # instead (dark lines, as twigs and cables often are) must not read as rain.
    rainy = degrade.apply(photo, "rain:angle=95,density=0.006,intensity=0.3", seed=3)[0].astype(np.float32)
    clean = photo.astype(np.float32)
    dark = np.clip(2 * clean - rainy, 0, 255)
    before, bright, inverted = (est.bright_lines(est.luminance(x)) for x in (clean, rainy, dark))
    assert bright["excess"] > before["excess"] + 0.02 and inverted["excess"] < before["excess"]
    assert bright["patch_share"] > before["patch_share"] + 0.25 and inverted["patch_share"] <= before["patch_share"]
    assert bright["patch_balance"] > before["patch_balance"] + 0.3 and inverted["patch_balance"] < before["patch_balance"]
    tiny = est.bright_lines(np.full((16, 16), 128.0, np.float32))
    assert tiny == {"excess": 0.0, "patch_share": 0.0, "patch_balance": 0.0}


def test_bright_lines_rank_every_real_rainy_image_above_its_clean_target(shared_data):
    from pipeline.image_files import load_rgb

    pairs = sorted((shared_data / "derain").glob("*/input/*.png"))
    assert len(pairs) == 22
    for rainy_path in pairs:
        rainy, target = (est.bright_lines(est.luminance(load_rgb(str(p)).pixels.astype(np.float32)))
                         for p in (rainy_path, rainy_path.parents[1] / "target" / rainy_path.name))
        assert rainy["patch_balance"] > target["patch_balance"], rainy_path


def test_snow_adds_flakes_at_two_scales(photo):
    snowy = degrade.apply(photo, "snow:density=0.006,flake_size=1.5,veil=0.1", seed=4)[0].astype(np.float32)
    before = est.bright_blobs(photo.astype(np.float32), est.luminance(photo.astype(np.float32)))
    after = est.bright_blobs(snowy, est.luminance(snowy))
    assert after["density"] > before["density"] + 5
    assert after["large_density"] > before["large_density"] + 5
    assert 0.0 <= after["grey_share"] <= 1.0


def test_exposure_percentiles_are_ordered_and_drop_in_low_light(photo):
    bright = est.exposure(photo.astype(np.float32))
    dark = est.exposure(degrade.apply(photo, "low-light:gamma=1.2,scale=0.4,sigma=2", seed=1)[0].astype(np.float32))
    for stats in (bright, dark):
        assert stats["p1"] <= stats["p10"] <= stats["p25"] <= stats["p50"] <= stats["p75"] <= stats["p90"] <= stats["p99"]
        assert 0 < stats["logmean"] <= stats["mean"]
    assert dark["p75"] < 0.6 * bright["p75"] and dark["shadow"] > bright["shadow"]
