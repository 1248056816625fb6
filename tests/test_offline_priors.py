"""A model trained from shards and one trained on the fly see the same inputs.

The ``offline`` preset's priors of one image, written into a shard by ``pipeline.extract`` and
computed on the fly by ``restore.priors_online`` (what synthesis, evaluation and inference use),
must be the same: the same analysis, the same sentence, the same token bytes, the same restorer
inputs. Real photos: a Kodak24 image degraded by ``pipeline.degrade`` and a real low-light JPEG.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from pipeline import extract, manifest
from pipeline.image_files import decode_rgb, read_bytes
from pipeline.shards import INDEX
from restore.data import prior_arrays, read_samples
from restore.priors_online import OnlinePriors

SPECS = ("noise:sigma=25", "haze:beta=1.5", "rain", "jpeg:quality=20", "low-light", "snow")
TOKEN_WIDTH, CLIP_WIDTH = 384, 768  # all-MiniLM-L6-v2's width; any CLIP width (there is no image embedding)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, shared_data):
    """(manifest rows, samples by key) of an offline extraction through the command line's entry point."""
    import ray

    folder = tmp_path_factory.mktemp("offline")
    clean, real = folder / "clean", folder / "dicm"
    clean.mkdir()
    real.mkdir()
    shutil.copy(shared_data / "denoise" / "Kodak24" / "kodim05.png", clean)
    shutil.copy(shared_data / "real" / "lowlight_DICM" / "01.jpg", real)  # byte for byte: a real JPEG
    built = manifest.from_clean_folder(str(clean), SPECS, "kodak24", "test", str(folder / "lq"))
    built.extend(manifest.from_paired(str(real), None, "dicm", "test", "low-light"))
    path, _ = manifest.write(built, str(folder / "manifest.parquet"))
    out = folder / "priors"
    # Batches of 4 mix sentences of different lengths: a sample's tokens must not depend on them.
    argv = ["--manifest", path, "--out", str(out), "--preset", "offline", "--num-cpus", "2",
            "--samples-per-shard", "3", "--set", "stages.clip.batch_size=4"]
    try:
        assert extract.main(argv) == 0
    finally:
        ray.shutdown()
    assert (out / INDEX).is_file()
    samples = {s.key: s for s in read_samples(sorted(str(p) for p in out.glob("*.tar")))}
    return manifest.read(path), samples


@pytest.fixture(scope="module")
def online():
    return OnlinePriors("offline")


def test_shard_priors_equal_on_the_fly_priors(extracted, online, one_thread):
    rows, samples = extracted
    assert sorted(samples) == sorted(r["key"] for r in rows) and len(rows) == len(SPECS) + 1
    texts = set()
    for row in rows:
        shard = samples[row["key"]]
        data = read_bytes(row["lq_uri"])
        loaded = decode_rgb(data, row["lq_uri"])
        gt = decode_rgb(read_bytes(row["gt_uri"]), row["gt_uri"]).pixels if row["gt_uri"] else None
        # One BLAS thread and one torch thread (``one_thread``), as in Ray's extraction actors and
        # in the training loader's workers (restore.data): the analysis's PCA noise estimate moves
        # in its 4th decimal with the BLAS thread count (measured on DICM 01: σ 0.6546 with two
        # threads, 0.6547 with one), and the sentence encoder's float16 tokens move by one step in
        # a few values when an earlier test left torch on another thread count (seen in the suite).
        with threadpool_limits(1):
            fly = online.sample(row["key"], loaded.pixels, data if loaded.source_format == "JPEG" else None,
                                gt=gt, dataset=row["dataset"], split=row["split"], task=row["task"])
        where = f"{row['key']} ({row['degradation']})"
        assert np.array_equal(shard.lq, fly.lq), where
        assert shard.meta.analysis == fly.meta.analysis, where
        assert shard.meta.analysis["vector"] == fly.meta.analysis["vector"], where
        assert shard.meta.degradation_text == fly.meta.degradation_text == fly.meta.analysis["text"], where
        assert shard.meta.degradation_types == fly.meta.degradation_types, where
        assert shard.meta.caption == fly.meta.caption == "" and shard.ref is None and fly.ref is None, where
        assert set(shard.embeddings) == set(fly.embeddings), where
        assert "clip_image" not in shard.embeddings and "clip_image" not in fly.embeddings, where
        for name, arr in shard.embeddings.items():
            assert arr.dtype == fly.embeddings[name].dtype and np.array_equal(arr, fly.embeddings[name]), (where, name)
        assert int(shard.embeddings["degradation_length"]) > 2 and int(shard.embeddings["caption_length"]) == 0
        from_shard = prior_arrays(shard, TOKEN_WIDTH, CLIP_WIDTH)
        from_fly = prior_arrays(fly, TOKEN_WIDTH, CLIP_WIDTH)
        assert from_shard.keys() == from_fly.keys()
        for name in from_shard:
            assert from_shard[name].dtype == from_fly[name].dtype, (where, name)
            assert np.array_equal(from_shard[name], from_fly[name]), (where, name)
        assert from_shard["present_degradation_tokens"] and not from_shard["present_caption_tokens"]
        assert not from_shard["present_clip_image"] and from_shard["present_degradation_vector"]
        texts.add(shard.meta.degradation_text)
    assert len(texts) >= 4, texts  # the photos read differently: the comparison is not of one sentence


def _sentence(encoder, text: str) -> np.ndarray:
    tokens, lengths = encoder.embed_text_tokens([text])
    v = tokens[0, :lengths[0]].astype(np.float32).mean(axis=0)
    return v / np.linalg.norm(v)


def test_the_text_encoder_places_meanings_not_strings(online):
    encoder = online.embedder.text
    fog = _sentence(encoder, "remove the fog")
    hazy, rain = _sentence(encoder, "hazy foggy landscape"), _sentence(encoder, "heavy rain streaks")
    assert fog @ hazy > fog @ rain + 0.1, (fog @ hazy, fog @ rain)

    tokens, lengths = encoder.embed_text_tokens(["", "remove the fog"])
    assert tokens.shape == (2, 77, TOKEN_WIDTH) and tokens.dtype == np.float16 and lengths.dtype == np.int32
    assert lengths[0] == 0 and not tokens[0].any()  # the empty text is an absent prior
    assert lengths[1] == 5  # [CLS] remove the fog [SEP]
