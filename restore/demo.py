"""The main job on the embedded default, end to end: `make demo` runs this.

    python -m restore.demo [--out demo_out]
"""

from __future__ import annotations

import argparse
import os
import time

from pipeline import demo_data, manifest


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m restore.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    args = ap.parse_args()
    start = time.time()
    path = demo_data.build(demo_data.DemoConfig(out=os.path.join(args.out, "data")))
    rows = manifest.read(path)
    print("\n== lmdir demo report ==")
    print(f"demo dataset: {len(rows)} samples "
          f"({sum(r['split'] == 'train' for r in rows)} train, {sum(r['split'] == 'test' for r in rows)} held-out)")
    print(f"manifest:     {os.path.abspath(path)}")
    print(f"images:       {os.path.abspath(os.path.join(args.out, 'data'))}")
    print(f"time:         {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
