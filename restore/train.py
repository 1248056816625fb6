"""Train the restorer on prior shards: one loop for the CPU, one GPU and many (torchrun, DDP).

    python -m restore.train --shards SPEC [--val-shards SPEC] [--config YAML] [--out RUN] [--resume]
                            [--set lr=1e-3 --set model_overrides.dim=16 ...]
    python -m restore.train --config restore/recipes/lmdir_cpu.yaml      # clean photos, degraded on the fly
    torchrun --nproc_per_node 8 -m restore.train --shards /data/priors/index.json --config base.yaml

SPEC is a brace pattern of local tars, an extraction's index.json, a published-set manifest or
http(s) URLs (restore.data); shard priors come from the shards, nothing is recomputed. The
``synthesis`` section adds clean photo folders degraded on the fly (restore.synthesis), whose
priors the loader workers compute from each degraded crop; with both, ``shard_share`` of the
examples come from the shards and every batch mixes the two. Under
torchrun each process is one rank (NCCL on GPUs, gloo on the CPU); without it the same code runs
as a single rank. Every random choice derives from the seed, the rank and the position in the
data, and a checkpoint holds all of it, so ``--resume`` continues a killed run exactly where its
last checkpoint left it. Ctrl-C finishes the current step and saves a checkpoint of it first (a
second Ctrl-C stops at once). The run folder holds the resolved config (config.yaml), metrics.jsonl,
TensorBoard events (tb/), validation grids (val/), curve.png and checkpoints/ (restore.checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import cli, typed_config
from pipeline.shard_cache import ShardUnavailable
from restore import checkpoint, data
from restore.data import Position
from restore.model import Restorer, RestorerConfig, drop_priors, preset
from restore.priors_online import OnlinePriors
from restore.synthesis import SynthesisConfig, list_photos, validation_samples
from restore.validate import autocast, plot_curve, validate


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; written to RUN/config.yaml as resolved."""

    shards: str = ""
    val_shards: str | None = None  # default: the training shards' val_split samples
    out: str = "runs/restorer"
    # The restorer: a preset of restore.model and field overrides; prior widths come from the data.
    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    split: str | None = "train"  # train on samples of this split only (None: all)
    # Validation (and so the "best" checkpoint) uses this split of the shards, or of --val-shards;
    # never a test split. With synthesis and no val shards: the synthesis's validation photos.
    val_split: str | None = "val"
    synthesis: SynthesisConfig = SynthesisConfig()
    shard_share: float = 0.5  # with shards and synthesis: share of examples from the shards
    # Data stream (restore.data).
    crop: int = 128
    batch_size: int = 8  # per rank and optimizer micro-step
    workers: int = 2  # DataLoader workers per rank (0: read in the training process)
    shuffle_buffer: int = 256
    resampled: bool = True
    samples_per_epoch: int | None = None  # default: the index's sample count
    # Optimisation: AdamW, linear warmup then cosine to min_lr (Restormer's recipe).
    steps: int = 100_000  # optimizer steps in the whole schedule
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_steps: int = 1000
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.01  # max global gradient norm; 0 turns clipping off
    fft_weight: float = 0.0  # weight of the L1 loss between Fourier spectra, added to pixel L1
    ema_decay: float = 0.999
    prior_dropout: float | None = None  # default: the restorer config's prior_dropout
    seed: int = 0
    device: str = "auto"  # auto: this rank's GPU when there is one, else the CPU
    amp: bool = True  # bf16 autocast on GPUs
    # torch.compile the training model: fused kernels make a base step 1.16x faster with all
    # priors on an H100 (1.5-1.8x for the backbone alone; bench/model.py); the first steps wait
    # minutes for compilation. Validation runs eagerly.
    compile: bool = False
    # CPU threads of each training process (CPU runs only). Default: this rank's share of the
    # cores minus its DataLoader workers. More OpenMP threads than free cores made CPU training
    # ~25x slower on a busy 2-core machine (measured: 20 s/step with 2 threads, 0.7 s with 1).
    threads: int | None = None
    # Bookkeeping.
    log_every: int = 10
    val_every: int = 1000
    val_samples: int = 64
    val_tile: int = 512
    save_every: int = 1000
    keep: int = 3

    def to_dict(self) -> dict[str, Any]:
        # Through JSON: tuples become lists, which YAML and the checkpoint's JSON both take.
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_config(path: str | None = None, sets: Mapping[str, str] | None = None, **fields: Any) -> TrainConfig:
    """Defaults, then the YAML file at ``path``, then keyword ``fields``, then ``--set`` strings
    (``model_overrides.<field>`` reaches the restorer's config)."""
    return typed_config.load(TrainConfig(), path, sets, **fields)


