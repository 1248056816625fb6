"""Evaluation writes the papers' table, with priors from shards or computed on the fly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import manifest
from pipeline import shards as shard_files
from pipeline.image_files import save_png
from pipeline.sample_format import Sample, SampleMeta, encode_sample
from restore import evaluate
from restore.model import Restorer, tiny
from tests.test_data import WIDTH, make_sample, pattern


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
    assert lines[2].startswith("| Input (degraded) |") and lines[3].startswith("| lmdir restorer |")
    assert "| darkroom low-light | 2 |" in text
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scored = [r for r in results if r["has_gt"]]
    assert len(scored) == 4 and all(math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1 for r in scored)
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
    shard_files.write_shard(tmp_path, 0, records, status, {})
    shard_files.write_index(tmp_path, "waves", 1, {"embedding_dims": {"E": WIDTH, "W": WIDTH}})
    results = evaluate.evaluate(model_dir, [str(path)], shards=str(tmp_path / "index.json"), preset="analysis-only")
    assert "4 samples from shards, 2 computed on the fly (analysis-only)" in capsys.readouterr().err
    table = evaluate.table(results, method="tiny")
    assert "| tiny |" in table and table.count("\n") > 5
    averages = evaluate.averages(results)
    assert math.isfinite(averages["psnr"]) and averages["psnr_in"] < 30
