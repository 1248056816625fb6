"""The backbone's building blocks (Restormer's design) and the token attention the priors use.

MDTA attends across channels instead of pixels, so its cost is linear in the number of pixels;
GDFN is a gated feed-forward with depthwise convolutions that mixes local context. Modules that
multiply activations by activations (attention) expose ``attention_macs(*forward_inputs)`` so
the model summary can count those MACs apart from convolution and linear layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, with weight and bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=1e-5)
        return x.permute(0, 3, 1, 2)


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention: a (C/h × C/h) attention map per head."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        out = channel_attention(q, k, v, self.heads, self.temperature)
        return self.project_out(out.reshape(b, c, h, w))

    def attention_macs(self, x: Tensor) -> int:
        b, c, h, w = x.shape
        return 2 * b * c * (c // self.heads) * h * w


def channel_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, temperature: Tensor) -> Tensor:
    """Transposed attention: softmax over channels of L2-normalised q·kᵀ (pixels summed), times v.

    q is (B, C, H, W); k and v may come from another map of the same size (cross-attention).
    Returns (B, heads, C/heads, H·W).
    """
    b, c = q.shape[:2]
    q, k, v = (t.reshape(b, heads, c // heads, -1) for t in (q, k, v))
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: GELU(dwconv(x₁)) ⊙ dwconv(x₂), projected back."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Pre-norm MDTA then pre-norm GDFN, both residual."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = GDFN(dim, expansion, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stage(count: int, dim: int, heads: int, expansion: float, bias: bool) -> nn.Sequential:
    """``count`` transformer blocks of width ``dim`` in sequence."""
    return nn.Sequential(*(TransformerBlock(dim, heads, expansion, bias) for _ in range(count)))


def downsample(dim: int) -> nn.Sequential:
    """Halve the resolution and double the channels: 3×3 conv to dim/2, pixel-unshuffle by 2."""
    return nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


def upsample(dim: int) -> nn.Sequential:
    """Double the resolution and halve the channels: 3×3 conv to 2·dim, pixel-shuffle by 2."""
    return nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


class TokenAttention(nn.Module):
    """Multi-head attention from N query tokens to T context tokens (self-attention: context=x).

    ``mask`` (B, T) marks the context tokens that may be attended to; every row needs one.
    """

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim, dim * 2)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2)
        k, v = (t.reshape(b, context.shape[1], self.heads, -1).transpose(1, 2)
                for t in self.to_kv(context).chunk(2, dim=-1))
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))

    def attention_macs(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> int:
        b, n, c = x.shape
        return 2 * b * n * context.shape[1] * c
