"""The multimodal LLM stage: it says what is wrong with an image, and what the image shows.

One loaded image-text-to-text model (Qwen2.5-VL class) serves both questions, and looks at each
image once for both: ``see`` runs the processor's image part and the vision tower, and every
question asked about the image reuses what it saw (transformers' ``mm_encoder_outputs``). Prompts
go through the processor's own chat template and placeholder expansion, and the text is whatever
the model generates; nothing is post-edited here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.models import tiny
from pipeline.models.device import dtype_name, hub_kwargs, pick_device, pick_dtype
from pipeline.models.presets import MLLMSettings
from pipeline.models.sources import describe_source


def check_images(images: Sequence[np.ndarray], what: str) -> None:
    """Raise ValueError naming the first input that is not a uint8 (H, W, 3) array."""
    if len(images) == 0:
        raise ValueError(f"{what}: no images given")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"{what}: image {i} must be a uint8 (H, W, 3) array, got {got}")


@dataclass(frozen=True)
class SeenImage:
    """One image as the model sees it, made once by ``MLLM.see`` for every question about it: its
    patch grid (a row of the image processor's ``image_grid_thw``) and the vision tower's features
    (one row per image token of the prompt)."""

    grid_thw: torch.Tensor
    features: torch.Tensor


class MLLM:
    """A loaded image-text-to-text model with its processor; build it with ``load_mllm``."""

    def __init__(self, settings: MLLMSettings, processor: Any, model: Any, device: torch.device,
                 source: dict):
        self.settings = settings
        self.processor = processor
        self.model = model
        self.device = device
        self.source = source

    def _prompt(self, text: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _size(self) -> dict | None:
        s = self.settings
        if s.min_pixels is None and s.max_pixels is None:
            return None
        size = dict(self.processor.image_processor.size)
        if s.min_pixels is not None:
            size["shortest_edge"] = s.min_pixels
        if s.max_pixels is not None:
            size["longest_edge"] = s.max_pixels
        return size

    @torch.inference_mode()
    def see(self, images: Sequence[np.ndarray]) -> list[SeenImage]:
        """Preprocess the images and run the vision tower over them, once: the part of an answer that
        depends on the image alone."""
        check_images(images, "MLLM")
        size = self._size()
        processed = self.processor.image_processor(
            [Image.fromarray(img) for img in images], return_tensors="pt", **({"size": size} if size else {}),
        ).to(self.device)
        grids = processed["image_grid_thw"]
        vision = self.model.get_image_features(processed["pixel_values"], grids, return_dict=True)
        return [SeenImage(grid, features) for grid, features in zip(grids, vision.pooler_output)]

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray] | Sequence[SeenImage], prompts: Sequence[str]) -> list[str]:
        """One answer per (image, prompt) pair, generated in one batch; images already seen (``see``)
        are not looked at again."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        seen = list(images) if len(images) and all(isinstance(i, SeenImage) for i in images) else self.see(images)
        if len(prompts) != len(seen):
            raise ValueError(f"MLLM: {len(seen)} images but {len(prompts)} prompts")
        s = self.settings
        grid = torch.stack([image.grid_thw for image in seen])
        # What the processor does with text and images, minus the image part (done in `see`): each
        # image's placeholder grows to one token per feature row, and the token types tell the
        # model where the image tokens are (Qwen2-VL's 3D rotary positions are read from them).
        placeholders = [self.processor.replace_image_token({"image_grid_thw": grid}, image_idx=i)
                        for i in range(len(seen))]
        texts, _ = self.processor.get_text_with_replacements([self._prompt(p) for p in prompts], placeholders)
        inputs = self.processor.tokenizer(texts, padding=True, return_tensors="pt")
        inputs["mm_token_type_ids"] = torch.tensor(self.processor.create_mm_token_type_ids(inputs["input_ids"]))
        inputs = inputs.to(self.device)
        vision = BaseModelOutputWithPooling(pooler_output=tuple(image.features for image in seen))
        sampling = {"temperature": s.temperature, "top_p": s.top_p} if s.do_sample else {}
        if s.do_sample:
            # One seed per batch: sampled text then depends on the batch it was drawn in.
            torch.manual_seed(s.seed)
        out = self.model.generate(**inputs, image_grid_thw=grid, mm_encoder_outputs={"image": vision},
                                  max_new_tokens=s.max_new_tokens, do_sample=s.do_sample, num_beams=s.num_beams,
                                  **sampling)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def describe(self, images: Sequence[np.ndarray] | Sequence[SeenImage],
                 hints: Sequence[str | None] | None = None) -> list[str]:
        """What is wrong with each image (pixels, or what ``see`` made of them), in the model's words.

        ``hints`` (one per image, None or "" for none) is the weight-free analysis's reading of the
        same image; it is put into the prompt for the model to check, not copied to the answer.
        """
        if hints is not None and len(hints) != len(images):
            raise ValueError(f"MLLM describe: {len(images)} images but {len(hints)} hints")
        prompts = []
        for i in range(len(images)):
            hint = hints[i] if hints is not None else None
            prompt = self.settings.describe_prompt
            if hint:
                prompt = f"{self.settings.hint_template.format(hint=hint)} {prompt}"
            prompts.append(prompt)
        return self.generate(images, prompts)

    def caption(self, images: Sequence[np.ndarray] | Sequence[SeenImage]) -> list[str]:
        """What each image (pixels, or what ``see`` made of them) shows: the scene content, not its quality."""
        return self.generate(images, [self.settings.caption_prompt] * len(images))

    def provenance(self) -> dict:
        """Model, exact weights, dtype, prompts and generation settings, for every sample's json."""
        s = self.settings
        return {
            **self.source,
            "class": type(self.model).__name__,
            "dtype": dtype_name(self.model.dtype),
            "attn_implementation": s.attn_implementation,
            "prompts": {"describe": s.describe_prompt, "caption": s.caption_prompt, "hint": s.hint_template},
            "generation": {"max_new_tokens": s.max_new_tokens, "do_sample": s.do_sample,
                           "temperature": s.temperature, "top_p": s.top_p, "num_beams": s.num_beams,
                           "seed": s.seed},
            # The model's own defaults (e.g. a repetition penalty) apply where ours say nothing.
            "model_generation_config": self.model.generation_config.to_diff_dict(),
            "pixels": {"min": s.min_pixels, "max": s.max_pixels},
        }


def load_mllm(settings: MLLMSettings) -> MLLM:
    """Load processor and model with transformers' Auto classes, on the best device, in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny.resolve(settings.model)
    device = pick_device()
    dtype = pick_dtype(settings.dtype, device)
    hub = hub_kwargs(settings.revision)
    processor = AutoProcessor.from_pretrained(path, **hub)
    # Batched generation with a decoder-only model needs the padding on the left, so that every
    # row's last position is its prompt's last token.
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, attn_implementation=settings.attn_implementation, **hub,
    ).to(device).eval()
    return MLLM(settings, processor, model, device, describe_source(settings.model, settings.revision, "config.json"))
