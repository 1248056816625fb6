"""Parameters and MACs of a restorer, per component, from one real forward pass.

Convolution and linear MACs are counted by forward hooks from each layer's output size; the
attention matmuls (activation × activation, which no layer hook sees) are counted by hooks that
ask each attention module's ``attention_macs`` for the shapes it was called with. Components are
the restorer's top-level children, so the table follows the model file.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from restore.model.priors import random_priors
from restore.model.restorer import Restorer

# Published Restormer (base) at 256×256, for comparison: parameters, convolution GMACs.
RESTORMER_PARAMS = 26_126_644
RESTORMER_CONV_GMACS = 140.99

PRIOR_COMPONENTS = ("prompt_encoder", "degradation_blocks", "caption_encoder", "content_blocks",
                    "reference_encoder", "reference_blocks")


@dataclass(frozen=True)
class ComponentCost:
    """One row of the summary: a top-level component's size and compute for one image."""

    name: str
    params: int
    conv_macs: int
    attention_macs: int

    @property
    def is_prior(self) -> bool:
        return self.name in PRIOR_COMPONENTS


def layer_macs(module: nn.Module, output: Tensor) -> int:
    """Multiply-accumulates of a Conv2d or Linear layer that produced ``output``."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    return output.numel() * module.in_features


@torch.no_grad()
def summarize(model: Restorer, size: int = 256) -> list[ComponentCost]:
    """Per-component parameters and MACs for one ``size``×``size`` image with every prior present."""
    conv: dict[str, int] = defaultdict(int)
    attention: dict[str, int] = defaultdict(int)
    handles = []
    for name, module in model.named_modules():
        component = name.split(".", 1)[0]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def count_layer(mod, args, output, component=component):
                conv[component] += layer_macs(mod, output)
            handles.append(module.register_forward_hook(count_layer))
        if hasattr(module, "attention_macs"):
            def count_attention(mod, args, kwargs, output, component=component):
                attention[component] += mod.attention_macs(*args, **kwargs)
            handles.append(module.register_forward_hook(count_attention, with_kwargs=True))
    generator = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, size, size, generator=generator)
    priors = random_priors(model.config, 1, (size, size), generator)
    was_training = model.training
    model.eval()
    try:
        model(lq, priors)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [ComponentCost(name, sum(p.numel() for p in child.parameters()), conv[name], attention[name])
            for name, child in model.named_children()]


def _row(label: str, params: int, conv: int, attention: int) -> str:
    return f"| {label} | {params / 1e6:.3f} | {conv / 1e9:.2f} | {attention / 1e9:.3f} |"


def format_table(rows: list[ComponentCost], size: int) -> str:
    """A markdown table of the rows with backbone, prior and overall totals and the Restormer comparison."""
    lines = [f"| component ({size}×{size}) | params (M) | conv+linear GMACs | attention GMACs |",
             "|---|---:|---:|---:|"]
    for row in rows:
        label = f"{row.name} (prior)" if row.is_prior else row.name
        lines.append(_row(label, row.params, row.conv_macs, row.attention_macs))
    totals = {}
    for label, selected in (("backbone", [r for r in rows if not r.is_prior]),
                            ("priors", [r for r in rows if r.is_prior]), ("total", rows)):
        totals[label] = (sum(r.params for r in selected), sum(r.conv_macs for r in selected),
                         sum(r.attention_macs for r in selected))
        lines.append(_row(f"**{label}**", *totals[label]))
    params, conv, _ = totals["total"]
    lines.append("")
    lines.append(f"vs Restormer base ({RESTORMER_PARAMS / 1e6:.2f} M params, {RESTORMER_CONV_GMACS:.2f} G conv MACs "
                 f"at 256²): params {100 * (params / RESTORMER_PARAMS - 1):+.1f}%"
                 + (f", conv MACs {100 * (conv / 1e9 / RESTORMER_CONV_GMACS - 1):+.1f}%" if size == 256 else ""))
    return "\n".join(lines)
