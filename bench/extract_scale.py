"""Does the extraction driver stay small as the manifest grows? 10k and 100k rows side by side.

Each size runs in its own driver process (``pipeline.extract.extract`` with a light stage set:
small images, decoded and validated, no model and no analysis, shards written by the workers), so
the peak RSS of each driver is its own. Prints per size: driver peak RSS, rows/s, wall time; then
the ratios the cluster design is held to: peak RSS at 100k ≤ 1.2 × at 10k, rows/s at 100k ≥ 0.9 ×
at 10k. A driver that held the manifest or the images would grow with the rows.

    python bench/extract_scale.py [--sizes 10000 100000] [--num-cpus 2] [--samples-per-shard 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import extract, extract_config, manifest, stages
from pipeline.image_files import encode_png, sha256_hex

IMAGES = 16  # distinct small images the rows point at (the rows, not the files, are what scale)
SIZE = 48


def write_manifest(folder: Path, rows: int) -> str:
    """``rows`` manifest rows over a few small noise images, written as pipeline.manifest writes."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(IMAGES):
        data = encode_png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        (folder / f"img{i}.png").write_bytes(data)
        files.append((f"img{i}.png", sha256_hex(data)))
    entries = [{"key": f"scale_{n:07d}", "dataset": f"set{n % 5}", "split": "train", "task": "denoise",
                "degradation": "noise", "params": "[]", "seed": None, "lq_uri": str(folder / files[n % IMAGES][0]),
                "gt_uri": None, "width": SIZE, "height": SIZE, "lq_sha256": files[n % IMAGES][1],
                "gt_sha256": None, "notes": ""} for n in range(rows)]
    path = str(folder / f"manifest_{rows}.parquet")
    manifest.write(manifest.Manifest(rows=entries), path)
    return path


def no_model(batch: dict) -> dict:
    """The describer of the light pass: no analysis, no text; the rows still become full records."""
    start = time.perf_counter()
    n = len(batch["key"])
    batch = {k: list(v) for k, v in batch.items()}
    batch.update({"analysis": [""] * n, "degradation_text": [""] * n, "caption": [""] * n})
    batch["t_analysis"] = [(time.perf_counter() - start) / max(n, 1)] * n
    return batch


def run_one(manifest_path: str, out: str, num_cpus: int, samples_per_shard: int) -> dict:
    """One extraction in this process; returns its rows/s and this driver's peak RSS."""
    config = extract_config.load(None, {}, preset="analysis-only", samples_per_shard=samples_per_shard)
    steps = [extract.Step("decode", stages.decode_batch, False, {"max_pixels": config.max_pixels}),
             extract.Step("analysis", no_model, False, {})]
    start = time.perf_counter()
    index = extract.extract(manifest_path, out, config, num_cpus=num_cpus, steps=steps)
    seconds = time.perf_counter() - start
    rows = index["samples"] + index["failed"]
    return {"rows": rows, "ok": index["samples"], "seconds": seconds, "rows_per_s": rows / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python bench/extract_scale.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="manifest rows per run")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of each run's local Ray")
    ap.add_argument("--samples-per-shard", type=int, default=256)
    ap.add_argument("--one", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(*args.one, args.num_cpus, args.samples_per_shard)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.sizes:
            path = write_manifest(Path(tmp), rows)
            proc = subprocess.run([sys.executable, __file__, "--one", path, f"{tmp}/out_{rows}",
                                   "--num-cpus", str(args.num_cpus), "--samples-per-shard", str(args.samples_per_shard)],
                                  capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"the {rows}-row run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            results.append(json.loads(line[len("RESULT "):]))
            r = results[-1]
            print(f"{rows:>8} rows: {r['ok']} ok in {r['seconds']:.1f} s, {r['rows_per_s']:.1f} rows/s, "
                  f"driver peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    small, large = results[0], results[-1]
    print("\n== bench/extract_scale.py ==")
    print(f"driver peak RSS {large['rows']} / {small['rows']} rows: "
          f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}  (target ≤ 1.2)")
    print(f"rows/s {large['rows']} / {small['rows']} rows: {large['rows_per_s'] / small['rows_per_s']:.2f}  "
          f"(target ≥ 0.9)")


if __name__ == "__main__":
    main()
