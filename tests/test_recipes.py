"""The shipped recipes and what they rely on: each parses and dry-runs; per-dataset weights draw
each dataset by its share, from shards that mix datasets, and resume exactly; progressive stages."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import shards as shard_files
from pipeline.sample_format import encode_sample
from restore import checkpoint, data, train
from restore.validate import read_metrics
from tests.test_data import WIDTH, make_sample, stream_config, take

RECIPES = Path(__file__).resolve().parents[1] / "restore" / "recipes"
PROTOCOLS = ("base", "promptir_3task", "promptir_5task", "restormer_long")
GREY = (60, 180)


def write_mixed_shards(out: Path, sizes: dict[str, int], per_shard: int = 5, val: int = 0) -> Path:
    """Shards whose samples of several datasets (``sizes``: dataset -> training samples, plus ``val``
    validation samples of the first) are interleaved, as an extraction mixes them; and index.json.
    The k-th dataset's GT images are flat grey at level ``GREY[k]``, so a crop tells its dataset."""
    rows = [(name, "train", i) for name, n in sizes.items() for i in range(n)]
    rows += [(next(iter(sizes)), "val", i) for i in range(val)]
    rows.sort(key=lambda r: (r[2] % 7, r[0], r[1], r[2]))  # any order that interleaves the datasets
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, first in enumerate(range(0, len(rows), per_shard)):
        records = []
        for position, (name, split, i) in enumerate(rows[first:first + per_shard], start=first):
            sample = make_sample(f"{name}-{split}-{i:03d}", position, split=split)
            sample.meta.dataset, sample.meta.task = name, f"{name}-task"
            sample.gt = np.full_like(sample.gt, GREY[list(sizes).index(name)])
            records.append(encode_sample(sample))
        (out / f"{number:06d}.tar").write_bytes(shard_files.tar_bytes(records))
        shards.append({"name": f"{number:06d}.tar", "samples": len(records)})
    index = {"shards": shards, "samples": len(rows), "preset": None, "embedding_dims": {"E": WIDTH, "W": WIDTH}}
    (out / "index.json").write_text(json.dumps(index))
    return out / "index.json"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    return write_mixed_shards(tmp_path_factory.mktemp("mixed"), {"small": 3, "large": 12}, val=2)


@pytest.mark.parametrize("name", PROTOCOLS)
def test_each_recipe_parses_and_dry_runs_without_its_shards(name, capsys):
    config = train.load_config(str(RECIPES / f"{name}.yaml"))
    assert train.stage_plan(config)[-1].until >= config.steps
    assert train.main(["--config", str(RECIPES / f"{name}.yaml"), "--dry-run", "--world", "4"]) == 0
    text = capsys.readouterr().out
    assert f"{config.steps:,} optimizer steps" in text and "images seen" in text
    assert "the data mix and sample counts are read from the shards" in text  # /data/priors is not here
    if name.startswith("promptir"):
        # PromptIR's 120 epochs of 4 GPUs × 8, and the epoch each recipe derives in its comments.
        per_epoch = {"promptir_3task": 4_451, "promptir_5task": 5_866}[name]
        assert f"{per_epoch:,} steps per epoch" in text and "= 120.0 epochs" in text
        assert config.warmup_steps == 15 * per_epoch and config.decay_steps == 135 * per_epoch


def test_the_restormer_recipe_grows_its_patches_and_holds_then_decays_the_rate():
    config = train.load_config(str(RECIPES / "restormer_long.yaml"))
    plan = train.stage_plan(config)
    assert [(s.crop, s.batch_size) for s in plan] == [(128, 8), (160, 5), (192, 4), (256, 2), (320, 1), (384, 1)]
    assert train.stage_at(plan, 91_999).crop == 128 and train.stage_at(plan, 92_000).crop == 160
    assert train.get_lr(0, config) == train.get_lr(91_999, config) == pytest.approx(3e-4)
    assert train.get_lr(92_000 + 104_000, config) == pytest.approx(1e-6 + 0.5 * (3e-4 - 1e-6))
    assert train.get_lr(299_999, config) == pytest.approx(1e-6, abs=1e-9)


