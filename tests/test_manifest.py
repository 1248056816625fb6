import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import degrade, demo_data, manifest
from pipeline.image_files import encode_png, load_rgb

ROOT = Path(__file__).resolve().parents[1]


def test_paired_folders_match_by_stem(shared_data):
    m = manifest.from_paired(str(shared_data / "derain/Rain12/input"), str(shared_data / "derain/Rain12/target"),
                             "rain12", "test", "rain")
    assert len(m.rows) == 12 and not m.problems
    row = m.rows[0]
    assert row["task"] == "derain" and row["degradation"] == "rain" and row["gt_uri"].endswith(".png")
    assert (row["width"], row["height"]) == (load_rgb(row["lq_uri"]).width, load_rgb(row["lq_uri"]).height)
    assert len(row["lq_sha256"]) == 64 and row["seed"] is None


def test_bad_files_are_recorded_and_counted_never_dropped_silently(tmp_path, shared_data, awkward_images):
    lq, gt = tmp_path / "lq", tmp_path / "gt"
    shutil.copytree(shared_data / "derain/Rain12/input", lq)
    shutil.copytree(shared_data / "derain/Rain12/target", gt)
    for kind in ("zero_byte", "truncated", "not_an_image", "tiny_1x1"):
        (lq / f"{kind}.png").write_bytes(awkward_images[kind])
        (gt / f"{kind}.png").write_bytes(awkward_images["good"])
    for kind in ("rgba", "palette", "gray16"):  # usable after conversion, but sizes differ from their GT
        (lq / f"{kind}.png").write_bytes(awkward_images[kind])
        shutil.copy(shared_data / "derain/Rain12/target/rain-001.png", gt / f"{kind}.png")
    (lq / "only_lq.png").write_bytes(awkward_images["good"])
    (gt / "only_gt.png").write_bytes(awkward_images["good"])
    (gt / "rain-012.png").unlink()

    m = manifest.from_paired(str(lq), str(gt), "rain12", "test", "rain")
    reasons = {Path(p.path).stem: p.reason for p in m.problems if p.severity == "error"}
    assert len(m.rows) == 11
    assert "empty file" in reasons["zero_byte"] and "truncated" in reasons["truncated"]
    assert "not a readable image" in reasons["not_an_image"] and "at least" in reasons["tiny_1x1"]
    assert "unmatched LQ" in reasons["only_lq"] and "unmatched GT" in reasons["only_gt"]
    assert "unmatched LQ" in reasons["rain-012"]
    for kind in ("rgba", "palette", "gray16"):
        assert "50x40 but its GT" in reasons[kind]
    warned = {Path(p.path).stem for p in m.problems if p.severity == "warning"}
    assert {"rgba", "palette", "gray16"} <= warned
    # every input file is either a row or a problem
    files = {p.stem for p in lq.iterdir()}
    assert files == {Path(r["lq_uri"]).stem for r in m.rows} | set(reasons) - {"only_gt"}
    out, problems = manifest.write(m, str(tmp_path / "m.parquet"))
    assert pq.read_table(problems).num_rows == len(m.problems)
    assert "files left out with errors" in manifest.summarize(m)


def test_patterns_pair_differently_named_files(tmp_path, awkward_images):
    (tmp_path / "seq1/blur").mkdir(parents=True)
    (tmp_path / "seq1/sharp").mkdir(parents=True)
    for i in range(3):
        (tmp_path / f"seq1/blur/{i:06d}.png").write_bytes(awkward_images["good"])
        (tmp_path / f"seq1/sharp/{i:06d}.png").write_bytes(awkward_images["good"])
    m = manifest.from_paired(str(tmp_path), str(tmp_path), "gopro", "train", "blur",
                             lq_match=r"^([^/]+)/blur/([^/]+)$", gt_match=r"^([^/]+)/sharp/([^/]+)$")
    assert len(m.rows) == 3 and all("/blur/" in r["lq_uri"] and "/sharp/" in r["gt_uri"] for r in m.rows)
    assert sum(p.severity == "skipped" for p in m.problems) == 6  # each side's frames, not the other's


