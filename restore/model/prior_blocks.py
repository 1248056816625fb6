"""The blocks that bring each prior into the backbone.

- DegradationAwareBlock (encoder and latent): features cross-attend to the degradation prompt
  tokens, then the pooled prompt scales and shifts every channel, steering *what* to remove.
- ContentAwareBlock (low-resolution levels): features cross-attend to the caption's token
  embeddings, so semantics survive heavy degradation.
- ReferenceBlock (decoder levels): the diffusion-made reference, encoded by ReferenceEncoder's
  light conv pyramid, supplies *fine detail* through local reference attention (windowed, with a
  margin of extra reference pixels so a misaligned reference still matches) and global reference
  attention (channel-wise transposed cross-attention, linear in pixels), mixed in by a gate
  computed from the features, so an unhelpful reference can be shut out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from restore.model.blocks import LayerNorm2d, TokenAttention, channel_attention
from restore.model.config import RestorerConfig
from restore.model.priors import Priors
from restore.model.prompt_encoder import encode_tokens


class FeatureTokenAttention(nn.Module):
    """Pre-norm residual cross-attention from every pixel of a (B, C, H, W) map to tokens."""

    def __init__(self, dim: int, token_dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, token_dim, heads)

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        pixels = self.norm(x.flatten(2).transpose(1, 2))
        return x + self.attn(pixels, tokens, mask).transpose(1, 2).reshape(b, c, h, w)


class DegradationAwareBlock(nn.Module):
    """Cross-attention to the prompt tokens, then prompt-conditioned channel modulation."""

    def __init__(self, dim: int, prompt_dim: int, heads: int):
        super().__init__()
        self.cross = FeatureTokenAttention(dim, prompt_dim, heads)
        self.modulation = nn.Linear(prompt_dim, dim * 2)
        # Start as the identity modulation; training moves it where the prompt helps.
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, prompts: Tensor) -> Tensor:
        x = self.cross(x, prompts)
        scale, shift = self.modulation(prompts.mean(dim=1))[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class CaptionEncoder(nn.Module):
    """Caption token embeddings → (B, T, caption_dim) tokens and mask; a null token where absent."""

    def __init__(self, config: RestorerConfig):
        super().__init__()
        self.token_width = config.token_width
        self.proj = nn.Sequential(nn.LayerNorm(config.token_width), nn.Linear(config.token_width, config.caption_dim))
        self.null = nn.Parameter(torch.randn(config.caption_dim) * 0.02)

    def forward(self, priors: Priors, batch: int) -> tuple[Tensor, Tensor]:
        return encode_tokens(priors, "caption", self.proj, self.null, self.token_width, batch, self.null.device)


class ContentAwareBlock(nn.Module):
    """Cross-attention from features to the caption tokens."""

    def __init__(self, dim: int, caption_dim: int, heads: int):
        super().__init__()
        self.cross = FeatureTokenAttention(dim, caption_dim, heads)

    def forward(self, x: Tensor, caption: tuple[Tensor, Tensor]) -> Tensor:
        tokens, mask = caption
        return self.cross(x, tokens, mask)


class ReferenceEncoder(nn.Module):
    """Reference image → features at decoder levels 1, 2, 3 (full, 1/2 and 1/4 resolution)."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        # A flat grey-ish learned image stands in for a missing reference.
        self.null = nn.Parameter(torch.full((1, 3, 8, 8), 0.5))
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, padding=1), nn.GELU(),
                                  nn.Conv2d(channels[0], channels[0], 3, padding=1))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU(),
                          nn.Conv2d(c_out, c_out, 3, padding=1))
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )

    def image(self, priors: Priors, size: tuple[int, int], batch: int) -> Tensor:
        """The (B, 3, H, W) reference at the LQ size, the null image for samples without one."""
        device = self.null.device
        null = F.interpolate(self.null, size=size, mode="bilinear", align_corners=False).expand(batch, -1, -1, -1)
        ref = priors.reference
        if ref is None:
            return null
        present = priors.presence("reference", batch, device)
        if ref.ndim != 4 or ref.shape[:2] != (batch, 3):
            raise ValueError(f"Priors.reference has shape {tuple(ref.shape)}, the model expects ({batch}, 3, H, W)")
        return torch.where(present[:, None, None, None], resize_reference(ref, size).to(null.dtype), null)

    def forward(self, image: Tensor) -> list[Tensor]:
        features = [self.stem(image)]
        for down in self.down:
            features.append(down(features[-1]))
        return features


