"""Small randomly initialised models of the real classes, built offline for tests, CI and demos.

The ``tiny`` preset runs the whole extraction without a download: a Qwen2.5-VL with two-layer
towers and a byte-level BPE tokenizer trained here, a Stable Diffusion pipeline with a two-block
UNet and VAE, and an open_clip ViT. They are saved with the libraries' own ``save_pretrained`` /
safetensors and loaded back through exactly the loaders the real models use. Builds are seeded,
so every build has identical bytes; they go to a temporary folder that is renamed into place, so
two processes (two Ray actors, say) building at once both end up with one complete copy.

    python -m pipeline.models.tiny --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import torch

from pipeline import cli
from pipeline.image_files import sha256_file
from pipeline.models.presets import TINY_SCHEME

# Bump when a recipe below changes: an old cache is then left alone instead of being reused.
TINY_VERSION = 1
SEED = 1234
CLIP_MODEL_NAME = "lmdir-tiny-clip"
MANIFEST = "manifest.json"
NAMES = ("mllm", "reference", "clip", "clip_config")

# Qwen2-VL's special tokens and chat template (the template is the real one, without video ids).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Text the tiny BPE is trained on: degradation and scene words, so that whatever the random model
# emits is made of word pieces of the domain. Fixed here (not read from the vocabulary module) so
# that a build's bytes depend only on this file and TINY_VERSION.
_CORPUS = (
    "clean sharp clear high quality photo", "noise noisy grain grainy speckle sensor noise",
    "blur blurry blurred out of focus defocus motion blur", "jpeg compression artifacts blocky ringing",
    "low light dark underexposed dim night", "haze hazy fog foggy smog mist",
    "rain rainy rain streaks raining", "snow snowy snowfall", "raindrops water drops on the lens",
    "shadow shadows shaded", "missing regions holes masked", "slight moderate strong severe",
    "a butterfly on a flower in a green garden", "red and yellow leaves on the ground",
    "a starfish on wet sand at the beach", "a city street at night with cars and people",
    "a portrait of a person smiling", "mountains and a lake under a blue sky",
)


def default_cache_dir() -> Path:
    """``$LMDIR_CACHE/tiny``, else ``$XDG_CACHE_HOME/lmdir/tiny``, else ``~/.cache/lmdir/tiny``.

    Kept apart from HF_HOME: these are lmdir's own builds, not Hub downloads.
    """
    if os.environ.get("LMDIR_CACHE"):
        return Path(os.environ["LMDIR_CACHE"]) / "tiny"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "lmdir" / "tiny"


def _paths(root: Path) -> dict[str, Path]:
    return {
        "mllm": root / "mllm",
        "reference": root / "reference",
        "clip": root / "clip" / "open_clip_model.safetensors",
        "clip_config": root / "clip" / f"{CLIP_MODEL_NAME}.json",
    }


def _train_qwen_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=list(QWEN_SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        padding_side="left", model_max_length=4096,
    )


def _build_mllm(out: Path) -> None:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _train_qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    # A wide initialisation (0.5, not 0.02) makes the random model's next-token choice depend on
    # its input, so different images give different text rather than one repeated token.
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            initializer_range=0.5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
            fullatt_block_indexes=[1], initializer_range=0.5,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    model.save_pretrained(out)


def _clip_bpe_vocab() -> dict[str, int]:
    """A CLIP-style byte-level vocabulary with no merges: every byte, alone and word-final."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def _build_reference(out: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = _clip_bpe_vocab()
    tok_dir = out.parent / (out.name + "-tokenizer-files")
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=True))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    shutil.rmtree(tok_dir)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="trailing", steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def _build_clip(weights: Path, config_file: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    # Text context stays at 77 positions: the sample format stores 77 token embeddings.
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    open_clip.add_model_config(config_file)
    torch.manual_seed(SEED)
    model = open_clip.create_model(CLIP_MODEL_NAME, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))


def _write_manifest(root: Path) -> None:
    files = {p.relative_to(root).as_posix(): sha256_file(p)
             for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {"version": TINY_VERSION, "seed": SEED, "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _build_all(root: Path) -> None:
    p = _paths(root)
    # fork_rng: building inside a worker must not change the worker's own random state.
    with torch.random.fork_rng(devices=[]):
        _build_mllm(p["mllm"])
        _build_reference(p["reference"])
        _build_clip(p["clip"], p["clip_config"])
    _write_manifest(root)


def ensure_tiny(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Build the tiny models under ``cache_dir/v{TINY_VERSION}`` unless they are there; their paths.

    Returns ``{"mllm": dir, "reference": dir, "clip": weights file, "clip_config": json file}``.
    Safe to call from many processes at once: each builds in its own temporary folder and renames
    it into place; a process that loses the race drops its copy and uses the winner's.
    """
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = parent / f"v{TINY_VERSION}"
    if not (root / MANIFEST).is_file():
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".v{TINY_VERSION}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _build_all(tmp)
            try:
                os.rename(tmp, root)
            except OSError:
                if not (root / MANIFEST).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _paths(root)


def fingerprint(cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 of the tiny build's manifest: one id for the exact weights a run used."""
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return sha256_file(parent / f"v{TINY_VERSION}" / MANIFEST)


def resolve(name_or_path: str) -> str:
    """A ``tiny://NAME`` id becomes the local path of that tiny model (built on first use);
    any other model id or path is returned unchanged."""
    if not name_or_path.startswith(TINY_SCHEME):
        return name_or_path
    name = name_or_path[len(TINY_SCHEME):]
    if name not in NAMES:
        raise ValueError(f"unknown tiny model {name_or_path!r}; known: "
                         f"{', '.join(TINY_SCHEME + n for n in NAMES)}")
    return str(ensure_tiny()[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.models.tiny",
                                     description="Build lmdir's tiny random models offline.")
    parser.add_argument("--out", default=None, help=f"cache folder (default: {default_cache_dir()})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        built = ensure_tiny(args.out)
    except OSError as e:  # an --out that cannot be created or written
        return cli.fail(e)
    for name, path in built.items():
        print(f"{name}: {path}")
    print(f"fingerprint: {fingerprint(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
