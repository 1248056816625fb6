"""Validation during training: PSNR/SSIM per task and on average, an image grid, the curve.

Each validation restores full-size held-out samples (tiled beyond ``tile`` pixels, so memory
stays bounded), scores them in the all-in-one convention (restore.metrics), writes a grid whose
rows are LQ | restored | GT | reference, and redraws the training curve from ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.image_files import save_png
from pipeline.sample_format import Sample
from restore import metrics
from restore.data import resize_rgb, sample_priors, to_chw
from restore.figures import captioned_row
from restore.model.restorer import Restorer
from restore.model.tiling import restore_tiled

GRID_ROWS = 4
GRID_HEIGHT = 128


@dataclass(frozen=True)
class Scores:
    """Mean PSNR (dB) and SSIM per task, and their unweighted average over tasks (the papers' way)."""

    per_task: dict[str, tuple[float, float, int]]  # task -> (psnr, ssim, images)
    inputs: dict[str, float] = field(default_factory=dict)  # task -> the degraded inputs' PSNR

    @property
    def input_psnr(self) -> float:
        """The inputs' PSNR averaged like ``psnr``: the line a restorer has to stay above."""
        return float(np.mean(list(self.inputs.values()))) if self.inputs else float("nan")

    @property
    def psnr(self) -> float:
        return float(np.mean([v[0] for v in self.per_task.values()])) if self.per_task else float("nan")

    @property
    def ssim(self) -> float:
        return float(np.mean([v[1] for v in self.per_task.values()])) if self.per_task else float("nan")


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on a GPU when ``enabled``; a no-op elsewhere (CPU runs stay fp32 and exact)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def restore_sample(model: Restorer, sample: Sample, device: torch.device, tile: int = 512, amp: bool = False,
                   use_reference: bool = True) -> Tensor:
    """Restore one decoded sample with its own priors: (1, 3, H, W) in [0, 1] on the CPU."""
    c = model.config
    lq = torch.from_numpy(to_chw(sample.lq))[None].to(device)
    priors = sample_priors(sample, c.token_width, c.clip_width, use_reference).to(device)
    with autocast(device, amp):
        out = restore_tiled(model, lq, priors, tile=tile, overlap=min(32, tile // 4))
    return out.float().clamp(0, 1).cpu()


def _row(images: list[np.ndarray], captions: list[str]) -> np.ndarray:
    scaled = [resize_rgb(img, max(1, round(img.shape[1] * GRID_HEIGHT / img.shape[0])), GRID_HEIGHT)
              for img in images]
    return captioned_row(scaled, captions)


def to_uint8(x: Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] → uint8 (H, W, 3)."""
    return (metrics.quantize(x)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(rows: list[tuple[list[np.ndarray], list[str]]], path: Path) -> None:
    """Rows of captioned images side by side, scaled to one height, stacked (narrow rows padded white)."""
    strips = [_row(images, captions) for images, captions in rows]
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    save_png(np.concatenate(strips, axis=0), str(path))


def validate(model: nn.Module, samples: list[Sample], device: torch.device, grid_path: Path | None = None,
             tile: int = 512, amp: bool = False, y_channel: bool = False) -> Scores:
    """Score ``model`` (a Restorer, in eval mode) on ``samples``; write the grid when asked."""
    was_training = model.training
    model.eval()
    totals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    inputs: dict[str, list[float]] = defaultdict(list)
    rows = []
    for sample in samples:
        restored = restore_sample(model, sample, device, tile, amp)
        gt = torch.from_numpy(to_chw(sample.gt))[None]
        restored = metrics.quantize(restored)
        psnr = float(metrics.psnr(restored, gt, y_channel)[0])
        lq = torch.from_numpy(to_chw(sample.lq))[None]
        inputs[sample.meta.task].append(float(metrics.psnr(lq, gt, y_channel)[0]))
        totals[sample.meta.task].append((psnr, float(metrics.ssim(restored, gt, y_channel)[0])))
        if grid_path is not None and len(rows) < GRID_ROWS:
            ref = sample.ref if sample.ref is not None else np.full_like(sample.lq, 128)
            captions = [f"LQ ({sample.meta.task})", f"restored {psnr:.2f} dB", "GT",
                        "reference" if sample.ref is not None else "reference (none)"]
            rows.append(([sample.lq, to_uint8(restored), sample.gt, ref], captions))
    model.train(was_training)
    if rows:
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(rows, grid_path)
    return Scores({task: (float(np.mean([s[0] for s in v])), float(np.mean([s[1] for s in v])), len(v))
                   for task, v in sorted(totals.items())},
                  {task: float(np.mean(v)) for task, v in sorted(inputs.items())})


# The run folder's log: restore.train appends one JSON record per logging window and validation.
METRICS = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in order."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def plot_curve(metrics_path: Path, out_path: Path) -> None:
    """Training loss and validation PSNR against the step, from the run's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val, baseline = [], [], None
    for record in read_metrics(metrics_path):
        if "loss" in record:
            train.append((record["step"], record["loss"]))
        if "val_psnr" in record:
            val.append((record["step"], record["val_psnr"]))
            baseline = record.get("val_input_psnr", baseline)
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), color="tab:blue", label="training loss")
        if min(loss for _, loss in train) > 0:  # the PSNR loss is negative: linear then
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    if val:
        twin = ax.twinx()
        twin.plot(*zip(*val), "o-", color="tab:red", label="validation PSNR")
        if baseline is not None:  # the same validation inputs every time: one line
            twin.axhline(baseline, color="tab:red", linestyle="--", linewidth=1)
            twin.annotate(f"inputs {baseline:.2f} dB", (0.01, baseline), xycoords=("axes fraction", "data"),
                          color="tab:red", fontsize=8, va="bottom")
        twin.set_ylabel("validation PSNR (dB)", color="tab:red")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
