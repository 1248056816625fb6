"""The training stream: SPEC resolution, consistent augmentation, bad data skipped, exact resume.

``write_shards`` builds small real shards (sample_format records in reproducible tars, with an
index.json) for the trainer, evaluation and inference tests too.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import shards as shard_files
from pipeline.degrade import apply
from pipeline.sample_format import TOKEN_POSITIONS, Sample, SampleMeta, encode_sample
from pipeline.vocabulary import DEGRADATION_TYPES
from restore import data
from restore.model import Restorer, preset

WIDTH = 8  # token and CLIP widths of the test embeddings


def pattern(size: int, phase: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * x + phase), 0.5 + 0.4 * np.cos(5 * y - phase),
                    0.5 + 0.3 * np.sin(4 * (x + y) + phase)], axis=-1)
    return np.rint(rgb * 255).astype(np.uint8)


def make_sample(key: str, index: int, size: int = 40, split: str = "train", reference: bool = True,
                width: int = WIDTH) -> Sample:
    """A noisy/clean pair with embeddings, an analysis vector and (optionally) a half-size reference."""
    rng = np.random.default_rng(index)
    gt = pattern(size, index * 0.7)
    lq = apply(gt, "noise:sigma=25", seed=index)[0]
    length = 3 + index % 5
    tokens = rng.standard_normal((TOKEN_POSITIONS, width)).astype(np.float16)
    tokens[length:] = 0
    embeddings = {"clip_image": rng.standard_normal(WIDTH).astype(np.float16),
                  "caption_tokens": tokens, "caption_length": np.int32(length),
                  "degradation_tokens": tokens[::-1].copy(), "degradation_length": np.int32(length)}
    vector = [0.0] * len(DEGRADATION_TYPES)
    vector[DEGRADATION_TYPES.index("noise")] = 0.9
    meta = SampleMeta(key=key, dataset="patterns", split=split, task="denoise", width=size, height=size,
                      degradation_text="heavy noise", degradation_types=["noise"], caption="colour waves",
                      analysis={"vector": vector, "text": "heavy noise"})
    ref = pattern(size // 2, index * 0.7) if reference else None
    return Sample(meta=meta, lq=lq, gt=gt, ref=ref, embeddings=embeddings)


def write_shards(out: Path, shards: int = 2, per_shard: int = 4, test_samples: int = 0, width: int = WIDTH,
                 held_out: str = "test") -> Path:
    """Shards of make_sample records (the last ``test_samples`` in split ``held_out``; text tokens
    ``width`` wide, CLIP image embeddings WIDTH wide) and index.json."""
    out.mkdir(parents=True, exist_ok=True)
    index = 0
    for shard in range(shards):
        records, status = [], []
        for _ in range(per_shard):
            total = shards * per_shard
            split = held_out if index >= total - test_samples else "train"
            key = f"s{index:04d}"
            records.append(encode_sample(make_sample(key, index, split=split, reference=index % 3 != 2, width=width)))
            status.append(shard_files.StatusRow(key, shard, "ok"))
            index += 1
        shard_files.write_shard(out, shard, shard_files.record_members(records), status, {})
    shard_files.write_index(out, "patterns", shards, {"preset": None, "embedding_dims": {"E": WIDTH, "W": width}})
    return out / shard_files.INDEX


def stream_config(urls, **changes) -> data.StreamConfig:
    settings = dict(urls=tuple(urls), crop=24, batch_size=2, batches_per_epoch=3, token_width=WIDTH,
                    clip_width=WIDTH, shuffle_buffer=8, seed=5)
    settings.update(changes)
    return data.StreamConfig(**settings)


def take(loader, count: int) -> list[dict[str, torch.Tensor]]:
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


def test_spec_resolves_index_pattern_and_missing_files(tmp_path):
    index = write_shards(tmp_path / "set", shards=3, per_shard=2)
    source = data.resolve(str(index))
    assert [Path(u).name for u in source.urls] == ["000000.tar", "000001.tar", "000002.tar"]
    assert source.samples == 6 and source.embedding_dims == {"E": WIDTH, "W": WIDTH}
    pattern_source = data.resolve(str(tmp_path / "set" / "{000000..000001}.tar"))
    assert len(pattern_source.urls) == 2 and pattern_source.samples == 4
    with pytest.raises(FileNotFoundError, match="1 of 2 shard files do not exist, e.g. .*000003.tar"):
        data.resolve(str(tmp_path / "set" / "{000002..000003}.tar"))
    assert data.peek_dims(source.urls) == {"E": WIDTH, "W": WIDTH}


def window_of(crop: np.ndarray, image: np.ndarray) -> tuple[int, int, int, bool]:
    """(top, left, quarter turns, flip) with which ``crop`` (3, s, s) was cut out of ``image``."""
    size = crop.shape[1]
    for top in range(image.shape[0] - size + 1):
        for left in range(image.shape[1] - size + 1):
            for turns in range(4):
                for flip in (False, True):
                    window = np.rot90(image[top:top + size, left:left + size], turns)
                    if np.array_equal(data.planar(window[:, ::-1] if flip else window), crop):
                        return top, left, turns, flip
    raise AssertionError("the crop is no window of the image")


def test_widening_a_uint8_image_gives_the_float_image_exactly():
    pixels = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3)
    wide = data.widen(torch.from_numpy(data.planar(pixels)))
    assert wide.dtype == torch.float32 and np.array_equal(wide.numpy(), data.to_chw(pixels))


def test_lq_and_gt_share_a_crop_and_the_reference_gets_a_window_of_its_own():
    sample = make_sample("k", 1, size=40)
    # A picture of noise, so every crop tells where it was cut and how it was turned.
    sample.gt = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    sample.lq = sample.gt.copy()
    sample.ref = sample.gt[::2, ::2].copy()
    reference = data.resize_rgb(sample.ref, 40, 40)  # the render brought to the LQ's size
    same_place = 0
    for seed in range(8):
        ex = data.training_example(sample, 24, np.random.default_rng(seed), WIDTH, WIDTH)
        assert ex["lq"].shape == ex["gt"].shape == ex["reference"].shape == (3, 24, 24)
        assert np.array_equal(ex["lq"], ex["gt"])
        lq_window, ref_window = window_of(ex["lq"], sample.lq), window_of(ex["reference"], reference)
        # Flipped and rotated alike (the scene stays the same way up as the input) ...
        assert lq_window[2:] == ref_window[2:]
        same_place += lq_window[:2] == ref_window[:2]
        assert ex["present_reference"] and ex["present_caption_tokens"]
        assert ex["caption_mask"].sum() == 3 + 1 % 5
    # ... but cut elsewhere: a render made from a caption shares no geometry with the input, and
    # the reference branch must learn to find what it needs anywhere in it.
    assert same_place <= 2


def test_batches_carry_priors_with_presence(tmp_path):
    index = write_shards(tmp_path / "set", shards=2, per_shard=3)
    loader = data.train_loader(stream_config(data.resolve(str(index)).urls), 0, 1, 0, (data.Position(),))
    batch = take(loader, 1)[0]
    priors = data.batch_priors(batch)
    assert batch["lq"].shape == (2, 3, 24, 24) and priors.reference.shape == (2, 3, 24, 24)
    # Compact types from the loader (a third of float32's bytes), widened where the model reads them.
    assert batch["lq"].dtype == priors.reference.dtype == torch.uint8
    assert priors.degradation_tokens.dtype == priors.clip_image.dtype == torch.float16
    wide = data.widen_priors(priors)
    assert wide.reference.dtype == wide.degradation_tokens.dtype == wide.clip_image.dtype == torch.float32
    assert wide.degradation_mask is priors.degradation_mask
    # Tokens come cut to the batch's longest text (trim_tokens).
    tokens, mask = priors.degradation_tokens, priors.degradation_mask
    assert tokens.shape[::2] == (2, WIDTH) and mask.shape == tokens.shape[:2] == (2, int(mask.sum(1).max()))
    assert priors.presence("degradation_vector", 2, torch.device("cpu")).all()
    assert float(priors.degradation_vector[0, DEGRADATION_TYPES.index("noise")]) == pytest.approx(0.9)


def test_corrupt_samples_and_a_truncated_shard_are_skipped_and_counted(tmp_path, caplog):
    index = write_shards(tmp_path / "set", shards=3, per_shard=4)
    folder = index.parent
    records = shard_files.read_records(folder / "000001.tar")
    bad_key = sorted(records)[1]
    records[bad_key]["lq.png"] = b"\x89PNG\r\n\x1a\n not really a png"
    (folder / "000001.tar").write_bytes(shard_files.tar_bytes(records.values()))
    whole = (folder / "000002.tar").read_bytes()
    (folder / "000002.tar").write_bytes(whole[: len(whole) // 2 + 100])
    urls = data.resolve(str(index)).urls
    with caplog.at_level(logging.WARNING, logger="lmdir.data"):
        batches = take(data.train_loader(stream_config(urls), 0, 1, 0, (data.Position(),)), 12)
    skipped = int(batches[-1]["skipped"][1])
    assert skipped >= 2, skipped
    assert all(torch.isfinite(b["lq"]).all() for b in batches)
    messages = [r.getMessage() for r in caplog.records if r.name == "lmdir.data"]
    assert any("000002.tar" in m for m in messages)
    assert len(messages) <= data.SKIP_LOG_FIRST  # rate-limited after the first few
    # Read once, in order: the corrupt sample is the one missing, counted and named.
    caplog.clear()
    counter = data.SkipCounter("reader")
    with caplog.at_level(logging.WARNING, logger="lmdir.data"):
        keys = [s.key for s in data.read_samples([str(folder / "000001.tar")], skips=counter)]
    assert keys == [k for k in sorted(records) if k != bad_key] and counter.count == 1
    assert bad_key in caplog.records[0].getMessage() and "lq.png" in caplog.records[0].getMessage()


def test_data_that_is_all_bad_stops_with_a_reason(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar file" * 10)
    loader = data.train_loader(stream_config((str(broken),)), 0, 1, 0, (data.Position(),))
    with pytest.raises(ValueError, match="bad records or shards in a row"):
        take(loader, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_exactly(tmp_path, workers):
    index = write_shards(tmp_path / "set", shards=2, per_shard=4)
    config = stream_config(data.resolve(str(index)).urls)
    logical = max(1, workers)
    straight = take(data.train_loader(config, 0, 1, workers, tuple(data.Position() for _ in range(logical))), 7)
    # Resume after 4 batches, from the positions those batches carried, as the trainer does.
    positions = [data.Position() for _ in range(logical)]
    for batch in straight[:4]:
        positions[int(batch["position"][0])] = data.Position(*(int(v) for v in batch["position"][1:]))
    resumed = take(data.train_loader(config, 0, 1, workers, tuple(positions), rotation=4 % logical), 3)
    for a, b in zip(straight[4:], resumed):
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["reference"], b["reference"])
        assert torch.equal(a["position"], b["position"])
    # Different epochs and ranks see different crops.
    other_rank = take(data.train_loader(config, 1, 2, 0, (data.Position(),)), 1)[0]
    assert not torch.equal(other_rank["lq"], straight[0]["lq"])


def test_a_published_manifest_resolves_to_verified_local_shards(tmp_path, monkeypatch):
    from pipeline.publish import build_manifest
    from pipeline.published import manifest_bytes
    from tests.test_download import Mirror, write_extraction

    extraction = write_extraction(tmp_path / "extraction")
    mirror = Mirror({p.name: p.read_bytes() for p in extraction.glob("*.tar")})
    try:
        mirror.files["published.json"] = manifest_bytes(build_manifest(extraction, [mirror.url], license="CC-BY-4.0"))
        monkeypatch.setenv("LMDIR_CACHE", str(tmp_path / "cache"))
        source = data.resolve(f"{mirror.url}/published.json")
    finally:
        mirror.stop()
    assert len(source.urls) == 3 and all(u.startswith(str(tmp_path / "cache")) for u in source.urls)
    assert source.samples == 9 and source.prior_preset == "tiny"
    assert len(list(data.read_samples(source.urls))) == 9


def test_loader_workers_start_cleanly_after_threaded_work_in_the_parent(tmp_path):
    # A worker forked after OpenCV's and torch's thread pools ran in the parent hung on its first
    # threaded call; run in a child process so that such a hang fails the test instead of the run.
    import subprocess
    import sys

    index = write_shards(tmp_path / "shards")
    script = f"""
