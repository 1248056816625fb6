"""bench/model.py's CPU steps, FLOP count, GPU peaks and MFU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.model import build, cpu_step, mfu, peak_tflops, training_flops
from restore.model.summary import summarize


def test_a_training_step_counts_three_forward_passes_grouped_convolutions_included():
    # A depthwise 3x3 convolution over 3 channels of 8x8: 2 * 3 * 9 * 64 FLOPs forward. torch's own
    # backward count would take its weight gradient for a full 3-to-3 convolution's.
    depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
    assert training_flops(depthwise, torch.rand(1, 3, 8, 8), None) == 3 * 2 * 3 * 9 * 64


@pytest.mark.parametrize("variant", ["backbone", "all priors"])
def test_the_count_is_six_times_the_model_summary_s_macs(variant):
    # The summary counts every convolution, linear layer and attention product by hand; the CPU's
    # fused attention kernel, which torch's counter has no formula for, is counted too.
    model, lq, priors = build(variant, "tiny", 32, 1, None)
    macs = sum(row.conv_macs + row.attention_macs for row in summarize(model, 32))
    assert training_flops(model, lq, priors) == 6 * macs


def test_gpu_peaks_by_name_and_by_hand():
    assert peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert peak_tflops("NVIDIA H100 80GB HBM3") == peak_tflops("NVIDIA H200") == peak_tflops("NVIDIA GH200 480GB") == 989.4
    assert peak_tflops("NVIDIA H100 NVL") == peak_tflops("NVIDIA H200 NVL") == 835.5
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == peak_tflops("NVIDIA A100 80GB PCIe") == 312.0
    assert peak_tflops("NVIDIA RTX A1000") is None and peak_tflops("NVIDIA L4") is None
    assert peak_tflops("NVIDIA L4", override=121.0) == 121.0


def test_mfu_is_the_flops_done_a_second_over_the_peak():
    # 40 images/s in steps of 8 is 5 steps/s; 5 x 3 TFLOP = 15 TFLOP/s of a 100 TFLOP/s peak.
    assert mfu(3e12, 40.0, 8, 100.0) == pytest.approx(0.15)


def test_a_cpu_training_step_lowers_its_loss_and_a_forward_step_changes_nothing():
    model, lq, priors = build("all priors", "tiny", 16, 1, None)
    before = [p.detach().clone() for p in model.parameters()]
    cpu_step(model.eval(), lq, priors, None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.no_grad():
        start = model(lq, priors).abs().mean()
    for _ in range(5):
        cpu_step(model, lq, priors, optimizer)
    with torch.no_grad():
        assert model(lq, priors).abs().mean() < 0.9 * start  # the L1 the steps take, towards zeros
