"""The restorer on the CPU: shapes, every prior path, null priors, determinism, saving, tiling, size."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from restore import checkpoint
from restore.model import (
    PRIOR_NAMES,
    Priors,
    Restorer,
    RestorerConfig,
    base,
    count_parameters,
    drop_priors,
    restore_tiled,
    tiny,
)
from restore.model.config import PRIOR_LEVELS
from restore.model.prior_blocks import LocalReferenceAttention, ReferenceTokenizer
from restore.model.priors import random_priors
from restore.model.summary import RESTORMER_CONV_GMACS, RESTORMER_PARAMS, format_table, summarize

# The tiny open_clip of our pipeline tests is narrow too; the widths are config values.
TOKEN_WIDTH, CLIP_WIDTH = 32, 24


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **overrides) -> Restorer:
    torch.manual_seed(seed)
    return Restorer(tiny(token_width=TOKEN_WIDTH, clip_width=CLIP_WIDTH, **overrides))


def trained_a_little(model: Restorer) -> Restorer:
    """``model`` after one Adam step on random data with every prior: the output projections that
    start at zero move off it, so every prior path changes the output, as in a trained model."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    lq = torch.rand(2, 3, 24, 24)
    (model(lq, priors_for(model, 2)) - lq).abs().mean().backward()
    optimizer.step()
    return model.eval()


def priors_for(model: Restorer, batch: int, size=(40, 52), seed: int = 1) -> Priors:
    return random_priors(model.config, batch, size, torch.Generator().manual_seed(seed))


def only(priors: Priors, names) -> Priors:
    """The priors with every field not in ``names`` left out (masks follow their tokens)."""
    keep = set(names)
    return Priors(
        degradation_tokens=priors.degradation_tokens if "degradation_tokens" in keep else None,
        degradation_mask=priors.degradation_mask if "degradation_tokens" in keep else None,
        clip_image=priors.clip_image if "clip_image" in keep else None,
        degradation_vector=priors.degradation_vector if "degradation_vector" in keep else None,
        caption_tokens=priors.caption_tokens if "caption_tokens" in keep else None,
        caption_mask=priors.caption_mask if "caption_tokens" in keep else None,
        reference=priors.reference if "reference" in keep else None,
    )


def sample(priors: Priors, index: int) -> Priors:
    """The priors of one sample of the batch."""
    fields = {name: getattr(priors, name) for name in (
        "degradation_tokens", "degradation_mask", "clip_image", "degradation_vector",
        "caption_tokens", "caption_mask", "reference")}
    return Priors(**{k: None if v is None else v[index:index + 1] for k, v in fields.items()})


def test_any_size_in_same_size_out():
    model = tiny_model().eval()
    lq = torch.rand(2, 3, 97, 131)
    with torch.no_grad():
        with_priors = model(lq, priors_for(model, 2, size=(61, 45)))
        without = model(lq)
    assert with_priors.shape == without.shape == lq.shape
    assert torch.isfinite(with_priors).all()
    assert not torch.allclose(with_priors, without)


def test_gradients_reach_every_parameter_of_every_prior_path():
    model = tiny_model()
    priors = priors_for(model, 2)
    # Sample 0 carries every prior, sample 1 none: the null tokens and image are used as well.
    priors = priors.with_present(**{name: torch.tensor([True, False]) for name in PRIOR_NAMES})
    lq, target = torch.rand(2, 3, 24, 32), torch.rand(2, 3, 24, 32)

    def without_gradient() -> list[str]:
        model.zero_grad()
        (model(lq, priors) - target).abs().mean().backward()
        return [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]

    # At initialisation the reference blocks' output projections are zero: they get a gradient,
    # and pass none on to the rest of the branch yet.
    silent = without_gradient()
    assert silent and all(name.startswith(("reference_encoder.", "reference_blocks.")) for name in silent)
    assert not any(".to_out." in name for name in silent)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert without_gradient() == []
    for component in ("prompt_encoder", "degradation_blocks", "caption_encoder", "content_blocks",
                      "reference_encoder", "reference_blocks"):
        assert any(name.startswith(component) for name, _ in model.named_parameters())


def test_degradation_blocks_enter_where_the_config_says():
    everywhere = tiny_model(degradation_levels=PRIOR_LEVELS)
    assert set(everywhere.degradation_blocks) == set(PRIOR_LEVELS)
    assert set(tiny_model().degradation_blocks) == {"encoder1", "encoder2", "encoder3", "latent"}
    lq, target = torch.rand(2, 3, 24, 32), torch.rand(2, 3, 24, 32)
    (everywhere(lq, priors_for(everywhere, 2)) - target).abs().mean().backward()
    for level in ("decoder3", "decoder2", "decoder1"):
        assert all(p.grad is not None and p.grad.any() for p in everywhere.degradation_blocks[level].parameters())
    with pytest.raises(ValueError, match="degradation_levels"):
        tiny(degradation_levels=("encoder1", "middle"))