import cv2, numpy as np, torch
from restore import data
cv2.setNumThreads(2)
torch.set_num_threads(2)
cv2.resize(np.zeros((1200, 2048, 3), np.uint8), (1024, 600), interpolation=cv2.INTER_AREA)
torch.ones(512, 512) @ torch.ones(512, 512)
source = data.resolve({str(index)!r})
config = data.StreamConfig(urls=tuple(source.urls), crop=24, batch_size=2, batches_per_epoch=3, token_width={WIDTH},
                           clip_width={WIDTH}, shuffle_buffer=8, seed=5)
start = (data.Position(), data.Position())
batch = next(iter(data.train_loader(config, 0, 1, 2, start)))
print(tuple(batch["lq"].shape))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(2, 3, 24, 24)")


def batch_digest(batches: list[dict[str, torch.Tensor]]) -> str:
    """sha256 of the names, dtypes, shapes and bytes of every tensor of ``batches``."""
    digest = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            tensor = batch[name].contiguous()
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# The first 5 batches of stream_config over write_shards(shards=2, per_shard=4) (seed 5, two
# epochs): which samples, crops, flips and rotations, the priors and positions. The stream is a
# pure function of its seeds, so this changes only with a deliberate change of what the stream
# yields (then say so where you update it); a speed-up must leave it as it is.
# Updated when batches began to carry token arrays cut to their batch's longest text
# (data.trim_tokens): the rows cut are ones the model masks out, as the test after this checks.
# Batches carry uint8 images and float16 embeddings (data.widen): the widened digest is the one
# pinned before that change, so the model reads the same numbers.
PINNED_BATCHES = "64fe84314ece5f37172187cd43ec1439380b340c585c83958ac8ec6648f6f8a5"
PINNED_WIDENED = "0705d5be9cac944aa48d7f053423a75159f9542d848d79498033c4b0332b08b4"


