"""Can the reference branch use a reference that is relevant but not aligned? A CPU experiment.

    python bench/reference_branch.py                 # train three variants, print the table
    python bench/reference_branch.py --cost          # MACs and forward time of both branches

A render made from a caption shows the scene, not the input's pixels. The experiment stands in
for one with the clean photo itself, shifted by 10–30 % of the crop along each axis and rescaled
by ×0.8–1.25: everything the input shows is (mostly) there, nowhere at the same place. One
restorer (``tiny``, every prior path off except the reference) is trained three times from the
same seed on the same batches of a few CBSD365 training photos with Gaussian noise σ 25:

- ``none``: no reference path (the backbone; the reference is ignored);
- ``windowed``: the first branch (``reference_attention="windowed"``): local windows with a margin
  plus channel-wise global attention;
- ``pooled``: the reference's conv features pooled to grid² tokens, cross-attended from every
  pixel (``reference_attention="pooled"``, the default).

Validation PSNR is measured on fixed crops of *other* CBSD365 photos (never a test set), with
their own shifted and rescaled references, again with the reference absent, and with the clean
crop itself as an aligned reference (a diagnostic: what a branch takes from a perfect one).
``--sigma``, ``--steps`` and ``--reference-dropout`` change the setting for every variant alike; ``--seeds N``
repeats everything N times from seeds 0..N-1 and prints means and spreads. ``--cost`` prints
the reference components' parameters and MACs (restore.model.summary) for the ``base`` preset at
128² and 256², and the forward time of the backbone and of each branch measured in one run.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from restore.metrics import psnr
from restore.model import Priors, Restorer, RestorerConfig, count_parameters, drop_priors, preset
from restore.model.summary import summarize

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "CBSD365"
VARIANTS = ("none", "windowed", "pooled")


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers in the table (printed with it)."""

    preset: str = "tiny"
    train_photos: int = 8  # the first photos of the sorted folder
    val_photos: int = 4  # the next ones: held out
    val_crops: int = 6  # per validation photo
    crop: int = 48
    batch: int = 8
    steps: int = 600
    lr: float = 2e-3
    min_lr: float = 1e-5
    sigma: float = 25.0
    shift: tuple[float, float] = (0.1, 0.3)  # of the crop, along each axis, either direction
    scale: tuple[float, float] = (0.8, 1.25)  # the reference shows the scene this much larger
    reference_dropout: float = 0.0  # the share of samples trained without their reference
    seed: int = 0


def model_config(settings: Settings, variant: str) -> RestorerConfig:
    """The restorer of ``variant``: the preset with only the reference path (or none at all)."""
    config = preset(settings.preset, use_degradation=False, use_content=False)
    return config.without_priors() if variant == "none" else replace(config, reference_attention=variant)


def load_photos(folder: Path, first: int, count: int) -> list[np.ndarray]:
    """``count`` photos of ``folder`` (sorted names) from index ``first``, as float32 RGB in [0, 1]."""
    paths = sorted(folder.glob("*.jpg"))[first:first + count]
    if len(paths) < count:
        raise SystemExit(f"{folder}: need {first + count} photos, found {len(paths) + first}")
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255 for p in paths]


