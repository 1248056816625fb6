"""The training set of the analysis classifier: labels, camera effects, jitter, and a small fit."""

import numpy as np
import pytest

from pipeline.analysis import train
from pipeline.analysis.classifier import ANALYSED_TYPES


def _labels(applied):
    return dict(zip(ANALYSED_TYPES, train.label_vector(applied)))


def test_jpeg_label_grows_with_compression_and_clean_is_the_rest():
    assert _labels([])["clean"] == 1.0
    fine = _labels([{"type": "jpeg", "params": {"quality": train.CLEAN_JPEG_QUALITY}}])
    assert fine["jpeg"] == 0.0 and fine["clean"] == 1.0
    mid = _labels([{"type": "noise", "params": {"sigma": 10}}, {"type": "jpeg", "params": {"quality": 84}}])
    assert mid["noise"] == 1.0 and 0.0 < mid["jpeg"] < 1.0 and mid["clean"] == 0.0
    assert _labels([{"type": "jpeg", "params": {"quality": 30}}])["jpeg"] == 1.0


@pytest.fixture(scope="module")
def crop():
    return train.load_photo("chelsea")[:256, :256].copy()


def test_jitter_keeps_the_median_in_a_well_exposed_range(crop):
    rng = np.random.default_rng(1)
    medians = [np.median(train._luma(train.jitter(crop, rng).astype(np.float32) / 255)) for _ in range(20)]
    assert min(medians) > 0.18 and max(medians) < 0.9


def test_backlit_keeps_a_bright_sky_over_under_exposed_land(crop):
    for seed in range(6):
        img, applied = train.backlit(crop, np.random.default_rng(seed))
        y = train._luma(img.astype(np.float32) / 255)
        sky, land = y[: int(0.1 * len(y))], y[int(0.6 * len(y)):]
        assert img.shape == crop.shape and img.dtype == np.uint8
        assert np.median(sky) > 0.4 and np.median(land) < 0.5 * np.median(train._luma(crop[int(0.6 * len(y)):] / 255))
        labels = _labels(applied)
        assert labels["low-light"] == 1.0 and labels["clean"] == 0.0
        assert [a["type"] for a in applied][1:] in ([], ["jpeg"])


def test_fit_learns_separable_examples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    labels = np.zeros((200, len(ANALYSED_TYPES)), np.float32)
    labels[np.arange(200), (x[:, 0] > 0).astype(int)] = 1.0
    examples = [train.Example(np.abs(f) * np.sign(f), y, "p") for f, y in zip(x, labels)]
    model = train.fit(examples, hidden=8, steps=300)
    assert train.top1(model, examples) > 0.9


def test_fit_is_the_same_whatever_the_thread_and_process_counts():
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 40))
    labels = (x[:, :len(ANALYSED_TYPES)] > 0.5).astype(np.float32)
    examples = [train.Example(f, y, "p") for f, y in zip(x, labels)]
    with threadpool_limits(limits=2):
        threaded = train.fit(examples, hidden=32, steps=60, members=2)
    with threadpool_limits(limits=1):
        single = train.fit(examples, hidden=32, steps=60, members=2)
    in_processes = train.fit(examples, hidden=32, steps=60, members=2, workers=2)
    for name in ("w1", "b1", "w2", "b2"):
        assert np.array_equal(getattr(threaded, name), getattr(single, name))
        assert np.array_equal(getattr(in_processes, name), getattr(single, name))


def test_photo_files_are_found_and_shrunk_to_the_benchmark_size(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((1200, 2048, 3), 90, np.uint8)).save(tmp_path / "wide.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    photos = train.photos_in([str(tmp_path)])
    assert photos == (str((tmp_path / "wide.png").resolve()),)
    assert train.load_photo(photos[0]).shape == (600, train.FILE_SIDE, 3)
    (tmp_path / "wide.png").unlink()
    with pytest.raises(ValueError, match="no image files"):
        train.photos_in([str(tmp_path)])


def test_missing_package_photos_name_the_packages_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install opencv-doc plasma-workspace-wallpapers"):
        train.package_photos(tmp_path)


def test_photo_dir_given_relative_still_loads_files(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.full((64, 80, 3), 90, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    (photo,) = train.photos_in(["."])
    assert train.load_photo(photo).shape == (64, 80, 3)