def test_cutting_tokens_to_the_longest_text_leaves_the_model_output_as_it_is(tmp_path):
    # The shards' token rows past each text's length are not zero here, as in any npz whose
    # encoder wrote hidden states for its padding: the model must not see them, cut or not.
    index = write_shards(tmp_path / "set", shards=1, per_shard=4)
    samples = data.read_samples(data.resolve(str(index)).urls)
    rng = np.random.default_rng(0)
    examples = [data.training_example(s, 24, rng, WIDTH, WIDTH) for s in samples]
    whole = data.collate([dict(e) for e in examples])
    cut = data.collate(data.trim_tokens([dict(e) for e in examples]))
    assert cut["degradation_tokens"].shape[1] < whole["degradation_tokens"].shape[1] == TOKEN_POSITIONS
    assert whole["degradation_tokens"][:, cut["degradation_tokens"].shape[1]:].abs().sum() > 0
    model = Restorer(preset("tiny", token_width=WIDTH, clip_width=WIDTH, use_reference=False)).eval()
    with torch.no_grad():
        expected = model(data.widen(whole["lq"]), data.widen_priors(data.batch_priors(whole)))
        assert torch.allclose(model(data.widen(cut["lq"]), data.widen_priors(data.batch_priors(cut))), expected,
                              atol=1e-6)


