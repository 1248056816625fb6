"""Time the weight-free analysis of a 512×512 image on one core, as a ratio to decoding it.

    python bench/analyze.py [--image PATH] [--repeats 20]

Threads are pinned to one (OpenCV, OpenMP, BLAS) before numpy and cv2 load, so the number is a
per-core cost: the extraction pipeline runs one analysis per CPU. The target is ≤ 50 ms.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.analysis.analyze import analyze  # noqa: E402
from pipeline.image_files import decode_rgb, encode_png  # noqa: E402

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "denoise" / "Kodak24" / "kodim05.png"


def _timed(fn, repeats: int) -> float:
    fn()  # warm caches (DCT tables, weights)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=str(DEFAULT_IMAGE), help="any image; resized to 512×512")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    if Path(args.image).exists():
        pixels = cv2.resize(decode_rgb(Path(args.image).read_bytes(), args.image).pixels, (512, 512),
                            interpolation=cv2.INTER_AREA)
        source = args.image
    else:
        # Without the shared data, a seeded smooth random scene keeps the bench runnable.
        rng = np.random.default_rng(0)
        pixels = cv2.resize(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (512, 512), interpolation=cv2.INTER_CUBIC)
        source = "synthetic 512×512 scene"
    png = encode_png(pixels)
    decode = _timed(lambda: decode_rgb(png, "bench.png"), args.repeats)
    run = _timed(lambda: analyze(pixels), args.repeats)
    print(f"image: {source}")
    print(f"decode 512×512 PNG: {decode * 1000:.1f} ms (median of {args.repeats})")
    print(f"analyze 512×512:    {run * 1000:.1f} ms  target ≤ 50 ms  {'OK' if run <= 0.05 else 'OVER'}")
    print(f"analyze / decode:   {run / decode:.2f}×")


if __name__ == "__main__":
    main()
