"""Inference on image files: automatic priors, user-given priors, tiles, side-by-side output,
the shipped checkpoint, and batches holding files that cannot be restored."""

from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import vocabulary
from pipeline.image_files import MAX_PIXELS, load_rgb, save_png
from pipeline.vocabulary import DEGRADATION_TYPES
from restore import checkpoint, export, infer
from restore.data import sample_priors, to_chw
from restore.model import Restorer, preset, tiny
from restore.model.tiling import TILE, WHOLE_IMAGE_PIXELS, choose_tile
from restore.priors_online import OnlinePriors, UserPriors
from restore.validate import restore_sample
from tests.test_data import WIDTH, make_sample, pattern

TINY_CLIP_WIDTH = 32  # the tiny extraction preset's CLIP widths (E and W)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i, size in enumerate((40, 56)):
        img = (pattern(size, i) * 0.35).astype(np.uint8)  # a dark photo
        paths.append(str(root / f"dark{i}.png"))
        save_png(img, paths[-1])
    return paths


def saved_restorer(path, width: int):
    torch.manual_seed(0)
    return Restorer(tiny(token_width=width, clip_width=width)).save_pretrained(path)


def test_automatic_priors_without_weights_restore_every_image(photos, tmp_path, capsys):
    model_dir = saved_restorer(tmp_path / "model", WIDTH)
    assert infer.main(["--checkpoint", str(model_dir), *photos, "--out", str(tmp_path / "out"),
                       "--preset", "analysis-only", "--side-by-side", "--threads", "1"]) == 0
    for i, size in enumerate((40, 56)):
        restored = load_rgb(str(tmp_path / "out" / f"dark{i}.png")).pixels
        assert restored.shape == (size, size, 3)
        # input | restored at full size, under a caption strip
        pair = load_rgb(str(tmp_path / "out" / f"dark{i}_side_by_side.png")).pixels
        assert pair.shape[0] > size and pair.shape[1] == 2 * size + 8
        assert (pair[-size:, :size] == load_rgb(photos[i]).pixels).all()
        assert (pair[-size:, -size:] == restored).all()
        assert (pair[:-size] < 128).any()  # the caption's dark letters
    assert "priors analysis-only" in capsys.readouterr().out


def test_user_degradation_text_sets_tokens_and_vector_with_the_tiny_models(photos, tmp_path):
    model_dir = saved_restorer(tmp_path / "model", TINY_CLIP_WIDTH)
    priors = OnlinePriors("tiny")
    user = UserPriors(degradation="very dark and a bit noisy", caption="a striped wall", reference=False)
    written = infer.restore_images(model_dir, photos[:1], tmp_path / "out", user, priors=priors)
    assert len(written) == 1 and written[0].is_file()
    pixels = load_rgb(photos[0]).pixels
    stated = priors.sample("k", pixels, user=user)
    # The measured sentence of the types the words name: how dark, how noisy.
    measured = stated.meta.degradation_text
    assert user.degradation not in measured and stated.meta.caption == user.caption
    assert "low light (mean luminance" in measured and "noise (σ≈" in measured
    assert stated.ref is None and stated.embeddings["degradation_length"] > 2
    vector = stated.meta.analysis["vector"]
    assert vector == [1.0 if t in ("low-light", "noise") else 0.0 for t in DEGRADATION_TYPES]
    automatic = priors.sample("k", pixels)
    assert automatic.ref is not None and automatic.meta.caption and automatic.meta.degradation_text
    assert not np.array_equal(automatic.embeddings["degradation_tokens"], stated.embeddings["degradation_tokens"])


def test_tiled_equals_untiled_for_images_within_one_tile():
    torch.manual_seed(0)
    model = Restorer(tiny(token_width=WIDTH, clip_width=WIDTH)).eval()
    sample = make_sample("k", 2, size=48)
    tiled = restore_sample(model, sample, torch.device("cpu"), tile=64)
    with torch.no_grad():
        lq = torch.from_numpy(to_chw(sample.lq))[None]
        direct = model(lq, sample_priors(sample, WIDTH, WIDTH)).clamp(0, 1)
    assert torch.allclose(tiled, direct, atol=1e-6)
    # Smaller tiles blend overlapping windows: close to, but not the same as, one pass.
    small = restore_sample(model, sample, torch.device("cpu"), tile=32)
    assert small.shape == direct.shape and (small - direct).abs().mean() < 0.05


