import io

import numpy as np
import pytest

from pipeline import sample_format as sf


def tokens(rng, length, width):
    """A text's token embeddings as the encoders give them: ``length`` rows, then zero padding."""
    out = np.zeros((sf.TOKEN_POSITIONS, width), np.float16)
    out[:length] = rng.standard_normal((length, width))
    return out


def make_sample(key="demo_train_cat_0_abc", with_all=True, width=24, height=16):
    rng = np.random.default_rng(0)
    lq = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    meta = sf.SampleMeta(
        key=key, dataset="demo", split="train", task="derain", width=width, height=height,
        source={"lq": "/data/lq/cat.png", "gt": "/data/gt/cat.png"},
        degradations=[{"type": "rain", "params": {"kind": "rain", "density": 0.01}}],
        degradation_text="Rain streaks cover the picture.", degradation_types=["rain"],
        caption="a cat on a sofa", analysis={"scores": {"rain": 0.9}},
        provenance={"models": {"describer": {"id": "tiny-mllm", "revision": "abc"}}, "seeds": {"reference": 3}},
    )
    emb = {
        "clip_image": rng.standard_normal(32).astype(np.float16),
        "caption_tokens": tokens(rng, 7, 16), "caption_length": np.int32(7),
        "degradation_tokens": tokens(rng, 9, 16), "degradation_length": np.int32(9),
    }
    return sf.Sample(meta=meta, lq=lq, gt=lq[::-1].copy() if with_all else None,
                     ref=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) if with_all else None,
                     embeddings=emb if with_all else None)


def test_encode_decode_round_trips_exactly():
    sample = make_sample()
    record = sf.encode_sample(sample)
    assert set(record) == {"__key__", sf.LQ, sf.GT, sf.REF, sf.META, sf.EMBEDDINGS_MEMBER}
    back = sf.decode_sample(dict(record, __url__="shard-000000.tar"))
    assert back.meta == sample.meta
    for name in ("lq", "gt", "ref"):
        assert np.array_equal(getattr(back, name), getattr(sample, name))
    for name, arr in sample.embeddings.items():
        assert back.embeddings[name].dtype == arr.dtype and np.array_equal(back.embeddings[name], arr)
    assert sf.encode_sample(back) == record  # same sample, same bytes


def test_minimal_sample_has_only_lq_and_json():
    record = sf.encode_sample(make_sample(with_all=False))
    assert set(record) == {"__key__", sf.LQ, sf.META}
    assert sf.decode_sample(record).gt is None


def test_keys_are_deterministic_dot_free_and_distinct():
    a = sf.make_key("rain100l", "test", "sub/rain-001.png")
    assert a == sf.make_key("rain100l", "test", "sub/rain-001.png") and "." not in a
    assert a != sf.make_key("rain100l", "test", "sub_rain-001.png")  # sanitises alike, still distinct
    assert a != sf.make_key("rain100l", "train", "sub/rain-001.png")
    assert sf.make_key("kodak", "test", "k.png", "noise-sigma-25") != sf.make_key("kodak", "test", "k.png", "noise-sigma-50")


def _corrupt(member, value):
    record = sf.encode_sample(make_sample())
    if value is None:
        del record[member]
    else:
        record[member] = value
    return record


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("member, value, reason", [
    (sf.LQ, None, "missing required member"),
    (sf.META, b"{not json", "invalid JSON"),
    (sf.LQ, b"\x89PNG\r\n garbage", "not a readable image"),
    (sf.GT, sf.encode_sample(make_sample(width=10, height=10))[sf.LQ], "differs from lq shape"),
    ("extra.txt", b"hello", "unknown member"),
    (sf.EMBEDDINGS_MEMBER, b"PK\x03\x04 not really a zip", "not a readable npz"),
    (sf.EMBEDDINGS_MEMBER, _npz(clip_image=np.zeros(4, np.float32)), "missing arrays"),
    (sf.EMBEDDINGS_MEMBER, _npz(obj=np.array([{"a": 1}], dtype=object)), "not a readable npz"),
])
def test_malformed_samples_name_the_key_and_member(member, value, reason):
    with pytest.raises(sf.SampleFormatError) as err:
        sf.decode_sample(_corrupt(member, value))
    assert err.value.key == "demo_train_cat_0_abc" and err.value.member == member
    assert reason in str(err.value)


def test_embedding_shapes_and_dtypes_are_checked():
    sample = make_sample()
    sample.embeddings["caption_tokens"] = sample.embeddings["caption_tokens"][:, :8]
    with pytest.raises(sf.SampleFormatError, match="dimension W is 16, expected 8"):
        sf.encode_sample(sample)
    sample = make_sample()
    sample.embeddings["clip_image"] = sample.embeddings["clip_image"].astype(np.float32)
    with pytest.raises(sf.SampleFormatError, match="clip_image: expected float16"):
        sf.encode_sample(sample)


def test_a_sample_without_clip_image_round_trips():
    # Presets without CLIP (offline) store text tokens only: clip_image is the one optional array.
    sample = make_sample()
    del sample.embeddings["clip_image"]
    record = sf.encode_sample(sample)
    back = sf.decode_sample(record)
    assert set(back.embeddings) == set(sf.EMBEDDINGS) - sf.OPTIONAL_EMBEDDINGS == set(sample.embeddings)
    for name, arr in sample.embeddings.items():
        assert back.embeddings[name].dtype == arr.dtype and np.array_equal(back.embeddings[name], arr)
    assert sf.encode_sample(back) == record
    assert sf.OPTIONAL_EMBEDDINGS == {"clip_image"}  # every other array stays required


