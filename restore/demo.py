"""The main job on the embedded default, end to end: `make demo` runs this.

    python -m restore.demo [--out demo_out]

Demo data (real photos shipped with scikit-image, degraded with every synthetic type) → prior
extraction with the tiny models on a local Ray → a short report of what was made and where.
"""

from __future__ import annotations

import argparse
import os
import time

from pipeline import demo_data, extract, extract_config, manifest


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m restore.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    args = ap.parse_args()
    timings = {}
    start = time.time()
    path = demo_data.build(demo_data.DemoConfig(out=os.path.join(args.out, "data")))
    rows = manifest.read(path)
    timings["demo data"] = time.time() - start

    start = time.time()
    priors_dir = os.path.join(args.out, "priors")
    config = extract_config.load(None, preset="tiny", samples_per_shard=64)
    index = extract.extract(path, priors_dir, config, num_cpus=args.num_cpus)
    timings["prior extraction"] = time.time() - start

    print("\n== lmdir demo report ==")
    print(f"demo dataset:  {len(rows)} samples ({sum(r['split'] == 'train' for r in rows)} train, "
          f"{sum(r['split'] == 'test' for r in rows)} held-out) — {os.path.abspath(path)}")
    print(f"priors:        {index['samples']} ok, {index['failed']} failed in {len(index['shards'])} shards, "
          f"{sum(s['bytes'] for s in index['shards']) / 2**20:.1f} MiB — {os.path.abspath(priors_dir)}/index.json")
    print(f"prior models:  {', '.join(f'{k}: {v}' for k, v in index['settings'].items())}")
    print("time:          " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


if __name__ == "__main__":
    main()