# --- the shipped checkpoint, bad files, large images ---------------------------------------------

@pytest.fixture(scope="module")
def shipped_like(tmp_path_factory):
    """What restore.export writes: a compact restorer in fp16 that says it was trained with the
    offline priors (analysis + all-MiniLM-L6-v2 tokens, a real sentence encoder)."""
    root = tmp_path_factory.mktemp("shipped")
    torch.manual_seed(0)
    bare = Restorer(preset("compact", token_width=384)).save_pretrained(root / "bare")
    export.export(bare, root / "lmdir-cpu", prior_preset="offline")
    return root / "lmdir-cpu"


def test_without_checkpoint_the_shipped_one_is_used_with_its_prior_preset_and_the_user_words(
        shipped_like, photos, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(checkpoint, "SHIPPED", shipped_like)
    assert infer.main([photos[0], "--out", str(tmp_path / "out"), "--degradation", "remove the rain"]) == 0
    out = capsys.readouterr().out
    # The words choose the type; the restorer reads the analysis's measurement of it.
    assert "--degradation 'remove the rain' names rain: the restorer reads the analysis's measurement" in out
    assert re.search(r"priors offline: '(mild|moderate|heavy) rain streaks', types \[[^]]*'rain'", out), out
    assert load_rgb(str(tmp_path / "out" / "dark0.png")).pixels.shape == (40, 40, 3)
    assert out.strip().endswith("restored 1 of 1 images into " + str(tmp_path / "out"))


def test_words_that_name_no_known_type_restore_from_the_analysis_and_say_so(
        shipped_like, photos, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(checkpoint, "SHIPPED", shipped_like)
    words = "please make it look nicer"
    assert infer.main([photos[0], "--out", str(tmp_path / "out"), "--degradation", words]) == 0
    assert f"note: --degradation: the words {words!r} name no degradation type" in capsys.readouterr().out
    priors = OnlinePriors("offline")
    pixels = load_rgb(photos[0]).pixels
    guided, automatic = priors.sample("k", pixels, user=UserPriors(degradation=words)), priors.sample("k", pixels)
    assert guided.meta.degradation_text == automatic.meta.degradation_text
    assert guided.meta.analysis["vector"] == automatic.meta.analysis["vector"]
    assert np.array_equal(guided.embeddings["degradation_tokens"], automatic.embeddings["degradation_tokens"])


def test_wordings_that_name_the_same_type_give_the_same_priors(photos):
    priors = OnlinePriors("offline")
    pixels = load_rgb(photos[0]).pixels
    plain, paraphrase = (priors.sample("k", pixels, user=UserPriors(degradation=words))
                         for words in ("remove the rain", "water streaks from the storm cover the scene"))
    assert plain.meta.degradation_text == paraphrase.meta.degradation_text
    assert "rain streaks" in plain.meta.degradation_text and "storm" not in plain.meta.degradation_text
    assert plain.meta.analysis["vector"] == paraphrase.meta.analysis["vector"] == vocabulary.one_hot(["rain"])
    assert np.array_equal(plain.embeddings["degradation_tokens"], paraphrase.embeddings["degradation_tokens"])


def test_a_missing_shipped_checkpoint_is_one_clear_line(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "SHIPPED", tmp_path / "absent")
    assert infer.main([photos[0], "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shipped checkpoint" in err[0] and "--checkpoint" in err[0]
    assert "python -m restore.export" in err[0] and str(tmp_path / "absent") in err[0]


def _png16_rgb(rng) -> bytes:
    """A 48-bit RGB PNG, written by OpenCV: Pillow cannot write one."""
    ok, data = cv2.imencode(".png", rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16))
    assert ok
    return data.tobytes()


def _jpeg(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_a_batch_with_bad_files_restores_the_others_and_fails_naming_each(awkward_images, tmp_path,
                                                                           capsys, one_thread):
    rng = np.random.default_rng(0)
    jpeg = _jpeg(rng)
    files = {**{f"{kind}.png": data for kind, data in awkward_images.items()},
             "rgb16.png": _png16_rgb(rng), "photo.jpg": jpeg, "cut.jpg": jpeg[: len(jpeg) // 2]}
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (tmp_path / "empty").mkdir()
    bad = {"zero_byte.png": "empty file", "truncated.png": "truncated", "not_an_image.png": "not a readable image",
           "tiny_1x1.png": "both sides must be at least 16 pixels", "bomb.png": f"exceeds the limit of {MAX_PIXELS}",
           "huge_bomb.png": "decompression bomb", "cut.jpg": "truncated"}
    model_dir = saved_restorer(tmp_path / "model", WIDTH)
    code = infer.main(["--checkpoint", str(model_dir), str(folder), str(tmp_path / "missing.png"),
                       str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--preset", "analysis-only"])
    captured = capsys.readouterr()
    assert code == 1
    good = sorted(set(files) - set(bad))
    assert good == ["good.png", "gray.png", "gray16.png", "palette.png", "photo.jpg", "rgb16.png", "rgba.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(n.split(".")[0] + ".png" for n in good)
    for name in good:
        assert load_rgb(str(tmp_path / "out" / (name.split(".")[0] + ".png"))).pixels.shape == (40, 50, 3)
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    for name, reason in bad.items():
        assert any(str(folder / name) in line and reason in line for line in errors), name
    assert any("missing.png: cannot read file: No such file or directory" in line for line in errors)
    assert any(str(tmp_path / "empty") + ": a folder without image files" in line for line in errors)
    summary = captured.err.strip().splitlines()[-1]
    assert summary.startswith(f"restored 7 of 16 images into {tmp_path / 'out'}; 9 failed: ")
    assert all(name in summary for name in bad)
    # The conversions are said, not silent.
    assert "alpha channel dropped" in captured.out and "16-bit image (mode I;16) reduced to 8 bits" in captured.out


def test_a_raised_pixel_limit_admits_a_large_image_and_the_default_refuses_it(tmp_path, capsys, one_thread):
    image = str(tmp_path / "wide.png")
    save_png(np.tile(pattern(48, 0.3), (1, 3, 1)), image)  # 48 x 144 = 6912 pixels
    model_dir = saved_restorer(tmp_path / "model", WIDTH)
    args = ["--checkpoint", str(model_dir), image, "--out", str(tmp_path / "out"), "--preset", "analysis-only"]
    assert infer.main([*args, "--max-pixels", "5000"]) == 1
    assert "wide.png: 144x48 = 6912 pixels exceeds the limit of 5000" in capsys.readouterr().err
    assert infer.main([*args, "--max-pixels", "7000"]) == 0


def test_whole_image_within_the_pixel_budget_tiles_beyond_it():
    assert choose_tile(1024, 1024) == 1024 and WHOLE_IMAGE_PIXELS == 1024 * 1024
    assert choose_tile(600, 1200) == 1200  # 0.72 MP: one pass
    assert choose_tile(1025, 1024) == TILE == 512
    assert choose_tile(8000, 6000, tile=256) == 256 and choose_tile(40, 40, tile=256) == 256


def test_tiled_restoration_shows_progress_and_covers_the_image(tmp_path, capsys, one_thread):
    image = str(tmp_path / "big.png")
    save_png(pattern(96, 0.5), image)
    model_dir = saved_restorer(tmp_path / "model", WIDTH)
    assert infer.main(["--checkpoint", str(model_dir), image, "--out", str(tmp_path / "out"),
                       "--preset", "analysis-only", "--tile", "32"]) == 0
    bar = capsys.readouterr().err  # 96 px in tiles of 32 overlapping by 8: starts 0, 24, 48, 64 per axis
    assert "big:" in bar and "/16 [" in bar
    assert load_rgb(str(tmp_path / "out" / "big.png")).pixels.shape == (96, 96, 3)
