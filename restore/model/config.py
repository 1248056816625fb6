"""The restorer's typed configuration and its named presets (the one definition of both).

A preset is a small factory function returning a frozen ``RestorerConfig``; keyword arguments
override fields (``tiny(token_width=64)``), so tests and the trainer never edit dicts by hand.
Switching ``use_degradation``, ``use_content`` and ``use_reference`` off removes those paths
entirely: with all three off the same code is a plain Restormer-style backbone, our no-prior
baseline (``base`` then has exactly Restormer's 26,126,644 parameters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.vocabulary import DEGRADATION_TYPES

LEVELS = 4
# The U-Net's places where a prior can enter (restore.model.restorer), in the order forward passes them.
PRIOR_LEVELS = ("encoder1", "encoder2", "encoder3", "latent", "decoder3", "decoder2", "decoder1")
REFERENCE_ATTENTIONS = ("pooled", "windowed")
# Where the degradation-aware blocks enter unless a config says otherwise, and the only places
# they entered before degradation_levels existed.
DEGRADATION_LEVELS = ("encoder1", "encoder2", "encoder3", "latent")
# Fields added after config.json files were first written, with the value that rebuilds the model
# such a file describes: before reference_attention there was only the windowed branch.
ADDED_FIELDS = {"reference_attention": "windowed", "reference_grid": 8, "degradation_levels": DEGRADATION_LEVELS}


@dataclass(frozen=True)
class RestorerConfig:
    """Every size and switch of the restorer; stored as config.json next to the weights."""

    # Backbone (Restormer's design): channels at level 1 double at each of the 4 levels.
    dim: int = 48
    blocks: tuple[int, ...] = (4, 6, 6, 8)
    refinement_blocks: int = 4
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion: float = 2.66
    bias: bool = False

    # Which prior paths exist at all.
    use_degradation: bool = True
    use_content: bool = True
    use_reference: bool = True

    # Widths of the inputs the priors arrive in (ViT-L-14: 768 and 768).
    token_width: int = 768
    clip_width: int = 768
    num_degradation_types: int = len(DEGRADATION_TYPES)

    # Where a degradation-aware block (cross-attention to the prompts, then a prompt-conditioned
    # channel modulation) enters, of PRIOR_LEVELS.
    degradation_levels: tuple[str, ...] = DEGRADATION_LEVELS

    # Query-based prompt encoder.
    prompt_tokens: int = 16
    prompt_dim: int = 128
    prompt_layers: int = 2
    prompt_heads: int = 4

    # Caption tokens are projected once to this width, then per block to the level's width.
    caption_dim: int = 256

    # How decoder levels 1, 2, 3 read the reference (REFERENCE_ATTENTIONS). "pooled": a conv stem
    # (reference_channels wide at full, 1/2 and 1/4 resolution) pooled to reference_grid² tokens
    # with learned positions, to which each level cross-attends with reference_channels[level]
    # wide heads: a detail is found wherever it lies, as in a render made from a caption.
    # "windowed", the first branch: a pyramid of reference_channels features attended within
    # windows of reference_window pixels plus a margin of reference_margin (in that level's
    # pixels), which finds only what lies near the same place; kept for checkpoints trained with
    # it and for the comparison in bench/reference_branch.py.
    reference_attention: str = "pooled"
    reference_channels: tuple[int, ...] = (24, 48, 96)
    reference_grid: int = 8
    reference_window: int = 8
    reference_margin: int = 4

    # Probability that training drops each prior of each sample (see priors.drop_priors).
    prior_dropout: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if len(self.blocks) != LEVELS or len(self.heads) != LEVELS:
            problems.append(f"blocks and heads need {LEVELS} entries, got {self.blocks} and {self.heads}")
        else:
            for level, heads in enumerate(self.heads):
                width = self.dim * 2**level
                if width % heads:
                    problems.append(f"level {level + 1}: {width} channels not divisible by {heads} heads")
        if len(self.reference_channels) != LEVELS - 1:
            problems.append(f"reference_channels needs {LEVELS - 1} entries, got {self.reference_channels}")
        else:
            for level, channels in enumerate(self.reference_channels):
                if channels % self.heads[level]:
                    problems.append(f"reference_channels[{level}]={channels} not divisible by "
                                    f"{self.heads[level]} heads")
        if self.prompt_dim % self.prompt_heads:
            problems.append(f"prompt_dim {self.prompt_dim} not divisible by prompt_heads {self.prompt_heads}")
        if not 0.0 <= self.prior_dropout < 1.0:
            problems.append(f"prior_dropout {self.prior_dropout} outside [0, 1)")
        if self.reference_window < 1 or self.reference_margin < 0:
            problems.append("reference_window must be >= 1 and reference_margin >= 0")
        if self.reference_attention not in REFERENCE_ATTENTIONS:
            problems.append(f"reference_attention {self.reference_attention!r} is not one of "
                            f"{', '.join(REFERENCE_ATTENTIONS)}")
        if self.reference_grid < 1:
            problems.append(f"reference_grid must be >= 1, got {self.reference_grid}")
        unknown = [n for n in self.degradation_levels if n not in PRIOR_LEVELS]
        if unknown or len(set(self.degradation_levels)) != len(self.degradation_levels):
            problems.append(f"degradation_levels {self.degradation_levels}: each once, of {', '.join(PRIOR_LEVELS)}")
        if problems:
            raise ValueError("invalid RestorerConfig: " + "; ".join(problems))

    @property
    def has_priors(self) -> bool:
        return self.use_degradation or self.use_content or self.use_reference

    def without_priors(self) -> RestorerConfig:
        """The same backbone with every prior path switched off (the no-prior baseline)."""
        return dataclasses.replace(self, use_degradation=False, use_content=False, use_reference=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> RestorerConfig:
        """Inverse of to_dict; unknown or missing fields are errors naming ``source`` (fields of
        ADDED_FIELDS that an older file lacks take the value it was written with)."""
        raw = {**{k: v for k, v in ADDED_FIELDS.items() if k not in raw}, **raw}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(f"{source}: unknown restorer config fields {unknown}")
        missing = sorted(set(fields) - set(raw))
        if missing:
            raise ValueError(f"{source}: missing restorer config fields {missing}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**values)


def base(**overrides: Any) -> RestorerConfig:
    """Restormer's base size (48 channels, [4, 6, 6, 8] blocks) with all three prior paths."""
    return dataclasses.replace(RestorerConfig(), **overrides)


