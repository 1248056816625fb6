"""Tiled inference: restore an image of any size in overlapping tiles with bounded memory.

Each tile is restored on its own and the tiles are blended with weights that ramp down over the
overlap, so seams do not show. Global priors (tokens, CLIP embedding, degradation vector) apply
to every tile unchanged; the reference is resized to the whole image once and cropped like the
LQ image, so each tile gets a tile-sized window of it at the LQ's scale, as in training (the
pooled reference branch finds a detail anywhere in that window; the windowed one needs it at
the same place).

``choose_tile`` is the rule inference follows when no tile size is given: the whole image in one
pass while it fits WHOLE_IMAGE_PIXELS, tiles of TILE beyond that.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from tqdm import tqdm

from restore.model.prior_blocks import resize_reference
from restore.model.priors import Priors

# One pass over 1024 x 1024 pixels peaks at about 2 GB above the model itself for the compact
# restorer on a CPU (activations grow with dim x pixels); beyond it, tiles keep memory at one
# 512-px tile's forward pass whatever the image size.
WHOLE_IMAGE_PIXELS = 1024 * 1024
TILE = 512


def choose_tile(height: int, width: int, tile: int | None = None) -> int:
    """The tile size for an image: ``tile`` when given, else the whole image (its longer side)
    when it has at most WHOLE_IMAGE_PIXELS pixels, else TILE."""
    if tile is not None:
        return tile
    return max(height, width) if height * width <= WHOLE_IMAGE_PIXELS else TILE


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
                  tile: int = TILE, overlap: int = 32, progress: str | None = None) -> Tensor:
    """Restore ``lq`` (B, 3, H, W) in tiles of ``tile``² pixels overlapping by ``overlap``.

    Memory is bounded by one tile's forward pass plus the output. Put the model in eval mode
    first. An image no larger than the tile is one tile: the same result as ``model(lq, priors)``.
    Tiles that are multiples of 8 avoid padding inside the model. ``progress`` labels a progress
    bar over the tiles (on stderr, shown when there is more than one tile).
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
    th, tw = min(tile, h), min(tile, w)
    blend = (blend_ramp(th, overlap, lq.device)[:, None] * blend_ramp(tw, overlap, lq.device)).to(lq.dtype)
    starts = [(y, x) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]
    bar = tqdm(starts, desc=progress, unit="tile", leave=False, disable=progress is None or len(starts) == 1)
    for y, x in bar:
        window = (slice(None), slice(None), slice(y, y + th), slice(x, x + tw))
        tile_priors = priors
        if reference is not None:
            tile_priors = dataclasses.replace(priors, reference=reference[window])
        out[window] += model(lq[window], tile_priors) * blend
        weight[window] += blend
    return out / weight
