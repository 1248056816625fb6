"""Train the restorer on prior shards: one loop for the CPU, one GPU and many (torchrun, DDP).

    python -m restore.train --shards SPEC [--val-shards SPEC] [--config YAML] [--out RUN] [--resume]
                            [--set lr=1e-3 --set model_overrides.dim=16 ...] [--dry-run [--world N]]
    python -m restore.train --config restore/recipes/lmdir_cpu.yaml      # clean photos, degraded on the fly
    torchrun --nproc_per_node 8 -m restore.train --config restore/recipes/base.yaml --shards /data/priors/three_task
    python -m restore.train --config restore/recipes/promptir_3task.yaml --dry-run --world 4   # the plan, no training

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

restore/recipes/ holds the shipped settings: base.yaml (the base restorer on any prior shards),
promptir_3task.yaml and promptir_5task.yaml (the all-in-one protocols in PromptIR's setting),
restormer_long.yaml (Restormer's progressive patches) and lmdir_cpu.yaml (the shipped checkpoint).
``--dry-run`` prints what a recipe will do: its schedule, stages, data mix, epochs and images.
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
from pipeline.sample_format import SampleFormatError, decode_sample
from pipeline.shard_cache import ShardUnavailable
from restore import checkpoint, data
from restore.data import Position
from restore.model import Restorer, RestorerConfig, drop_priors, preset
from restore.priors_online import OnlinePriors
from restore.synthesis import SynthesisConfig, list_photos, validation_samples
from restore.validate import METRICS, autocast, plot_curve, validate

PIXEL_LOSSES = ("l1", "psnr")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; written to RUN/config.yaml as resolved."""

    shards: str = ""
    val_shards: str | None = None  # default: the training shards' val_split samples
    out: str = "runs/restorer"
    # The restorer: a preset of restore.model and field overrides; prior widths come from the data.
    # The defaults are base.yaml's: the base restorer on Restormer's optimiser and length.
    model: str = "base"
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
    # Progressive patches (Restormer): [until_step, crop, batch_size] per stage, in order, each
    # stage running up to its until_step; given, they replace crop and batch_size. Empty: one stage.
    stages: tuple[tuple[int, int, int], ...] = ()
    workers: int = 2  # DataLoader workers per rank (0: read in the training process)
    shuffle_buffer: int = 256
    resampled: bool = True
    # What counts as an epoch (it only reseeds the stream; epochs in recipes are counted in it).
    # Default: the index's sample count; with dataset_weights, the sum of samples × weight.
    samples_per_epoch: int | None = None
    # Repetition weight of each dataset of the shards (the names their manifest gave, as PromptIR
    # repeats Rain100L ×120 in its epoch): a shard sample is drawn with probability ∝ its dataset's
    # weight, and datasets not named are left out. Needs local shards, indexed once at the start
    # (restore.data.index_shards). Empty: the shards stream as they are, sample for sample.
    dataset_weights: dict[str, float] = field(default_factory=dict)
    # Optimisation: AdamW. The learning rate warms up linearly over warmup_steps, holds at lr for
    # hold_steps, then follows a cosine to min_lr over decay_steps (get_lr). Restormer: no warmup,
    # 92k steps held, a 208k-step cosine; PromptIR: a warmup, then a cosine cut off before its end.
    steps: int = 300_000  # optimizer steps in the whole run
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_steps: int = 1000
    hold_steps: int = 0
    decay_steps: int | None = None  # default: the rest of the run; longer stops the cosine part-way
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.01  # max global gradient norm; 0 turns clipping off
    # The pixel loss: "l1", or "psnr", minus each image's PSNR averaged over the batch (NAFNet's
    # PSNR loss). With many tasks in a batch, L1's gradient is ruled by the images whose errors
    # are large (haze, low light); "psnr" weighs every image's dB alike, as the all-in-one
    # tables average them, so small-error tasks such as denoising are not drowned.
    pixel_loss: str = "l1"
    fft_weight: float = 0.0  # weight of the L1 loss between Fourier spectra, added to the pixel loss
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

    def __post_init__(self) -> None:
        # Here, not at the first step: a misspelt loss fails before data and models load.
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {', '.join(PIXEL_LOSSES)}, got {self.pixel_loss!r}")

    def to_dict(self) -> dict[str, Any]:
        # Through JSON: tuples become lists, which YAML and the checkpoint's JSON both take.
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_config(path: str | None = None, sets: Mapping[str, str] | None = None, **fields: Any) -> TrainConfig:
    """Defaults, then the YAML file at ``path``, then keyword ``fields``, then ``--set`` strings
    (``model_overrides.<field>`` reaches the restorer's config)."""
    return typed_config.load(TrainConfig(), path, sets, **fields)


