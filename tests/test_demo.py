"""The demo's data and its last step, without running the demo (``make demo`` does that)."""

from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline import demo_data, manifest
from restore import checkpoint, demo

SPLITS = {"train": demo_data.TRAIN_PHOTOS, "val": demo_data.VAL_PHOTOS, "test": demo_data.HELD_OUT_PHOTOS}


def test_train_validation_and_test_photos_are_different_photos():
    # By pixels, not by name: scikit-image's ``cat`` is the very photo ``chelsea`` is.
    photos = {(split, name): demo_data.photo(name) for split, names in SPLITS.items() for name in names}
    for (a, pa), (b, pb) in combinations(photos.items(), 2):
        if a[0] != b[0]:
            assert not (pa.shape == pb.shape and np.array_equal(pa, pb)), f"{a} is the same photo as {b}"
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos.values())


def test_every_split_has_every_type(tmp_path):
    path = demo_data.build(demo_data.DemoConfig(out=str(tmp_path / "demo"), tile=64, train_tiles_per_photo=1,
                                                val_tiles_per_photo=1, held_out_tiles_per_photo=1))
    rows = manifest.read(path)
    expected = {"noise", "blur", "jpeg", "low-light", "haze", "rain", "snow"}
    for split, names in SPLITS.items():
        mine = [r for r in rows if r["split"] == split]
        assert {r["degradation"] for r in mine} == expected, split
        assert {Path(r["gt_uri"]).stem.rsplit("_", 1)[0] for r in mine} == set(names), split


def test_the_shipped_model_step_says_why_it_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "SHIPPED", tmp_path / "no-weights-here")
    line = demo._restore_with_shipped(tmp_path / "photo.jpg", tmp_path / "out")
    assert line.startswith("skipped: no shipped checkpoint at") and "restore.export" in line
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(checkpoint, "SHIPPED", shipped)
    line = demo._restore_with_shipped(tmp_path / "missing.jpg", tmp_path / "out")
    assert line.startswith(f"skipped: no real photo at {tmp_path / 'missing.jpg'}")
    assert not (tmp_path / "out").exists()
