"""The trainer on real tiny shards: exact resume after a kill, DDP replicas in step, checkpoints."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from restore import checkpoint, train
from restore.model import Restorer, tiny
from tests.test_data import write_shards

N = 3  # steps before the kill; the schedule has 2N


def config_for(index: Path, out: Path, **changes) -> train.TrainConfig:
    settings = dict(shards=str(index), out=str(out), crop=32, batch_size=2, workers=0, shuffle_buffer=8,
                    steps=2 * N, warmup_steps=2, lr=1e-3, grad_clip=1.0, fft_weight=0.05, log_every=1,
                    val_every=2 * N, val_samples=2, save_every=N, keep=5, threads=1)
    settings.update(changes)
    return train.TrainConfig(**settings)


@pytest.fixture(scope="module")
def shard_index(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), shards=2, per_shard=5, test_samples=2, held_out="val")


pytestmark = pytest.mark.usefixtures("one_thread")


def _killed_at_n(config: train.TrainConfig) -> None:
    torch.set_num_threads(1)

    def die(step: int, logs: dict) -> None:
        if step == N:
            os._exit(0)  # no final save, no cleanup: as if the job were preempted

    train.fit(config, on_step=die)


def test_kill_and_resume_gives_the_same_weights_as_a_straight_run(shard_index, tmp_path):
    straight = train.fit(config_for(shard_index, tmp_path / "straight"))
    resumed_config = config_for(shard_index, tmp_path / "resumed")
    child = multiprocessing.get_context("spawn").Process(target=_killed_at_n, args=(resumed_config,))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0
    checkpoints = tmp_path / "resumed" / "checkpoints"
    assert os.readlink(checkpoints / "last") == f"step_{N:08d}"
    assert not (checkpoints / f"step_{2 * N:08d}").exists()
    resumed = train.fit(resumed_config, resume=True)
    for name, value in straight.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name], atol=1e-6, rtol=0), name
    ema_a = load_file(str(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors"))
    ema_b = load_file(str(checkpoints / "last" / "model.safetensors"))
    assert all(torch.allclose(ema_a[k], ema_b[k], atol=1e-6, rtol=0) for k in ema_a)
    # The run folder tells how it went.
    run = tmp_path / "resumed"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 2 * N + 1))
    assert any("val_psnr_denoise" in r for r in records)
    # The curve's baseline: the same validation inputs each time, so one value.
    assert len({r["val_input_psnr"] for r in records if "val_psnr" in r}) == 1
    assert (run / "curve.png").is_file() and (run / "val" / f"step_{2 * N:08d}.png").is_file()
    assert list((run / "tb").iterdir()) and (run / "config.yaml").is_file()
    state = checkpoint.read_state(checkpoints / "last")
    assert state["step"] == 2 * N and state["samples_seen"] == 2 * N * 2
    assert Restorer.from_pretrained(checkpoints / "best").config.token_width == 8


def _ddp_rank(rank: int, port: int, config: train.TrainConfig, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    model = train.fit(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_stay_equal(shard_index, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = config_for(shard_index, tmp_path / "ddp", steps=3, save_every=3, val_every=3)
    torch.multiprocessing.spawn(_ddp_rank, args=(port, config, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    torch.manual_seed(config.seed)  # the trainer's initialisation
    initial = Restorer(Restorer.from_pretrained(tmp_path / "ddp" / "checkpoints" / "last").config)
    moved = 0
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name
        moved += not torch.equal(value, initial.state_dict()[name])
    assert moved > 10  # they trained, and in step
    state = checkpoint.read_state(tmp_path / "ddp" / "checkpoints" / "last")
    assert state["world"] == 2 and len(state["positions"]) == 2 and state["samples_seen"] == 3 * 2 * 2


def test_validation_never_uses_a_test_split(shard_index, tmp_path):
    with pytest.raises(ValueError, match="never on a test split"):
        train.fit(config_for(shard_index, tmp_path / "run", val_split="test"))


def test_learning_rate_warms_up_then_follows_the_cosine():
    config = train.TrainConfig(steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    assert train.get_lr(0, config) == pytest.approx(1e-4)
    assert train.get_lr(9, config) == pytest.approx(1e-3)
    assert train.get_lr(60, config) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert train.get_lr(110, config) == pytest.approx(1e-5)
    lrs = [train.get_lr(s, config) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.002\nbatch_size: 4\nmodel_overrides: {dim: 16}\n")
    config = train.load_config(str(path), {"batch_size": "6", "model_overrides.prior_dropout": "0.2"}, out="x")
    assert (config.lr, config.batch_size, config.out) == (0.002, 6, "x")
    assert config.model_overrides == {"dim": 16, "prior_dropout": "0.2"}
    model_config = train.restorer_config(config, {"token_width": 8, "clip_width": 8})
    assert (model_config.dim, model_config.prior_dropout, model_config.token_width) == (16, 0.2, 8)
    with pytest.raises(ValueError, match="unknown setting"):
        train.load_config(None, {"learning_rate": "1"})
    with pytest.raises(ValueError, match="cannot read"):
        train.load_config(None, {"steps": "many"})


def test_ema_averages_buffers_and_checkpoints_keep_n_last_and_best(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = checkpoint.ModelEMA(model, decay=0.5)
    model(torch.randn(2, 3, 8, 8))  # moves BatchNorm's running statistics
    ema.update(model, updates=100)
    running = ema.module[1].running_mean
    assert torch.allclose(running, 0.5 * model[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == 1

    restorer = Restorer(tiny(token_width=8, clip_width=8))
    optimizer = torch.optim.AdamW(restorer.parameters(), lr=1e-3)
    restorer(torch.rand(1, 3, 16, 16)).mean().backward()
    optimizer.step()
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        checkpoint.save(root, step, restorer, restorer, optimizer, {"note": step}, {"t": torch.zeros(1)},
                        keep=2, best=step == 2)
    assert [p.name for p in checkpoint.step_dirs(root)] == ["step_00000002", "step_00000003", "step_00000004"]
    assert os.readlink(root / "best") == "step_00000002" and os.readlink(root / "last") == "step_00000004"
    assert not list(root.glob(".*tmp*"))
    fresh = torch.optim.AdamW(restorer.parameters(), lr=1e-3)
    loaded = checkpoint.load(root / "last", restorer, restorer, fresh)
    assert loaded.state["note"] == 4 and loaded.state["step"] == 4
    before, after = optimizer.state_dict(), fresh.state_dict()
    for param, values in before["state"].items():
        for name, value in values.items():
            assert torch.equal(value, after["state"][param][name])
    assert math.isclose(after["param_groups"][0]["lr"], 1e-3)
