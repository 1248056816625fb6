"""The restorer: a 4-level Restormer-style transformer U-Net that listens to large-model priors.

Read ``Restorer.forward`` top to bottom: it is Restormer's encoder–decoder (pixel-unshuffle
down, pixel-shuffle up, concatenated skips, refinement blocks, a global residual) with one call
to ``_inject`` at each level where a prior enters. Which prior enters where (the degradation-aware
levels are ``config.degradation_levels``; these are the default):

    level      degradation-aware   content-aware   reference-based
    encoder1          x
    encoder2          x
    encoder3          x                  x
    latent            x                  x
    decoder3                             x                x
    decoder2                                              x
    decoder1                                              x

Saved as ``config.json`` + ``model.safetensors`` (save_pretrained / from_pretrained).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from restore.model.blocks import downsample, transformer_stage, upsample
from restore.model.config import RestorerConfig
from restore.model.prior_blocks import (
    CaptionEncoder,
    ContentAwareBlock,
    DegradationAwareBlock,
    ReferenceBlock,
    ReferenceEncoder,
    ReferenceTokenBlock,
    ReferenceTokenizer,
)
from restore.model.priors import Priors
from restore.model.prompt_encoder import PromptEncoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Three 2x downsamplings: inputs are padded to a multiple of this and cropped back.
SIZE_MULTIPLE = 8

CONTENT_LEVELS = ("encoder3", "latent", "decoder3")
REFERENCE_LEVELS = ("decoder1", "decoder2", "decoder3")  # index = reference pyramid level
# Parameter names (the last part) that Restorer.no_weight_decay lists.
NO_WEIGHT_DECAY = ("null", "queries", "source", "temperature", "position")


@dataclass(frozen=True)
class EncodedPriors:
    """The priors turned into what the blocks consume; None where a path is switched off."""

    prompts: Tensor | None
    caption: tuple[Tensor, Tensor] | None
    reference: list[Tensor] | list[tuple[Tensor, Tensor]] | None  # what each REFERENCE_LEVELS block reads


class Restorer(nn.Module):
    """lq (B, 3, H, W) in [0, 1] and optional Priors → restored (B, 3, H, W)."""

    def __init__(self, config: RestorerConfig):
        super().__init__()
        self.config = config
        c, d, heads = config, config.dim, config.heads

        def stage(count: int, width: int, level_heads: int) -> nn.Sequential:
            return transformer_stage(count, width, level_heads, c.ffn_expansion, c.bias)

        self.patch_embed = nn.Conv2d(3, d, 3, padding=1, bias=False)
        self.encoder1 = stage(c.blocks[0], d, heads[0])
        self.down1_2 = downsample(d)
        self.encoder2 = stage(c.blocks[1], d * 2, heads[1])
        self.down2_3 = downsample(d * 2)
        self.encoder3 = stage(c.blocks[2], d * 4, heads[2])
        self.down3_4 = downsample(d * 4)
        self.latent = stage(c.blocks[3], d * 8, heads[3])
        self.up4_3 = upsample(d * 8)
        self.reduce3 = nn.Conv2d(d * 8, d * 4, 1, bias=c.bias)
        self.decoder3 = stage(c.blocks[2], d * 4, heads[2])
        self.up3_2 = upsample(d * 4)
        self.reduce2 = nn.Conv2d(d * 4, d * 2, 1, bias=c.bias)
        self.decoder2 = stage(c.blocks[1], d * 2, heads[1])
        self.up2_1 = upsample(d * 2)
        # Level 1 keeps the concatenated 2d channels (no reduction), as in Restormer.
        self.decoder1 = stage(c.blocks[0], d * 2, heads[0])
        self.refinement = stage(c.refinement_blocks, d * 2, heads[0])
        self.output = nn.Conv2d(d * 2, 3, 3, padding=1, bias=c.bias)

        widths = {"encoder1": d, "encoder2": d * 2, "encoder3": d * 4, "latent": d * 8,
                  "decoder3": d * 4, "decoder2": d * 2, "decoder1": d * 2}
        level_heads = {"encoder1": heads[0], "encoder2": heads[1], "encoder3": heads[2], "latent": heads[3],
                       "decoder3": heads[2], "decoder2": heads[1], "decoder1": heads[0]}
        if c.use_degradation:
            self.prompt_encoder = PromptEncoder(c)
            self.degradation_blocks = nn.ModuleDict(
                {n: DegradationAwareBlock(widths[n], c.prompt_dim, level_heads[n]) for n in c.degradation_levels})
        if c.use_content:
            self.caption_encoder = CaptionEncoder(c)
            self.content_blocks = nn.ModuleDict(
                {n: ContentAwareBlock(widths[n], c.caption_dim, level_heads[n]) for n in CONTENT_LEVELS})
        if c.use_reference and c.reference_attention == "pooled":
            self.reference_encoder = ReferenceTokenizer(c.reference_channels, c.reference_grid)
            self.reference_blocks = nn.ModuleDict(
                {n: ReferenceTokenBlock(widths[n], c.reference_channels[-1], c.reference_channels[i], level_heads[n])
                 for i, n in enumerate(REFERENCE_LEVELS)})
        elif c.use_reference:
            self.reference_encoder = ReferenceEncoder(c.reference_channels)
            self.reference_blocks = nn.ModuleDict(
                {n: ReferenceBlock(widths[n], c.reference_channels[i], level_heads[n], c.reference_window,
                                   c.reference_margin, c.bias)
                 for i, n in enumerate(REFERENCE_LEVELS)})

    def forward(self, lq: Tensor, priors: Priors | None = None) -> Tensor:
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f"lq must be (B, 3, H, W), got {tuple(lq.shape)}")
        b, _, h, w = lq.shape
        priors = priors if priors is not None else Priors()
        image = pad_to_multiple(lq, SIZE_MULTIPLE)
        encoded = self.encode_priors(priors, b, (h, w))

        enc1 = self.encoder1(self._inject("encoder1", self.patch_embed(image), encoded))
        enc2 = self.encoder2(self._inject("encoder2", self.down1_2(enc1), encoded))
        enc3 = self.encoder3(self._inject("encoder3", self.down2_3(enc2), encoded))
        latent = self.latent(self._inject("latent", self.down3_4(enc3), encoded))

        dec3 = self.reduce3(torch.cat([self.up4_3(latent), enc3], dim=1))
        dec3 = self.decoder3(self._inject("decoder3", dec3, encoded))
        dec2 = self.reduce2(torch.cat([self.up3_2(dec3), enc2], dim=1))
        dec2 = self.decoder2(self._inject("decoder2", dec2, encoded))
        dec1 = torch.cat([self.up2_1(dec2), enc1], dim=1)
        dec1 = self.decoder1(self._inject("decoder1", dec1, encoded))

        out = self.output(self.refinement(dec1)) + image
        return out[:, :, :h, :w]

    def encode_priors(self, priors: Priors, batch: int, size: tuple[int, int]) -> EncodedPriors:
        """Run the prompt encoder, caption projection and reference tokens or pyramid (those
        switched on)."""
        c = self.config
        prompts = self.prompt_encoder(priors, batch) if c.use_degradation else None
        caption = self.caption_encoder(priors, batch) if c.use_content else None
        reference = None
        if c.use_reference and c.reference_attention == "pooled":
            # Every level reads the same tokens, through its own projections.
            reference = [self.reference_encoder(priors, size, batch)] * len(REFERENCE_LEVELS)
        elif c.use_reference:
            image = pad_to_multiple(self.reference_encoder.image(priors, size, batch), SIZE_MULTIPLE)
            reference = self.reference_encoder(image)
        return EncodedPriors(prompts, caption, reference)

    def _inject(self, level: str, x: Tensor, encoded: EncodedPriors) -> Tensor:
        if encoded.prompts is not None and level in self.degradation_blocks:
            x = self.degradation_blocks[level](x, encoded.prompts)
        if encoded.caption is not None and level in self.content_blocks:
            x = self.content_blocks[level](x, encoded.caption)
        if encoded.reference is not None and level in self.reference_blocks:
            x = self.reference_blocks[level](x, encoded.reference[REFERENCE_LEVELS.index(level)])
        return x

    def no_weight_decay(self) -> set[str]:
        """Names of the learned tokens (null stand-ins, prompt queries, source tags, reference
        positions) and attention temperatures, which an optimizer should not weight-decay: decay
        pulls a null token towards "nothing", a position towards no position and a temperature
        towards a flat softmax, and regularises none of them (norms and biases, the other
        vectors, stay out of decay by their dimension)."""
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in NO_WEIGHT_DECAY}

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write config.json and model.safetensors into ``directory`` (each atomically).

        ``dtype`` stores the floating-point weights in that type (``torch.float16``: the shipped
        form, half the bytes; from_pretrained casts them back); a weight it cannot represent
        (fp16 overflows beyond 65504) is an error, not an inf on disk.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if dtype is not None:
            for name, value in state.items():
                if value.is_floating_point():
                    state[name] = value.to(dtype)
                    if not torch.isfinite(state[name]).all() and torch.isfinite(value).all():
                        raise ValueError(f"weight {name} does not fit in {dtype} (largest magnitude "
                                         f"{value.abs().max().item():.4g})")
        config_tmp = directory / (CONFIG_FILE + ".tmp")
        config_tmp.write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(config_tmp, directory / CONFIG_FILE)
        weights_tmp = directory / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(weights_tmp), metadata={"format": "pt", "model": "lmdir-restorer"})
        os.replace(weights_tmp, directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> Restorer:
        """Load a restorer written by save_pretrained; errors name the file and the problem.

        The model is float32 whatever the file stores: fp16 weights (the shipped checkpoint,
        restore.export) are cast up on load.
        """
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; a saved restorer has {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            raw = json.loads(config_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{config_path}: not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path}: expected a JSON object")
        model = cls(RestorerConfig.from_dict(raw, str(config_path)))
        try:
            state = load_file(str(weights_path), device=str(device))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{weights_path}: not a readable safetensors file: {e}") from e
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor of the wrong shape
            raise ValueError(f"{weights_path}: weights do not match {config_path}: {e}") from e
        if missing or unexpected:
            raise ValueError(f"{weights_path}: weights do not match {config_path}: "
                             f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
        return model.to(device)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right of (B, C, H, W) to multiples of ``multiple`` by reflection
    (replication when the image is too small to reflect)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters in ``module``."""
    return sum(p.numel() for p in module.parameters())