@pytest.mark.parametrize("clip_image, reason", [
    (np.zeros((2, 32), np.float16), "clip_image: expected float16 of rank 1"),
    (np.zeros(32, np.float32), "clip_image: expected float16"),
    (np.zeros((), np.float16), "clip_image: expected float16 of rank 1"),
])
def test_a_present_clip_image_is_still_checked(clip_image, reason):
    sample = make_sample()
    sample.embeddings["clip_image"] = clip_image
    with pytest.raises(sf.SampleFormatError, match=reason):
        sf.encode_sample(sample)
    # and on reading, from an npz another writer made
    good = sf.encode_sample(make_sample())
    with np.load(io.BytesIO(good[sf.EMBEDDINGS_MEMBER])) as z:
        arrays = {**{name: z[name] for name in z.files}, "clip_image": clip_image}
    with pytest.raises(sf.SampleFormatError, match=reason) as err:
        sf.decode_sample({**good, sf.EMBEDDINGS_MEMBER: _npz(**arrays)})
    assert err.value.member == sf.EMBEDDINGS_MEMBER


def test_other_format_versions_and_mismatched_keys_are_refused():
    record = sf.encode_sample(make_sample())
    record[sf.META] = record[sf.META].replace(b'"format_version": 1', b'"format_version": 99')
    with pytest.raises(sf.SampleFormatError, match="format version 99"):
        sf.decode_sample(record)
    record = sf.encode_sample(make_sample())
    record["__key__"] = "another_key"
    with pytest.raises(sf.SampleFormatError, match="does not match"):
        sf.decode_sample(record)


def test_token_padding_is_not_stored_and_comes_back_on_decoding():
    # ViT-L text width, a short text: the padding was nearly all of the member's bytes.
    rng = np.random.default_rng(1)
    sample = make_sample()
    sample.embeddings.update(caption_tokens=tokens(rng, 0, 768), caption_length=np.int32(0),
                             degradation_tokens=tokens(rng, 6, 768), degradation_length=np.int32(6))
    del sample.embeddings["clip_image"]
    record = sf.encode_sample(sample)
    padded_npz = _npz(**sample.embeddings)  # what encoding stored before
    assert len(record[sf.EMBEDDINGS_MEMBER]) < len(padded_npz) / 10
    with np.load(io.BytesIO(record[sf.EMBEDDINGS_MEMBER])) as z:
        assert z["degradation_tokens"].shape == (6, 768) and z["caption_tokens"].shape == (0, 768)
    back = sf.decode_sample(record)
    for name, arr in sample.embeddings.items():
        got = back.embeddings[name]
        assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr)
    assert back.embeddings["degradation_tokens"].shape == (sf.TOKEN_POSITIONS, 768)
    assert sf.encode_sample(back) == record  # same sample, same bytes


def test_npz_written_with_its_padding_still_decodes():
    # Shards extracted before the padding was dropped store (TOKEN_POSITIONS, W) arrays.
    sample = make_sample()
    old = {**sf.encode_sample(sample), sf.EMBEDDINGS_MEMBER: _npz(**sample.embeddings)}
    back = sf.decode_sample(old)
    for name, arr in sample.embeddings.items():
        assert back.embeddings[name].dtype == arr.dtype and np.array_equal(back.embeddings[name], arr)


def test_padding_that_is_not_zeros_is_kept_so_decoding_stays_exact():
    sample = make_sample()
    sample.embeddings["caption_tokens"][-1] = 1.0
    record = sf.encode_sample(sample)
    with np.load(io.BytesIO(record[sf.EMBEDDINGS_MEMBER])) as z:
        assert z["caption_tokens"].shape[0] == sf.TOKEN_POSITIONS and z["degradation_tokens"].shape[0] == 9
    assert np.array_equal(sf.decode_sample(record).embeddings["caption_tokens"], sample.embeddings["caption_tokens"])


def test_token_rows_that_match_neither_the_length_nor_the_padding_are_refused():
    sample = make_sample()
    arrays = {**sample.embeddings, "caption_tokens": sample.embeddings["caption_tokens"][:10]}
    record = {**sf.encode_sample(sample), sf.EMBEDDINGS_MEMBER: _npz(**arrays)}
    with pytest.raises(sf.SampleFormatError, match=r"caption_tokens stores 10 rows; expected its caption_length \(7\) or 77"):
        sf.decode_sample(record)


def test_manifest_params_must_be_a_list_of_typed_degradations():
    good = '[{"type": "rain", "params": {"kind": "rain", "density": 0.01}}]'
    assert sf.parse_degradations(good) == [{"type": "rain", "params": {"kind": "rain", "density": 0.01}}]
    assert sf.parse_degradations("[]") == []
    for bad in ('{"x": 1}', '[{"type": "fog", "params": {}}]', '[{"type": "rain"}]', '["rain"]'):
        with pytest.raises(ValueError, match="vocabulary type"):
            sf.parse_degradations(bad)
    with pytest.raises(ValueError):
        sf.parse_degradations("{not json")
