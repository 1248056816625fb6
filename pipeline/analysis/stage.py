"""The analysis as a CPU stage of the extraction pipeline: image bytes in, the sample json's
``analysis`` dict out, one row or one batch of columns at a time.

Per-sample failures are caught and carried in an ``analysis_error`` column, because a raised
exception would fail the whole Ray block (``DataContext.max_errored_blocks`` is 0).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pipeline.analysis.analyze import analyze
from pipeline.image_files import ImageError, decode_rgb


def analyze_bytes(data: bytes, name: str) -> dict[str, Any]:
    """``Analysis.to_dict()`` of encoded image bytes; raises ImageError naming ``name``."""
    pixels = decode_rgb(data, name).pixels
    try:
        return analyze(pixels, jpeg_bytes=data).to_dict()
    except ValueError as e:
        raise ImageError(name, f"cannot analyse: {e}") from e


def analyze_row(row: dict[str, Any], image_column: str = "lq", key_column: str = "key") -> dict[str, Any]:
    """The row with ``analysis`` (a dict, or None) and ``analysis_error`` ('' when fine) added."""
    name = str(row.get(key_column, "?"))
    try:
        return {**row, "analysis": analyze_bytes(bytes(row[image_column]), name), "analysis_error": ""}
    except (ImageError, KeyError) as e:
        return {**row, "analysis": None, "analysis_error": str(e)}


def analyze_batch(batch: dict[str, np.ndarray], image_column: str = "lq", key_column: str = "key"
                  ) -> dict[str, np.ndarray]:
    """``map_batches`` form: adds ``analysis`` (JSON text, '' on failure) and ``analysis_error``."""
    n = len(batch[image_column])
    keys = batch.get(key_column, np.arange(n).astype(str))
    texts, errors = [], []
    for key, data in zip(keys, batch[image_column]):
        out = analyze_row({key_column: key, image_column: data}, image_column, key_column)
        texts.append(json.dumps(out["analysis"], ensure_ascii=False) if out["analysis"] is not None else "")
        errors.append(out["analysis_error"])
    return {**batch, "analysis": np.array(texts, dtype=object), "analysis_error": np.array(errors, dtype=object)}
