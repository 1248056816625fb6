"""Train the analysis classifier on synthetic degradations of the photos shipped with scikit-image.

    python -m pipeline.analysis.train [--out pipeline/analysis/weights.safetensors] [--workers 2]

The photos (``skimage.data``, available offline) are cut into crops at a few scales, each crop is
degraded by every synthetic kind of ``pipeline.degrade`` over its full default range (mild to
heavy, so the model learns where "clean" ends), and by pairs of kinds; the classical measurements
of each result train a small perceptron with numpy. None of the evaluation photos (Kodak24,
McMaster, LIVE1, the real sets in shared/data) is used. Runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline import degrade
from pipeline.analysis.classifier import ANALYSED_TYPES, WEIGHTS, Classifier, transform
from pipeline.analysis.features import measure

# Natural photographs from skimage.data. Left out: hubble_deep_field and moon (dark by nature, so
# "clean" would teach that darkness is fine), page/text/logo/colorwheel (not photographs).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "immunohistochemistry",
          "retina", "camera", "brick", "grass", "gravel", "coins", "clock", "cat")

# (spec, weight): single kinds over ranges wider than pipeline.degrade's defaults on the mild side
# (real rain is fainter and real low light brighter than the defaults), plus common pairs.
SPECS: tuple[tuple[str, int], ...] = (
    ("", 3), ("jpeg:quality=93..98", 1),
    ("noise:sigma=3..55", 2), ("camera-noise", 1),
    ("motion-blur:length=5..25", 1), ("defocus-blur:radius=1.5..6", 1),
    ("jpeg:quality=5..90", 2),
    ("low-light:gamma=1.2..2.5,scale=0.1..0.6,sigma=1..8", 2), ("haze", 2),
    ("rain:intensity=0.25..0.9,density=0.002..0.02,length=8..35", 2), ("snow", 2),
    ("motion-blur+noise:sigma=5..25", 1), ("defocus-blur+jpeg:quality=10..70", 1),
    ("noise:sigma=5..30+jpeg:quality=20..90", 1), ("rain+noise:sigma=5..20", 1),
    ("haze+noise:sigma=5..20", 1), ("snow+jpeg:quality=30..90", 1), ("rain+jpeg:quality=30..90", 1),
    ("low-light+jpeg:quality=30..90", 1),
)
# Photos are often stored as fine JPEGs; above this quality the codec is not a degradation.
CLEAN_JPEG_QUALITY = 93


def label_types(applied: list[dict]) -> set[str]:
    """Vocabulary types of degrade's records, a JPEG finer than CLEAN_JPEG_QUALITY not counted."""
    types = {a["type"] for a in applied
             if not (a["type"] == "jpeg" and a["params"].get("quality", 0) >= CLEAN_JPEG_QUALITY)}
    return types or {"clean"}


@dataclass(frozen=True)
class Example:
    features: np.ndarray
    labels: np.ndarray
    photo: str


def load_photo(name: str) -> np.ndarray:
    """An skimage.data photo as 8-bit RGB."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs come with their disparity: take the left view
        img = img[0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mirrored or not, slightly re-exposed copy (gain 0.85..1.15, gamma 0.8..1.25): with few
    photos, this is what keeps "clean" from meaning "exposed like these photos"."""
    x = img[:, ::-1] if rng.random() < 0.5 else img
    gain, gamma = rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.25)
    out = np.clip(255.0 * gain * np.power(x / 255.0, gamma), 0, 255)
    return np.ascontiguousarray(np.rint(out).astype(np.uint8))


