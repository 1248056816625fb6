"""The Ray Data stages of prior extraction: each takes a batch of rows and adds columns.

Rows carry images as PNG bytes (decoded once, validated, re-encoded losslessly) for the record,
the LQ image's pixels from that one decoding for every stage that looks at it, and an ``error``
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
# The LQ image as the decode stage decoded it, uint8 (H, W, 3). The analysis, the MLLM and CLIP
# read these pixels instead of each decoding the PNG again (four decodings a row before, 22-30 ms
# each for a 500x500 PNG on a busy 2-core machine). They take about 1.7x the PNG's bytes
# (Kodak24, the demo set) in the object store while the row is in flight, a variable-shaped tensor
# column that Ray Data's backpressure bounds like any other. Never written: the record holds the
# PNG. A row that failed at decode holds an empty (0, 0, 3) array.
LQ_PIXELS = "lq_pixels"
NO_PIXELS = np.zeros((0, 0, 3), np.uint8)


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


def _fill(batch: Batch, stage: str, column: str, empty: Any, provenance: str,
          call: Callable[[list[int]], Sequence[Any]], convert: Callable[[Any], Any] = lambda result: result) -> None:
    """Fill ``column`` (``empty`` where a row failed) from ``call`` on the live rows, and stamp
    the provenance of ``stage`` (the name a sample's provenance and a failed row give it)."""
    n = len(batch["key"])
    batch[column], batch[f"prov_{stage}"] = [empty] * n, [provenance] * n
    for i, result in _guarded(batch, stage, call).items():
        batch[column][i] = convert(result)


def _model_step(batch: Batch, stage: str, column: str, empty: Any, provenance: str,
                call: Callable[[Batch, list[int]], Sequence[Any]],
                convert: Callable[[Any], Any] = lambda result: result) -> Batch:
    """The body of a model stage with one output column: ``_fill`` it and time the stage per row."""
    start = time.perf_counter()
    batch = _as_lists(batch)
    _fill(batch, stage, column, empty, provenance, lambda idx: call(batch, idx), convert)
    return _timed(batch, stage, start)


def decode_batch(batch: Batch, max_pixels: int) -> Batch:
    """Read LQ (and GT) files, check them against the manifest, re-encode as 8-bit RGB PNG.

    Adds ``lq_png``, ``gt_png`` (b"" without GT), ``jpeg`` (the LQ file's bytes when it is a
    JPEG, for the analysis's quantisation-table reading), the LQ pixels (``LQ_PIXELS``), ``error``
    and ``failed_stage``.
    """
    start = time.perf_counter()
    batch = _as_lists(batch)
    n = len(batch["key"])
    batch.update({ERROR: [""] * n, FAILED_STAGE: [""] * n, "lq_png": [b""] * n, "gt_png": [b""] * n, "jpeg": [b""] * n,
                  LQ_PIXELS: [NO_PIXELS] * n})
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
            batch[LQ_PIXELS][i] = lq
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
            self._analyze(batch[LQ_PIXELS][i], batch["jpeg"][i] or None) for i in idx])
        for i, result in results.items():
            batch["analysis"][i] = json.dumps(result.to_dict(), sort_keys=True)
            batch["hint"][i] = result.text
        return _timed(batch, "analysis", start)


class MLLMStage:
    """The multimodal LLM, loaded once per actor and asked two questions about each image: what is
    wrong with it (the describer, optionally shown the analysis's hint) and what it shows (the
    captioner). It looks at each image once for both (``MLLM.see``): one copy of the weights, one
    pass of the vision tower. The two keep their names in a sample's provenance and in a failed
    row's error; a failure in looking at the image is the describer's, which asks first."""

    def __init__(self, settings: Any, use_hint: bool) -> None:
        from pipeline.models.mllm import load_mllm

        self.model = load_mllm(settings)
        self.use_hint = use_hint
        self.provenance = json.dumps(self.model.provenance(), sort_keys=True)

    def __call__(self, batch: Batch) -> Batch:
        start = time.perf_counter()
        batch = _as_lists(batch)
        seen = _guarded(batch, "describer", lambda idx: self.model.see([batch[LQ_PIXELS][i] for i in idx]))

        def describe(idx: list[int]) -> list[str]:
            hints = [batch["hint"][i] for i in idx] if self.use_hint and "hint" in batch else None
            return self.model.describe([seen[i] for i in idx], hints)

        _fill(batch, "describer", "degradation_text", "", self.provenance, describe)
        _fill(batch, "captioner", "caption", "", self.provenance,
              lambda idx: self.model.caption([seen[i] for i in idx]))
        return _timed(batch, "describer", start)


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
        found = self.model.embed([batch[LQ_PIXELS][i] for i in idx], [batch["caption"][i] for i in idx],
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
