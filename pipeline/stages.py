"""The Ray Data stages of prior extraction: each takes a batch of rows and adds columns.

Rows carry images as PNG bytes (decoded once, validated, re-encoded losslessly) and an ``error``
column: a stage skips rows that already failed and turns its own failures into ``error`` text
naming the stage, so one bad sample never fails a block — Ray Data's ``max_errored_blocks`` is 0,
and a failed block would take every sample in it down. When a model raises on a batch, the batch
is retried one sample at a time to find the sample that caused it.

Each model stage is a callable class: Ray builds it once per actor, so the model loads once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from pipeline import degrade, vocabulary
from pipeline.image_files import ImageError, decode_rgb, encode_png, read_bytes, sha256_hex
from pipeline.sample_format import encode_embeddings

Batch = dict[str, Any]
T = TypeVar("T")

# Columns every stage adds to (all rows, failed or not, get a value).
ERROR, FAILED_STAGE = "error", "failed_stage"


def _live(batch: Batch) -> list[int]:
    return [i for i, e in enumerate(batch[ERROR]) if not e]


def _fail(batch: Batch, i: int, stage: str, reason: str) -> None:
    batch[ERROR][i] = f"{stage}: {reason}"
    batch[FAILED_STAGE][i] = stage


def _guarded(batch: Batch, stage: str, call: Callable[[list[int]], Sequence[T]]) -> dict[int, T]:
    """Run ``call`` on the batch's live rows; if it raises, once per row, failing only those
    rows that raise on their own. Returns results by row index."""
    live = _live(batch)
    if not live:
        return {}
    try:
        return dict(zip(live, call(live)))
    except Exception as e:  # noqa: BLE001 — any model error: isolate it below
        if len(live) == 1:
            _fail(batch, live[0], stage, f"{type(e).__name__}: {e}")
            return {}
    results: dict[int, T] = {}
    for i in live:
        try:
            results[i] = call([i])[0]
        except Exception as e:  # noqa: BLE001 — recorded per sample, never fatal
            _fail(batch, i, stage, f"{type(e).__name__}: {e}")
    return results


def _as_lists(batch: Batch) -> Batch:
    return {k: list(v) for k, v in batch.items()}


def _timed(batch: Batch, stage: str, start: float) -> Batch:
    n = max(len(batch["key"]), 1)
    batch[f"t_{stage}"] = [(time.perf_counter() - start) / n] * len(batch["key"])
    return batch


def _model_step(batch: Batch, stage: str, column: str, empty: Any, provenance: str,
                call: Callable[[Batch, list[int]], Sequence[Any]],
                convert: Callable[[Any], Any] = lambda result: result) -> Batch:
    """The body every model stage shares: fill ``column`` (``empty`` where a row failed) from
    ``call`` on the live rows, stamp the stage's provenance and its time per row."""
    start = time.perf_counter()
    batch = _as_lists(batch)
    n = len(batch["key"])
    batch[column], batch[f"prov_{stage}"] = [empty] * n, [provenance] * n
    for i, result in _guarded(batch, stage, lambda idx: call(batch, idx)).items():
        batch[column][i] = convert(result)
    return _timed(batch, stage, start)


def _pixels(batch: Batch, column: str, i: int) -> np.ndarray:
    return decode_rgb(batch[column][i], f"{batch['key'][i]}.{column}").pixels


def decode_batch(batch: Batch, max_pixels: int) -> Batch:
    """Read LQ (and GT) files, check them against the manifest, re-encode as 8-bit RGB PNG.

    Adds ``lq_png``, ``gt_png`` (b"" without GT), ``jpeg`` (the LQ file's bytes when it is a
    JPEG, for the analysis's quantisation-table reading), ``error`` and ``failed_stage``.
    """
    start = time.perf_counter()
    batch = _as_lists(batch)
    n = len(batch["key"])
    batch.update({ERROR: [""] * n, FAILED_STAGE: [""] * n, "lq_png": [b""] * n, "gt_png": [b""] * n, "jpeg": [b""] * n})
    for i in range(n):
        try:
            images = {}
            for side in ("lq", "gt"):
                uri = batch[f"{side}_uri"][i]
                if not uri:
                    continue
                try:
                    data = read_bytes(uri)
                except OSError as e:
                    raise ImageError(uri, f"cannot read file: {e}") from e
                expected = batch[f"{side}_sha256"][i]
                if expected and sha256_hex(data) != expected:
                    raise ImageError(uri, "sha256 differs from the manifest: the file changed after the manifest was built")
                loaded = decode_rgb(data, uri, max_pixels=max_pixels)
                images[side] = loaded.pixels
                if side == "lq" and loaded.source_format == "JPEG":
                    batch["jpeg"][i] = data
            lq = images["lq"]
            if (lq.shape[1], lq.shape[0]) != (batch["width"][i], batch["height"][i]):
                raise ImageError(batch["lq_uri"][i], f"is {lq.shape[1]}x{lq.shape[0]}, the manifest says "
                                                     f"{batch['width'][i]}x{batch['height'][i]}")
            if "gt" in images and images["gt"].shape != lq.shape:
                raise ImageError(batch["gt_uri"][i], f"GT shape {images['gt'].shape} differs from LQ shape {lq.shape}")
            batch["lq_png"][i] = encode_png(lq)
            batch["gt_png"][i] = encode_png(images["gt"]) if "gt" in images else b""
        except ImageError as e:
            _fail(batch, i, "decode", str(e))
    return _timed(batch, "decode", start)


