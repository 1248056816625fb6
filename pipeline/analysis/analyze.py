"""``analyze(pixels, jpeg_bytes)`` → the Analysis of one image: types, scores, parameters, sentence.

The classifier scores every analysed type; the types reported are the most likely one and every
other degradation scoring at least ``DETECT``, strongest first, or ``clean``. Parameters are the
classical estimates; a JPEG file's own quantisation table,
when the bytes are given, replaces the pixel estimate of its quality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline import vocabulary
from pipeline.analysis import estimators as est
from pipeline.analysis.classifier import ANALYSED_TYPES, Classifier, default_classifier
from pipeline.analysis.features import measure

DETECT = 0.5
# 2: rain's angle_deg follows degrade's convention (it was mirrored); `classifier` added.
ANALYSIS_VERSION = 2


@dataclass(frozen=True)
class Degradation:
    """One detected degradation: vocabulary type, classifier score in [0,1], estimated parameters."""

    type: str
    score: float
    params: dict[str, Any] = field(default_factory=dict)
    severity: float = 0.0


@dataclass(frozen=True)
class Analysis:
    """What is wrong with one image. ``degradations`` is most likely first; a clean image has one
    entry of type ``clean``."""

    degradations: tuple[Degradation, ...]
    scores: dict[str, float]
    text: str
    estimates: dict[str, float]
    measurements: dict[str, float]
    classifier: str  # Classifier.digest of the weights that scored it

    @property
    def types(self) -> list[str]:
        return [d.type for d in self.degradations]

    def vector(self) -> list[float]:
        """Scores over vocabulary.DEGRADATION_TYPES (0 for types the analysis does not score): the
        restorer's degradation vector, in the vocabulary's order."""
        return [round(self.scores.get(t, 0.0), 4) for t in vocabulary.DEGRADATION_TYPES]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the sample json's ``analysis`` field and the CLI's per-image line."""
        return {
            "degradations": [{"type": d.type, "score": round(d.score, 4), "params": d.params}
                             for d in self.degradations],
            "text": self.text,
            "scores": {t: round(s, 4) for t, s in self.scores.items()},
            "estimates": {k: round(v, 4) for k, v in self.estimates.items()},
            "vector": self.vector(),
            "measurements": {k: round(v, 4) for k, v in self.measurements.items()},
            "version": ANALYSIS_VERSION,
            "classifier": self.classifier,
        }


def _params(dtype: str, m: dict[str, float], sigma: float, quality: float, quality_source: str
            ) -> tuple[dict[str, Any], float, str]:
    """(parameters, severity in [0,1], detail for the sentence) of one type from the measurements."""
    if dtype == "noise":
        return {"sigma": round(sigma, 1)}, min(sigma / 50.0, 1.0), f"σ≈{sigma:.0f}"
    if dtype == "blur":
        width = m["edge_width"]
        return {"edge_width_px": round(width, 2)}, float(np.clip((width - 2.0) / 8.0, 0, 1)), f"edges ≈{width:.0f} px wide"
    if dtype == "jpeg":
        return ({"quality": int(quality), "source": quality_source}, float(np.clip((90 - quality) / 80, 0, 1)),
                f"quality≈{quality:.0f}")
    if dtype == "low-light":
        mean = m["exp_mean"]
        return ({"mean_luminance": round(mean, 3), "median_luminance": round(m["exp_p50"], 3)},
                float(np.clip((0.35 - mean) / 0.3, 0, 1)), f"mean luminance {mean:.2f}")
    if dtype == "haze":
        t = m["haze_transmission"]
        return ({"transmission": round(t, 3), "airlight": round(m["haze_airlight"], 3)},
                float(np.clip((0.95 - t) / 0.6, 0, 1)), f"transmission≈{t:.2f}")
    if dtype == "rain":
        # The streaked patches' direction; the frame-wide one, which texture can sway, only when
        # no patch holds bright lines.
        angle = m["streak_patch_angle"] if m["streak_patch_share"] > 0 else m["streak_angle"]
        return {"angle_deg": round(angle, 1), "coverage": round(m["streak_bright_share"], 3)}, -1.0, ""
    if dtype == "snow":
        return {"flakes_per_10k_px": round(m["blob_density"], 1)}, -1.0, ""
    return {}, 0.0, ""


def _quality(m: dict[str, float], jpeg_bytes: bytes | None) -> tuple[float, str]:
    """(JPEG quality, its source): the file's quantisation table when it has one, else the pixels'."""
    from_table = est.quality_from_jpeg_bytes(jpeg_bytes) if jpeg_bytes is not None else None
    return (m["jpeg_quality"], "pixels") if from_table is None else (from_table, "quantisation table")


def _estimates(m: dict[str, float], quality: float) -> dict[str, float]:
    return {"noise_sigma": m["noise_sigma"], "jpeg_quality": float(quality), "edge_width_px": m["edge_width"],
            "mean_luminance": m["exp_mean"], "transmission": m["haze_transmission"]}


def estimates(pixels: np.ndarray, jpeg_bytes: bytes | None = None) -> dict[str, float]:
    """The physical estimates alone (σ, JPEG quality, edge width, luminance, transmission): the
    classifier plays no part in them, so none is loaded."""
    m = measure(pixels).values
    return _estimates(m, _quality(m, jpeg_bytes)[0])


def describe_types(analysis: dict[str, Any], types: list[str]) -> str:
    """The analysis's sentence for ``types`` whether or not it detected them: each type's severity
    and detail from the measurements (``to_dict`` form). A user who says "remove the rain" names
    what is wrong; how much is measured, so guided restoration reads the same measured sentence
    automatic restoration does."""
    m = analysis["measurements"]
    quality = analysis["estimates"]["jpeg_quality"]
    items = []
    for t in types:
        _, severity, detail = _params(t, m, m["noise_sigma"], quality, "")
        items.append((t, analysis["scores"].get(t, 0.0) if severity < 0 else severity, detail))
    return vocabulary.describe(items)


def analyze(pixels: np.ndarray, jpeg_bytes: bytes | None = None, model: Classifier | None = None) -> Analysis:
    """Analyse 8-bit RGB pixels (H, W, 3); ``jpeg_bytes`` are the file's bytes when it may be a JPEG."""
    model = model or default_classifier()
    measured = measure(pixels)
    raw = measured.vector()[None].astype(np.float64)
    probs = model.scores(raw)[0]
    scores = {t: float(p) for t, p in zip(ANALYSED_TYPES, probs)}
    m = measured.values
    sigma = m["noise_sigma"]
    quality, source = _quality(m, jpeg_bytes)

    ranked = sorted(ANALYSED_TYPES, key=lambda t: -scores[t])
    if ranked[0] == "clean":
        chosen = ["clean"]
    else:
        chosen = [ranked[0]] + [t for t in ranked[1:] if t != "clean" and scores[t] >= DETECT]
    found = []
    for t in chosen:
        params, severity, detail = _params(t, m, sigma, quality, source)
        # Types without a physical scale (rain, snow) take the classifier's confidence as severity.
        found.append((Degradation(t, scores[t], params, scores[t] if severity < 0 else severity), detail))
    text = vocabulary.describe([(d.type, d.severity, detail) for d, detail in found])
    # Every physical estimate, detected or not: the restorer and the MLLM hint use them as is.
    return Analysis(tuple(d for d, _ in found), scores, text, _estimates(m, quality), dict(m), model.digest)