def _ots(root: Path, shared_data: Path) -> dict[str, list[str]]:
    """RESIDE OTS's layout with real JPEGs: clear/<id>.jpg and, per clear image, hazy renderings
    hazy/<id>_<A>_<beta>.jpg. Returns the hazy file names of each clear image."""
    hazy_dir, clear_dir = root / "dehaze/train/OTS/hazy", root / "dehaze/train/OTS/clear"
    hazy_dir.mkdir(parents=True)
    clear_dir.mkdir(parents=True)
    renderings = {"0001": [("0.8", "0.2"), ("1", "0.08"), ("0.9", "0.16")], "0002": [("0.8", "0.2")]}
    names: dict[str, list[str]] = {}
    for ident, photo in zip(renderings, ("butterfly", "leaves")):
        clear = Image.open(shared_data / f"deblur/Set3C/{photo}.png").convert("RGB").resize((64, 48))
        clear.save(clear_dir / f"{ident}.jpg", quality=90)
        for airlight, beta in renderings[ident]:
            name = f"{ident}_{airlight}_{beta}.jpg"
            hazy, _ = degrade.apply(np.asarray(clear), f"haze:airlight={airlight},beta={float(beta) * 10}", seed=1)
            Image.fromarray(hazy).save(hazy_dir / name, quality=90)
            names.setdefault(ident, []).append(name)
    return names


@pytest.mark.parametrize("protocol", ["three_task", "five_task"])
def test_protocols_pair_every_ots_hazy_image_with_its_clear_image(tmp_path, shared_data, protocol):
    names = _ots(tmp_path, shared_data)
    m = manifest.from_spec(str(ROOT / f"manifests/{protocol}.yaml"), str(tmp_path), str(tmp_path / "w"))
    ots = [r for r in m.rows if r["dataset"] == "ots"]
    assert sorted(Path(r["lq_uri"]).name for r in ots) == sorted(n for group in names.values() for n in group)
    for row in ots:
        assert Path(row["gt_uri"]).name == Path(row["lq_uri"]).name.split("_")[0] + ".jpg"
        assert row["degradation"] == "haze" and (row["width"], row["height"]) == (64, 48)
    assert len({r["key"] for r in ots}) == 4  # each hazy image its own sample
    # The other datasets of the protocol are absent here; OTS itself has no problem.
    assert not [p for p in m.problems if "OTS" in p.path]


def test_several_lq_files_of_one_gt_are_an_error_unless_asked_for(tmp_path, shared_data):
    _ots(tmp_path, shared_data)
    (tmp_path / "dehaze/train/OTS/hazy/0003_1_0.1.jpg").write_bytes(
        (tmp_path / "dehaze/train/OTS/hazy/0002_0.8_0.2.jpg").read_bytes())
    hazy, clear = str(tmp_path / "dehaze/train/OTS/hazy"), str(tmp_path / "dehaze/train/OTS/clear")
    patterns = {"lq_match": r"^(\d+)_", "gt_match": r"^(\d+)$"}
    one_each = manifest.from_paired(hazy, clear, "ots", "train", "haze", **patterns)
    errors = [p.reason for p in one_each.problems if p.severity == "error"]
    assert len(one_each.rows) == 2
    assert "two LQ files pair as '0001'" in errors[0] and "many_lq_per_gt (--many-lq-per-gt)" in errors[0]
    many = manifest.from_paired(hazy, clear, "ots", "train", "haze", many_lq_per_gt=True, **patterns)
    assert len(many.rows) == 4
    assert [(Path(p.path).name, p.reason) for p in many.problems] == [
        ("0003_1_0.1.jpg", "unmatched LQ file: no GT pairs as '0003'")]
    # The GT's own problems are recorded once, however many LQ files it has.
    (tmp_path / "dehaze/train/OTS/clear/0001.jpg").write_bytes(b"broken")
    broken = manifest.from_paired(hazy, clear, "ots", "train", "haze", many_lq_per_gt=True, **patterns)
    assert len(broken.rows) == 1 and [p.reason for p in broken.problems if "clear" in p.path] == [
        "not a readable image (6 bytes, unknown format)"]


