"""Exporting a trained restorer in its shipped form: fp16 on disk, fp32 in memory, the same outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from pipeline.image_files import sha256_file
from pipeline.vocabulary import DEGRADATION_TYPES
from restore import checkpoint, export
from restore.evaluate import load_restorer
from restore.model import Priors, Restorer, preset

MINILM_WIDTH = 384  # the offline prior preset's token width (all-MiniLM-L6-v2)


def trained_like(seed: int) -> Restorer:
    """A compact restorer whose every weight matters: fresh initialisation zeroes some output
    layers, which would make any two models agree."""
    torch.manual_seed(seed)
    model = Restorer(preset("compact", token_width=MINILM_WIDTH))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture
def run(tmp_path):
    """A run folder with one real training checkpoint (as restore.train writes it) of prior preset offline."""
    model = trained_like(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    checkpoint.save(tmp_path / "run" / "checkpoints", 40, model, model, optimizer,
                    {"prior_preset": "offline", "samples_seen": 320}, {}, keep=2)
    return tmp_path / "run"


def some_priors(batch: int = 1) -> Priors:
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(batch, 12, dtype=torch.bool)
    mask[:, :7] = True
    return Priors(degradation_tokens=torch.randn(batch, 12, MINILM_WIDTH, generator=g), degradation_mask=mask,
                  degradation_vector=torch.rand(batch, len(DEGRADATION_TYPES), generator=g))


def test_export_writes_fp16_weights_that_restore_like_the_source(run, tmp_path, one_thread):
    out = tmp_path / "shipped"
    record = export.export(run, out)

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}
    source = checkpoint.find(run)
    size = (out / "model.safetensors").stat().st_size
    assert size <= export.MAX_BYTES and size < 0.55 * (source / "model.safetensors").stat().st_size
    assert record == json.loads((out / export.EXPORT_FILE).read_text())
    assert record["step"] == 40 and record["prior_preset"] == "offline" and record["samples_seen"] == 320
    assert record["weights_sha256"] == sha256_file(out / "model.safetensors")
    assert record["source_sha256"] == sha256_file(source / "model.safetensors")
    assert record["source"].endswith("step_00000040")

    # What inference reads: the weights, cast back to fp32, and the prior preset.
    model, prior_preset = load_restorer(out, torch.device("cpu"))
    assert prior_preset == "offline" and checkpoint.read_state(out)["step"] == 40
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        checkpoint.load(out, model, model, torch.optim.AdamW(model.parameters()))

    lq, priors = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(2)), some_priors()
    with torch.no_grad():
        expected, got = trained_like(0)(lq, priors), model(lq, priors)
        other = trained_like(1)(lq, priors)
    assert (expected - lq).abs().mean() > 0.05  # the weights shape the output
    assert (got - expected).abs().max() < 1e-2  # fp16 rounding of the weights (~4e-3), nothing more
    assert (other - expected).abs().max() > 0.1


def test_export_replaces_a_previous_export_and_runs_from_the_command_line(run, tmp_path, capsys):
    out = tmp_path / "shipped"
    out.mkdir()
    (out / "stale.txt").write_text("from an older export")
    assert export.main([str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export.json", "model.safetensors",
                                                     "training_state.json"]
    assert not list(tmp_path.glob(".shipped*"))  # no temporary folder left behind
    printed = capsys.readouterr().out
    assert "step 40" in printed and "prior preset offline" in printed and "MB fp16" in printed


def test_a_bare_restorer_needs_its_prior_preset_stated(tmp_path, capsys):
    bare = trained_like(0).save_pretrained(tmp_path / "bare")
    assert export.main([str(bare), "--out", str(tmp_path / "out")]) == 1
    assert "--prior-preset" in capsys.readouterr().err and not (tmp_path / "out").exists()
    record = export.export(bare, tmp_path / "out", prior_preset="analysis-only")
    assert record["step"] is None and load_restorer(tmp_path / "out", torch.device("cpu"))[1] == "analysis-only"


def test_export_refuses_a_prior_preset_that_contradicts_the_training_state(run, tmp_path):
    with pytest.raises(ValueError, match="trained with prior preset 'offline', not 'tiny'"):
        export.export(run, tmp_path / "out", prior_preset="tiny")


def test_export_refuses_weights_too_large_to_ship_and_keeps_the_old_export(run, tmp_path):
    out = tmp_path / "shipped"
    export.export(run, out)
    before = sha256_file(out / "model.safetensors")
    with pytest.raises(ValueError, match="over the 0.001 MB a shipped checkpoint may take"):
        export.export(run, out, max_bytes=1000)
    assert sha256_file(out / "model.safetensors") == before and not list(tmp_path.glob(".shipped*"))


def test_fp16_save_refuses_a_weight_out_of_range(tmp_path):
    model = trained_like(0)
    with torch.no_grad():
        next(model.parameters())[0].fill_(1e6)
    with pytest.raises(ValueError, match="does not fit in torch.float16"):
        model.save_pretrained(tmp_path / "m", dtype=torch.float16)


@pytest.mark.skipif(not (checkpoint.SHIPPED / "model.safetensors").is_file(),
                    reason=f"no shipped checkpoint at {checkpoint.SHIPPED} (python -m restore.export runs/lmdir_cpu)")
def test_the_shipped_checkpoint_is_fp16_small_and_says_its_prior_preset():
    record = json.loads((checkpoint.SHIPPED / export.EXPORT_FILE).read_text())
    assert record["weights_sha256"] == sha256_file(checkpoint.SHIPPED / "model.safetensors")
    assert record["weights_bytes"] <= export.MAX_BYTES and record["weights_dtype"] == "float16"
    model, prior_preset = load_restorer(checkpoint.SHIPPED, torch.device("cpu"))
    assert prior_preset == record["prior_preset"] == "offline"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