def crops(img: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` random jittered crops of 192..512 px at scales 0.5..1 (area-averaged), 8-bit RGB."""
    out = []
    for _ in range(n):
        scale = float(rng.uniform(0.5, 1.0))
        h, w = img.shape[:2]
        small = img if scale > 0.97 else cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
        side = int(rng.integers(192, 513))
        ch, cw = min(side, small.shape[0]), min(side, small.shape[1])
        top, left = int(rng.integers(0, small.shape[0] - ch + 1)), int(rng.integers(0, small.shape[1] - cw + 1))
        out.append(jitter(small[top:top + ch, left:left + cw], rng))
    return out


def _examples_for_photo(args: tuple[str, int, int]) -> list[Example]:
    name, n_crops, seed = args
    cv2.setNumThreads(1)  # one process per core already
    rng = np.random.default_rng(seed)
    out = []
    for i, crop in enumerate(crops(load_photo(name), rng, n_crops)):
        for j, (spec, weight) in enumerate(SPECS):
            for k in range(weight):
                s = degrade.seed_for(f"{name}/{i}/{j}/{k}/{seed}")
                img, applied = degrade.apply(crop, spec, s) if spec else (crop, [])
                types = label_types(applied)
                labels = np.array([t in types for t in ANALYSED_TYPES], np.float32)
                out.append(Example(measure(img).vector(), labels, name))
    return out


def build(photos: tuple[str, ...], n_crops: int, seed: int, workers: int) -> list[Example]:
    """Measured, labelled examples for every crop × spec of ``photos``."""
    jobs = [(p, n_crops, seed + i) for i, p in enumerate(photos)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [e for batch in pool.map(_examples_for_photo, jobs) for e in batch]


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int, steps: int, seed: int, lr: float = 1e-2,
            weight_decay: float = 1e-3) -> dict[str, np.ndarray]:
    """Full-batch Adam on the sigmoid cross-entropy of a one-hidden-layer ReLU perceptron."""
    rng = np.random.default_rng(seed)
    p = {"w1": rng.normal(0, np.sqrt(2 / x.shape[1]), (x.shape[1], hidden)), "b1": np.zeros(hidden),
         "w2": rng.normal(0, np.sqrt(1 / hidden), (hidden, y.shape[1])), "b2": np.zeros(y.shape[1])}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(1, steps + 1):
        pre = x @ p["w1"] + p["b1"]
        h = np.maximum(pre, 0.0)
        prob = 1.0 / (1.0 + np.exp(-(h @ p["w2"] + p["b2"])))
        d_out = (prob - y) / len(x)
        d_h = (d_out @ p["w2"].T) * (pre > 0)
        grads = {"w2": h.T @ d_out + weight_decay * p["w2"], "b2": d_out.sum(0),
                 "w1": x.T @ d_h + weight_decay * p["w1"], "b1": d_h.sum(0)}
        for k, g in grads.items():
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            p[k] -= lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v[k] / (1 - 0.999 ** t)) + 1e-8)
    return p


def fit(examples: list[Example], hidden: int = 32, steps: int = 3000, seed: int = 0) -> Classifier:
    """Classifier fitted to ``examples``."""
    raw = np.stack([e.features for e in examples]).astype(np.float64)
    labels = np.stack([e.labels for e in examples]).astype(np.float64)
    z = transform(raw)
    mean, std = z.mean(0), z.std(0) + 1e-6
    p = fit_mlp((z - mean) / std, labels, hidden, steps, seed)
    return Classifier(mean, std, p["w1"], p["b1"], p["w2"], p["b2"])


def top1(model: Classifier, examples: list[Example]) -> float:
    """Share of examples whose highest-scoring type is one of their true types."""
    raw = np.stack([e.features for e in examples]).astype(np.float64)
    pred = model.scores(raw).argmax(1)
    return float(np.mean([e.labels[k] > 0 for e, k in zip(examples, pred)]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(WEIGHTS))
    ap.add_argument("--crops", type=int, default=6, help="crops per photo")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    examples = build(PHOTOS, args.crops, args.seed, args.workers)
    print(f"{len(examples)} examples from {len(PHOTOS)} photos in {time.time() - t0:.0f}s")
    # Honest in-training check: leave a third of the photos out, fit, score on them.
    held = set(PHOTOS[::3])
    model = fit([e for e in examples if e.photo not in held], seed=args.seed)
    val = top1(model, [e for e in examples if e.photo in held])
    print(f"top-1 on held-out training photos {sorted(held)}: {val:.3f}")
    model = fit(examples, seed=args.seed)
    print(f"top-1 on all training examples: {top1(model, examples):.3f}")
    model.save(args.out, info={"photos": PHOTOS, "crops": args.crops, "seed": args.seed,
                               "examples": len(examples), "held_out_photo_top1": round(val, 4)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
