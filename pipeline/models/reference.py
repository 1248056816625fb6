"""The reference synthesizer: a text-to-image diffusion model renders a clean image of the caption.

Each sample gets its own seeded generator, made on the CPU, so a sample's starting noise depends
only on its seed: not on its batch-mates and not on the device it runs on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline.models import tiny
from pipeline.models.device import (
    dtype_name,
    hub_kwargs,
    pick_device,
    pick_dtype,
    xformers_available,
)
from pipeline.models.presets import DiffusionSettings
from pipeline.models.sources import describe_source

# presets.REFERENCE_PROMPT puts its quality words first because the pipeline's text encoders keep
# only their first 77 tokens: a long caption losing its tail is expected. The tokenizer's and the
# pipeline's warnings about it (the latter printing the lost words) tell a user nothing to act on.
TRUNCATION_WARNINGS = ("Token indices sequence length is longer than the specified maximum sequence length",
                       "The following part of your input was truncated because CLIP can only handle")


class _DropTruncationWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TRUNCATION_WARNINGS)


def _quiet_truncation(pipe: Any) -> None:
    """Drop TRUNCATION_WARNINGS from the two loggers that emit them, and only those messages."""
    for name in ("transformers.tokenization_utils_base", type(pipe).__module__):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTruncationWarnings) for f in logger.filters):
            logger.addFilter(_DropTruncationWarnings())


class ReferenceSynthesizer:
    """A loaded diffusers text-to-image pipeline; build it with ``load_reference``."""

    def __init__(self, settings: DiffusionSettings, pipe: Any, device: torch.device, source: dict,
                 attention: str):
        self.settings = settings
        self.pipe = pipe
        self.device = device
        self.source = source
        self.attention = attention

    @torch.inference_mode()
    def render(self, captions: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        """One uint8 (R, R, 3) image per caption, R = settings.resolution, seeded per sample."""
        if len(captions) == 0:
            raise ValueError("reference: no captions given")
        if len(seeds) != len(captions):
            raise ValueError(f"reference: {len(captions)} captions but {len(seeds)} seeds")
        for i, seed in enumerate(seeds):
            if not 0 <= int(seed) < 2**63:
                raise ValueError(f"reference: seed {seed} of sample {i} is outside 0..2**63-1")
        s = self.settings
        prompts = [s.prompt_template.format(caption=c) for c in captions]
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        out = self.pipe(
            prompt=prompts, num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
            height=s.resolution, width=s.resolution, generator=generators, output_type="np",
        ).images
        pixels = np.clip(np.rint(np.asarray(out, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
        return list(pixels)

    def provenance(self) -> dict:
        """Model, exact weights, dtype, scheduler and sampling settings, for every sample's json."""
        s = self.settings
        return {
            **self.source,
            "class": type(self.pipe).__name__,
            "scheduler": type(self.pipe.scheduler).__name__,
            "variant": s.variant,
            "dtype": dtype_name(self.pipe.dtype),
            "attention": self.attention,
            "steps": s.steps,
            "guidance_scale": s.guidance_scale,
            "resolution": s.resolution,
            "prompt_template": s.prompt_template,
            "seeding": "one torch.Generator('cpu') per sample, seeded with the sample's seed",
        }


def check_dtype(pipe: Any, asked: torch.dtype, model: str) -> None:
    """Raise ValueError naming the model and the components a load left in another dtype than
    ``asked``: a diffusers that ignores the dtype it was given (before 0.40 it only logs so) runs the
    whole pipeline in float32, twice the memory and a fraction of the speed on a GPU."""
    import diffusers

    wrong = {name: dtype_name(module.dtype) for name, module in pipe.components.items()
             if isinstance(module, torch.nn.Module) and module.dtype != asked}
    if wrong:
        got = ", ".join(f"{name} {dtype}" for name, dtype in sorted(wrong.items()))
        raise ValueError(f"diffusion model {model!r} was asked for {dtype_name(asked)} but loaded {got} "
                         f"(diffusers {diffusers.__version__}; pip install 'diffusers>=0.40', whose "
                         f"from_pretrained honours dtype=)")


def load_reference(settings: DiffusionSettings) -> ReferenceSynthesizer:
    """Load the pipeline with ``AutoPipelineForText2Image``; xformers attention when installed on a GPU."""
    from diffusers import AutoPipelineForText2Image
    from diffusers.utils import is_accelerate_available

    path = tiny.resolve(settings.model)
    device = pick_device()
    dtype = pick_dtype(settings.dtype, device)
    kwargs = hub_kwargs(settings.revision)
    if settings.variant is not None:
        kwargs["variant"] = settings.variant
    # Without accelerate diffusers loads this way anyway, after a warning to install it: saying so
    # up front keeps the warning out of every run. With accelerate, its faster loading is used.
    kwargs["low_cpu_mem_usage"] = is_accelerate_available()
    pipe = AutoPipelineForText2Image.from_pretrained(path, dtype=dtype, **kwargs)
    check_dtype(pipe, dtype, settings.model)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    _quiet_truncation(pipe)
    # diffusers' default attention processor already uses torch SDPA.
    attention = "sdpa"
    if device.type == "cuda" and xformers_available():
        pipe.enable_xformers_memory_efficient_attention()
        attention = "xformers"
    return ReferenceSynthesizer(settings, pipe, device, describe_source(settings.model, settings.revision, "model_index.json"), attention)