def small(**overrides: Any) -> RestorerConfig:
    """About a quarter of base's compute: for quick experiments on one GPU."""
    config = RestorerConfig(dim=32, blocks=(2, 3, 3, 4), refinement_blocks=2,
                            prompt_tokens=8, prompt_dim=96, caption_dim=128,
                            reference_channels=(16, 32, 64))
    return dataclasses.replace(config, **overrides)


def tiny(**overrides: Any) -> RestorerConfig:
    """About 0.2 M backbone parameters (0.3 M with ViT-L-14 prior widths): CPU tests and the demo."""
    config = RestorerConfig(dim=8, blocks=(1, 1, 1, 1), refinement_blocks=1, heads=(1, 2, 2, 4),
                            prompt_tokens=4, prompt_dim=16, prompt_layers=1, prompt_heads=2,
                            caption_dim=16, reference_channels=(8, 8, 16), reference_window=4,
                            reference_margin=2)
    return dataclasses.replace(config, **overrides)


def compact(**overrides: Any) -> RestorerConfig:
    """The shipped checkpoint's size: 1.56 M parameters with 384-wide text tokens (3.1 MB in fp16),
    trainable on two CPU cores in about 90 minutes. Only the degradation path is on: the offline
    priors carry no caption or reference for the other two paths to read."""
    config = RestorerConfig(dim=16, blocks=(1, 1, 2, 3), refinement_blocks=1, heads=(1, 2, 4, 8),
                            use_content=False, use_reference=False,
                            prompt_tokens=8, prompt_dim=64, prompt_layers=1, prompt_heads=4,
                            caption_dim=64, reference_channels=(8, 16, 32))
    return dataclasses.replace(config, **overrides)


PRESETS: dict[str, Callable[..., RestorerConfig]] = {"tiny": tiny, "compact": compact, "small": small,
                                                     "base": base}


def preset(name: str, **overrides: Any) -> RestorerConfig:
    """The preset called ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown restorer preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](**overrides)
