"""Inference on image files: automatic priors, user-given priors, tiles, side-by-side output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.image_files import load_rgb, save_png
from pipeline.vocabulary import DEGRADATION_TYPES
from restore import infer
from restore.data import sample_priors, to_chw
from restore.model import Restorer, tiny
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
        assert load_rgb(str(tmp_path / "out" / f"dark{i}_side_by_side.png")).pixels.shape == (size, 2 * size + 8, 3)
    assert "priors analysis-only" in capsys.readouterr().out


def test_user_degradation_text_sets_tokens_and_vector_with_the_tiny_models(photos, tmp_path):
    model_dir = saved_restorer(tmp_path / "model", TINY_CLIP_WIDTH)
    priors = OnlinePriors("tiny")
    user = UserPriors(degradation="very dark and a bit noisy", caption="a striped wall", reference=False)
    written = infer.restore_images(model_dir, photos[:1], tmp_path / "out", user, priors=priors)
    assert len(written) == 1 and written[0].is_file()
    pixels = load_rgb(photos[0]).pixels
    stated = priors.sample("k", pixels, user=user)
    assert stated.meta.degradation_text == user.degradation and stated.meta.caption == user.caption
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
