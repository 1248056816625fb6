"""The MLLM stage on vLLM through Ray Data LLM, for ``models.mllm.engine: vllm``.

The transformers stage (``stages.MLLMStage``) asks its two questions — what is wrong with the
image, what does it show — as two generations from one look at the image. A Ray Data LLM processor
sends one request per row to its vLLM engines, so here one request asks both and the answer is
held to a JSON object with both fields (vLLM's structured outputs): one copy of the weights, one
pass of the vision tower and one decode per image, and the row stays one row (two requests per row
would need a shuffle to join the answers again). The prompt is therefore not the transformers
stage's, and a sample's provenance records the one used and the engine.

What is tested without vLLM (CI has neither vLLM nor a GPU): the requests this module builds, how
answers, malformed answers and engine errors become columns, and that the processor configuration
is one Ray Data LLM accepts. The engine itself has not been run by this project's tests.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import json
from typing import Any

from pipeline import stages
from pipeline.extract_config import StageResources
from pipeline.models.presets import VLLM, MLLMSettings

# The answer's shape, enforced by the engine while it decodes.
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"degradation": {"type": "string"}, "scene": {"type": "string"}},
    "required": ["degradation", "scene"],
    "additionalProperties": False,
}
BOTH_QUESTIONS = ('Answer two questions about this image. "degradation": {describe} "scene": {caption} '
                  'Reply with a JSON object with exactly these two fields.')
# The row's own columns, listed by the request: everything else the processor and the engine add
# (prompt, tokens, timings, versions of them that differ across Ray releases) is dropped after.
ROW_COLUMNS = "__row_columns"


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def question(settings: MLLMSettings, hint: str | None) -> str:
    """Both questions in one prompt, with the analysis's reading of the image first when given."""
    text = BOTH_QUESTIONS.format(describe=settings.describe_prompt, caption=settings.caption_prompt)
    return f"{settings.hint_template.format(hint=hint)} {text}" if hint else text


def sampling_params(settings: MLLMSettings) -> dict[str, Any]:
    """Greedy unless the settings sample; seeded per request, so a row's text does not depend on
    the batch it ran in."""
    params: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "seed": settings.seed,
                              "structured_outputs": {"json": ANSWER_SCHEMA}}
    if settings.do_sample:
        params.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        params["temperature"] = 0.0
    return params


def request(row: dict[str, Any], settings: MLLMSettings, use_hint: bool) -> dict[str, Any]:
    """The processor's preprocess: the row with one chat request added. The image goes as the PNG
    the decode stage wrote, named by the sample's key (vLLM's multimodal uuid, so the engine can
    cache its processing). A row that already failed sends a text-only request whose answer is
    ignored: the row must go through the processor to stay in the dataset."""
    hint = row.get("hint") if use_hint else None
    content: list[dict[str, Any]] = [{"type": "text", "text": question(settings, hint or None)}]
    if not row[stages.ERROR]:
        url = "data:image/png;base64," + base64.b64encode(row["lq_png"]).decode("ascii")
        content.insert(0, {"type": "image_url", "image_url": {"url": url}, "uuid": row["key"]})
    params = sampling_params(settings) if not row[stages.ERROR] else {"max_tokens": 1, "temperature": 0.0}
    return {**row, ROW_COLUMNS: json.dumps(sorted(row)), "messages": [{"role": "user", "content": content}],
            "sampling_params": params}


def read_answer(text: str) -> tuple[str, str]:
    """(degradation text, caption) from the engine's answer; ValueError naming what is wrong."""
    try:
        answer = json.loads(text)
    except ValueError as e:
        raise ValueError(f"the answer is not JSON ({e}): {text[:120]!r}") from e
    if not isinstance(answer, dict) or not all(isinstance(answer.get(k), str) for k in ("degradation", "scene")):
        raise ValueError(f"the answer lacks the string fields 'degradation' and 'scene': {text[:120]!r}")
    return answer["degradation"].strip(), answer["scene"].strip()


def answers(row: dict[str, Any], provenance: str) -> dict[str, Any]:
    """The row after the processor: the two answers as the transformers stage writes them, or the
    engine's error, or a malformed answer, recorded as the describer's failure; only the row's own
    columns kept."""
    out = {k: row[k] for k in json.loads(row[ROW_COLUMNS])}
    out["degradation_text"], out["caption"] = "", ""
    out["prov_describer"] = out["prov_captioner"] = provenance
    seconds = row.get("time_taken_llm")
    out["t_describer"] = float(seconds) if seconds is not None and float(seconds) >= 0 else 0.0
    if out[stages.ERROR]:
        return out
    try:
        if row.get("__inference_error__"):
            raise ValueError(row["__inference_error__"])
        out["degradation_text"], out["caption"] = read_answer(row.get("generated_text") or "")
    except ValueError as e:
        out[stages.ERROR], out[stages.FAILED_STAGE] = f"describer: {e}", "describer"
    return out


def engine_kwargs(settings: MLLMSettings) -> dict[str, Any]:
    """vLLM engine arguments from the preset: the pinned commit, the dtype, the vision tower's
    pixel bounds; prefix caching on (every prompt starts with the same template)."""
    kwargs: dict[str, Any] = {"dtype": settings.dtype, "enable_prefix_caching": True}
    if settings.revision:
        kwargs["revision"] = settings.revision
    pixels = {k: v for k, v in (("min_pixels", settings.min_pixels), ("max_pixels", settings.max_pixels))
              if v is not None}
    if pixels:
        kwargs["mm_processor_kwargs"] = pixels
    return kwargs


def processor_config(settings: MLLMSettings, resources: StageResources) -> Any:
    """Ray Data LLM's configuration of the processor: ``stages.describer`` sizes its engine pool
    (one engine per actor, ``num_gpus`` ignored: an engine takes a whole GPU)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from pipeline.models import tiny

    pool = resources.actor_pool()
    concurrency = pool["size"] if "size" in pool else (pool["min_size"], pool["max_size"])
    return vLLMEngineProcessorConfig(
        model_source=tiny.resolve(settings.model), engine_kwargs=engine_kwargs(settings),
        batch_size=resources.batch_size, concurrency=concurrency, prepare_multimodal_stage=True,
        should_continue_on_error=True,
    )


def provenance(settings: MLLMSettings) -> dict[str, Any]:
    """What every sample's json records for the describer and captioner under this engine."""
    from pipeline.models.sources import describe_source

    return {
        **describe_source(settings.model, settings.revision, "config.json"),
        "engine": VLLM,
        "engine_version": importlib.metadata.version("vllm") if installed() else None,
        "dtype": settings.dtype,
        "prompts": {"both": question(settings, None), "hint": settings.hint_template},
        "generation": {**sampling_params(settings), "structured_outputs": "json: degradation, scene"},
        "pixels": {"min": settings.min_pixels, "max": settings.max_pixels},
    }


def add_stage(ds: Any, settings: MLLMSettings, resources: StageResources, use_hint: bool) -> Any:
    """``ds`` with the describer and captioner columns answered by vLLM engines."""
    from ray.data.llm import build_processor

    prov = json.dumps(provenance(settings), sort_keys=True)
    processor = build_processor(processor_config(settings, resources),
                                preprocess=lambda row: request(row, settings, use_hint))
    return processor(ds).map(lambda row: answers(row, prov))
