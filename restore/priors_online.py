"""Priors for an image that has none yet: computed on the fly, as extraction would compute them.

Evaluation on test sets without shards and inference on a user's photo need the same priors the
restorer was trained with. ``OnlinePriors`` loads an extraction preset's models once
(``pipeline.models``) and runs the steps of ``pipeline.stages`` on one image: the weight-free
analysis, the MLLM's degradation description (with the analysis as a hint) and caption, the
diffusion reference (seeded from the sample key, like extraction), CLIP embeddings. The result is
a ``pipeline.sample_format.Sample``, the same object a shard decodes to, so one code path turns
samples into model inputs everywhere.

The preset ``offline`` (pipeline.models.presets) runs no large model: the degradation vector and
its sentence come from the weight-free analysis and the sentence's tokens from a real sentence
encoder (all-MiniLM-L6-v2); caption and reference are absent. ``analysis-only`` loads no weights
at all: no tokens either.

A user's words say *what* is wrong; how much is still measured. The words choose the types
(``named_types``: those they name, ``vocabulary.text_to_types``); the restorer then reads the
analysis's sentence for those types and a degradation vector of those types, whatever the
wording: "remove the rain" and "water streaks from the storm cover the scene" give the same
priors. The words' own tokens are not given to the restorer. Read before the sentence, they
changed the encoder's contextual states of the whole text, and a wording the restorer had not
seen in training moved low-light restorations by up to ±2 dB an image and 0.39 dB below
automatic on average over Kodak24 (haze +0.40, rain +0.92 / −0.02); reading the named types'
sentence alone: low light ±0.00, haze +0.15, rain +1.02 / +0.06 (docs/model_card.md). Words that
name no type the vocabulary knows change nothing: the restorer restores from the analysis alone,
and ``restore.infer`` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline import stages, vocabulary
from pipeline.analysis.analyze import analyze, describe_types
from pipeline.models import presets
from pipeline.sample_format import Sample, SampleMeta

ANALYSIS_ONLY = "analysis-only"
PRESET_CHOICES = tuple(presets.PRESETS)


@dataclass(frozen=True)
class UserPriors:
    """What a user states about an image; None leaves it to the models."""

    degradation: str | None = None
    caption: str | None = None
    reference: bool = True
    # Types stated directly (training's guided crops state their true types); otherwise those
    # ``degradation``'s words name (``vocabulary.text_to_types``).
    types: tuple[str, ...] = ()


NOTHING_STATED = UserPriors()


class OnlinePriors:
    """The prior models of one extraction preset (or none, for ``analysis-only``), loaded once."""

    def __init__(self, preset: str, use_hint: bool = True):
        if preset not in PRESET_CHOICES:
            raise ValueError(f"unknown prior preset {preset!r}; choose one of {', '.join(PRESET_CHOICES)}")
        self.preset = preset
        self.use_hint = use_hint
        self.mllm = self.reference = None
        models = presets.preset(preset)
        if models.mllm is not None:
            from pipeline.models.mllm import load_mllm

            self.mllm = load_mllm(models.mllm)
        if models.diffusion is not None:
            from pipeline.models.reference import load_reference

            self.reference = load_reference(models.diffusion)
        from pipeline.models.embedder import Embedder

        self.embedder = Embedder(models)

    def sample(self, key: str, pixels: np.ndarray, jpeg_bytes: bytes | None = None,
               user: UserPriors = NOTHING_STATED, gt: np.ndarray | None = None, dataset: str = "",
               split: str = "", task: str = "") -> Sample:
        """A Sample with the priors of ``pixels`` (uint8 RGB); ``key`` seeds the reference."""
        analysis = analyze(pixels, jpeg_bytes).to_dict()
        guided = ""
        types = named_types(user)
        if types:
            analysis["vector"] = vocabulary.one_hot(types)
            guided = describe_types(analysis, types)
        hint = [analysis["text"]] if self.use_hint else None
        if self.mllm is not None:
            seen = self.mllm.see([pixels])  # one look at the image for both questions, as extraction does
            text = guided or self.mllm.describe(seen, hint)[0]
            caption = user.caption or self.mllm.caption(seen)[0]
        else:
            text, caption = guided or analysis["text"], user.caption or ""
        ref = None
        if self.reference is not None and user.reference and caption:
            ref = self.reference.render([caption], [stages.reference_seed(key)])[0]
        embeddings = None
        if self.embedder.active:
            embeddings = self.embedder.embed([pixels], [caption], [text])[0]
        height, width = pixels.shape[:2]
        meta = SampleMeta(key=key, dataset=dataset, split=split, task=task, width=width, height=height,
                          degradation_text=text,
                          degradation_types=stages.merge_types(text, json.dumps(analysis)),
                          caption=caption, analysis=analysis, provenance={"priors": f"online:{self.preset}"})
        return Sample(meta=meta, lq=pixels, gt=gt, ref=ref, embeddings=embeddings)


def named_types(user: UserPriors) -> list[str]:
    """The degradation types a user asks for: stated, or named in the words
    (``vocabulary.text_to_types``); empty when neither names any."""
    if user.types:
        return list(user.types)
    return vocabulary.text_to_types(user.degradation) if user.degradation else []


def unused_words_note(words: str | None) -> str:
    """What to tell a user whose words name no degradation type the restorer knows; "" otherwise."""
    if not words or named_types(UserPriors(degradation=words)):
        return ""
    known = ", ".join(t for t in vocabulary.DEGRADATION_TYPES if t != "clean")
    return (f"the words {words!r} name no degradation type the restorer knows ({known}, in words such "
            f"as 'noisy', 'rain', 'fog'); it restores from the analysis's reading of the image instead")


def load_or_analysis_only(preset: str) -> OnlinePriors:
    """The preset's models, or ``analysis-only`` with a printed reason when they cannot be loaded
    (no network and no local copy of the weights, typically)."""
    try:
        return OnlinePriors(preset)
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        if preset == ANALYSIS_ONLY:
            raise
        print(f"prior models of preset {preset!r} unavailable ({type(e).__name__}: {str(e)[:200]}); "
              f"using the weight-free analysis only")
        return OnlinePriors(ANALYSIS_ONLY)