def test_base_recipe_is_the_trainer_defaults_on_gpu_shards():
    config = train.load_config(str(RECIPES / "base.yaml"))
    defaults = train.TrainConfig(shards=config.shards, out=config.out, workers=config.workers,
                                 log_every=config.log_every, val_every=config.val_every,
                                 save_every=config.save_every)
    assert config == defaults


def test_stages_are_checked():
    with pytest.raises(ValueError, match="before steps=10"):
        train.stage_plan(train.TrainConfig(steps=10, stages=((5, 32, 2),)))
    with pytest.raises(ValueError, match="must grow"):
        train.stage_plan(train.TrainConfig(steps=10, stages=((5, 32, 2), (5, 48, 1))))
    with pytest.raises(ValueError, match=r"\[until_step, crop, batch_size\]"):
        train.stage_plan(train.load_config(None, {"stages": "10:32:2"}))


def test_dry_run_with_shards_shows_each_dataset_its_weight_and_share(mixed, capsys):
    args = ["--config", str(RECIPES / "promptir_3task.yaml"), "--shards", str(mixed), "--dry-run",
            "--set", "dataset_weights.small=4", "--set", "dataset_weights.large=1"]
    # --set adds to the recipe's weights, whose datasets these shards lack: refused, as training would.
    assert train.main(args) == 2
    assert "dataset_weights names bsd400, ots, rain100l, wed, but the shards hold no such sample" in \
        capsys.readouterr().err
    config = dataclasses.replace(train.load_config(str(RECIPES / "promptir_3task.yaml")), shards=str(mixed),
                                 dataset_weights={"small": 4, "large": 1}, samples_per_epoch=None)
    text = train.dry_run(config, world=2)
    # 3 × 4 + 12 × 1 = 24 draws an epoch, half from each dataset; 16 images a step.
    assert "; 2 steps per epoch" in text and "epochs of 24 samples" in text
    assert "mix per task: large-task 50.0%, small-task 50.0%" in text or \
           "mix per task: small-task 50.0%, large-task 50.0%" in text


def test_weighted_draws_follow_the_dataset_shares_from_mixed_shards(mixed):
    source = data.resolve(str(mixed))
    index = data.index_shards(source.urls)
    assert len(index) == 17 and index.counts("train") == {("small", "small-task"): 3, ("large", "large-task"): 12}
    weights = {"small": 8.0, "large": 1.0}  # 24 : 12, so two thirds of the draws are "small"
    mix = {d.dataset: d.share for d in data.dataset_mix(index, weights, "train")}
    assert mix == pytest.approx({"small": 2 / 3, "large": 1 / 3})
    config = stream_config(source.urls, batch_size=6, batches_per_epoch=50, index=index, dataset_weights=weights)
    batches = take(data.train_loader(config, 0, 1, 0, (data.Position(),)), 40)
    drawn = Counter(GREY.index(round(float(gt.float().mean()))) for batch in batches for gt in batch["gt"])
    assert drawn[0] / sum(drawn.values()) == pytest.approx(2 / 3, abs=0.07)  # 240 draws
    # A resumed weighted stream goes on exactly, from the positions its batches carried.
    positions = [data.Position(*(int(v) for v in batches[9]["position"][1:]))]
    resumed = take(data.train_loader(config, 0, 1, 0, tuple(positions)), 3)
    for a, b in zip(batches[10:13], resumed):
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["position"], b["position"])


def test_a_weighted_run_trains_and_validates_from_the_index(mixed, tmp_path, one_thread):
    config = train.TrainConfig(shards=str(mixed), out=str(tmp_path / "run"), model="tiny", crop=24, batch_size=2,
                               workers=0, steps=2, warmup_steps=1, log_every=1, val_every=2, save_every=2,
                               val_samples=2, threads=1, dataset_weights={"small": 2, "large": 1})
    train.fit(config)
    state = checkpoint.read_state(tmp_path / "run" / "checkpoints" / "last")
    assert state["step"] == 2 and state["skipped"] == [0]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert any("val_psnr" in r for r in records)  # the two 'val' samples, found through the index
    with pytest.raises(ValueError, match="dataset_weights names rain"):
        train.fit(dataclasses.replace(config, dataset_weights={"rain": 1}))
