import numpy as np
import pytest

from pipeline.image_files import ImageError, decode_rgb, encode_png, load_rgb


@pytest.mark.parametrize("kind, reason", [
    ("zero_byte", "empty file"),
    ("truncated", "truncated"),
    ("not_an_image", "not a readable image"),
    ("tiny_1x1", "at least"),
    ("bomb", "decompression bomb"),
    ("huge_bomb", "decompression bomb"),
])
def test_unusable_images_raise_naming_the_file_and_reason(awkward_images, kind, reason):
    with pytest.raises(ImageError) as err:
        decode_rgb(awkward_images[kind], f"folder/{kind}.png")
    assert f"folder/{kind}.png" in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("kind, note", [
    ("rgba", "alpha channel dropped"),
    ("palette", "palette image converted"),
    ("gray16", "16-bit"),
    ("gray", "grayscale expanded"),
])
def test_odd_modes_become_rgb8_with_a_note(awkward_images, kind, note):
    img = decode_rgb(awkward_images[kind], kind)
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (40, 50, 3)
    assert any(note in n for n in img.notes), img.notes


def test_sixteen_bit_values_scale_to_eight_bits(awkward_images):
    from io import BytesIO

    from PIL import Image

    raw = np.asarray(Image.open(BytesIO(awkward_images["gray16"]))).astype(np.int64)
    img = decode_rgb(awkward_images["gray16"], "g16")
    assert np.abs(img.pixels[..., 0].astype(np.int64) - raw * 255 / 65535).max() <= 0.5 + 1e-9


def test_png_round_trip_is_exact_and_missing_files_are_named(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    data = encode_png(pixels)
    assert encode_png(pixels) == data
    assert np.array_equal(decode_rgb(data, "x").pixels, pixels)
    with pytest.raises(ImageError, match="nope.png: file not found"):
        load_rgb(str(tmp_path / "nope.png"))


def test_real_jpeg_and_png_test_images_load(shared_data):
    jpg = load_rgb(str(shared_data / "real/lowlight_DICM/01.jpg"))
    assert jpg.source_format == "JPEG" and jpg.pixels.ndim == 3
    gray = load_rgb(str(shared_data / "denoise/Set12/01.png"))
    assert gray.pixels.shape[2] == 3 and "grayscale expanded to RGB" in gray.notes
