"""Degradation describers scored side by side: the weight-free analysis, the extraction
pipeline's MLLM describer, and CLIP zero-shot.

A describer is a callable ``(pixels, jpeg_bytes) -> [types, most likely first]`` over the
canonical vocabulary. The MLLM and CLIP describers use the models of a named preset of
``pipeline.models.presets`` exactly as the extraction pipeline loads them; with the ``tiny``
random models their answers are near chance, with real weights they become a baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pipeline import vocabulary
from pipeline.analysis.analyze import analyze
from pipeline.analysis.classifier import ANALYSED_TYPES, Classifier

Describer = Callable[[np.ndarray, "bytes | None"], list[str]]
DESCRIBER_NAMES = ("analysis", "mllm", "clip")

# One prompt per analysed type, in the wording of the zero-shot degradation prompts of the
# all-in-one literature ("a photo with …"), so CLIP compares like with like.
CLIP_PROMPTS: dict[str, str] = {
    "clean": "a clean, sharp, well exposed photo",
    "noise": "a noisy photo with grainy sensor noise",
    "blur": "a blurry photo, out of focus or with motion blur",
    "jpeg": "a photo with blocky JPEG compression artifacts",
    "low-light": "a dark, underexposed low-light photo",
    "haze": "a hazy, foggy photo",
    "rain": "a photo with rain streaks",
    "snow": "a photo with falling snow",
}


def analysis_describer(model: Classifier | None = None) -> Describer:
    """The weight-free analysis as a describer, scoring with ``model`` (default: the shipped
    classifier), so that freshly trained weights can be compared with the shipped ones."""

    def describe(pixels: np.ndarray, jpeg_bytes: bytes | None) -> list[str]:
        return analyze(pixels, jpeg_bytes, model).types

    return describe


def mllm_describer(settings) -> Describer:
    """The MLLM describer of the extraction pipeline (no hint): its free text mapped onto the
    vocabulary with ``vocabulary.text_to_types``; text naming no type counts as ``clean``."""
    from pipeline.models.mllm import load_mllm

    model = load_mllm(settings)

    def describe(pixels: np.ndarray, jpeg_bytes: bytes | None) -> list[str]:
        text = model.describe([pixels])[0]
        return vocabulary.text_to_types(text) or ["clean"]

    return describe


def clip_text_embeddings(embedder, prompts: Sequence[str]) -> np.ndarray:
    """Pooled, projected, L2-normalised CLIP text embeddings (len(prompts), E), float32."""
    import torch

    with torch.inference_mode():
        tokens = embedder.tokenizer(list(prompts)).to(embedder.device)
        features = embedder.model.encode_text(tokens, normalize=True)
    return features.float().cpu().numpy()


def clip_describer(settings, prompts: dict[str, str] = CLIP_PROMPTS) -> Describer:
    """CLIP zero-shot: types ranked by the cosine similarity of the image embedding to each
    type's prompt embedding."""
    from pipeline.models.clip import load_clip

    embedder = load_clip(settings)
    types = [t for t in ANALYSED_TYPES if t in prompts]
    text = clip_text_embeddings(embedder, [prompts[t] for t in types])

    def describe(pixels: np.ndarray, jpeg_bytes: bytes | None) -> list[str]:
        image = embedder.embed_images([pixels]).astype(np.float32)[0]
        similarity = text @ image
        return [types[i] for i in np.argsort(-similarity, kind="stable")]

    return describe


def build(names: Sequence[str], preset_name: str = "tiny", model: Classifier | None = None) -> dict[str, Describer]:
    """The named describers; the MLLM and CLIP ones load the models of ``preset_name``, the
    analysis scores with ``model`` (default: the shipped classifier)."""
    unknown = sorted(set(names) - set(DESCRIBER_NAMES))
    if unknown:
        raise ValueError(f"unknown describer(s) {', '.join(unknown)}; known: {', '.join(DESCRIBER_NAMES)}")
    out: dict[str, Describer] = {}
    settings = None
    for name in names:
        if name == "analysis":
            out[name] = analysis_describer(model)
            continue
        if settings is None:
            from pipeline.models.presets import preset

            settings = preset(preset_name)
        out[name] = mllm_describer(settings.mllm) if name == "mllm" else clip_describer(settings.clip)
    return out
