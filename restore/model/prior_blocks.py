"""The blocks that bring each prior into the backbone.

- DegradationAwareBlock (encoder and latent): features cross-attend to the degradation prompt
  tokens, then the pooled prompt scales and shifts every channel, steering *what* to remove.
- ContentAwareBlock (low-resolution levels): features cross-attend to the caption's token
  embeddings, so semantics survive heavy degradation.
- ReferenceTokenBlock (decoder levels): the diffusion-made reference, which shares no geometry
  with the input (it is rendered from a caption), is turned by ReferenceTokenizer into a fixed
  set of tokens (a light conv stem, average-pooled to a grid, learned positions), and every
  pixel cross-attends to all of them, so a detail is found wherever the reference holds it. The
  output projection starts at zero, so at initialisation the block is the identity: an absent
  or useless reference cannot hurt before training has shown how to use it.
- ReferenceBlock (decoder levels, ``reference_attention="windowed"``), the first branch: a conv
  pyramid of the reference attended within windows around the same position (plus a margin)
  and across channels, mixed in by a gate. It can only use a reference aligned with the input;
  checkpoints trained with it keep loading.
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


class ReferenceTokenizer(nn.Module):
    """Reference image → (B, 1 + grid², C) tokens and their (B, 1 + grid²) mask, C = channels[-1].

    Token 0 is a learned null token that every sample may attend to: the only one for a sample
    without a reference, and for one with a reference a place for its pixels to put their
    attention when nothing in the reference matches them. The others are the reference's conv
    features at 1/4 resolution, average-pooled to a grid × grid set of cells whatever its size,
    each with a learned position, so their number (and the attention's cost per pixel) is fixed.
    """

    def __init__(self, channels: tuple[int, ...], grid: int):
        super().__init__()
        c0, c1, c2 = channels
        self.grid = grid
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(c0, c1, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(c1, c1, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(c2, c2, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.position = nn.Parameter(torch.randn(grid * grid, c2) * 0.02)
        self.norm = nn.LayerNorm(c2)
        self.null = nn.Parameter(torch.randn(1, c2) * 0.02)

    def forward(self, priors: Priors, size: tuple[int, int], batch: int) -> tuple[Tensor, Tensor]:
        device = self.null.device
        null = self.null.expand(batch, 1, -1)
        ref = priors.reference
        if ref is None:
            return null, torch.ones(batch, 1, dtype=torch.bool, device=device)
        if ref.ndim != 4 or ref.shape[:2] != (batch, 3):
            raise ValueError(f"Priors.reference has shape {tuple(ref.shape)}, the model expects ({batch}, 3, H, W)")
        present = priors.presence("reference", batch, device)
        # At the LQ's size the stem sees the reference's textures at the LQ's scale, as in
        # training (restore.data crops it from the reference resized to the LQ's size).
        features = self.pool(self.stem(resize_reference(ref, size).to(null.dtype)))
        tokens = self.norm(features.flatten(2).transpose(1, 2) + self.position)
        # Presence is a mask, never a branch on its values: an absent sample attends to the
        # null token alone, exactly as in a batch without the field.
        mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=device),
                          present[:, None].expand(-1, self.grid * self.grid)], dim=1)
        return torch.cat([null, tokens], dim=1), mask


class ReferenceTokenBlock(nn.Module):
    """Multi-head cross-attention from every pixel to the reference tokens, added through a gate.

    Queries come from the features, keys and values from the tokens, ``inner`` channels wide.
    The output projection starts at zero, so the block starts as the identity whatever the
    reference holds; the gate's weights start at zero too, which makes it a uniform ½ that
    training turns into a per-pixel, per-channel choice of how much reference to take (a gate
    that started shut would, with the projection at zero, give neither a gradient).
    """

    def __init__(self, dim: int, token_dim: int, inner: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner)
        self.to_kv = nn.Linear(token_dim, inner * 2)
        self.to_out = nn.Linear(inner, dim)
        self.gate = nn.Linear(dim + inner, dim)
        for layer in (self.to_out, self.gate):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, reference: tuple[Tensor, Tensor]) -> Tensor:
        tokens, mask = reference
        b, c, h, w = x.shape
        pixels = self.norm(x.flatten(2).transpose(1, 2))
        q = self.to_q(pixels).reshape(b, h * w, self.heads, -1).transpose(1, 2)
        k, v = (t.reshape(b, tokens.shape[1], self.heads, -1).transpose(1, 2)
                for t in self.to_kv(tokens).chunk(2, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        attended = attended.transpose(1, 2).reshape(b, h * w, -1)
        gate = torch.sigmoid(self.gate(torch.cat([pixels, attended], dim=-1)))
        return x + (gate * self.to_out(attended)).transpose(1, 2).reshape(b, c, h, w)

    def attention_macs(self, x: Tensor, reference: tuple[Tensor, Tensor]) -> int:
        b, _, h, w = x.shape
        return 2 * b * h * w * reference[0].shape[1] * self.to_q.out_features


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
