"""bench/model.py's FLOP count and GPU peaks, from which it reports model FLOP utilisation."""

from __future__ import annotations

import torch
from torch import nn

from bench.model import build, peak_tflops, training_flops


def test_a_training_step_counts_three_forward_passes_grouped_convolutions_included():
    # A depthwise 3x3 convolution over 3 channels of 8x8: 2 * 3 * 9 * 64 FLOPs forward. torch's own
    # backward count would take it as a full 3-to-3 convolution.
    depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
    assert training_flops(depthwise, torch.rand(1, 3, 8, 8), None) == 3 * 2 * 3 * 9 * 64


def test_the_priors_add_flops_to_the_backbone():
    flops = {variant: training_flops(*build(variant, "tiny", 32, 2, None)) for variant in ("backbone", "all priors")}
    assert 0 < flops["backbone"] < flops["all priors"]


def test_gpu_peaks_by_name_and_by_hand():
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H100 80GB HBM3") == peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L4") is None
    assert peak_tflops("NVIDIA L4", override=121.0) == 121.0