def test_images_are_measured_one_at_a_time_not_held(tmp_path, monkeypatch):
    # A build over a large folder keeps sizes, hashes and notes: the decoded pixels of all pairs
    # (here 12 MB) must never be alive together.
    import os
    import tracemalloc

    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # fixes how many images may be in flight
    rng = np.random.default_rng(0)
    for side in ("lq", "gt"):
        (tmp_path / side).mkdir()
        for i in range(50):
            (tmp_path / side / f"{i:03d}.png").write_bytes(encode_png(rng.integers(0, 256, (200, 200, 3), np.uint8)))
    tracemalloc.start()
    try:
        m = manifest.from_paired(str(tmp_path / "lq"), str(tmp_path / "gt"), "many", "train", "noise")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(m.rows) == 50 and not m.problems
    assert peak < 50 * 2 * 200 * 200 * 3 / 3


def test_synthetic_degradation_is_deterministic_and_recorded(tmp_path, shared_data):
    specs = ["noise:sigma=25", "jpeg:quality=10..40"]
    a = manifest.from_clean_folder(str(shared_data / "deblur/Set3C"), specs, "set3c", "test", str(tmp_path / "a"))
    b = manifest.from_clean_folder(str(shared_data / "deblur/Set3C"), specs, "set3c", "test", str(tmp_path / "b"))
    assert len(a.rows) == 6
    assert [r["lq_sha256"] for r in a.rows] == [r["lq_sha256"] for r in b.rows]
    noisy = next(r for r in a.rows if r["degradation"] == "noise")
    assert json.loads(noisy["params"]) == [{"type": "noise", "params": {"kind": "noise", "sigma": 25}}]
    assert noisy["task"] == "denoise" and noisy["gt_uri"].endswith("Set3C/" + Path(noisy["gt_uri"]).name)
    lq, gt = load_rgb(noisy["lq_uri"]).pixels.astype(float), load_rgb(noisy["gt_uri"]).pixels.astype(float)
    assert 20 < np.std(lq - gt) < 26  # σ=25 noise, a little clipping at the extremes
    cycled = manifest.from_clean_folder(str(shared_data / "deblur/Set3C"), specs, "set3c", "test",
                                        str(tmp_path / "c"), assign="cycle")
    assert len(cycled.rows) == 3


def test_several_noise_samples_per_clean_image(tmp_path, shared_data):
    clean = str(shared_data / "deblur/Set3C")
    once = manifest.from_clean_folder(clean, ["noise:sigma=25"], "set3c", "train", str(tmp_path / "once"))
    thrice = manifest.from_clean_folder(clean, ["noise:sigma=25"], "set3c", "train", str(tmp_path / "a"),
                                        samples_per_image=3)
    again = manifest.from_clean_folder(clean, ["noise:sigma=25"], "set3c", "train", str(tmp_path / "b"),
                                       samples_per_image=3)
    assert len(thrice.rows) == 9
    assert len({r["key"] for r in thrice.rows}) == len({r["seed"] for r in thrice.rows}) == 9
    assert len({r["lq_sha256"] for r in thrice.rows}) == 9  # three different draws of each photo
    assert [r["lq_sha256"] for r in thrice.rows] == [r["lq_sha256"] for r in again.rows]
    # The first sample of each image is the one a single-sample manifest has: same key, same bytes.
    assert {(r["key"], r["lq_sha256"]) for r in once.rows} <= {(r["key"], r["lq_sha256"]) for r in thrice.rows}
    with pytest.raises(ValueError, match="samples_per_image must be a whole number of at least 1"):
        manifest.from_clean_folder(clean, ["noise:sigma=25"], "set3c", "train", str(tmp_path / "c"),
                                   samples_per_image=0)


