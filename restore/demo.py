"""The main job on the embedded default, end to end: `make demo` runs this.

    python -m restore.demo [--out demo_out] [--steps 300] [--real-photo PHOTO]

Demo data (real photos shipped with scikit-image and matplotlib, degraded with every synthetic
type; train, validation and held-out tiles from different photos) → prior extraction with the
``offline`` preset on a local Ray (the weight-free analysis, its sentence and all-MiniLM-L6-v2's
tokens of it: real priors without large-model weights) → a few minutes of training of the tiny
restorer on the CPU, validated on the validation tiles → evaluation on the held-out tiles → one
held-out tile restored by that run → a real full-size degraded photo restored by the checkpoint
shipped in the package (``restore.checkpoint.SHIPPED``) → a short report. Everything lands under
``--out``.

The short run demonstrates training; it is not a useful restorer. The shipped checkpoint is the
one trained for about 90 minutes on two CPU cores on the same kind of priors
(``restore/recipes/lmdir_cpu.yaml``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pipeline import cli, demo_data, extract, extract_config, manifest
from restore import checkpoint, evaluate, infer
from restore.train import TrainConfig, train

# The priors of the whole demo: real ones that need no large-model weights (pipeline.models.presets).
PRIOR_PRESET = "offline"
# A real low-light photo (DICM, JPEG as published, 480x640) from the test images beside this
# repository (../shared/data); they are not shipped in the package, so the step is skipped without them.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_PHOTO = SHARED_DATA / "real" / "lowlight_DICM" / "01.jpg"


def _training_config(index: str, out: str, steps: int) -> TrainConfig:
    # Measured on a 2-core machine with offline priors: 300 steps take ~5.4 min (~1 s a step) and
    # lift the held-out PSNR from 19.66 dB (degraded input) to 21.67 dB.
    return TrainConfig(shards=index, out=out, model="tiny", crop=64, batch_size=8, workers=1, steps=steps,
                       lr=2e-3, warmup_steps=20, grad_clip=1.0, ema_decay=0.99, val_every=100, save_every=100,
                       val_samples=28, log_every=20)


def main() -> int:
    args = build_parser().parse_args()
    try:
        run_demo(args)
    except extract.ExtractError as e:  # e.g. --out holds priors of another extraction configuration
        return cli.fail(e)
    except KeyboardInterrupt:
        return cli.interrupted(f"the demo stopped; what it finished is in {args.out} (complete prior shards are "
                               "kept and skipped when it runs again); rerun the same command to start over")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m restore.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    ap.add_argument("--steps", type=int, default=300, help="training steps of the tiny restorer")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    ap.add_argument("--real-photo", default=str(REAL_PHOTO),
                    help="a real degraded photo for the shipped checkpoint to restore (default: a DICM low-light "
                         "photo from ../shared/data)")
    return ap


def run_demo(args: argparse.Namespace) -> None:
    out = Path(args.out)
    timings: dict[str, float] = {}

    start = time.time()
    manifest_path = demo_data.build(demo_data.DemoConfig(out=str(out / "data")))
    rows = manifest.read(manifest_path)
    timings["demo data"] = time.time() - start

    start = time.time()
    index = extract.extract(manifest_path, str(out / "priors"),
                            extract_config.load(None, preset=PRIOR_PRESET, samples_per_shard=64), num_cpus=args.num_cpus)
    import ray

    # Extraction is done: give Ray's cores and memory back before training.
    ray.shutdown()
    timings["prior extraction"] = time.time() - start

    start = time.time()
    index_path = str(out / "priors" / "index.json")
    run = train(_training_config(index_path, str(out / "run"), args.steps))
    timings["training"] = time.time() - start

    start = time.time()
    results = evaluate.evaluate(run, [manifest_path], shards=index_path, split="test", out=str(out / "eval"))
    table = evaluate.table(results, method="lmdir tiny (demo)")
    (out / "eval").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "table.md").write_text(table + "\n")
    avg = evaluate.averages(results)
    timings["evaluation"] = time.time() - start

    start = time.time()
    example = next(r for r in rows if r["split"] == "test" and r["degradation"] == "haze")
    restored = infer.restore_images(run, [example["lq_uri"]], out / "restored", write_side_by_side=True)
    timings["restoration"] = time.time() - start

    start = time.time()
    shipped = _restore_with_shipped(Path(args.real_photo), out / "restored_shipped")
    timings["shipped model"] = time.time() - start

    print("\n== lmdir demo report ==")
    print(f"demo dataset:   {len(rows)} samples ({sum(r['split'] == 'train' for r in rows)} train, "
          f"{sum(r['split'] == 'val' for r in rows)} validation, {sum(r['split'] == 'test' for r in rows)} held-out) "
          f"— {os.path.abspath(manifest_path)}")
    print(f"priors:         {index['samples']} ok, {index['failed']} failed in {len(index['shards'])} shards, "
          f"{sum(s['bytes'] for s in index['shards']) / 2**20:.1f} MiB — {os.path.abspath(index_path)}")
    used = [f"{k}: {v}" for k, v in index["settings"].items() if v]
    unused = [k for k, v in index["settings"].items() if not v]
    print(f"prior models:   {index['preset']} — the weight-free analysis, {', '.join(used)}"
          + (f" (no {', '.join(unused)})" if unused else ""))
    print(f"training:       {args.steps} steps of the tiny restorer — {os.path.abspath(run)} "
          f"(curve: {os.path.abspath(Path(run) / 'curve.png')})")
    print(f"held-out PSNR:  degraded input {avg['psnr_in']:.2f} dB → restored {avg['psnr']:.2f} dB "
          f"({avg['psnr'] - avg['psnr_in']:+.2f} dB); SSIM {avg['ssim_in']:.4f} → {avg['ssim']:.4f}")
    print(f"table:          {os.path.abspath(out / 'eval' / 'table.md')}")
    print(f"restored tile:  {os.path.abspath(restored[0])} (side by side: {os.path.abspath(_side(restored[0]))})")
    print(f"shipped model:  {shipped}")
    print("time:           " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print("\n" + table)


def _side(restored: Path) -> Path:
    return restored.with_name(restored.stem + "_side_by_side.png")


def _restore_with_shipped(photo: Path, out: Path) -> str:
    """Restore ``photo`` at full size with the shipped checkpoint; the report line either way."""
    if not (checkpoint.SHIPPED / "model.safetensors").is_file():
        return (f"skipped: no shipped checkpoint at {checkpoint.SHIPPED} (export a trained run there with "
                f"python -m restore.export runs/lmdir_cpu)")
    if not photo.is_file():
        return f"skipped: no real photo at {photo} (the test images beside this repository; pass --real-photo)"
    restored = infer.restore_images(checkpoint.SHIPPED, [str(photo)], out, write_side_by_side=True)
    if not restored:
        return f"failed to restore {photo} (the reason is printed above)"
    return (f"{photo} restored at full size by {checkpoint.SHIPPED} — {os.path.abspath(restored[0])} "
            f"(side by side: {os.path.abspath(_side(restored[0]))})")


if __name__ == "__main__":
    sys.exit(main())
