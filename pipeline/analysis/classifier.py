"""The small classifier over the classical measurements: numpy inference, safetensors weights.

An ensemble of one-hidden-layer perceptrons, trained from different seeds, with one sigmoid
output per analysed type (an image can carry several), averaged over the members: with a few
dozen training photos a single member's decision varies by one or two points of accuracy with
its seed, and the average varies less. Parameters (σ, quality, …) are the estimators' own,
uncalibrated. Trained by ``pipeline.analysis.train``; the weights file (148 KB) ships inside the
package.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from pipeline.analysis.features import FEATURE_NAMES

# The types the analysis decides between, in the classifier's output order (a subset of the
# vocabulary: raindrop, shadow and inpainting have no synthetic model to learn from yet).
ANALYSED_TYPES: tuple[str, ...] = ("clean", "noise", "blur", "jpeg", "low-light", "haze", "rain", "snow")
WEIGHTS = Path(__file__).with_name("weights.safetensors")


def transform(x: np.ndarray) -> np.ndarray:
    """Signed log: measurements span orders of magnitude (σ 0.5..50, densities 0..100)."""
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass(frozen=True)
class Classifier:
    """Weights of the K ensemble members (leading axis) and the standardisation of the inputs."""

    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    w1: np.ndarray  # (K, F, H)
    b1: np.ndarray  # (K, H)
    w2: np.ndarray  # (K, H, T)
    b2: np.ndarray  # (K, T)

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Per-type probabilities (N, len(ANALYSED_TYPES)) for raw measurement rows (N, F)."""
        z = (transform(raw) - self.mean) / self.std
        hidden = np.maximum(np.einsum("nf,kfh->knh", z, self.w1) + self.b1[:, None], 0.0)
        logits = np.einsum("knh,kht->knt", hidden, self.w2) + self.b2[:, None]
        return (1.0 / (1.0 + np.exp(-logits))).mean(axis=0)

    @functools.cached_property
    def digest(self) -> str:
        """The first 16 hex digits of the sha256 of the weights, in field order: names the
        classifier in every analysis it makes, so samples scored by different weights can be told
        apart. Hashed once per classifier, not per image."""
        h = hashlib.sha256()
        for name in self.__dataclass_fields__:
            h.update(np.ascontiguousarray(getattr(self, name), np.float32).tobytes())
        return h.hexdigest()[:16]

    def save(self, path: Path = WEIGHTS, info: dict | None = None) -> None:
        """Write the weights as safetensors; names and ``info`` go into its string metadata."""
        meta = {"features": json.dumps(FEATURE_NAMES), "types": json.dumps(ANALYSED_TYPES),
                "info": json.dumps(info or {})}
        arrays = {k: np.ascontiguousarray(getattr(self, k), np.float32) for k in self.__dataclass_fields__}
        save_file(arrays, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> Classifier:
        """Read weights, refusing a file trained on other features or types than this code's."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
        except SafetensorError as e:
            raise ValueError(f"{path}: not a safetensors weights file ({e})") from e
        for key, expected in (("features", FEATURE_NAMES), ("types", ANALYSED_TYPES)):
            if tuple(json.loads(meta.get(key, "[]"))) != expected:
                raise ValueError(f"{path}: weights were trained for other {key} than this code measures; "
                                 "retrain with python -m pipeline.analysis.train")
        arrays = load_file(str(path))
        if arrays["w1"].ndim != 3:
            raise ValueError(f"{path}: weights of a single perceptron, not an ensemble; retrain with "
                             "python -m pipeline.analysis.train")
        return cls(**{k: arrays[k].astype(np.float64) for k in cls.__dataclass_fields__})


@functools.lru_cache(maxsize=1)
def default_classifier() -> Classifier:
    """The shipped classifier, loaded once per process."""
    return Classifier.load(WEIGHTS)