def resize_reference(reference: Tensor, size: tuple[int, int]) -> Tensor:
    """The reference resampled to ``size`` (unchanged when it already has that size)."""
    if tuple(reference.shape[-2:]) == tuple(size):
        return reference
    # The diffusion model renders at its own resolution; antialiasing keeps a downsized
    # reference free of aliasing the restorer could copy.
    return F.interpolate(reference, size=size, mode="bilinear", align_corners=False, antialias=True)


class LocalReferenceAttention(nn.Module):
    """Each window×window block of LQ pixels attends to the (window + 2·margin)² reference pixels
    around the same place, so a detail shifted by up to ``margin`` pixels is still found."""

    def __init__(self, dim: int, ref_channels: int, heads: int, window: int, margin: int):
        super().__init__()
        self.heads, self.window, self.margin = heads, window, margin
        self.to_q = nn.Conv2d(dim, ref_channels, 1)
        self.to_kv = nn.Conv2d(ref_channels, ref_channels * 2, 1)
        self.to_out = nn.Conv2d(ref_channels, dim, 1)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        b, _, h, w = x.shape
        win, heads, span = self.window, self.heads, self.window + 2 * self.margin
        q = self.to_q(x)
        k, v = self.to_kv(ref).chunk(2, dim=1)
        valid = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
        pad_h, pad_w = (-h) % win, (-w) % win
        if pad_h or pad_w:
            q, k, v, valid = (F.pad(t, (0, pad_w, 0, pad_h)) for t in (q, k, v, valid))
        c, hp, wp = q.shape[1], h + pad_h, w + pad_w
        nh, nw, d = hp // win, wp // win, c // heads
        windows = b * nh * nw
        q = (q.reshape(b, heads, d, nh, win, nw, win).permute(0, 3, 5, 1, 4, 6, 2)
             .reshape(windows, heads, win * win, d))
        k, v = (F.unfold(t, span, padding=self.margin, stride=win).reshape(b, heads, d, span * span, nh * nw)
                .permute(0, 4, 1, 3, 2).reshape(windows, heads, span * span, d) for t in (k, v))
        # Reference pixels outside the image (padding) must get no attention weight.
        mask = F.unfold(valid, span, padding=self.margin, stride=win)[0].t() > 0
        mask = mask.expand(b, -1, -1).reshape(windows, 1, 1, span * span)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = (out.reshape(b, nh, nw, heads, win, win, d).permute(0, 3, 6, 1, 4, 2, 5)
               .reshape(b, c, hp, wp)[:, :, :h, :w])
        return self.to_out(out)

    def attention_macs(self, x: Tensor, ref: Tensor) -> int:
        b, _, h, w = x.shape
        hp, wp = h + (-h) % self.window, w + (-w) % self.window
        span = self.window + 2 * self.margin
        return 2 * b * hp * wp * span * span * self.to_q.out_channels


class GlobalReferenceAttention(nn.Module):
    """Transposed (channel-wise) cross-attention from LQ features to reference features."""

    def __init__(self, dim: int, ref_channels: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=bias),
                               nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias))
        self.kv = nn.Sequential(nn.Conv2d(ref_channels, dim * 2, 1, bias=bias),
                                nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=bias))
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k, v = self.kv(ref).chunk(2, dim=1)
        out = channel_attention(self.q(x), k, v, self.heads, self.temperature)
        return self.project_out(out.reshape(b, c, h, w))

    def attention_macs(self, x: Tensor, ref: Tensor) -> int:
        b, c, h, w = x.shape
        return 2 * b * c * (c // self.heads) * h * w


class ReferenceBlock(nn.Module):
    """Local + global reference attention, added through a per-pixel, per-channel gate."""

    def __init__(self, dim: int, ref_channels: int, heads: int, window: int, margin: int, bias: bool):
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.ref_norm = LayerNorm2d(ref_channels)
        self.local = LocalReferenceAttention(dim, ref_channels, heads, window, margin)
        self.global_attn = GlobalReferenceAttention(dim, ref_channels, heads, bias)
        self.gate = nn.Conv2d(dim * 2, dim, 1)

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:
        xn, rn = self.norm(x), self.ref_norm(ref)
        detail = self.local(xn, rn) + self.global_attn(xn, rn)
        return x + torch.sigmoid(self.gate(torch.cat([xn, detail], dim=1))) * detail
