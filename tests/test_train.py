"""The trainer on real tiny shards: exact resume after a kill (across a stage change, with bad data
skipped), DDP replicas in step, checkpoints, a step without host reads, EMA and weight decay."""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline import shards as shard_files
from restore import checkpoint, data, metrics, train
from restore.model import Restorer, tiny
from restore.model.priors import random_priors
from restore.validate import read_metrics
from tests.test_data import make_sample, write_shards

N = 3  # steps before the kill; the schedule has 2N


def config_for(index: Path, out: Path, **changes) -> train.TrainConfig:
    settings = dict(shards=str(index), out=str(out), model="tiny", crop=32, batch_size=2, workers=0, shuffle_buffer=8,
                    steps=2 * N, warmup_steps=2, lr=1e-3, grad_clip=1.0, fft_weight=0.05, log_every=1,
                    val_every=2 * N, val_samples=2, save_every=N, keep=5, threads=1)
    settings.update(changes)
    return train.TrainConfig(**settings)


@pytest.fixture(scope="module")
def shard_index(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), shards=2, per_shard=5, test_samples=2, held_out="val")


@pytest.fixture(scope="module")
def corrupt_index(tmp_path_factory) -> Path:
    """The same shards with one training sample whose LQ image is not a PNG."""
    index = write_shards(tmp_path_factory.mktemp("corrupt"), shards=2, per_shard=5, test_samples=2, held_out="val")
    records = shard_files.read_records(index.parent / "000000.tar")
    records["s0001"]["lq.png"] = b"\x89PNG\r\n\x1a\n not really a png"
    (index.parent / "000000.tar").write_bytes(shard_files.tar_bytes(records.values()))
    return index


pytestmark = pytest.mark.usefixtures("one_thread")


def _killed_at_n(config: train.TrainConfig) -> None:
    torch.set_num_threads(1)

    def die(step: int, logs: dict) -> None:
        if step == N:
            os._exit(0)  # no final save, no cleanup: as if the job were preempted

    train.fit(config, on_step=die)


@pytest.mark.parametrize("kind", ["plain", "stages and bad data"])
def test_kill_and_resume_gives_the_same_weights_as_a_straight_run(shard_index, corrupt_index, tmp_path, kind):
    changes = {}
    if kind != "plain":  # killed where the crop and batch size change, and skipping a corrupt sample
        shard_index = corrupt_index
        changes = dict(stages=((N, 32, 2), (2 * N, 24, 3)))
    straight = train.fit(config_for(shard_index, tmp_path / "straight", **changes))
    resumed_config = config_for(shard_index, tmp_path / "resumed", **changes)
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
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 2 * N + 1))
    assert any("val_psnr_denoise" in r for r in records)
    # The curve's baseline: the same validation inputs each time, so one value.
    assert len({r["val_input_psnr"] for r in records if "val_psnr" in r}) == 1
    assert (run / "curve.png").is_file() and (run / "val" / f"step_{2 * N:08d}.png").is_file()
    assert list((run / "tb").iterdir()) and (run / "config.yaml").is_file()
    state = checkpoint.read_state(checkpoints / "last")
    straight_state = checkpoint.read_state(tmp_path / "straight" / "checkpoints" / "last")
    assert state["skipped"] == straight_state["skipped"]  # counted once, across the kill
    if kind == "plain":
        assert state["step"] == 2 * N and state["samples_seen"] == 2 * N * 2 and state["skipped"] == [0]
    else:
        assert state["samples_seen"] == N * 2 + N * 3 and state["skipped"][0] > 0
        assert records[-1 if "loss" in records[-1] else -2]["train_skipped"] == state["skipped"][0]
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
    # Held after the warmup, then a cosine longer than the run: it stops part-way (PromptIR's).
    held = train.TrainConfig(steps=100, warmup_steps=10, hold_steps=20, decay_steps=140, lr=1e-3, min_lr=0.0)
    assert train.get_lr(29, held) == pytest.approx(1e-3)
    assert train.get_lr(100, held) == pytest.approx(0.5 * (1 + math.cos(math.pi * 70 / 140)) * 1e-3)


def test_psnr_loss_is_minus_the_mean_psnr_and_weighs_every_image_alike():
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    error = torch.tensor([0.01, 0.1]).view(2, 1, 1, 1).expand_as(target)  # 40 dB and 20 dB
    restored = (target + error).requires_grad_()
    loss = train.restoration_loss(restored, target, 0.0, "psnr")
    assert loss.item() == pytest.approx(-metrics.psnr(restored.detach(), target).mean().item(), abs=1e-3)
    assert loss.item() == pytest.approx(-30.0, abs=1e-3)
    loss.backward()
    # Each image's dB counts alike, so the image ten times closer gets a gradient ten times larger;
    # L1 gives both the same, and large errors (haze, low light) rule the sum.
    assert (restored.grad[0] / restored.grad[1]).flatten().tolist() == pytest.approx([10.0] * 3 * 16 * 16, rel=1e-4)
    restored.grad = None
    train.restoration_loss(restored, target, 0.0, "l1").backward()
    assert torch.equal(restored.grad[0], restored.grad[1])
    with pytest.raises(ValueError, match="pixel_loss must be one of l1, psnr, got 'l2'"):
        train.load_config(None, {"pixel_loss": "l2"})


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