class AnalysisStage:
    """The weight-free analysis (CPU): per-type scores and parameters, and the hint sentence."""

    def __init__(self) -> None:
        from pipeline.analysis.analyze import analyze

        self._analyze = analyze

    def __call__(self, batch: Batch) -> Batch:
        start = time.perf_counter()
        batch = _as_lists(batch)
        n = len(batch["key"])
        batch["analysis"], batch["hint"] = [""] * n, [""] * n
        results = _guarded(batch, "analysis", lambda idx: [
            self._analyze(_pixels(batch, "lq_png", i), batch["jpeg"][i] or None) for i in idx])
        for i, result in results.items():
            batch["analysis"][i] = json.dumps(result.to_dict(), sort_keys=True)
            batch["hint"][i] = result.text
        return _timed(batch, "analysis", start)


class DescriberStage:
    """The multimodal LLM asked what is wrong with the image (optionally shown the analysis's hint)."""

    def __init__(self, settings: Any, use_hint: bool) -> None:
        from pipeline.models.mllm import load_mllm

        self.model = load_mllm(settings)
        self.use_hint = use_hint
        self.provenance = json.dumps(self.model.provenance(), sort_keys=True)

    def __call__(self, batch: Batch) -> Batch:
        def describe(b: Batch, idx: list[int]) -> list[str]:
            hints = [b["hint"][i] for i in idx] if self.use_hint and "hint" in b else None
            return self.model.describe([_pixels(b, "lq_png", i) for i in idx], hints)

        return _model_step(batch, "describer", "degradation_text", "", self.provenance, describe)


class CaptionerStage:
    """The multimodal LLM asked to describe the scene."""

    def __init__(self, settings: Any) -> None:
        from pipeline.models.mllm import load_mllm

        self.model = load_mllm(settings)
        self.provenance = json.dumps(self.model.provenance(), sort_keys=True)

    def __call__(self, batch: Batch) -> Batch:
        return _model_step(batch, "captioner", "caption", "", self.provenance,
                           lambda b, idx: self.model.caption([_pixels(b, "lq_png", i) for i in idx]))


def reference_seed(key: str) -> int:
    """The diffusion seed of a sample: from its key alone, so it is the same in any batch or run."""
    return degrade.seed_for("reference:" + key)


class ReferenceStage:
    """Text-to-image diffusion renders a clean reference of the captioned scene."""

    def __init__(self, settings: Any) -> None:
        from pipeline.models.reference import load_reference

        self.model = load_reference(settings)
        self.provenance = json.dumps(self.model.provenance(), sort_keys=True)

    def __call__(self, batch: Batch) -> Batch:
        return _model_step(batch, "reference", "ref_png", b"", self.provenance,
                           lambda b, idx: self.model.render([b["caption"][i] for i in idx],
                                                            [reference_seed(b["key"][i]) for i in idx]),
                           convert=encode_png)


def analysis_text(batch: Batch) -> Batch:
    """The describer of presets without an MLLM: the degradation text is the analysis's sentence,
    and there is no caption."""
    start = time.perf_counter()
    batch = _as_lists(batch)
    n = len(batch["key"])
    batch["degradation_text"] = [h if not e else "" for h, e in zip(batch["hint"], batch[ERROR])]
    batch["caption"] = [""] * n
    return _timed(batch, "describer", start)


class EmbedStage:
    """The ``npz`` member: CLIP's image embedding (when the preset has CLIP) and the caption's and
    degradation text's tokens (the preset's sentence encoder, else CLIP's text tower)."""

    def __init__(self, models: Any) -> None:
        from pipeline.models.embedder import Embedder

        self.model = Embedder(models)
        self.provenance = json.dumps(self.model.provenance(), sort_keys=True)

    def _embed(self, batch: Batch, idx: list[int]) -> list[bytes]:
        found = self.model.embed([_pixels(batch, "lq_png", i) for i in idx], [batch["caption"][i] for i in idx],
                                 [batch["degradation_text"][i] for i in idx])
        return [encode_embeddings(e, batch["key"][i]) for e, i in zip(found, idx)]

    def __call__(self, batch: Batch) -> Batch:
        return _model_step(batch, "clip", "npz", b"", self.provenance, self._embed)


def merge_types(text: str, analysis_json: str) -> list[str]:
    """Canonical types of a sample: the analysis's confident findings (strongest first), then
    whatever else the describer's text names. ``clean`` only when nothing else is found."""
    found: list[str] = []
    if analysis_json:
        for d in json.loads(analysis_json).get("degradations", []):
            if d["type"] != "clean" and d.get("score", 0.0) >= 0.5:
                found.append(d["type"])
    found += [t for t in vocabulary.text_to_types(text) if t not in found]
    real = [t for t in found if t != "clean"]
    return real or (["clean"] if "clean" in found else [])
