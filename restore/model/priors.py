"""The priors a restorer batch may carry, which samples carry each, and prior dropout.

Every prior is optional twice over: a field left ``None`` is absent for the whole batch, and
``present[name]`` (a (B,) bool tensor) marks it absent for single samples, so one batch can mix
samples with and without, e.g. a reference. The model replaces absent priors by learned null
tokens or a learned null image, so a missing prior and a dropped one look the same to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline.sample_format import TOKEN_POSITIONS
from restore.model.config import RestorerConfig

# The priors that can be present or absent independently; the keys of Priors.present.
PRIOR_NAMES: tuple[str, ...] = (
    "degradation_tokens",
    "clip_image",
    "degradation_vector",
    "caption_tokens",
    "reference",
)


@dataclass(frozen=True)
class Priors:
    """Large-model priors for a batch of B images (shapes in the field comments).

    Token masks mark real tokens with True; a present sample whose mask has no True token is
    treated as absent. ``present`` maps a name of PRIOR_NAMES to a (B,) bool tensor; a name not in
    it means "present for every sample that has the field".
    """

    degradation_tokens: Tensor | None = None  # (B, T, W) text-token embeddings of the degradation text
    degradation_mask: Tensor | None = None  # (B, T) bool
    clip_image: Tensor | None = None  # (B, E) CLIP image embedding of the LQ image
    degradation_vector: Tensor | None = None  # (B, number of vocabulary types) analysis scores
    caption_tokens: Tensor | None = None  # (B, T, W) text-token embeddings of the scene caption
    caption_mask: Tensor | None = None  # (B, T) bool
    reference: Tensor | None = None  # (B, 3, Hr, Wr) in [0, 1], any size
    present: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.present) - set(PRIOR_NAMES))
        if unknown:
            raise ValueError(f"Priors.present has unknown names {unknown}; valid: {', '.join(PRIOR_NAMES)}")
        for tokens, mask in (("degradation_tokens", "degradation_mask"), ("caption_tokens", "caption_mask")):
            if (getattr(self, tokens) is None) != (getattr(self, mask) is None):
                raise ValueError(f"Priors.{tokens} and Priors.{mask} must be given together")

    def presence(self, name: str, batch: int, device: torch.device) -> Tensor:
        """(B,) bool: which samples carry prior ``name`` (all False when the field is None)."""
        if getattr(self, name) is None:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        flags = self.present.get(name)
        if flags is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        if flags.shape != (batch,) or flags.dtype != torch.bool:
            raise ValueError(f"Priors.present[{name!r}] must be a bool tensor of shape ({batch},), "
                             f"got {flags.dtype} {tuple(flags.shape)}")
        return flags.to(device)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None, non_blocking: bool = False) -> Priors:
        """A copy on ``device``; floating fields also cast to ``dtype`` when given. ``non_blocking``
        as for Tensor.to: the trainer's copies of a batch must not wait for the GPU."""
        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            cast = dtype if dtype is not None and t.is_floating_point() else None
            return t.to(device, cast, non_blocking=non_blocking)

        changes = {f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "present"}
        return Priors(**changes, present={k: v.to(device, non_blocking=non_blocking) for k, v in self.present.items()})

    def with_present(self, **flags: Tensor) -> Priors:
        """A copy whose presence flags for the named priors are replaced by ``flags``."""
        return dataclasses.replace(self, present={**self.present, **flags})


def drop_priors(priors: Priors, probability: float, generator: torch.Generator | None = None) -> Priors:
    """Prior dropout: mark each prior of each sample absent with ``probability``.

    Training on batches passed through this makes one model work with any subset of priors at
    test time (the trainer calls it with ``config.prior_dropout``). Draws happen on the CPU so a
    seeded ``generator`` gives the same drops on any device.
    """
    if probability <= 0.0:
        return priors
    flags = {}
    for name in PRIOR_NAMES:
        value = getattr(priors, name)
        if value is None:
            continue
        batch = value.shape[0]
        keep = torch.rand(batch, generator=generator) >= probability
        flags[name] = priors.presence(name, batch, value.device) & keep.to(value.device)
    return priors.with_present(**flags)


def random_priors(config: RestorerConfig, batch: int, size: tuple[int, int] = (64, 64),
                  generator: torch.Generator | None = None) -> Priors:
    """Every prior present, filled with random values of the widths ``config`` expects.

    For shape checks, MAC counting and timing, where what matters is that each path runs;
    the reference is drawn at ``size``.
    """
    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator)

    lengths = torch.randint(2, TOKEN_POSITIONS + 1, (2, batch), generator=generator)
    positions = torch.arange(TOKEN_POSITIONS)
    return Priors(
        degradation_tokens=normal(batch, TOKEN_POSITIONS, config.token_width),
        degradation_mask=positions[None] < lengths[0][:, None],
        clip_image=normal(batch, config.clip_width),
        degradation_vector=torch.rand(batch, config.num_degradation_types, generator=generator),
        caption_tokens=normal(batch, TOKEN_POSITIONS, config.token_width),
        caption_mask=positions[None] < lengths[1][:, None],
        reference=torch.rand(batch, 3, *size, generator=generator),
    )
