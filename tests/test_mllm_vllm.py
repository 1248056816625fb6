"""The MLLM stage on vLLM (Ray Data LLM): the requests it sends, how answers become columns, the
processor configuration Ray accepts, and the refusals before any work. The engine itself needs
vLLM and a GPU, neither of which CI has: it is not run here."""

from __future__ import annotations

import base64
import json

import pytest

from pipeline import extract, extract_config, stages
from pipeline.extract_config import StageResources
from pipeline.image_files import encode_png
from pipeline.models import mllm_vllm, presets
from tests.test_extract import rain_manifest  # noqa: F401 — the fixture

SETTINGS = presets.preset("tiny").mllm


def _row(key: str = "rain12_test_rain-001", error: str = "") -> dict:
    import numpy as np

    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    return {"key": key, "lq_png": encode_png(pixels), stages.LQ_PIXELS: pixels, "hint": "heavy rain streaks",
            stages.ERROR: error, stages.FAILED_STAGE: "decode" if error else "", "shard": 3}


def test_a_request_shows_the_image_once_by_key_and_asks_both_questions_with_the_hint():
    row = _row()
    req = mllm_vllm.request(row, SETTINGS, use_hint=True)
    (message,) = req["messages"]
    image, text = message["content"]
    assert image["uuid"] == row["key"]
    assert base64.b64decode(image["image_url"]["url"].split(",", 1)[1]) == row["lq_png"]
    assert text["text"].startswith(SETTINGS.hint_template.format(hint="heavy rain streaks"))
    assert SETTINGS.describe_prompt in text["text"] and SETTINGS.caption_prompt in text["text"]
    params = req["sampling_params"]
    assert params["temperature"] == 0.0 and params["max_tokens"] == SETTINGS.max_new_tokens
    assert params["structured_outputs"]["json"]["required"] == ["degradation", "scene"]
    # The row's own columns ride along unchanged, and are listed for after the engine.
    assert all(req[k] is row[k] for k in row) and sorted(json.loads(req[mllm_vllm.ROW_COLUMNS])) == sorted(row)
    assert "heavy rain" not in mllm_vllm.request(row, SETTINGS, use_hint=False)["messages"][0]["content"][-1]["text"]


def test_a_row_that_already_failed_sends_no_image_and_keeps_its_error():
    row = _row(error="decode: not a PNG")
    req = mllm_vllm.request(row, SETTINGS, use_hint=True)
    assert [part["type"] for part in req["messages"][0]["content"]] == ["text"]
    assert req["sampling_params"]["max_tokens"] == 1
    out = mllm_vllm.answers({**req, "generated_text": "{", "__inference_error__": ""}, "{}")
    assert out[stages.ERROR] == "decode: not a PNG" and out[stages.FAILED_STAGE] == "decode"
    assert out["degradation_text"] == out["caption"] == ""


def _engine_output(row: dict, text: str, error: str = "") -> dict:
    """What the processor hands back: the request plus the engine's columns."""
    req = mllm_vllm.request(row, SETTINGS, use_hint=True)
    return {**req, "generated_text": text, "__inference_error__": error, "time_taken_llm": 0.5 if not error else -1,
            "num_generated_tokens": 12, "prompt": "…", "request_id": 7, "multimodal_data": {"image": []}}


def test_answers_become_the_describer_and_captioner_columns_and_the_engine_columns_go():
    row = _row()
    out = mllm_vllm.answers(_engine_output(row, '{"degradation": " heavy rain ", "scene": "a street"}'), '{"p": 1}')
    assert (out["degradation_text"], out["caption"]) == ("heavy rain", "a street")
    assert out["prov_describer"] == out["prov_captioner"] == '{"p": 1}' and out["t_describer"] == 0.5
    assert set(out) == set(row) | {"degradation_text", "caption", "prov_describer", "prov_captioner", "t_describer"}
    assert not out[stages.ERROR]


@pytest.mark.parametrize("text, error, reason", [
    ("it is rainy", "", "not JSON"),
    ('{"degradation": "rain"}', "", "lacks the string fields"),
    ("", "ValueError: prompt too long", "prompt too long"),
])
def test_a_bad_answer_or_an_engine_error_fails_that_row_as_the_describer(text, error, reason):
    out = mllm_vllm.answers(_engine_output(_row(), text, error), "{}")
    assert out[stages.FAILED_STAGE] == "describer" and out[stages.ERROR].startswith("describer: ")
    assert reason in out[stages.ERROR] and out["t_describer"] == (0.0 if error else 0.5)


def test_ray_data_llm_accepts_the_processor_configuration():
    config = mllm_vllm.processor_config(SETTINGS, StageResources(batch_size=8, concurrency=2, max_concurrency=4))
    assert config.batch_size == 8 and tuple(config.concurrency) == (2, 4)
    assert config.engine_kwargs["enable_prefix_caching"] is True
    assert config.engine_kwargs["mm_processor_kwargs"] == {"min_pixels": SETTINGS.min_pixels,
                                                           "max_pixels": SETTINGS.max_pixels}
    pinned = presets.preset("default").mllm
    assert mllm_vllm.engine_kwargs(pinned)["revision"] == pinned.revision


def test_the_engine_is_part_of_the_output_hash_and_unknown_engines_or_beams_are_refused():
    base = extract_config.load(preset="tiny")
    on_vllm = extract_config.load(None, {"models.mllm.engine": "vllm"}, preset="tiny")
    assert base.output_hash("m") != on_vllm.output_hash("m")
    with pytest.raises(ValueError, match="models.mllm.engine='onnx'; choose one of transformers, vllm"):
        extract_config.load(None, {"models.mllm.engine": "onnx"}, preset="tiny")
    with pytest.raises(ValueError, match="beam search is not available"):
        extract_config.load(None, {"models.mllm.engine": "vllm", "models.mllm.num_beams": "2"}, preset="tiny")


@pytest.mark.skipif(mllm_vllm.installed(), reason="vllm is installed here")
def test_without_vllm_the_engine_is_refused_with_the_install_command_before_any_work(tmp_path, rain_manifest):  # noqa: F811
    config = extract_config.load(None, {"models.mllm.engine": "vllm"}, preset="tiny")
    with pytest.raises(extract.ExtractError, match=r"pip install 'ray\[llm\]'"):
        extract.extract(rain_manifest, str(tmp_path / "out"), config)
    assert not (tmp_path / "out").exists()
