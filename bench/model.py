"""What the priors cost: step time and peak memory of the restorer with all priors against the
no-prior backbone, measured in the same run (and, given a checkout, a public Restormer too).

    python -m bench.model                                  # CPU, base at 128², 5 reps, 1 thread
    python -m bench.model --train                          # CPU training steps instead of forward passes
    python -m bench.model --restormer-repo ~/src/Restormer # + Restormer's own arch file
    python -m bench.model --device cuda                    # bf16 fwd+bwd throughput and MFU, 128² and 256²
    python -m bench.model --device cuda --compile          # + each variant under torch.compile

CPU times interleave the variants rep by rep (a shared machine's load then hits all alike) and
report the best of the reps. Peak memory is measured for each variant in a fresh process: the
kernel's peak-RSS counter is reset after the model, its inputs and a warm-up step exist, so the
number is what one step adds; glibc is told to hand every large block back to the kernel on free, so the
RSS follows the live tensors instead of the allocator's cache. Restormer's arch file is imported
from the given checkout at run time (it needs ``einops``); nothing of it is copied here.

On a GPU each variant's model FLOP utilisation (MFU) is printed beside its images/s: a training
step's FLOPs (three forward passes' worth, the usual convention: the backward pass costs two) times
steps per second, over the GPU's dense bf16 peak (``PEAK_BF16_TFLOPS``, or ``--peak-tflops``).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from restore.model import Priors, Restorer, count_parameters, preset
from restore.model.priors import random_priors

RESTORMER_ARCH = Path("basicsr/models/archs/restormer_arch.py")
VARIANTS = ("backbone", "all priors")
# Dense bf16 tensor-core peaks, TFLOP/s (NVIDIA's datasheets, without sparsity), by a pattern of the
# name torch reports; the first match counts. Other GPUs (and MIG slices) need --peak-tflops.
PEAK_BF16_TFLOPS = ((r"\bH100 PCIe\b", 756.5), (r"\bH[12]00 NVL\b", 835.5), (r"\bH100 (80GB HBM3|SXM)", 989.4),
                    (r"\bG?H200\b", 989.4), (r"\bA100\b", 312.0))
# The CPU's fused attention kernel, which FlopCounterMode has no formula for (CUDA's it has).
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                  lambda query, key, value, *args, out_shape=None, **kwargs: sdpa_flop_count(query, key, value)}


def load_restormer(repo: Path) -> nn.Module:
    """Restormer (base settings) from ``repo``'s own arch file."""
    path = repo / RESTORMER_ARCH
    if not path.is_file():
        raise SystemExit(f"--restormer-repo {repo}: no {RESTORMER_ARCH} there (expected a checkout of "
                         f"the public Restormer repository)")
    spec = importlib.util.spec_from_file_location("restormer_arch", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:
        raise SystemExit(f"{path}: cannot import it ({e}); Restormer's arch needs `pip install einops`") from e
    return module.Restormer()


def build(variant: str, preset_name: str, size: int, batch: int,
          restormer_repo: Path | None) -> tuple[nn.Module, torch.Tensor, Priors | None]:
    """The model of ``variant`` (seeded) and its inputs."""
    torch.manual_seed(0)
    config = preset(preset_name)
    lq = torch.rand(batch, 3, size, size)
    if variant == "backbone":
        return Restorer(config.without_priors()), lq, None
    if variant == "all priors":
        return Restorer(config), lq, random_priors(config, batch, (size, size))
    return load_restormer(restormer_repo), lq, None


def forward(model: nn.Module, lq: torch.Tensor, priors: Priors | None) -> torch.Tensor:
    return model(lq) if priors is None else model(lq, priors)


def training_flops(model: nn.Module, lq: torch.Tensor, priors: Priors | None) -> int:
    """FLOPs of one training step (forward and backward) of ``model`` on these inputs: three times
    its forward pass, whose matrix products, convolutions and attention torch's FlopCounterMode
    counts.

    Not the counter's own count of the backward pass: it counts a grouped convolution's weight
    gradient as an ungrouped one's (64 times the work for a 64-channel depthwise 3×3 convolution,
    torch 2.14), and every block here has depthwise convolutions."""
    # With autograd on: the counter's module tracking fails on outputs without a gradient function.
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        forward(model, lq, priors)
    return 3 * counter.get_total_flops()


def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The dense bf16 peak of the GPU named ``device_name`` (``override`` first; None: unknown)."""
    if override is not None:
        return override
    return next((tflops for pattern, tflops in PEAK_BF16_TFLOPS if re.search(pattern, device_name)), None)


def mfu(step_flops: float, images_per_s: float, batch: int, peak: float) -> float:
    """Model FLOP utilisation: the FLOPs a second that ``images_per_s`` at ``batch`` images a step
    of ``step_flops`` each do, over a ``peak`` of TFLOP/s."""
    return step_flops * images_per_s / batch / (peak * 1e12)


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def cpu_step(model: nn.Module, lq: torch.Tensor, priors: Priors | None,
             optimizer: torch.optim.Optimizer | None) -> None:
    """One timed CPU step: a forward pass without autograd, or, given an optimizer, an fp32 L1
    training step (forward, backward, AdamW) towards an all-zero target."""
    if optimizer is None:
        with torch.inference_mode():
            forward(model, lq, priors)
        return
    loss = forward(model, lq, priors).abs().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _cpu_model(variant: str, args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, Priors | None,
                                                                   torch.optim.Optimizer | None]:
    model, lq, priors = build(variant, args.preset, args.size, args.batch, args.restormer_repo)
    model.train(args.train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if args.train else None
    return model, lq, priors, optimizer


def peak_step_memory(variant: str, args: argparse.Namespace) -> float:
    """MiB that one step adds to the process at its peak (run in a fresh process, after a warm-up
    step, so a training step's optimizer state already exists)."""
    torch.set_num_threads(args.threads)
    model, lq, priors, optimizer = _cpu_model(variant, args)
    cpu_step(model, lq, priors, optimizer)
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    cpu_step(model, lq, priors, optimizer)
    return (_rss_kib("VmHWM") - before) / 1024


def cpu_bench(args: argparse.Namespace, variants: list[str]) -> None:
    torch.set_num_threads(args.threads)
    built = {v: _cpu_model(v, args) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for parts in built.values():
        cpu_step(*parts)  # warm-up: first calls pick kernels
    for _ in range(args.reps):
        for variant, parts in built.items():
            start = time.perf_counter()
            cpu_step(*parts)
            times[variant].append(time.perf_counter() - start)
    params = {v: count_parameters(built[v][0]) for v in variants}
    del built
    # Read by the children's glibc at start-up: blocks over 64 KiB are mmapped and unmapped on free.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    context = multiprocessing.get_context("spawn")
    memory = {}
    for variant in variants:
        with context.Pool(1) as pool:
            memory[variant] = pool.apply(peak_step_memory, (variant, args))
    step = "fp32 training steps (forward, backward, AdamW)" if args.train else "forward passes"
    print(f"CPU, {args.threads} thread(s), preset {args.preset}, batch {args.batch} at {args.size}², "
          f"best of {args.reps} {step}")
    print("| variant | params (M) | step (s) | peak step memory (MiB) |")
    print("|---|---:|---:|---:|")
    for variant in variants:
        print(f"| {variant} | {params[variant] / 1e6:.2f} | {min(times[variant]):.3f} "
              f"| {memory[variant]:.0f} |")
    if set(VARIANTS) <= set(variants):
        ratio_time = min(times["all priors"]) / min(times["backbone"])
        ratio_memory = memory["all priors"] / memory["backbone"]
        print(f"priors' overhead: time x{ratio_time:.2f}, peak memory x{ratio_memory:.2f} (target <= 1.25)")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, lq: torch.Tensor,
               priors: Priors | None, target: torch.Tensor) -> None:
    """One bf16-autocast L1 training step."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = (forward(model, lq, priors).float() - target).abs().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def gpu_throughput(args: argparse.Namespace, variant: str, size: int, compiled: bool) -> tuple[float, float, int]:
    """Training images/s, peak GiB and FLOPs per step of ``variant`` at ``size``² patches
    (``compiled``: under torch.compile, whose compilation happens in the warm-up steps and is not
    timed)."""
    device = torch.device("cuda")
    model, lq, priors = build(variant, args.preset, size, args.batch, args.restormer_repo)
    model = model.to(device).train()
    lq = lq.to(device)
    priors = priors.to(device) if priors is not None else None
    # Counted eagerly (the compiled graph does the same work) on one image, so that the count's
    # fp32 activations stay small: a batch of 8 at 256² would hold ~85 GiB.
    one = build(variant, args.preset, size, 1, args.restormer_repo)
    flops = args.batch * training_flops(one[0].to(device), one[1].to(device),
                                        one[2].to(device) if one[2] is not None else None)
    del one
    if compiled:
        torch._dynamo.reset()  # each size and variant compiles afresh, never falling back to eager
        model = torch.compile(model)
    target = torch.rand_like(lq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(3):
        train_step(model, optimizer, lq, priors, target)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.reps):
        train_step(model, optimizer, lq, priors, target)
    torch.cuda.synchronize(device)
    rate = args.reps * args.batch / (time.perf_counter() - start)
    return rate, torch.cuda.max_memory_allocated(device) / 2**30, flops


def gpu_bench(args: argparse.Namespace, variants: list[str]) -> None:
    """bf16 forward+backward throughput (images/s), MFU and peak memory at the --sizes patches."""
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, args.peak_tflops)
    print(f"{name}, bf16 autocast, batch {args.batch}, {args.reps} timed training steps after 3 warm-up steps; "
          + (f"MFU against a {peak:g} TFLOP/s dense bf16 peak" if peak else "peak unknown: pass --peak-tflops for MFU"))
    print("| variant | patch | images/s | TFLOP a step | MFU | peak memory (GiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for variant in variants:
            for compiled in (False, True) if args.compile else (False,):
                rate, memory, flops = gpu_throughput(args, variant, size, compiled)
                used = f"{mfu(flops, rate, args.batch, peak):.1%}" if peak else "n/a"
                label = f"{variant} (compiled)" if compiled else variant
                print(f"| {label} | {size} | {rate:.1f} | {flops / 1e12:.3f} | {used} | {memory:.2f} |", flush=True)
                torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--size", type=int, default=128, help="CPU: square input size")
    parser.add_argument("--batch", type=int, default=None, help="batch size (CPU 1, GPU 8)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per variant")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 by default: steadier timings on a shared machine)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--train", action="store_true",
                        help="CPU: time fp32 training steps (forward, backward, AdamW) instead of forward passes")
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[128, 256],
                        help="GPU: patch sizes, comma-separated")
    parser.add_argument("--compile", action="store_true", help="GPU: also time each variant under torch.compile")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="GPU: its dense bf16 peak in TFLOP/s, for MFU (default: known GPUs only)")
    parser.add_argument("--restormer-repo", type=Path, default=None,
                        help="a local checkout of the public Restormer repository, timed side by side")
    parser.add_argument("--variants", type=lambda v: v.split(","), default=list(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    variants = list(args.variants)
    if args.restormer_repo is not None:
        load_restormer(args.restormer_repo)  # fail before timing anything
        variants.append("restormer (public)")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to torch")
        args.batch = args.batch or 8
        gpu_bench(args, variants)
    else:
        args.batch = args.batch or 1
        cpu_bench(args, variants)


if __name__ == "__main__":
    sys.exit(main())