def test_cli_takes_samples_per_image_and_many_lq_per_gt(tmp_path, shared_data, capsys):
    out = str(tmp_path / "noise.parquet")
    assert manifest.main(["synthetic", "--clean", str(shared_data / "deblur/Set3C"), "--degrade", "noise:sigma=15",
                          "--samples-per-image", "2", "--dataset", "set3c", "--split", "train", "--out", out]) == 0
    assert len(manifest.read(out)) == 6
    _ots(tmp_path, shared_data)
    out = str(tmp_path / "ots.parquet")
    assert manifest.main(["paired", "--lq", str(tmp_path / "dehaze/train/OTS/hazy"),
                          "--gt", str(tmp_path / "dehaze/train/OTS/clear"), "--lq-match", r"^(\d+)_",
                          "--gt-match", r"^(\d+)$", "--many-lq-per-gt", "--dataset", "ots", "--split", "train",
                          "--degradation", "haze", "--out", out]) == 0
    assert len(manifest.read(out)) == 4
    capsys.readouterr()


def test_hf_imagefolder_paired_and_synthetic(tmp_path, shared_data):
    folder = tmp_path / "hf"
    folder.mkdir()
    for name in ("butterfly", "leaves"):
        shutil.copy(shared_data / f"deblur/Set3C/{name}.png", folder / f"{name}.png")
    m = manifest.from_hf("set3c-hf", "train", str(tmp_path / "work"), data_dir=str(folder), specs=["haze"])
    assert sorted(Path(r["gt_uri"]).name for r in m.rows) == ["butterfly.png", "leaves.png"]
    assert all(r["degradation"] == "haze" for r in m.rows)


def test_spec_cli_builds_the_shared_testsets_manifest(tmp_path, shared_data):
    out = tmp_path / "testsets.parquet"
    proc = subprocess.run([sys.executable, "-m", "pipeline.manifest", "spec", str(ROOT / "manifests/shared_testsets.yaml"),
                           "--root", str(shared_data), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = manifest.read(str(out))
    datasets = {r["dataset"] for r in rows}
    assert {"kodak24", "live1", "rain12", "gopro-real", "dicm", "rni15", "set3c"} <= datasets
    assert all(r["gt_uri"] is None for r in rows if r["dataset"] == "dicm")
    assert "manifest:" in proc.stdout and "samples" in proc.stdout


@pytest.mark.parametrize("name", ["three_task", "five_task", "daclip_10"])
def test_protocol_specs_parse_and_report_missing_folders(tmp_path, name):
    m = manifest.from_spec(str(ROOT / f"manifests/{name}.yaml"), str(tmp_path), str(tmp_path / "w"))
    assert not m.rows and m.problems and all("does not exist" in p.reason for p in m.problems)


def test_duplicate_keys_and_foreign_parquets_are_refused(tmp_path):
    import pyarrow as pa

    row = {"key": "k", "dataset": "d", "split": "s", "task": "t", "degradation": "noise", "params": "[]", "seed": 1,
           "lq_uri": "x", "gt_uri": None, "width": 8, "height": 8, "lq_sha256": "0", "gt_sha256": None, "notes": ""}
    with pytest.raises(ValueError, match="duplicate sample keys"):
        manifest.write(manifest.Manifest(rows=[row, dict(row)]), str(tmp_path / "m.parquet"))
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        manifest.read(str(tmp_path / "other.parquet"))


def test_demo_dataset_covers_every_type_with_held_out_photos(tmp_path):
    path = demo_data.build(demo_data.DemoConfig(out=str(tmp_path / "demo"), tile=64, train_tiles_per_photo=1,
                                                held_out_tiles_per_photo=1))
    rows = manifest.read(path)
    by_split = {s: {r["degradation"] for r in rows if r["split"] == s} for s in ("train", "test")}
    expected = {"noise", "blur", "jpeg", "low-light", "haze", "rain", "snow"}
    assert by_split["train"] == expected and by_split["test"] == expected
    train_photos = {Path(r["gt_uri"]).stem.rsplit("_", 1)[0] for r in rows if r["split"] == "train"}
    test_photos = {Path(r["gt_uri"]).stem.rsplit("_", 1)[0] for r in rows if r["split"] == "test"}
    assert not train_photos & test_photos
