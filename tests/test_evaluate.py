"""Evaluation writes the papers' table in both conventions, as it goes, with priors from shards or computed on the fly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline import manifest
from pipeline import shards as shard_files
from pipeline.image_files import load_rgb, save_png
from pipeline.sample_format import Sample, SampleMeta, encode_sample
from restore import evaluate
from restore.model import Restorer, tiny
from tests.test_data import WIDTH, make_sample, pattern

# One torch thread: the tiny model gains nothing from more, and a shared runner stays responsive.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> tuple[Path, Path]:
    """A manifest of two clean patterns at noise σ 15 and 50, plus two photos without GT; and a
    restorer saved with save_pretrained."""
    root = tmp_path_factory.mktemp("testset")
    clean = root / "clean"
    clean.mkdir()
    for i in range(2):
        save_png(pattern(48, i * 1.3), str(clean / f"wave{i}.png"))
    built = manifest.from_clean_folder(str(clean), ["noise:sigma=15", "noise:sigma=50"], "waves", "test",
                                       str(root / "lq"))
    real = root / "real"
    real.mkdir()
    for i in range(2):
        save_png((pattern(40, i) * 0.3).astype(np.uint8), str(real / f"dark{i}.png"))
    built.extend(manifest.from_paired(str(real), None, "darkroom", "test", "low-light"))
    path, _ = manifest.write(built, str(root / "manifest.parquet"))
    torch.manual_seed(0)
    model_dir = Restorer(tiny(token_width=WIDTH, clip_width=WIDTH)).save_pretrained(root / "model")
    return Path(path), model_dir


@pytest.fixture(scope="module")
def scored_set(test_set, tmp_path_factory) -> Path:
    """The test set's images with GT only (the manifest is sorted by key: the photos without GT
    come first), so that --limit picks images that are scored."""
    rows = [r for r in manifest.read(str(test_set[0])) if r["gt_uri"]]
    path, _ = manifest.write(manifest.Manifest(rows), str(tmp_path_factory.mktemp("scored") / "manifest.parquet"))
    return Path(path)


def test_columns_split_fixed_variants_and_merge_drawn_ones():
    rows = [{"key": f"k{i}", "dataset": "kodak", "degradation": "noise",
             "params": json.dumps([{"type": "noise", "params": {"sigma": s}}])} for i, s in enumerate([15, 25, 15, 25])]
    rows += [{"key": f"d{i}", "dataset": "demo", "degradation": "rain",
              "params": json.dumps([{"type": "rain", "params": {"angle": i}}])} for i in range(4)]
    labels = evaluate.column_labels(rows)
    assert labels["k0"] == labels["k2"] == "kodak noise sigma=15" and labels["k1"] == "kodak noise sigma=25"
    assert {labels[f"d{i}"] for i in range(4)} == {"demo rain"}  # drawn per image: one column


def test_evaluate_with_the_weight_free_analysis_writes_the_table(test_set, tmp_path):
    path, model_dir = test_set
    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(model_dir), "--manifest", str(path), "--preset", "analysis-only",
                          "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("| Method | waves noise sigma=15 (2) | waves noise sigma=50 (2) | Average |")
    # Both conventions by default, ours first, each row tagged; the footer names both, and whole images.
    assert lines[2].startswith("| Input (degraded) [lmdir] |") and lines[3].startswith("| lmdir restorer [lmdir] |")
    assert lines[4].startswith("| Input (degraded) [promptir] |")
    assert lines[5].startswith("| lmdir restorer [promptir] |")
    assert "restored whole (no tiles)" in text and "- lmdir: RGB" in text and "- promptir: RGB" in text
    assert "| darkroom low-light | 2 |" in text
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scored = [r for r in results if r["has_gt"]]
    assert len(scored) == 4 and all(math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 for r in scored)
    assert all(math.isfinite(r["promptir_psnr"]) and 0 < r["promptir_ssim"] <= 1 for r in scored)
    heavy = [r for r in scored if "sigma=50" in r["column"]]
    light = [r for r in scored if "sigma=15" in r["column"]]
    assert np.mean([r["psnr_in"] for r in heavy]) < np.mean([r["psnr_in"] for r in light])
    assert len(list((out / "restored").glob("*.png"))) == 6


def test_priors_from_shards_are_used_when_given(test_set, tmp_path, capsys):
    path, model_dir = test_set
    rows = [r for r in manifest.read(str(path)) if r["gt_uri"]]
    records, status = [], []
    for i, row in enumerate(rows):
        donor = make_sample(row["key"], i, size=48)
        lq = evaluate._read_image(row["lq_uri"])[0]
        meta = SampleMeta(key=row["key"], dataset=row["dataset"], split="test", task=row["task"], width=48,
                          height=48, analysis=donor.meta.analysis)
        records.append(encode_sample(Sample(meta=meta, lq=lq, ref=donor.ref, embeddings=donor.embeddings)))
        status.append(shard_files.StatusRow(row["key"], 0, "ok"))
    shard_files.write_shard(tmp_path, 0, shard_files.record_members(records), status, {})
    shard_files.write_index(tmp_path, "waves", 1, {"embedding_dims": {"E": WIDTH, "W": WIDTH}})
    results = evaluate.evaluate(model_dir, [str(path)], shards=str(tmp_path / "index.json"), preset="analysis-only")
    assert "4 samples from shards, 2 computed on the fly (analysis-only)" in capsys.readouterr().err
    table = evaluate.table(results, method="tiny")
    assert "| tiny [lmdir] |" in table and "| tiny [promptir] |" in table
    averages = evaluate.averages(results)
    assert math.isfinite(averages["psnr"]) and averages["psnr_in"] < 30


def test_y_channel_tables_say_y(test_set, scored_set, tmp_path):
    path, model_dir = scored_set, test_set[1]
    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(model_dir), "--manifest", str(path), "--preset", "analysis-only",
                          "--convention", "lmdir", "--y-channel", "--limit", "2", "--out", str(out)]) == 0
    text = (out / "results.md").read_text()
    footer = text.split("\n\n")[1]
    assert "Y (BT.601)" in footer and "RGB" not in footer and "promptir" not in footer
    assert "| lmdir restorer |" in text  # one convention: untagged rows


def test_results_are_appended_as_each_image_is_scored(test_set, scored_set, tmp_path):
    path, model_dir = scored_set, test_set[1]
    log = tmp_path / "eval" / "results.jsonl"
    for n, result in enumerate(evaluate.evaluate_images(model_dir, [str(path)], preset="analysis-only", limit=3,
                                                        out=tmp_path / "eval"), start=1):
        lines = log.read_text().splitlines()
        assert len(lines) == n and json.loads(lines[-1])["key"] == result.key


def test_ctrl_c_keeps_what_was_measured_and_prints_its_table(test_set, scored_set, tmp_path, monkeypatch, capsys):
    path, model_dir = scored_set, test_set[1]
    real = evaluate._evaluate_sample
    calls = []

    def interrupted_at_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "_evaluate_sample", interrupted_at_the_third)
    out = tmp_path / "eval"
    assert evaluate.main(["--checkpoint", str(model_dir), "--manifest", str(path), "--preset", "analysis-only",
                          "--limit", "4", "--out", str(out)]) == 130
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    text = (out / "results.md").read_text()
    assert "Interrupted: 2 images scored." in text and "| lmdir restorer [lmdir] |" in text
    printed = capsys.readouterr()
    assert "| lmdir restorer [lmdir] |" in printed.out
    assert f"interrupted: after 2 images; their results are in {out / 'results.jsonl'}" in printed.err
    assert "evaluation does not resume" in printed.err


def test_tiles_only_when_asked_and_the_footer_says_so(test_set, scored_set):
    path, model_dir = scored_set, test_set[1]
    whole, = evaluate.evaluate(model_dir, [str(path)], preset="analysis-only", limit=1, convention="lmdir")
    tiled, = evaluate.evaluate(model_dir, [str(path)], preset="analysis-only", limit=1, convention="lmdir", tile=16)
    assert whole.tile == 0 and "restored whole" in evaluate.table([whole])
    assert "restored in 16×16 tiles" in evaluate.table([tiled])
    # A 48-px image in 16-px tiles is restored differently from one pass over it.
    assert math.isfinite(whole.psnr) and tiled.psnr != whole.psnr


def test_promptir_convention_crops_a_real_photo_to_multiples_of_16(test_set, tmp_path, shared_data):
    _, model_dir = test_set
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    # A real photo, 58×72: neither side is a multiple of 16.
    photo = load_rgb(str(shared_data / "denoise/Kodak24/kodim01.png")).pixels[100:158, 200:272]
    save_png(photo, str(clean_dir / "kodim01.png"))
    built = manifest.from_clean_folder(str(clean_dir), ["noise:sigma=25"], "kodak", "test", str(tmp_path / "lq"))
    path, _ = manifest.write(built, str(tmp_path / "manifest.parquet"))
    out = tmp_path / "eval"
    result, = evaluate.evaluate(model_dir, [path], preset="analysis-only", out=out)
    lq = load_rgb(manifest.read(path)[0]["lq_uri"]).pixels / 255.0
    gt = photo / 255.0
    # PromptIR: crop_img to 48×64 (centred), then scikit-image's default SSIM and PSNR.
    lq16, gt16 = lq[5:53, 4:68], gt[5:53, 4:68]
    assert result.promptir_ssim_in == pytest.approx(structural_similarity(gt16, lq16, data_range=1, channel_axis=-1),
                                                    abs=1e-6)
    assert result.promptir_psnr_in == pytest.approx(peak_signal_noise_ratio(gt16, lq16, data_range=1), abs=1e-4)
    # Ours: the whole image, Gaussian SSIM.
    assert result.ssim_in == pytest.approx(structural_similarity(
        gt, lq, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False), abs=1e-6)
    assert math.isfinite(result.promptir_psnr) and 0 < result.promptir_ssim <= 1
    assert load_rgb(str(out / "restored" / f"{result.key}.png")).pixels.shape == photo.shape  # ours: whole