@pytest.mark.parametrize("workers", [0, 1])
def test_the_batches_of_a_fixed_seed_are_pinned(tmp_path, workers):
    index = write_shards(tmp_path / "set", shards=2, per_shard=4)
    config = stream_config(data.resolve(str(index)).urls)
    batches = take(data.train_loader(config, 0, 1, workers, (data.Position(),)), 5)
    assert batch_digest(batches) == PINNED_BATCHES
    assert batch_digest([{k: data.widen(v) for k, v in b.items()} for b in batches]) == PINNED_WIDENED


def test_collate_refuses_examples_of_different_shapes_or_types():
    # Copied row by row into the batch, a smaller array would broadcast and another type cast,
    # silently.
    examples = [{"lq": np.zeros((3, 8, 8), np.uint8), "vector": np.zeros(11, np.float32)},
                {"lq": np.zeros((3, 8, 8), np.uint8), "vector": np.zeros(1, np.float32)}]
    with pytest.raises(ValueError, match=r"example 1: vector is float32 \(1,\), example 0 float32 \(11,\)"):
        data.collate(examples)
    examples[1]["vector"] = np.full(11, 2.7, np.float64)
    with pytest.raises(ValueError, match=r"example 1: vector is float64 \(11,\)"):
        data.collate(examples)
    batch = data.collate(examples[:1] * 2, position=np.arange(3))
    assert batch["vector"].shape == (2, 11) and batch["position"].tolist() == [0, 1, 2]