def test_ema_is_the_per_tensor_formula_in_one_fused_update():
    torch.manual_seed(0)
    model = Restorer(tiny(token_width=8, clip_width=8))
    ema = checkpoint.ModelEMA(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model, updates=1000)  # the decay has ramped up to 0.9
    for name, value in ema.module.state_dict().items():
        expected = before[name] + 0.1 * (model.state_dict()[name] - before[name])
        assert torch.allclose(value, expected, atol=1e-6, rtol=1e-5), name


def test_learned_tokens_and_temperatures_are_not_weight_decayed_and_old_checkpoints_still_resume(tmp_path):
    model = Restorer(tiny(token_width=8, clip_width=8))
    decay, rest = train._param_groups(model, 1e-4)
    exempt = {id(p) for _, p in rest["params"]}  # (name, parameter) pairs
    for token in (model.prompt_encoder.null, model.prompt_encoder.queries, model.prompt_encoder.source,
                  model.reference_encoder.null, model.caption_encoder.null, model.encoder1[0].attn.temperature):
        assert id(token) in exempt
    assert id(model.patch_embed.weight) in {id(p) for _, p in decay["params"]} and decay["weight_decay"] == 1e-4
    assert rest["weight_decay"] == 0.0

    # A checkpoint written before the groups had names (and grouped by dimension only) resumes:
    # each parameter gets its own moments back.
    named = [(n, p) for n, p in model.named_parameters()]
    old = torch.optim.AdamW([{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": 1e-4},
                             {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}], lr=1e-3)
    model(torch.rand(1, 3, 16, 16), random_priors(model.config, 1, (16, 16))).mean().backward()
    old.step()
    checkpoint.save(tmp_path, 1, model, model, old, {}, {}, keep=1)
    new = torch.optim.AdamW(train._param_groups(model, 1e-4), lr=1e-3)
    checkpoint.load(tmp_path / "last", model, model, new, saved_names=train._legacy_param_names(model))
    for name, p in named:
        assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"]), name
    # and the new checkpoints load as they are
    checkpoint.save(tmp_path, 2, model, model, new, {}, {}, keep=1)
    again = torch.optim.AdamW(train._param_groups(model, 1e-4), lr=1e-3)
    checkpoint.load(tmp_path / "last", model, model, again)
    assert all(torch.equal(again.state[p]["exp_avg_sq"], new.state[p]["exp_avg_sq"]) for _, p in named)


def test_every_parameter_learns_from_a_training_batch_so_ddp_needs_no_unused_parameter_search():
    model = Restorer(tiny(token_width=8, clip_width=8))
    # A batch as the stream makes it, with samples missing priors and the prior dropout on top.
    examples = [data.training_example(make_sample(f"k{i}", i, reference=i != 1), 24, np.random.default_rng(i), 8, 8)
                for i in range(2)]
    batch = data.collate(examples)
    batch["present_caption_tokens"][:] = False
    priors = train.drop_priors(data.batch_priors(batch), 0.5, torch.Generator().manual_seed(0))
    model(data.widen(batch["lq"]), data.widen_priors(priors)).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_a_step_reads_nothing_back_from_the_device_between_log_intervals(shard_index, tmp_path, monkeypatch):
    # On a GPU each read of a tensor's value waits for the queued work; count lmdir's own (torch's
    # CPU optimizer reads its step counters, which a GPU's fused AdamW does not).
    reads = []

    def counting(read):
        def wrapper(self):
            if f"{os.sep}restore{os.sep}" in sys._getframe(1).f_code.co_filename:
                reads.append(sys._getframe(1).f_code.co_name)
            return read(self)
        return wrapper

    for name in ("item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    per_step = []
    config = config_for(shard_index, tmp_path / "run", steps=5, log_every=5, val_every=5, save_every=5)
    train.fit(config, on_step=lambda step, logs: per_step.append(len(reads)))
    assert per_step[:4] == [per_step[0]] * 4 and per_step[4] > per_step[3]  # only the logging step reads


def test_data_that_is_all_bad_ends_training_with_one_error_line_naming_it(tmp_path, capsys):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar file" * 20)
    sets = dict(model="tiny", workers=1, crop=32, batch_size=2, steps=3, threads=1, samples_per_epoch=10)
    status = train.main(["--shards", str(broken), "--out", str(tmp_path / "run"),
                         *(a for k, v in sets.items() for a in ("--set", f"{k}={v}"))])
    err = capsys.readouterr().err
    # The worker's error reaches the user as its own message, not torch's re-raise with a traceback.
    assert status == 2
    assert f"error: rank 0 worker 0: {data.BARREN_LIMIT} bad records or shards in a row" in err
    assert str(broken) in err.splitlines()[-1] and "Traceback" not in err