def get_lr(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, ``hold_steps`` at lr, then
    a cosine to min_lr over ``decay_steps`` (default: to the end), min_lr after it."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    start = config.warmup_steps + config.hold_steps
    if step < start:
        return config.lr
    span = max(1, config.decay_steps if config.decay_steps is not None else config.steps - start)
    progress = min(1.0, (step - start) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


@dataclass(frozen=True)
class Stage:
    """A span of the run with one crop and batch size: steps up to ``until`` (progressive patches)."""

    until: int
    crop: int
    batch_size: int


def stage_plan(config: TrainConfig) -> tuple[Stage, ...]:
    """The run's stages: ``config.stages`` checked, or one stage of crop and batch_size."""
    if not config.stages:
        return (Stage(config.steps, config.crop, config.batch_size),)
    plan = []
    for entry in config.stages:
        if not (isinstance(entry, list | tuple) and len(entry) == 3 and all(isinstance(v, int) for v in entry)
                and all(v > 0 for v in entry)):
            raise ValueError(f"stages: each stage is [until_step, crop, batch_size] of positive integers, got {entry!r}")
        if plan and entry[0] <= plan[-1].until:
            raise ValueError(f"stages: until_step must grow from stage to stage, got {entry[0]} after {plan[-1].until}")
        plan.append(Stage(*entry))
    if plan[-1].until < config.steps:
        raise ValueError(f"stages end at step {plan[-1].until}, before steps={config.steps}: extend the last stage")
    return tuple(plan)


def stage_at(plan: tuple[Stage, ...], step: int) -> Stage:
    """The stage optimizer step ``step`` (0-based) belongs to."""
    return next((s for s in plan if step < s.until), plan[-1])


def restoration_loss(restored: Tensor, target: Tensor, fft_weight: float, pixel: str = "l1") -> Tensor:
    """The pixel loss (TrainConfig.pixel_loss), plus ``fft_weight`` × L1 between the real-FFT
    spectra (as in MIRNet-v2/FFTformer)."""
    if pixel == "l1":
        loss = (restored - target).abs().mean()
    elif pixel == "psnr":
        # 10·log10 of each image's MSE is minus its PSNR for a peak of 1; the floor keeps a perfect
        # image's gradient finite (about 80 dB, beyond anything 8-bit data can show).
        mse = (restored - target).square().flatten(1).mean(dim=1)
        loss = 10.0 * torch.log10(mse + 1e-8).mean()
    else:
        raise ValueError(f"unknown pixel loss {pixel!r}")
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


def _param_groups(model: Restorer, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's groups, with parameter names (checkpoints match optimizer state by them): decay for
    matrices and kernels only; norms, biases, learned tokens and temperatures gain nothing from
    being pulled towards zero (Restorer.no_weight_decay)."""
    exempt = model.no_weight_decay()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [(n, p) for n, p in named if p.ndim >= 2 and n not in exempt]
    rest = [(n, p) for n, p in named if not (p.ndim >= 2 and n not in exempt)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _legacy_param_names(model: nn.Module) -> list[str]:
    """Parameter names in the order of checkpoints written before optimizer groups were named,
    which grouped by dimension alone: they still resume (checkpoint.optimizer_from_files)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, p in named if p.ndim >= 2] + [n for n, p in named if p.ndim < 2]


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
    if online is not None and online.embedder.active:
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
    batches: int = 0  # micro-batches this rank has taken from its loaders
    samples: int = 0  # images all ranks have trained on (batch sizes change with the stages)
    positions: list[Position] = field(default_factory=list)  # one per logical worker
    skipped: dict[int, int] = field(default_factory=dict)  # logical worker -> bad data its loader skipped
    skipped_before: int = 0  # bad data this rank skipped before its current loader (earlier runs, stages)
    best_psnr: float = -math.inf

    @property
    def skipped_total(self) -> int:
        return self.skipped_before + sum(self.skipped.values())


def _save(config: TrainConfig, env: Distributed, run: Path, raw: nn.Module, ema: checkpoint.ModelEMA,
          optimizer: torch.optim.Optimizer, progress: Progress, dropout_rng: torch.Generator,
          prior_preset: str | None, best: bool) -> None:
    """Gather every rank's data position, skip count and dropout RNG, then rank 0 writes the checkpoint."""
    positions = torch.tensor([[p.epoch, p.raw, p.batches, p.draws] for p in progress.positions], dtype=torch.long)
    all_positions = _gather(positions, env)
    all_skipped = _gather(torch.tensor([progress.skipped_total], dtype=torch.long), env)
    all_rng = _gather(dropout_rng.get_state(), env)
    if not env.main:
        return
    tensors = {f"dropout_rng.rank{r}": s for r, s in enumerate(all_rng)}
    tensors["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_available() and env.device.type == "cuda":
        tensors["cuda_rng"] = torch.cuda.get_rng_state(env.device)
    state = {
        "samples_seen": progress.samples,
        "batches_per_rank": progress.batches,
        "positions": [p.tolist() for p in all_positions],
        "skipped": [int(s) for s in torch.cat(all_skipped)],  # per rank
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


def _next_epochs(positions: list[Position], workers: int) -> list[Position]:
    """Fresh epochs past every stream in ``positions``: where data continues when the old streams
    cannot (another job shape, another stage's crop and batch size)."""
    return [Position(1 + max((p.epoch for p in positions), default=-1)) for _ in range(workers)]


def _resume_progress(loaded: checkpoint.Loaded, env: Distributed, workers: int) -> Progress:
    """This rank's Progress as the checkpoint saved it."""
    state = loaded.state
    best = state.get("best_psnr")
    # Checkpoints from before skip counts were saved have none: the count starts again at zero.
    skipped = state.get("skipped") or [0] * state["world"]
    progress = Progress(step=state["step"], samples=int(state["samples_seen"]),
                        best_psnr=best if best is not None else -math.inf)
    if state["world"] == env.world and state["workers"] == workers:
        progress.batches = int(state["batches_per_rank"])
        progress.positions = [Position(*p) for p in state["positions"][env.rank]]
        progress.skipped_before = skipped[env.rank]
    else:
        # Another job shape cannot replay the old streams; start fresh epochs past the old ones.
        print(f"resume: the run had {state['world']} ranks x {state['workers']} workers, now {env.world} x "
              f"{workers}: data continues with new epochs (not an exact replay)", file=sys.stderr)
        progress.positions = _next_epochs([Position(*p) for rank in state["positions"] for p in rank], workers)
        progress.skipped_before = sum(skipped) if env.main else 0  # the job's count, kept whole on rank 0
    return progress


def _log(run: Path, record: dict[str, Any], writer: Any) -> None:
    with open(run / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        for name, value in record.items():
            if name != "step" and isinstance(value, int | float):
                writer.add_scalar(name.replace("val_", "val/").replace("train_", "train/"), value, record["step"])


def weights_of(config: TrainConfig) -> dict[str, float]:
    """``dataset_weights`` as numbers (``--set dataset_weights.NAME=W`` gives strings)."""
    weights = {}
    for name, value in config.dataset_weights.items():
        try:
            weights[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"dataset_weights.{name}: {value!r} is not a number") from None
        if weights[name] < 0:
            raise ValueError(f"dataset_weights.{name}: a weight cannot be negative, got {value!r}")
    return weights


@dataclass(frozen=True)
class DataPlan:
    """The training data as resolved: shards, their index when weights need it, the epoch."""

    source: data.ShardSource
    index: data.SampleIndex | None
    weights: dict[str, float] | None
    samples_per_epoch: int


def plan_data(config: TrainConfig, synthesis: SynthesisConfig | None) -> DataPlan:
    """Resolve the shards (and index them for dataset_weights) and the epoch's sample count."""
    source = data.with_dims(data.resolve(config.shards)) if config.shards else data.ShardSource(())
    weights = weights_of(config) or None
    index = None
    samples = source.samples or 0
    if weights is not None:
        if not source.urls:
            raise ValueError("dataset_weights weigh the datasets of shards: give --shards too")
        if not config.resampled:
            raise ValueError("dataset_weights draw samples at random: set resampled=true")
        index = data.index_shards(source.urls)
        samples = round(sum(d.samples * d.weight for d in data.dataset_mix(index, weights, config.split)))
    if synthesis is not None:
        samples += len(list_photos(synthesis.photos, False)) * SYNTHETIC_PER_PHOTO
    samples_per_epoch = config.samples_per_epoch or samples
    if not samples_per_epoch:
        raise ValueError(f"--shards {config.shards}: no index gives sample counts; set samples_per_epoch")
    return DataPlan(source, index, weights, samples_per_epoch)


def fit(config: TrainConfig, resume: bool = False,
        on_step: Callable[[int, dict[str, Any]], None] | None = None) -> Restorer:
    """Train per ``config``; returns this rank's trained (non-EMA) restorer.

    ``on_step(step, logs)`` is called on every rank after each optimizer step (and any
    validation or checkpoint of that step), with this step's lr and loss; the loss is a tensor on
    the training device, so reading it (``float``) waits for the step to finish.
    """
    if config.val_split == "test":
        # The best checkpoint is chosen by validation: choosing it on test data would report a
        # test score that the test data helped select.
        raise ValueError("val_split 'test': validate (and choose the best checkpoint) on a validation "
                         "split, never on a test split; use --val-shards or a 'val' split")
    restorer_config(config, {})  # a bad model or model_overrides fails before data and models load
    stages = stage_plan(config)
    env = setup_distributed(config.device)
    if env.device.type == "cpu":
        share = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(config.threads or max(1, share - config.workers))
    run = Path(config.out)
    synthesis = config.synthesis if config.synthesis.enabled else None
    online = None
    if synthesis is not None:
        synthesis.check()
        online = OnlinePriors(synthesis.prior_preset)
    plan = plan_data(config, synthesis)
    source = plan.source
    widths = prior_widths(source, online)
    prior_preset = source.prior_preset or (synthesis.prior_preset if synthesis else None)
    model_config = restorer_config(config, widths)
    torch.manual_seed(config.seed)
    raw = Restorer(model_config).to(env.device)
    ema = checkpoint.ModelEMA(raw, config.ema_decay)
    # Fused AdamW on GPUs: the whole update in a few kernels, faster than the default foreach one.
    optimizer = torch.optim.AdamW(_param_groups(raw, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), fused=env.device.type == "cuda")
    dropout = model_config.prior_dropout if config.prior_dropout is None else config.prior_dropout
    dropout_rng = torch.Generator().manual_seed(data.stream_seed(config.seed, env.rank, 7))
    workers = max(1, config.workers)
    progress = Progress(positions=[Position() for _ in range(workers)])

    last = run / "checkpoints" / checkpoint.LAST
    if resume and last.exists():
        loaded = checkpoint.load(last, raw, ema.module, optimizer, saved_names=_legacy_param_names(raw))
        _restore_rng(loaded, env, dropout_rng)
        progress = _resume_progress(loaded, env, workers)
        if progress.step and stage_at(stages, progress.step - 1) != stage_at(stages, progress.step):
            # Saved at the end of a stage: its streams made that stage's crops and batches.
            progress.positions = _next_epochs(progress.positions, workers)
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
             "prior_preset": prior_preset, "shard_count": len(source.urls), "samples": source.samples,
             "samples_per_epoch": plan.samples_per_epoch},
            sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"))
        val_samples = _validation_samples(config, plan, synthesis, online)
        if not val_samples:
            print(f"no validation samples with GT (split {config.val_split!r}); validation is skipped",
                  file=sys.stderr)

    def open_loader(stage: Stage) -> Iterator[dict[str, Tensor]]:
        stream = data.StreamConfig(
            urls=source.urls, crop=stage.crop, batch_size=stage.batch_size,
            batches_per_epoch=data.batches_per_epoch(plan.samples_per_epoch, stage.batch_size, env.world, workers),
            token_width=model_config.token_width, clip_width=model_config.clip_width,
            shuffle_buffer=config.shuffle_buffer, seed=config.seed, split=config.split, resampled=config.resampled,
            synthesis=synthesis, shard_share=config.shard_share, index=plan.index, dataset_weights=plan.weights)
        return iter(data.train_loader(stream, env.rank, env.world, config.workers, tuple(progress.positions),
                                      rotation=progress.batches % workers, pin_memory=env.device.type == "cuda"))

    model: nn.Module = raw
    if env.world > 1:
        # Every parameter takes part in every step: training batches carry every prior field
        # (zeros where absent) and the restorer applies presence by masking, never by skipping a
        # module (test_train checks it), so DDP need not search the graph for unused ones.
        model = DistributedDataParallel(raw, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    model.train()
    stage = stage_at(stages, progress.step)
    batches = open_loader(stage)
    bar = tqdm(total=config.steps, initial=progress.step, disable=not env.main, desc="train", unit="step",
               dynamic_ncols=True)
    # Losses add up on the device and are read once per log_every steps: reading one each step
    # would make the host wait for the GPU every step.
    started, window_loss, window_steps, window_samples = time.time(), torch.zeros((), device=env.device), 0, 0
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
            if stage_at(stages, progress.step) != stage:
                # A new crop and batch size: the old loader's workers stop when its iterator goes,
                # and the streams go on with fresh epochs (a resumed run does the same here).
                batches = None
                progress.skipped_before, progress.skipped = progress.skipped_total, {}
                progress.positions = _next_epochs(progress.positions, workers)
                stage = stage_at(stages, progress.step)
                batches = open_loader(stage)
            lr = get_lr(progress.step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=env.device)
            for micro in range(config.accumulate):
                batch = next(batches)
                logical = int(batch["position"][0])
                progress.positions[logical] = Position(*(int(v) for v in batch["position"][1:]))
                progress.skipped[logical] = int(batch["skipped"][1])
                progress.batches += 1
                progress.samples += stage.batch_size * env.world
                lq, gt = (data.widen(batch[k].to(env.device, non_blocking=True)) for k in ("lq", "gt"))
                # Dropout draws on the CPU (the same drops on any device), then one non-blocking copy.
                priors = drop_priors(data.batch_priors(batch), dropout, dropout_rng).to(env.device, non_blocking=True)
                priors = data.widen_priors(priors)
                sync = micro == config.accumulate - 1 or env.world == 1
                context = model.no_sync() if not sync else contextlib.nullcontext()
                with context, autocast(env.device, config.amp):
                    loss = restoration_loss(model(lq, priors).float(), gt, config.fft_weight, config.pixel_loss)
                (loss / config.accumulate).backward()
                step_loss += loss.detach() / config.accumulate
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(raw, progress.step)
            progress.step += 1
            window_loss += step_loss
            window_steps, window_samples = window_steps + 1, window_samples + config.accumulate * stage.batch_size
            bar.update(1)
            final = progress.step == config.steps
            if progress.step % config.log_every == 0 or final:
                # Every rank takes part: the loss and skip counts are the job's, not rank 0's.
                totals = torch.stack([window_loss, torch.tensor(float(progress.skipped_total), device=env.device)])
                if env.world > 1:
                    dist.all_reduce(totals)
                loss_sum, skipped = totals.tolist()
                if env.main:
                    elapsed = time.time() - started
                    record = {"step": progress.step, "loss": loss_sum / (window_steps * env.world), "lr": lr,
                              "samples_seen": progress.samples,
                              "train_images_per_s": window_samples * env.world / max(elapsed, 1e-9),
                              "train_skipped": int(skipped)}
                    if env.device.type == "cuda":  # the allocator's own count: no wait for the GPU
                        record["train_gpu_peak_gib"] = torch.cuda.max_memory_allocated(env.device) / 2**30
                    _log(run, record, writer)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
                started, window_steps, window_samples = time.time(), 0, 0
                window_loss = torch.zeros((), device=env.device)
            best = False
            if progress.step % config.val_every == 0 or final:
                if val_samples:
                    scores = validate(ema.module, val_samples, env.device,
                                      run / "val" / f"step_{progress.step:08d}.png", config.val_tile, config.amp)
                    record = {"step": progress.step, "val_psnr": scores.psnr, "val_ssim": scores.ssim,
                              "val_input_psnr": scores.input_psnr,
                              **{f"val_psnr_{t}": v[0] for t, v in scores.per_task.items()},
                              **{f"val_ssim_{t}": v[1] for t, v in scores.per_task.items()}}
                    _log(run, record, writer)
                    plot_curve(run / METRICS, run / "curve.png")
                    tqdm.write(f"step {progress.step}: validation PSNR {scores.psnr:.2f} dB, SSIM {scores.ssim:.4f} "
                               f"({sum(v[2] for v in scores.per_task.values())} images)")
                    best = scores.psnr > progress.best_psnr
                    progress.best_psnr = max(progress.best_psnr, scores.psnr)
                if env.world > 1:  # rank 0 validates; all ranks save alike
                    flag = torch.tensor([float(best)], device=env.device)
                    dist.broadcast(flag, 0)
                    best = bool(flag.item())
            stop = ctrl_c.pressed
            if progress.step % config.save_every == 0 or final or best or stop:
                _save(config, env, run, raw, ema, optimizer, progress, dropout_rng, prior_preset, best)
            if on_step is not None:
                on_step(progress.step, {"loss": step_loss, "lr": lr})
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


def _validation_samples(config: TrainConfig, plan: DataPlan, synthesis: SynthesisConfig | None,
                        online: OnlinePriors | None) -> list:
    """Rank 0's validation samples: of --val-shards, else of the training shards' val_split, else
    the synthesis's validation photos."""
    if config.val_shards:
        urls = data.resolve(config.val_shards).urls
    elif plan.source.urls and online is None:
        if plan.index is not None:
            # The index knows where the split's samples are, or that there are none: no need to
            # read every shard looking for them.
            ids = plan.index.ids(config.val_split)[:config.val_samples]
            samples = []
            for i in ids:
                try:
                    samples.append(decode_sample(plan.index.record(int(i))))
                except (SampleFormatError, OSError) as e:
                    print(f"validation sample skipped: {e}", file=sys.stderr)
            return [s for s in samples if s.gt is not None]
        urls = plan.source.urls
    else:
        return validation_samples(synthesis, online)
    return [s for s in data.read_samples(urls, config.val_split, config.val_samples) if s.gt is not None]


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Run ``fit`` and return the run folder (its ``checkpoints/best`` is the model to use)."""
    fit(config, resume)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return Path(config.out)


def dry_run(config: TrainConfig, world: int = 1) -> str:
    """What ``config`` does on ``world`` ranks, without training: the learning-rate schedule, the
    stages, the data mix per dataset and task, steps per epoch and the images seen. The mix and
    the sample counts come from the shards (their index.json; with dataset_weights, an index of
    every sample): where the shards cannot be read, it says so and shows the rest. Raises
    ValueError for settings that training would refuse."""
    stages = stage_plan(config)
    synthesis = config.synthesis if config.synthesis.enabled else None
    lines = [f"model {config.model} on {world} rank(s); run folder {config.out}"]
    start = config.warmup_steps + config.hold_steps
    decay = config.decay_steps if config.decay_steps is not None else config.steps - start
    clip = f"gradient norm clipped at {config.grad_clip:g}" if config.grad_clip > 0 else "no gradient clipping"
    spectra = f" + {config.fft_weight:g} × L1 of spectra" if config.fft_weight else ""
    lines.append(f"loss: {config.pixel_loss} on pixels{spectra}")
    lines.append(f"schedule: {config.steps:,} optimizer steps, AdamW (betas {config.beta1:g}, {config.beta2:g}; weight "
                 f"decay {config.weight_decay:g}), {clip}, EMA {config.ema_decay:g}")
    parts = [f"warmup to {config.lr:g} over {config.warmup_steps:,} steps"] if config.warmup_steps else []
    parts += [f"{config.hold_steps:,} steps at {config.lr:g}"] if config.hold_steps else []
    parts.append(f"cosine to {config.min_lr:g} over {decay:,} steps")
    cut = start + decay > config.steps
    lines.append("  lr: " + ", then ".join(parts) + f"; the last step's lr is {get_lr(config.steps - 1, config):.3g}"
                 + (f" (the cosine stops at {100 * (config.steps - start) / max(decay, 1):.0f}%)" if cut else ""))

    try:
        plan = plan_data(config, synthesis)
    except (FileNotFoundError, ShardUnavailable) as e:  # planned elsewhere; wrong settings raise
        plan = None
        lines.append(f"data: cannot read {config.shards or 'the synthesis photos'} here ({e})")
        lines.append("  the data mix and sample counts are read from the shards: run the dry run where they are "
                     "(or point --shards at them)")
    else:
        lines += _describe_data(config, plan, synthesis)
    per_epoch = plan.samples_per_epoch if plan is not None else config.samples_per_epoch

    lines.append("stages: crop, batch per rank x ranks x accumulate = images per step")
    images = pixels = begin = 0
    for stage in stages:
        end = min(stage.until, config.steps)
        if end <= begin:
            break
        per_step = stage.batch_size * world * config.accumulate
        count = (end - begin) * per_step
        images, pixels = images + count, pixels + count * stage.crop ** 2
        epoch = f"; {math.ceil(per_epoch / per_step):,} steps per epoch" if per_epoch else ""
        lines.append(f"  steps {begin:,}-{end:,}: crop {stage.crop}, {stage.batch_size} x {world} x {config.accumulate} "
                     f"= {per_step} images per step{epoch}; {count:,} images")
        begin = end
    seen = f"images seen: {images:,} ({pixels / 1e9:,.1f} G pixels)"
    lines.append(seen + (f" = {images / per_epoch:.1f} epochs of {per_epoch:,} samples" if per_epoch else
                         "; epochs: unknown without the shards' sample counts (or samples_per_epoch)"))
    return "\n".join(lines)


def _describe_data(config: TrainConfig, plan: DataPlan, synthesis: SynthesisConfig | None) -> list[str]:
    source = plan.source
    lines = []
    shard_part = 1.0 if synthesis is None else (config.shard_share if source.urls else 0.0)
    shares: dict[str, float] = {}
    if source.urls:
        lines.append(f"data: {config.shards}: {len(source.urls):,} shards" +
                     (f", {source.samples:,} samples (all splits)" if source.samples else "") +
                     (f", prior preset {source.prior_preset}" if source.prior_preset else ""))
        if plan.index is not None:
            mix = data.dataset_mix(plan.index, plan.weights, config.split)
            if plan.index.unreadable:
                lines.append(f"  {len(plan.index.unreadable)} shards cannot be read and are left out, "
                             f"e.g. {plan.index.unreadable[0]}")
            lines.append(f"  split {config.split!r}, drawn by dataset weight:")
            lines.append(f"  {'dataset':<16} {'task':<12} {'samples':>9} {'weight':>7} {'per epoch':>10} {'share':>7}")
            for d in mix:
                shares[d.task] = shares.get(d.task, 0.0) + d.share * shard_part
                draws = f"{d.samples * d.weight:>10,.0f}" if d.weight else f"{'left out':>10}"
                lines.append(f"  {d.dataset:<16} {d.task:<12} {d.samples:>9,} {d.weight:>7g} {draws} "
                             f"{100 * d.share * shard_part:>6.1f}%")
            derived = round(sum(d.samples * d.weight for d in mix))
            if config.samples_per_epoch and config.samples_per_epoch != derived:
                lines.append(f"  samples_per_epoch {config.samples_per_epoch:,} is set; these shards' weighted "
                             f"epoch would be {derived:,}")
        else:
            lines.append("  streamed sample for sample (no dataset_weights): each task's share is its share "
                         "of the shards")
    if synthesis is not None:
        total = sum(synthesis.tasks.values())
        lines.append(f"synthesis: {len(list_photos(synthesis.photos, False)):,} photos degraded on the fly, "
                     f"{100 * (1 - shard_part):.0f}% of the examples")
        for spec, weight in synthesis.tasks.items():
            shares[spec] = shares.get(spec, 0.0) + weight / total * (1 - shard_part)
    if shares:
        lines.append("mix per task: " + ", ".join(f"{t} {100 * v:.1f}%" for t, v in
                                                  sorted(shares.items(), key=lambda kv: -kv[1])))
    return lines


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
    ap.add_argument("--dry-run", action="store_true",
                    help="print the schedule, stages, data mix, steps per epoch and images seen; do not train")
    ap.add_argument("--world", type=int, default=None, metavar="N",
                    help="with --dry-run: plan for N ranks (default: torchrun's WORLD_SIZE, else 1)")
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
    if args.dry_run:
        try:
            text = dry_run(config, args.world or int(os.environ.get("WORLD_SIZE", 1)))
        except ValueError as e:
            return cli.fail(e)
        if int(os.environ.get("RANK", 0)) == 0:
            print(text)
        return 0
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
