"""Tiled inference: restore an image of any size in overlapping tiles with bounded memory.

Each tile is restored on its own and the tiles are blended with weights that ramp down over the
overlap, so seams do not show. Global priors (tokens, CLIP embedding, degradation vector) apply
to every tile unchanged; the reference is resized to the whole image once and cropped like the
LQ image, so each tile sees the matching part of it.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from restore.model.prior_blocks import resize_reference
from restore.model.priors import Priors


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    return list(range(0, length - tile, stride)) + [length - tile]


def blend_ramp(length: int, overlap: int, device: torch.device) -> Tensor:
    """1-D weights, 1 in the middle, falling linearly (but staying > 0) over ``overlap`` at each end."""
    i = torch.arange(length, device=device, dtype=torch.float32)
    ramp = torch.minimum(i + 1, length - i) / (overlap + 1)
    return ramp.clamp(max=1.0)


@torch.no_grad()
def restore_tiled(model: nn.Module, lq: Tensor, priors: Priors | None = None,
                  tile: int = 512, overlap: int = 32) -> Tensor:
    """Restore ``lq`` (B, 3, H, W) in tiles of ``tile``² pixels overlapping by ``overlap``.

    Memory is bounded by one tile's forward pass plus the output. Put the model in eval mode
    first. An image no larger than the tile is one tile: the same result as ``model(lq, priors)``.
    Tiles that are multiples of 8 avoid padding inside the model.
    """
    if tile < 8 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 8 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    b, _, h, w = lq.shape
    priors = priors if priors is not None else Priors()
    reference = priors.reference
    if reference is not None:
        reference = resize_reference(reference, (h, w))
    out = torch.zeros_like(lq)
    weight = torch.zeros(1, 1, h, w, dtype=lq.dtype, device=lq.device)
    for y in tile_starts(h, tile, overlap):
        for x in tile_starts(w, tile, overlap):
            th, tw = min(tile, h), min(tile, w)
            window = (slice(None), slice(None), slice(y, y + th), slice(x, x + tw))
            tile_priors = priors
            if reference is not None:
                tile_priors = dataclasses.replace(priors, reference=reference[window])
            restored = model(lq[window], tile_priors)
            blend = (blend_ramp(th, overlap, lq.device)[:, None] * blend_ramp(tw, overlap, lq.device)).to(lq.dtype)
            out[window] += restored * blend
            weight[window] += blend
    return out / weight