def draw_pair(photo: np.ndarray, settings: Settings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A clean crop and its reference: the window of the same scene shifted along each axis by
    a drawn fraction of the crop (either way) and ``1/scale`` the size, resized to the crop."""
    crop = settings.crop
    scale = math.exp(rng.uniform(*np.log(settings.scale)))
    side = int(round(crop / scale))
    shifts = [int(round(rng.uniform(*settings.shift) * crop)) * rng.choice((-1, 1)) for _ in range(2)]
    height, width = photo.shape[:2]
    # Where the crop may start so that both its window and the reference's lie inside the photo.
    corner = []
    for shift, extent in zip(shifts, (height, width)):
        ref_offset = shift + (crop - side) // 2  # the reference window's start relative to the crop's
        low, high = max(0, -ref_offset), min(extent - crop, extent - side - ref_offset)
        corner.append((int(rng.integers(low, high + 1)), ref_offset))
    (y, dy), (x, dx) = corner
    clean = photo[y:y + crop, x:x + crop]
    window = photo[y + dy:y + dy + side, x + dx:x + dx + side]
    interpolation = cv2.INTER_AREA if side > crop else cv2.INTER_LINEAR
    return clean, cv2.resize(window, (crop, crop), interpolation=interpolation)


def make_batch(photos: list[np.ndarray], count: int, settings: Settings,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` (noisy, clean, reference) crops from random photos, as (B, 3, crop, crop) tensors."""
    clean, reference = zip(*(draw_pair(photos[int(rng.integers(len(photos)))], settings, rng) for _ in range(count)))
    gt = torch.from_numpy(np.stack(clean)).permute(0, 3, 1, 2).contiguous()
    ref = torch.from_numpy(np.stack(reference)).permute(0, 3, 1, 2).contiguous()
    noise = torch.from_numpy(rng.standard_normal(gt.shape).astype(np.float32)) * (settings.sigma / 255)
    return gt + noise, gt, ref


def validation_set(settings: Settings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed crops, noise and references of the held-out photos (the same for every variant)."""
    photos = load_photos(PHOTOS, settings.train_photos, settings.val_photos)
    rng = np.random.default_rng(settings.seed + 1)
    parts = [make_batch([photo], settings.val_crops, settings, rng) for photo in photos]
    return tuple(torch.cat(tensors) for tensors in zip(*parts))


def lr_at(step: int, settings: Settings) -> float:
    """A cosine from lr to min_lr over the run."""
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * step / settings.steps))


@torch.no_grad()
def evaluate(model: Restorer, lq: torch.Tensor, gt: torch.Tensor, ref: torch.Tensor | None) -> float:
    model.eval()
    out = model(lq, Priors(reference=ref) if ref is not None else None).clamp(0, 1)
    model.train()
    return float(psnr(out, gt).mean())


def train_variant(variant: str, settings: Settings, val: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Train one variant and score it; the same seed makes the same backbone and the same batches."""
    torch.manual_seed(settings.seed)
    model = Restorer(model_config(settings, variant))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    photos = load_photos(PHOTOS, 0, settings.train_photos)
    rng = np.random.default_rng(settings.seed)
    # Its own generator, so every variant (and every dropout rate) sees the same batches.
    dropout = torch.Generator().manual_seed(settings.seed)
    start = time.process_time()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        lq, gt, ref = make_batch(photos, settings.batch, settings, rng)
        priors = drop_priors(Priors(reference=ref), settings.reference_dropout, dropout)
        loss = (model(lq, priors) - gt).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"  {variant} step {step + 1}: L1 {loss.item():.4f}", flush=True)
    seconds = time.process_time() - start
    lq, gt, ref = val
    macs = sum(r.conv_macs + r.attention_macs for r in summarize(model, settings.crop))
    return {"params": count_parameters(model), "gmacs": macs / 1e9, "cpu_s": seconds,
            "psnr_ref": evaluate(model, lq, gt, ref), "psnr_no_ref": evaluate(model, lq, gt, None),
            "psnr_aligned": evaluate(model, lq, gt, gt)}


def _spread(values: list[float]) -> str:
    """Mean, and the standard deviation over seeds when there are several."""
    mean = float(np.mean(values))
    return f"{mean:+.2f}" if len(values) == 1 else f"{mean:+.2f} ± {float(np.std(values, ddof=1)):.2f}"


def experiment(settings: Settings, variants: list[str], seeds: int) -> None:
    """Every variant trained and scored once per seed (seed k: its own initialisation, batches
    and validation crops, the same for every variant); PSNRs are means over seeds, gains are
    paired within a seed."""
    torch.set_num_threads(1)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    noisy = []
    for k in range(seeds):
        seeded = replace(settings, seed=settings.seed + k)
        val = validation_set(seeded)
        noisy.append(float(psnr(val[0].clamp(0, 1), val[1]).mean()))
        for variant in variants:
            runs[variant].append(train_variant(variant, seeded, val))
    print(f"settings: {asdict(settings)}, seeds {settings.seed}–{settings.seed + seeds - 1}")
    print(f"validation: {settings.val_photos * settings.val_crops} crops of {settings.val_photos} held-out photos per "
          f"seed, noisy input {np.mean(noisy):.2f} dB")
    print(f"| variant | params | GMACs at {settings.crop}² | train CPU s | PSNR, shifted+rescaled reference | "
          f"gain over none | PSNR, no reference | what the reference adds | PSNR, aligned clean reference "
          f"(diagnostic) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = runs.get("none")
    for variant, rs in runs.items():
        mean = {key: float(np.mean([r[key] for r in rs])) for key in rs[0]}
        gain = _spread([r["psnr_ref"] - b["psnr_ref"] for r, b in zip(rs, base)]) if base else "—"
        adds = _spread([r["psnr_ref"] - r["psnr_no_ref"] for r in rs])
        print(f"| {variant} | {rs[0]['params']:,} | {rs[0]['gmacs']:.3f} | {mean['cpu_s']:.0f} | "
              f"{mean['psnr_ref']:.2f} | {gain} | {mean['psnr_no_ref']:.2f} | {adds} | {mean['psnr_aligned']:.2f} |")


def cost(sizes: list[int], reps: int) -> None:
    """Reference components' params and MACs (base preset) and forward times, in one run."""
    torch.set_num_threads(1)
    configs = {"none": preset("base").without_priors()}
    for attention in ("windowed", "pooled"):
        configs[attention] = preset("base", use_degradation=False, use_content=False, reference_attention=attention)
    print("base preset, reference path only; MACs from restore.model.summary, forward: 1 thread, "
          f"best of {reps} after a warm-up")
    print("| branch | size | reference params (M) | conv+linear GMACs | attention GMACs | forward (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        torch.manual_seed(0)
        models = {name: Restorer(config).eval() for name, config in configs.items()}
        lq, ref = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
        times = {name: [] for name in models}
        with torch.inference_mode():
            for rep in range(reps + 1):
                for name, model in models.items():  # interleaved: load on the machine hits all alike
                    start = time.perf_counter()
                    model(lq, Priors(reference=ref))
                    if rep:
                        times[name].append(time.perf_counter() - start)
        for name, model in models.items():
            rows = [r for r in summarize(model, size) if r.name.startswith("reference")]
            print(f"| {name} | {size} | {sum(r.params for r in rows) / 1e6:.3f} | "
                  f"{sum(r.conv_macs for r in rows) / 1e9:.2f} | {sum(r.attention_macs for r in rows) / 1e9:.2f} | "
                  f"{min(times[name]):.2f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=Settings.steps)
    parser.add_argument("--sigma", type=float, default=Settings.sigma, help="noise σ on the 0–255 scale")
    parser.add_argument("--reference-dropout", type=float, default=Settings.reference_dropout,
                        help="share of training samples without their reference (restore.train's prior_dropout)")
    parser.add_argument("--variants", type=lambda v: v.split(","), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=1,
                        help="train and score every variant this many times, seeds 0..N-1 (mean ± sd)")
    parser.add_argument("--cost", action="store_true", help="print MACs and forward times instead of training")
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[128, 256])
    parser.add_argument("--reps", type=int, default=2, help="--cost: timed forward passes per branch and size")
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.cost:
        cost(args.sizes, args.reps)
    else:
        experiment(Settings(steps=args.steps, sigma=args.sigma, reference_dropout=args.reference_dropout),
                   args.variants, args.seeds)


if __name__ == "__main__":
    main()