def get_lr(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def restoration_loss(restored: Tensor, target: Tensor, fft_weight: float) -> Tensor:
    """L1 on pixels, plus ``fft_weight`` × L1 between the real-FFT spectra (as in MIRNet-v2/FFTformer)."""
    loss = (restored - target).abs().mean()
    if fft_weight > 0:
        a, b = torch.fft.rfft2(restored.float()), torch.fft.rfft2(target.float())
        loss = loss + fft_weight * (torch.view_as_real(a) - torch.view_as_real(b)).abs().mean()
    return loss


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank, world size and device (world 1 without torchrun)."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Distributed:
    """Read torchrun's environment; join the process group when there is more than one rank."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Distributed(rank, world, local_rank, dev)


def _gather(tensor: Tensor, env: Distributed) -> list[Tensor]:
    """The same-shaped tensor from every rank (a list of one without DDP), on the CPU."""
    if env.world == 1:
        return [tensor.cpu()]
    # NCCL only moves GPU tensors; gloo takes CPU ones.
    local = tensor.to(env.device)
    parts = [torch.empty_like(local) for _ in range(env.world)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices and kernels only: decaying norms, biases and learned null tokens/scales
    # pulls them towards zero for no benefit.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


# Epochs only reseed the stream; with synthesis an epoch draws this many crops per photo.
SYNTHETIC_PER_PHOTO = 16


def prior_widths(source: data.ShardSource, online: OnlinePriors | None) -> dict[str, int]:
    """The restorer's token and CLIP widths, from the shards and from the on-the-fly priors; they
    must agree when both give one."""
    widths = {}
    dims = source.embedding_dims
    if "W" in dims:
        widths["token_width"] = dims["W"]
    if "E" in dims:
        widths["clip_width"] = dims["E"]
    if online is not None and online.embedder is not None and online.embedder.active:
        width = online.embedder.token_dim
        if widths.setdefault("token_width", width) != width:
            raise ValueError(f"shard text tokens are {widths['token_width']} wide, the synthesis preset "
                             f"{online.preset!r} makes {width}: extract the shards with the same preset")
    return widths


def restorer_config(config: TrainConfig, widths: Mapping[str, int]) -> RestorerConfig:
    """The preset with the data's prior widths, then ``model_overrides`` (strings read as each
    field's type, YAML lists as tuples)."""
    return typed_config.override_dataclass(preset(config.model, **widths), config.model_overrides, "model_overrides")


def _fields(settings: Any, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted name, declared type, value) of each field of a dataclass, nested ones flattened."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", str(f.type), value


def settings_help() -> str:
    """The keys ``--set`` and a --config file take, with their types and defaults, read from
    TrainConfig and RestorerConfig themselves."""
    lines = ["settings (--set KEY=VALUE, or KEY: VALUE in the --config YAML), as type = default:"]
    lines += [f"  {name}: {kind} = {value!r}" for name, kind, value in _fields(TrainConfig())
              if name != "model_overrides"]
    lines.append("  model_overrides: the restorer's settings, by default the `model` preset's:")
    lines += [f"    model_overrides.{name}: {kind}" for name, kind, _ in _fields(RestorerConfig())]
    return "\n".join(lines)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C ended training after ``step`` optimizer steps."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


class _CtrlC:
    """The training loop's SIGINT handler: the first Ctrl-C asks the loop to stop after this step,
    a second one stops it at once (KeyboardInterrupt, Python's default)."""

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.pressed = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # os.write, not print: the handler may run in the middle of a print to stderr (tqdm's bar).
        os.write(2, b"\nCtrl-C: saving a checkpoint after this step (Ctrl-C again to stop without it)\n")


@dataclass
class Progress:
    """Where this rank's training stands (what a checkpoint must restore besides the weights)."""

    step: int = 0
    batches: int = 0  # micro-batches this rank has taken from its loader
    positions: list[Position] = field(default_factory=list)  # one per logical worker
    skipped: dict[int, int] = field(default_factory=dict)  # logical worker -> bad data skipped
    best_psnr: float = -math.inf


def _save(config: TrainConfig, env: Distributed, run: Path, raw: nn.Module, ema: checkpoint.ModelEMA,
          optimizer: torch.optim.Optimizer, progress: Progress, dropout_rng: torch.Generator,
          prior_preset: str | None, best: bool) -> None:
    """Gather every rank's data position and dropout RNG, then rank 0 writes the checkpoint."""
    positions = torch.tensor([[p.epoch, p.raw, p.batches, p.draws] for p in progress.positions], dtype=torch.long)
    all_positions = _gather(positions, env)
    all_rng = _gather(dropout_rng.get_state(), env)
    if not env.main:
        return
    tensors = {f"dropout_rng.rank{r}": s for r, s in enumerate(all_rng)}
    tensors["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_available() and env.device.type == "cuda":
        tensors["cuda_rng"] = torch.cuda.get_rng_state(env.device)
    state = {
        "samples_seen": progress.batches * config.batch_size * env.world,
        "batches_per_rank": progress.batches,
        "positions": [p.tolist() for p in all_positions],
        "workers": len(progress.positions),
        "world": env.world,
        "best_psnr": progress.best_psnr if math.isfinite(progress.best_psnr) else None,
        "prior_preset": prior_preset,
        "numpy_rng": _jsonable(np.random.get_state()),
        "python_rng": _jsonable(random.getstate()),
        "config": config.to_dict(),
    }
    checkpoint.save(run / "checkpoints", progress.step, raw, ema.module, optimizer, state, tensors,
                    config.keep, best)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _restore_rng(loaded: checkpoint.Loaded, env: Distributed, dropout_rng: torch.Generator) -> None:
    torch.set_rng_state(loaded.tensors["torch_rng"])
    if "cuda_rng" in loaded.tensors and env.device.type == "cuda":
        torch.cuda.set_rng_state(loaded.tensors["cuda_rng"], env.device)
    kind, keys, pos, has_gauss, cached = loaded.state["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = loaded.state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    key = f"dropout_rng.rank{env.rank}"
    if key in loaded.tensors:
        dropout_rng.set_state(loaded.tensors[key])


def _resume_positions(loaded: checkpoint.Loaded, env: Distributed, workers: int) -> tuple[list[Position], int]:
    state = loaded.state
    if state["world"] != env.world or state["workers"] != workers:
        # Another job shape cannot replay the old streams; start fresh epochs past the old ones.
        next_epoch = 1 + max(p[0] for rank in state["positions"] for p in rank)
        print(f"resume: the run had {state['world']} ranks x {state['workers']} workers, now {env.world} x "
              f"{workers}: data continues with new epochs (not an exact replay)", file=sys.stderr)
        return [Position(next_epoch) for _ in range(workers)], 0
    return [Position(*p) for p in state["positions"][env.rank]], int(state["batches_per_rank"])


def _log(run: Path, record: dict[str, Any], writer: Any) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float):
                writer.add_scalar(name.replace("val_", "val/").replace("train_", "train/"), value, record["step"])


def fit(config: TrainConfig, resume: bool = False,
        on_step: Callable[[int, dict[str, float]], None] | None = None) -> Restorer:
    """Train per ``config``; returns this rank's trained (non-EMA) restorer.

    ``on_step(step, logs)`` is called on every rank after each optimizer step (and any
    validation or checkpoint of that step), with this step's loss and lr.
    """
    if config.val_split == "test":
        # The best checkpoint is chosen by validation: choosing it on test data would report a
        # test score that the test data helped select.
        raise ValueError("val_split 'test': validate (and choose the best checkpoint) on a validation "
                         "split, never on a test split; use --val-shards or a 'val' split")
    restorer_config(config, {})  # a bad model or model_overrides fails before data and models load
    env = setup_distributed(config.device)
    if env.device.type == "cpu":
        share = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(config.threads or max(1, share - config.workers))
    run = Path(config.out)
    synthesis = config.synthesis if config.synthesis.enabled else None
    source = data.with_dims(data.resolve(config.shards)) if config.shards else data.ShardSource(())
    online = None
    if synthesis is not None:
        synthesis.check()
        online = OnlinePriors(synthesis.prior_preset)
    widths = prior_widths(source, online)
    prior_preset = source.prior_preset or (synthesis.prior_preset if synthesis else None)
    model_config = restorer_config(config, widths)
    torch.manual_seed(config.seed)
    raw = Restorer(model_config).to(env.device)
    ema = checkpoint.ModelEMA(raw, config.ema_decay)
    optimizer = torch.optim.AdamW(_param_groups(raw, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2))
    dropout = model_config.prior_dropout if config.prior_dropout is None else config.prior_dropout
    dropout_rng = torch.Generator().manual_seed(data.stream_seed(config.seed, env.rank, 7))
    workers = max(1, config.workers)
    progress = Progress(positions=[Position() for _ in range(workers)])

    last = run / "checkpoints" / checkpoint.LAST
    if resume and last.exists():
        loaded = checkpoint.load(last, raw, ema.module, optimizer)
        _restore_rng(loaded, env, dropout_rng)
        positions, batches = _resume_positions(loaded, env, workers)
        best = loaded.state.get("best_psnr")
        progress = Progress(loaded.state["step"], batches, positions, {}, best if best is not None else -math.inf)
        if env.main:
            print(f"resumed from {loaded.path} at step {progress.step}", file=sys.stderr)
    elif resume and env.main:
        print(f"--resume: no checkpoint at {last}; starting a new run", file=sys.stderr)

    writer = None
    val_samples: list = []
    if env.main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml.safe_dump(
            {**config.to_dict(), "resolved_model": model_config.to_dict(), "world_size": env.world,
             "prior_preset": prior_preset, "shard_count": len(source.urls), "samples": source.samples},
            sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"))
        if config.val_shards or (source.urls and online is None):
            val_source = data.resolve(config.val_shards) if config.val_shards else source
            val_samples = [s for s in data.read_samples(val_source.urls, config.val_split, config.val_samples)
                           if s.gt is not None]
        else:
            val_samples = validation_samples(synthesis, online)
        if not val_samples:
            print(f"no validation samples with GT (split {config.val_split!r}); validation is skipped",
                  file=sys.stderr)

    samples_per_epoch = config.samples_per_epoch or (
        (source.samples or 0) + (len(list_photos(synthesis.photos, False)) * SYNTHETIC_PER_PHOTO if synthesis else 0))
    if not samples_per_epoch:
        raise ValueError(f"--shards {config.shards}: no index gives sample counts; set samples_per_epoch")
    stream = data.StreamConfig(
        urls=source.urls, crop=config.crop, batch_size=config.batch_size,
        batches_per_epoch=data.batches_per_epoch(samples_per_epoch, config.batch_size, env.world, workers),
        token_width=model_config.token_width, clip_width=model_config.clip_width,
        shuffle_buffer=config.shuffle_buffer, seed=config.seed, split=config.split, resampled=config.resampled,
        synthesis=synthesis, shard_share=config.shard_share)
    loader = data.train_loader(stream, env.rank, env.world, config.workers, tuple(progress.positions),
                               rotation=progress.batches % workers, pin_memory=env.device.type == "cuda")
    model: nn.Module = raw
    if env.world > 1:
        # A prior missing from a whole batch (shards extracted without references, say) leaves its
        # encoder unused in that step: DDP must allow that.
        model = DistributedDataParallel(raw, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                        find_unused_parameters=True)
    if config.compile:
        model = torch.compile(model)
    model.train()
    batches = iter(loader)
    bar = tqdm(total=config.steps, initial=progress.step, disable=not env.main, desc="train", unit="step",
               dynamic_ncols=True)
    started, window_loss, window_steps = time.time(), 0.0, 0
    # Ctrl-C between saves would lose up to save_every steps (an hour of the CPU recipe). Finishing
    # the step and saving costs a step and a save, and a checkpoint at a step's end is what a
    # scheduled save writes, so --resume continues exactly. Only without torchrun: its ranks would
    # have to agree on the step to stop at, so there Ctrl-C stops at once and the last scheduled
    # checkpoint stands. (A signal handler can only be set from the main thread.)
    ctrl_c = _CtrlC()
    catch = env.world == 1 and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, ctrl_c) if catch else None
    stop = False
    try:
        while progress.step < config.steps and not stop:
            lr = get_lr(progress.step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for micro in range(config.accumulate):
                batch = next(batches)
                logical = int(batch["position"][0])
                progress.positions[logical] = Position(*(int(v) for v in batch["position"][1:]))
                progress.skipped[logical] = int(batch["skipped"][1])
                progress.batches += 1
                lq, gt = batch["lq"].to(env.device, non_blocking=True), batch["gt"].to(env.device, non_blocking=True)
                priors = drop_priors(data.batch_priors(batch), dropout, dropout_rng).to(env.device)
                sync = micro == config.accumulate - 1 or env.world == 1
                context = model.no_sync() if not sync else contextlib.nullcontext()
                with context, autocast(env.device, config.amp):
                    loss = restoration_loss(model(lq, priors).float(), gt, config.fft_weight)
                (loss / config.accumulate).backward()
                step_loss += loss.item() / config.accumulate
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(raw, progress.step)
            progress.step += 1
            window_loss, window_steps = window_loss + step_loss, window_steps + 1
            bar.update(1)
            logs = {"loss": step_loss, "lr": lr}
            if env.main and (progress.step % config.log_every == 0 or progress.step == config.steps):
                elapsed = time.time() - started
                record = {"step": progress.step, "loss": window_loss / window_steps, "lr": lr,
                          "samples_seen": progress.batches * config.batch_size * env.world,
                          "train_images_per_s": window_steps * config.accumulate * config.batch_size * env.world
                          / max(elapsed, 1e-9),
                          "train_skipped": sum(progress.skipped.values())}
                _log(run, record, writer)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                started, window_loss, window_steps = time.time(), 0.0, 0
            final = progress.step == config.steps
            best = False
            if (progress.step % config.val_every == 0 or final) and val_samples:
                scores = validate(ema.module, val_samples, env.device, run / "val" / f"step_{progress.step:08d}.png",
                                  config.val_tile, config.amp)
                record = {"step": progress.step, "val_psnr": scores.psnr, "val_ssim": scores.ssim,
                          "val_input_psnr": scores.input_psnr,
                          **{f"val_psnr_{t}": v[0] for t, v in scores.per_task.items()},
                          **{f"val_ssim_{t}": v[1] for t, v in scores.per_task.items()}}
                _log(run, record, writer)
                plot_curve(run / "metrics.jsonl", run / "curve.png")
                tqdm.write(f"step {progress.step}: validation PSNR {scores.psnr:.2f} dB, SSIM {scores.ssim:.4f} "
                           f"({sum(v[2] for v in scores.per_task.values())} images)")
                best = scores.psnr > progress.best_psnr
                progress.best_psnr = max(progress.best_psnr, scores.psnr)
            if env.world > 1:
                flag = torch.tensor([float(best)], device=env.device)
                dist.broadcast(flag, 0)
                best = bool(flag.item())
            stop = ctrl_c.pressed
            if progress.step % config.save_every == 0 or final or best or stop:
                _save(config, env, run, raw, ema, optimizer, progress, dropout_rng, prior_preset, best)
            if on_step is not None:
                on_step(progress.step, logs)
    except KeyboardInterrupt:  # a second Ctrl-C, or any under torchrun: no checkpoint of this step
        raise Interrupted(progress.step) from None
    finally:
        if catch:
            signal.signal(signal.SIGINT, previous)
        bar.close()
        if writer is not None:
            writer.close()
    if progress.step < config.steps:
        raise Interrupted(progress.step)
    return raw


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Run ``fit`` and return the run folder (its ``checkpoints/best`` is the model to use)."""
    fit(config, resume)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return Path(config.out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m restore.train", description=__doc__.split("\n\n")[0],
                                 epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None,
                    help="training shards: tars by brace pattern or glob, an extraction folder or index.json, "
                         "a published-set manifest, or URLs")
    ap.add_argument("--val-shards", default=None, help="validation shards (default: --shards, split val_split)")
    ap.add_argument("--config", default=None, help="YAML file of the settings below")
    ap.add_argument("--out", default=None, help="run folder (default: runs/restorer)")
    ap.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting (listed below), e.g. lr=1e-3 or model_overrides.dim=16")
    return ap


def interrupted(config: TrainConfig, step: int | None, argv: list[str]) -> str:
    """What a Ctrl-C at ``step`` (None: before training began) leaves, and the command that resumes."""
    stopped = f"at step {step}" if step is not None else "before the first step"
    last = Path(config.out) / "checkpoints" / checkpoint.LAST
    state = checkpoint.read_state(last) if last.is_dir() else None
    if state is None:
        return f"{stopped}; no checkpoint in {last.parent} yet, so a rerun starts from step 0"
    command = shlex.join(["python", "-m", "restore.train", *argv, *([] if "--resume" in argv else ["--resume"])])
    return (f"{stopped}; last checkpoint: step {state['step']} in {last.resolve()}; "
            f"resume with: {command}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = build_parser()
    args = ap.parse_args(argv)
    fields = {k: v for k, v in (("shards", args.shards), ("val_shards", args.val_shards), ("out", args.out))
              if v is not None}
    try:
        config = load_config(args.config, typed_config.parse_sets(args.set), **fields)
    except (FileNotFoundError, ValueError) as e:
        return cli.fail(e)
    if not config.shards and not config.synthesis.enabled:
        ap.error("--shards is required (or shards: or synthesis: in the --config file)")
    try:
        run = train(config, args.resume)
    except (FileNotFoundError, ValueError, ShardUnavailable) as e:  # the data, a checkpoint, a setting
        return cli.fail(e)
    except KeyboardInterrupt as e:
        if int(os.environ.get("RANK", 0)) != 0:  # under torchrun: rank 0 speaks for all
            return cli.INTERRUPTED
        return cli.interrupted(interrupted(config, e.step if isinstance(e, Interrupted) else None, argv))
    print(f"run folder: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