def test_same_seed_same_model_and_output():
    first, second = tiny_model(seed=3), tiny_model(seed=3)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.output.weight, tiny_model(seed=4).output.weight)
    lq = torch.rand(1, 3, 32, 32)
    priors = priors_for(first, 1)
    with torch.no_grad():
        assert torch.equal(first.eval()(lq, priors), second.eval()(lq, priors))


def test_every_subset_of_priors_runs():
    model = trained_a_little(tiny_model())
    lq = torch.rand(1, 3, 16, 24)
    full = priors_for(model, 1)
    outputs = []
    with torch.no_grad():
        for count in range(len(PRIOR_NAMES) + 1):
            for subset in itertools.combinations(PRIOR_NAMES, count):
                out = model(lq, only(full, subset))
                assert out.shape == lq.shape and torch.isfinite(out).all(), subset
                outputs.append(out)
    assert len(outputs) == 2 ** len(PRIOR_NAMES)
    # Each subset is a different input to the model: no two outputs coincide.
    flat = torch.stack([o.flatten() for o in outputs])
    # (cdist's matrix-product shortcut rounds distances this small to zero)
    distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist") + torch.eye(len(outputs))
    assert distances.min() > 0


def test_absent_sample_gets_the_same_null_as_an_absent_field():
    model = trained_a_little(tiny_model())
    lq = torch.rand(2, 3, 24, 24)
    priors = priors_for(model, 2)
    mixed = priors.with_present(**{name: torch.tensor([True, False]) for name in PRIOR_NAMES})
    with torch.no_grad():
        out = model(lq, mixed)
        alone_with = model(lq[:1], sample(priors, 0))
        alone_without = model(lq[1:])
    torch.testing.assert_close(out[:1], alone_with, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1:], alone_without, atol=1e-5, rtol=0)


def test_all_samples_absent_equals_no_priors_and_the_graph_has_no_break():
    model = trained_a_little(tiny_model())
    lq = torch.rand(2, 3, 24, 24)
    none = priors_for(model, 2).with_present(**{name: torch.zeros(2, dtype=torch.bool) for name in PRIOR_NAMES})
    with torch.no_grad():
        torch.testing.assert_close(model(lq, none), model(lq), atol=1e-5, rtol=0)
    # Presence is masked, never branched on: one graph, so torch.compile fuses the whole step.
    mixed = priors_for(model, 2).with_present(reference=torch.tensor([True, False]))
    explained = torch._dynamo.explain(model)(lq, mixed)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_an_empty_token_mask_counts_as_absent():
    model = tiny_model().eval()
    lq = torch.rand(1, 3, 16, 16)
    priors = only(priors_for(model, 1), ["caption_tokens"])
    empty = Priors(caption_tokens=priors.caption_tokens, caption_mask=torch.zeros_like(priors.caption_mask))
    with torch.no_grad():
        torch.testing.assert_close(model(lq, empty), model(lq), atol=1e-5, rtol=0)


def test_prior_dropout_is_seeded_and_only_removes():
    model = tiny_model()
    priors = priors_for(model, 64).with_present(reference=torch.arange(64) % 2 == 0)
    first = drop_priors(priors, 0.5, torch.Generator().manual_seed(0))
    again = drop_priors(priors, 0.5, torch.Generator().manual_seed(0))
    for name in PRIOR_NAMES:
        assert torch.equal(first.present[name], again.present[name])
        assert 8 < int(first.present[name].sum()) < 56
    # A sample without a reference never gains one.
    assert not (first.present["reference"] & ~priors.present["reference"]).any()
    assert drop_priors(priors, 0.0) is priors
    assert drop_priors(only(priors, ["clip_image"]), 0.5).present.keys() == {"clip_image"}


def test_switches_remove_paths_and_all_off_is_the_backbone():
    no_reference = tiny_model(use_reference=False)
    assert not hasattr(no_reference, "reference_blocks") and hasattr(no_reference, "prompt_encoder")
    backbone = tiny_model(use_degradation=False, use_content=False, use_reference=False)
    assert count_parameters(backbone) < count_parameters(no_reference) < count_parameters(tiny_model())
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        # A path that is off ignores its prior.
        torch.testing.assert_close(backbone.eval()(lq, priors_for(backbone, 1)), backbone(lq))


