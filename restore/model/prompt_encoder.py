"""Query-based prompt encoder: learnable queries read the degradation cues into prompt tokens.

The cues are the text-token embeddings of the degradation description, the CLIP image embedding
of the LQ image and the weight-free analysis' degradation vector. Each is projected to one width,
tagged with a learned source embedding and concatenated into a context; a few layers of
(cross-attention to the context, self-attention, MLP) turn K learned queries into K degradation
prompt tokens. A missing cue is replaced by its own learned null token, so with no cue at all
the queries still yield a learned "unknown degradation" prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from restore.model.blocks import TokenAttention
from restore.model.config import RestorerConfig
from restore.model.priors import Priors


class PromptLayer(nn.Module):
    """Queries attend to the context, then to each other, then pass an MLP; all pre-norm residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_cross = nn.LayerNorm(dim)
        self.cross = TokenAttention(dim, dim, heads)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = TokenAttention(dim, dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, queries: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        queries = queries + self.cross(self.norm_cross(queries), context, mask)
        q = self.norm_self(queries)
        queries = queries + self.self_attn(q, q)
        return queries + self.mlp(self.norm_mlp(queries))


class PromptEncoder(nn.Module):
    """Degradation cues (any subset, per sample) → (B, K, prompt_dim) prompt tokens."""

    def __init__(self, config: RestorerConfig):
        super().__init__()
        dim = config.prompt_dim
        self.token_width = config.token_width
        self.clip_width = config.clip_width
        self.num_types = config.num_degradation_types
        self.queries = nn.Parameter(torch.randn(config.prompt_tokens, dim) * 0.02)
        self.text_proj = nn.Sequential(nn.LayerNorm(config.token_width), nn.Linear(config.token_width, dim))
        self.clip_proj = nn.Sequential(nn.LayerNorm(config.clip_width), nn.Linear(config.clip_width, dim))
        self.vector_proj = nn.Sequential(nn.Linear(config.num_degradation_types, dim), nn.GELU(),
                                         nn.Linear(dim, dim))
        # Order: degradation text, CLIP image, degradation vector.
        self.source = nn.Parameter(torch.randn(3, dim) * 0.02)
        self.null = nn.Parameter(torch.randn(3, dim) * 0.02)
        self.layers = nn.ModuleList(PromptLayer(dim, config.prompt_heads) for _ in range(config.prompt_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, priors: Priors, batch: int) -> Tensor:
        device = self.queries.device
        text, text_mask = encode_tokens(priors, "degradation", self.text_proj, self.null[0] + self.source[0],
                                        self.token_width, batch, device, offset=self.source[0])
        clip = self._single(priors, "clip_image", self.clip_proj, self.clip_width, 1, batch, device)
        vector = self._single(priors, "degradation_vector", self.vector_proj, self.num_types, 2, batch, device)
        context = torch.cat([text, clip, vector], dim=1)
        ones = torch.ones(batch, 2, dtype=torch.bool, device=device)
        mask = torch.cat([text_mask, ones], dim=1)
        queries = self.queries.expand(batch, -1, -1)
        for layer in self.layers:
            queries = layer(queries, context, mask)
        return self.norm(queries)

    def _single(self, priors: Priors, name: str, proj: nn.Module, width: int, index: int,
                batch: int, device: torch.device) -> Tensor:
        null = (self.null[index] + self.source[index]).expand(batch, 1, -1)
        value = getattr(priors, name)
        if value is None:
            return null
        present = priors.presence(name, batch, device)
        if value.shape != (batch, width):
            raise ValueError(f"Priors.{name} has shape {tuple(value.shape)}, the model expects ({batch}, {width})")
        token = (proj(value) + self.source[index])[:, None]
        return torch.where(present[:, None, None], token, null)


def encode_tokens(priors: Priors, name: str, proj: nn.Module, null: Tensor, width: int, batch: int,
                  device: torch.device, offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Project ``priors.<name>_tokens`` (+ ``offset``) and put the ``null`` token where absent.

    Returns (B, T, D) tokens and their (B, T) mask; (B, 1, D) null tokens when the field is
    None. An absent sample sees the null token alone, which attends exactly like a batch without
    the field, since masked positions get zero weight. Presence is applied by masking, never by
    branching on flag values, so a step neither waits for the GPU nor breaks a compiled graph.
    """
    tokens, mask = getattr(priors, f"{name}_tokens"), getattr(priors, f"{name}_mask")
    if tokens is None:
        return null.expand(batch, 1, -1), torch.ones(batch, 1, dtype=torch.bool, device=device)
    present = priors.presence(f"{name}_tokens", batch, device)
    check_tokens(tokens, mask, batch, width, name)
    present = present & mask.any(dim=1)
    tokens = proj(tokens)
    if offset is not None:
        tokens = tokens + offset
    null_tokens = torch.zeros_like(tokens)
    null_tokens[:, 0] = null
    null_mask = torch.zeros_like(mask)
    null_mask[:, 0] = True
    tokens = torch.where(present[:, None, None], tokens, null_tokens)
    mask = torch.where(present[:, None], mask, null_mask)
    return tokens, mask


def check_tokens(tokens: Tensor, mask: Tensor, batch: int, width: int, name: str) -> None:
    """Raise a ValueError naming the prior unless tokens is (B, T ≥ 1, width) and mask (B, T) bool."""
    if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != width or tokens.shape[1] == 0:
        raise ValueError(f"Priors.{name}_tokens has shape {tuple(tokens.shape)}, the model expects "
                         f"({batch}, T ≥ 1, {width}) (config.token_width={width}; None for no tokens)")
    if mask.shape != tokens.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"Priors.{name}_mask must be bool of shape {tuple(tokens.shape[:2])}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
