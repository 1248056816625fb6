"""CLIP embeddings of a sample: its LQ image, and its caption and degradation text token by token.

The arrays match ``pipeline.sample_format.EMBEDDINGS``: an image embedding (E,) and, per text,
the text transformer's per-token features (TOKEN_POSITIONS, W) after its final layer norm and
before pooling and projection, zero after the text's real length, plus that length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.models import tiny
from pipeline.models.device import dtype_name, pick_device, pick_dtype
from pipeline.models.mllm import check_images
from pipeline.models.presets import ClipSettings
from pipeline.models.sources import commit_from_cache_path, describe_source, hub_cache_dir, hub_file
from pipeline.sample_format import TOKEN_POSITIONS


class ClipEmbedder:
    """A loaded open_clip model with its image transform and tokenizer; build it with ``load_clip``."""

    def __init__(self, settings: ClipSettings, model: Any, preprocess: Any, tokenizer: Any,
                 device: torch.device, dtype: torch.dtype, source: dict):
        self.settings = settings
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.source = source

    @property
    def image_dim(self) -> int:
        """E: width of the image embedding."""
        return int(self.model.visual.output_dim)

    @property
    def token_dim(self) -> int:
        """W: width of the per-token text features."""
        return int(self.model.ln_final.normalized_shape[0])

    def _autocast(self):
        # Weights stay fp32; on a GPU the matmuls run in the low-precision dtype, as open_clip's
        # own "amp_bf16" does, which keeps its LayerNorms in fp32.
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast(device_type="cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised projected image embeddings, float16 (B, E)."""
        check_images(images, "CLIP")
        batch = torch.stack([self.preprocess(Image.fromarray(img)) for img in images]).to(self.device)
        with self._autocast():
            features = self.model.encode_image(batch, normalize=True)
        return features.float().cpu().numpy().astype(np.float16)

    def _lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        # The real length runs to the end token inclusive, found the way the model's own pooling finds it.
        pool = getattr(self.model, "text_pool_type", "argmax")
        if pool == "argmax":
            return tokens.argmax(dim=-1) + 1
        if pool == "eos":
            is_eos = tokens == self.model.text_eos_id
            return torch.where(is_eos.any(dim=-1), is_eos.int().argmax(dim=-1) + 1, tokens.shape[-1])
        raise ValueError(f"CLIP model {self.settings.model!r} pools text with {pool!r}; lmdir needs "
                         "'argmax' or 'eos' pooling to know where a text's tokens end")

    @torch.inference_mode()
    def embed_text_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-token text features, float16 (B, TOKEN_POSITIONS, W), and real lengths, int32 (B,).

        Texts longer than the context are truncated by the tokenizer (keeping the end token).
        """
        if len(texts) == 0:
            raise ValueError("CLIP: no texts given")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"CLIP: text {i} must be a str, got {type(text).__name__}")
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            out = self.model.forward_intermediates(
                text=tokens, text_indices=1, normalize_intermediates=True, intermediates_only=True,
            )
        features = out["text_intermediates"][-1].float()
        lengths = self._lengths(tokens)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        features = features * (positions[None, :] < lengths[:, None])[..., None]
        return (features.cpu().numpy().astype(np.float16),
                lengths.cpu().numpy().astype(np.int32))

    def provenance(self) -> dict:
        """Architecture, weights, dtype and what the stored arrays are, for every sample's json."""
        import open_clip

        return {
            **self.source,
            "pretrained": self.settings.pretrained,
            "config": self.settings.config,
            "open_clip": open_clip.__version__,
            "dtype": dtype_name(self.dtype),
            "image": "encode_image, L2-normalised",
            "tokens": "text transformer after ln_final, before pooling/projection; zero after length",
        }


def _weights_source(settings: ClipSettings, weights: str) -> dict:
    """Pin an open_clip pretrained tag to the Hub commit of the weights file it loaded."""
    from open_clip.pretrained import download_pretrained

    cfg = _tag(settings)
    if settings.pretrained.startswith(tiny.TINY_SCHEME) or not cfg:
        return describe_source(settings.pretrained, None, "")
    if settings.revision is None:
        # create_model_and_transforms fetched the tag's weights: this only finds them in the cache.
        weights = download_pretrained(cfg)
    return {"model": f"{settings.model}/{settings.pretrained}", "revision": settings.revision,
            "resolved": commit_from_cache_path(weights) or weights}


def _tag(settings: ClipSettings) -> dict:
    """open_clip's config of the pretrained tag ({} for a weights file or a tiny model)."""
    import open_clip

    return open_clip.get_pretrained_cfg(settings.model, settings.pretrained)


def pretrained_weights(settings: ClipSettings) -> tuple[str, dict]:
    """The ``pretrained`` argument of ``create_model_and_transforms`` and the keyword arguments
    that go with it.

    Without a revision that is the tag itself, and open_clip downloads it. With one, the tag's
    weights file at that Hub commit, with the image preprocessing the tag would have set: open_clip's
    own download reads the branch main, whatever has been pushed to it since. It is read from the
    Hub cache that ``sources.preset_commits`` looks in.
    """
    from open_clip.pretrained import download_pretrained_from_hf

    if settings.revision is None:
        return tiny.resolve(settings.pretrained), {}
    cfg = _tag(settings)
    if not cfg.get("hf_hub"):
        raise ValueError(f"CLIP {settings.model}:{settings.pretrained} names no open_clip weights on the "
                         f"Hub: revision {settings.revision!r} cannot pin it (set clip.revision to none)")
    repo_id, filename = hub_file(cfg["hf_hub"])
    path = download_pretrained_from_hf(repo_id, filename=filename, revision=settings.revision,
                                       cache_dir=str(hub_cache_dir()))
    return path, {"image_mean": cfg.get("mean"), "image_std": cfg.get("std"),
                  "image_interpolation": cfg.get("interpolation"), "image_resize_mode": cfg.get("resize_mode")}


def load_clip(settings: ClipSettings) -> ClipEmbedder:
    """Build the model with ``open_clip.create_model_and_transforms`` and its tokenizer.

    ``settings.pretrained`` is an open_clip tag or a local weights file (safetensors preferred),
    ``settings.revision`` the Hub commit of a tag's weights; ``settings.config`` registers a
    model-config JSON first, for architectures open_clip lacks.
    """
    import open_clip

    if settings.config is not None:
        open_clip.add_model_config(tiny.resolve(settings.config))
    device = pick_device()
    dtype = pick_dtype(settings.dtype, device)
    weights, pinned = pretrained_weights(settings)
    model, _, preprocess = open_clip.create_model_and_transforms(
        settings.model, pretrained=weights, device=device, **pinned,
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(settings.model)
    context = getattr(tokenizer, "context_length", None)
    if context != TOKEN_POSITIONS:
        raise ValueError(f"CLIP model {settings.model!r} has a text context of {context} tokens; the "
                         f"sample format stores {TOKEN_POSITIONS} token embeddings")
    return ClipEmbedder(settings, model, preprocess, tokenizer, device, dtype, _weights_source(settings, weights))