def test_wrong_prior_widths_are_reported():
    model = tiny_model()
    lq = torch.rand(1, 3, 16, 16)
    wide = Priors(caption_tokens=torch.zeros(1, 77, 768), caption_mask=torch.ones(1, 77, dtype=torch.bool))
    with pytest.raises(ValueError, match="caption_tokens.*token_width=32"):
        model(lq, wide)
    with pytest.raises(ValueError, match="clip_image"):
        model(lq, Priors(clip_image=torch.zeros(1, 768)))
    with pytest.raises(ValueError, match=r"present\['reference'\]"):
        model(lq, Priors(reference=torch.rand(1, 3, 8, 8), present={"reference": torch.tensor([1])}))
    with pytest.raises(ValueError, match="lq must be"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="not divisible"):
        RestorerConfig(dim=10, heads=(1, 3, 4, 8))


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path / "restorer")
    assert sorted(p.name for p in (tmp_path / "restorer").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Restorer.from_pretrained(tmp_path / "restorer").eval()
    assert loaded.config == model.config
    lq, priors = torch.rand(1, 3, 20, 28), priors_for(model, 1)
    with torch.no_grad():
        assert torch.equal(model(lq, priors), loaded(lq, priors))

    config_path = tmp_path / "restorer" / "config.json"
    raw = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**raw, "dim": 16}))
    with pytest.raises(ValueError, match="model.safetensors: weights do not match"):
        Restorer.from_pretrained(tmp_path / "restorer")
    config_path.write_text(json.dumps({**raw, "depth": 3}))
    with pytest.raises(ValueError, match=r"config.json: unknown restorer config fields \['depth'\]"):
        Restorer.from_pretrained(tmp_path / "restorer")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Restorer.from_pretrained(tmp_path)


def test_tiling_equals_whole_image_below_the_tile_size():
    model = tiny_model().eval()
    lq = torch.rand(1, 3, 40, 56)
    priors = priors_for(model, 1, size=(30, 33))
    with torch.no_grad():
        whole = model(lq, priors)
    tiled = restore_tiled(model, lq, priors, tile=64, overlap=16)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


def test_tiling_blends_overlapping_tiles_without_seams():
    # A per-pixel function is the same whether applied in tiles or at once, so any seam or
    # weighting error of the blending shows up as a difference.
    def brighten(lq, priors):
        return lq * 0.5 + priors.reference * 0.25

    lq, reference = torch.rand(2, 3, 70, 90), torch.rand(2, 3, 70, 90)
    tiled = restore_tiled(brighten, lq, Priors(reference=reference), tile=32, overlap=8)
    torch.testing.assert_close(tiled, brighten(lq, Priors(reference=reference)), atol=1e-6, rtol=0)

    model = tiny_model().eval()
    out = restore_tiled(model, lq[:1], priors_for(model, 1), tile=32, overlap=8)
    assert out.shape == (1, 3, 70, 90) and torch.isfinite(out).all()


def test_summary_base_backbone_is_restormer_and_priors_stay_within_budget():
    backbone = Restorer(base().without_priors())
    assert count_parameters(backbone) == RESTORMER_PARAMS
    # Every layer works per pixel, so MACs at 64² are exactly 1/16 of those at 256².
    rows = summarize(backbone, size=64)
    conv_gmacs_256 = 16 * sum(r.conv_macs for r in rows) / 1e9
    assert conv_gmacs_256 == pytest.approx(RESTORMER_CONV_GMACS, abs=0.01)
    full = Restorer(base())
    assert count_parameters(full) <= 1.2 * RESTORMER_PARAMS


def test_summary_table_lists_every_component():
    model = tiny_model()
    rows = summarize(model, size=32)
    assert [r.name for r in rows] == [name for name, _ in model.named_children()]
    assert sum(r.params for r in rows) == count_parameters(model)
    priors_rows = [r for r in rows if r.is_prior]
    assert len(priors_rows) == 6 and all(r.conv_macs > 0 for r in priors_rows)
    assert all(r.attention_macs > 0 for r in rows if r.name in ("encoder1", "reference_blocks", "content_blocks"))
    table = format_table(rows, 32)
    assert "| **total** |" in table and "reference_blocks (prior)" in table


@pytest.mark.parametrize("window, margin", [(8, 0), (4, 4)])
def test_local_reference_attention_sees_exactly_its_neighbourhood(window, margin):
    # When every window's neighbourhood spans the whole (padded) image, local attention must
    # equal plain attention over all real reference pixels: the padding gets no weight.
    torch.manual_seed(0)
    attention = LocalReferenceAttention(dim=6, ref_channels=4, heads=2, window=window, margin=margin)
    x, ref = torch.randn(2, 6, 6, 7), torch.randn(2, 4, 6, 7)
    q = attention.to_q(x).flatten(2).reshape(2, 2, 2, 42).transpose(-1, -2)
    k, v = (t.flatten(2).reshape(2, 2, 2, 42).transpose(-1, -2) for t in attention.to_kv(ref).chunk(2, dim=1))
    weights = (q @ k.transpose(-1, -2) / 2 ** 0.5).softmax(dim=-1)
    expected = attention.to_out((weights @ v).transpose(-1, -2).reshape(2, 4, 6, 7))
    torch.testing.assert_close(attention(x, ref), expected, atol=1e-5, rtol=0)


