"""On-the-fly training pairs: fresh degradations per crop, real priors of the degraded crop,
weighted task mixing inside batches, a photo-level validation split and exact resume."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import vocabulary
from pipeline.sample_format import TOKEN_POSITIONS
from pipeline.vocabulary import DEGRADATION_TYPES
from restore import data, synthesis
from restore.synthesis import SynthesisConfig, Synthesizer
from restore.validate import read_metrics

TASKS = {"noise:sigma=40..50": 3.0, "haze:beta=2.0..2.5": 1.0}
MINILM_WIDTH = 384


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_data) -> Path:
    """A few real clean training photos: three of the validation split, five of the training split."""
    # The split hashes the folder's and the file's names: keep the folder's name.
    folder = tmp_path_factory.mktemp("photos") / "CBSD365"
    folder.mkdir()
    every = sorted((shared_data / "train" / "CBSD365").iterdir())
    val = [p for p in every if synthesis.is_validation(p)][:3]
    train = [p for p in every if not synthesis.is_validation(p)][:5]
    for p in val + train:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def synthesizer(photos) -> Synthesizer:
    return Synthesizer(SynthesisConfig(photos=(str(photos),), tasks=TASKS))


def test_the_same_seed_gives_the_same_sample_and_each_crop_draws_fresh_noise(synthesizer):
    a, b = synthesizer.sample(11, 48), synthesizer.sample(11, 48)
    assert np.array_equal(a.lq, b.lq) and np.array_equal(a.gt, b.gt)
    assert a.meta.degradation_text == b.meta.degradation_text
    assert np.array_equal(a.embeddings["degradation_tokens"], b.embeddings["degradation_tokens"])
    assert a.lq.shape == a.gt.shape == (48, 48, 3) and a.meta.width == 48
    # Over many seeds the same photo comes back, never with the same noise.
    noises = {}
    for seed in range(40):
        s = synthesizer.sample(seed, 48)
        if s.meta.task == "denoise":
            residual = s.lq.astype(np.int16) - s.gt.astype(np.int16)
            noises.setdefault(residual.tobytes()[:2000], 0)
            noises[residual.tobytes()[:2000]] += 1
    assert max(noises.values()) == 1


def test_priors_are_measured_on_the_degraded_crop(synthesizer):
    found = Counter()
    for seed in range(30):
        s = synthesizer.sample(seed, 48)
        vector = s.meta.analysis["vector"]
        top = DEGRADATION_TYPES[int(np.argmax(vector))]
        found[(s.meta.task, top)] += 1
        # Every prior is real: the analysis sentence, its tokens from the sentence encoder, no
        # image embedding, caption or reference.
        assert s.meta.degradation_text == s.meta.analysis["text"]
        assert s.embeddings["degradation_tokens"].shape == (TOKEN_POSITIONS, MINILM_WIDTH)
        assert int(s.embeddings["degradation_length"]) > 0 and int(s.embeddings["caption_length"]) == 0
        assert "clip_image" not in s.embeddings and s.ref is None
    # Heavy noise and heavy haze are what the analysis finds on most of their crops.
    noisy = sum(v for (task, _), v in found.items() if task == "denoise")
    hazy = sum(v for (task, _), v in found.items() if task == "dehaze")
    assert found[("denoise", "noise")] >= 0.8 * noisy and found[("dehaze", "haze")] >= 0.6 * hazy, found


def test_tasks_are_drawn_by_their_weights(synthesizer):
    tasks = Counter(synthesizer.sample(seed, 32).meta.task for seed in range(160))
    assert tasks.keys() == {"denoise", "dehaze"}
    assert 0.65 < tasks["denoise"] / 160 < 0.85, tasks


def test_guided_crops_read_the_measured_sentence_and_vector_of_their_true_types(photos):
    auto = Synthesizer(SynthesisConfig(photos=(str(photos),), tasks={"rain": 1.0}))
    guided = Synthesizer(SynthesisConfig(photos=(str(photos),), tasks={"rain": 1.0}, instruction_rate=1.0))
    for seed in range(5):
        a, g = auto.sample(seed, 32), guided.sample(seed, 32)
        assert g.meta.analysis["vector"] == vocabulary.one_hot(["rain"])
        # The sentence names rain whether or not the analysis found it in the same crop.
        assert re.fullmatch(r"(mild|moderate|heavy) rain streaks", g.meta.degradation_text), g.meta.degradation_text
        assert np.array_equal(a.lq, g.lq)


def test_validation_photos_are_never_training_photos_and_tasks_are_balanced(photos, synthesizer):
    train = synthesis.list_photos((str(photos),), validation=False)
    val = synthesis.list_photos((str(photos),), validation=True)
    assert len(val) == 3 and len(train) == 5 and not set(train) & set(val)
    assert set(synthesizer.photos) == set(train)
    config = SynthesisConfig(photos=(str(photos),), tasks=TASKS, validation_per_task=2, validation_size=64)
    samples = synthesis.validation_samples(config, synthesizer.priors)
    assert Counter(s.meta.task for s in samples) == {"denoise": 2, "dehaze": 2}
    assert all(s.lq.shape == (64, 64, 3) and s.meta.split == "val" for s in samples)
    again = synthesis.validation_samples(config, synthesizer.priors)
    assert all(np.array_equal(a.lq, b.lq) for a, b in zip(samples, again))


def test_bad_specs_and_folders_are_named():
    with pytest.raises(ValueError, match="unknown kind 'fog'"):
        SynthesisConfig(photos=("/",), tasks={"fog": 1.0}).check()
    with pytest.raises(ValueError, match="weight must be > 0"):
        SynthesisConfig(photos=("/",), tasks={"noise": 0.0}).check()
    with pytest.raises(ValueError, match="/no/such/folder is not a folder"):
        SynthesisConfig(photos=("/no/such/folder",), tasks={"noise": 1.0}).check()


def stream(photos, urls=(), **changes) -> data.StreamConfig:
    settings = dict(urls=tuple(urls), crop=32, batch_size=4, batches_per_epoch=3, token_width=MINILM_WIDTH,
                    clip_width=8, shuffle_buffer=8, seed=3,
                    synthesis=SynthesisConfig(photos=(str(photos),), tasks=TASKS), shard_share=0.5)
    settings.update(changes)
    return data.StreamConfig(**settings)


def take(loader, count):
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


def test_a_resumed_synthetic_stream_continues_exactly(photos):
    config = stream(photos)
    straight = take(data.train_loader(config, 0, 1, 0, (data.Position(),)), 5)
    position = data.Position(*(int(v) for v in straight[2]["position"][1:]))
    resumed = take(data.train_loader(config, 0, 1, 0, (position,)), 2)
    for a, b in zip(straight[3:], resumed):
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["degradation_tokens"], b["degradation_tokens"])
        assert torch.equal(a["position"], b["position"])
    # A new epoch (after batches_per_epoch batches) draws other crops.
    assert not torch.equal(straight[0]["lq"], straight[3]["lq"])


def test_shards_and_synthesis_mix_inside_batches(photos, tmp_path):
    from tests.test_data import write_shards

    index = write_shards(tmp_path / "shards", shards=2, per_shard=6, width=MINILM_WIDTH)
    config = stream(photos, data.resolve(str(index)).urls, crop=24)
    batches = take(data.train_loader(config, 0, 1, 0, (data.Position(),)), 6)
    # Shard samples carry a CLIP image embedding, synthetic ones do not.
    from_shards = torch.cat([b["present_clip_image"] for b in batches])
    assert 0.25 < from_shards.float().mean() < 0.75
    assert any(0 < int(b["present_clip_image"].sum()) < 4 for b in batches)
    # Resuming a mixed stream replays it exactly too.
    position = data.Position(*(int(v) for v in batches[1]["position"][1:]))
    resumed = take(data.train_loader(config, 0, 1, 0, (position,)), 2)
    assert all(torch.equal(a["lq"], b["lq"]) for a, b in zip(batches[2:4], resumed))


def test_the_trainer_learns_from_synthesis_alone(photos, tmp_path, one_thread):
    import json

    from restore import train

    config = train.TrainConfig(
        out=str(tmp_path / "run"), model="compact", crop=32, batch_size=2, workers=0, steps=4, warmup_steps=1,
        lr=1e-3, grad_clip=1.0, log_every=1, val_every=4, save_every=4, threads=1,
        synthesis=SynthesisConfig(photos=(str(photos),), tasks=TASKS, validation_per_task=1, validation_size=48))
    model = train.fit(config)
    assert model.config.token_width == MINILM_WIDTH
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    validation = [r for r in records if "val_psnr" in r]
    assert validation and {"val_psnr_denoise", "val_psnr_dehaze"} <= validation[-1].keys()
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "training_state.json").read_text())
    assert state["prior_preset"] == "offline" and len(state["positions"][0][0]) == 4