def test_the_reference_branch_starts_as_the_backbone_with_or_without_a_reference():
    # The same seed builds the same backbone (the prior paths come after it), and the reference
    # blocks' output projections start at zero: an absent or useless reference cannot hurt a
    # model before it has learned how to use one.
    backbone = tiny_model(use_degradation=False, use_content=False, use_reference=False).eval()
    with_reference = tiny_model(use_degradation=False, use_content=False).eval()
    lq = torch.rand(2, 3, 30, 42)
    priors = only(priors_for(with_reference, 2, size=(64, 64)), ["reference"])
    with torch.no_grad():
        expected = backbone(lq)
        torch.testing.assert_close(with_reference(lq, priors), expected, atol=0, rtol=0)
        torch.testing.assert_close(with_reference(lq), expected, atol=0, rtol=0)
        half = priors.with_present(reference=torch.tensor([True, False]))
        torch.testing.assert_close(with_reference(lq, half), expected, atol=0, rtol=0)
        # With every prior path on, adding the reference changes nothing either.
        full = tiny_model().eval()
        everything = priors_for(full, 2)
        torch.testing.assert_close(full(lq, everything), full(lq, dataclasses.replace(everything, reference=None)),
                                   atol=0, rtol=0)


def test_a_reference_of_any_size_becomes_a_fixed_set_of_tokens():
    tokenizer = ReferenceTokenizer(channels=(8, 8, 16), grid=8)
    for lq_size in ((9, 13), (37, 45), (64, 64)):
        priors = Priors(reference=torch.rand(2, 3, 61, 45))
        tokens, mask = tokenizer(priors, lq_size, 2)
        assert tokens.shape == (2, 1 + 64, 16) and mask.shape == (2, 1 + 64) and mask.all()
    tokens, mask = tokenizer(Priors(), (16, 16), 3)
    assert tokens.shape == (3, 1, 16) and mask.all()
    absent = Priors(reference=torch.rand(2, 3, 16, 16), present={"reference": torch.tensor([False, True])})
    _, mask = tokenizer(absent, (16, 16), 2)
    assert mask[0].tolist() == [True] + [False] * 64 and mask[1].all()


@pytest.mark.parametrize("attention", ["pooled", "windowed"])
def test_both_reference_branches_take_odd_sizes(attention):
    model = trained_a_little(tiny_model(reference_attention=attention))
    for lq_size, ref_size in (((9, 13), (61, 45)), ((37, 45), (5, 7)), ((33, 17), (33, 17))):
        lq = torch.rand(1, 3, *lq_size)
        with torch.no_grad():
            out = model(lq, priors_for(model, 1, size=ref_size))
        assert out.shape == lq.shape and torch.isfinite(out).all()


def test_reference_positions_are_not_weight_decayed():
    model = tiny_model()
    assert {"reference_encoder.position", "reference_encoder.null"} <= model.no_weight_decay()


def test_config_files_from_before_the_pooled_branch_load_as_windowed(tmp_path):
    model = trained_a_little(tiny_model(reference_attention="windowed"))
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    raw = json.loads(config_path.read_text())
    # What save_pretrained wrote before reference_attention and reference_grid existed.
    config_path.write_text(json.dumps({k: v for k, v in raw.items() if k not in ("reference_attention",
                                                                                 "reference_grid")}))
    loaded = Restorer.from_pretrained(tmp_path).eval()
    assert loaded.config.reference_attention == "windowed"
    lq, priors = torch.rand(1, 3, 20, 28), priors_for(model, 1)
    with torch.no_grad():
        assert torch.equal(model(lq, priors), loaded(lq, priors))
    with pytest.raises(ValueError, match="reference_attention 'nearby' is not one of pooled, windowed"):
        tiny(reference_attention="nearby")


@pytest.mark.skipif(not (checkpoint.SHIPPED / "model.safetensors").is_file(), reason="no shipped checkpoint")
def test_the_shipped_checkpoint_loads_and_restores():
    # It was written before reference_attention existed, with the reference path off.
    model = Restorer.from_pretrained(checkpoint.SHIPPED).eval()
    assert not model.config.use_reference and not hasattr(model, "reference_blocks")
    with torch.no_grad():
        out = model(torch.rand(1, 3, 21, 30), Priors(reference=torch.rand(1, 3, 32, 32)))
    assert out.shape == (1, 3, 21, 30) and torch.isfinite(out).all()
