"""Extraction throughput: the Ray pipeline against the same job in a plain Python loop.

Both run on the same images (the demo dataset), with the same preset and batch size, and both do
the whole job: read the manifest rows of each shard, run every stage, write the parts and
assemble the shards, with the pipeline's own functions. Both times include starting a fresh
process, importing torch and transformers and loading the models — the loop in a spawned process
of its own, as each pipeline actor is; Ray's start (until its workers take tasks) is timed apart.
The loop runs before and after the pipeline, and its time is the mean of the two. Prints
samples/s of each, their ratio (pipeline / loop: above 1 means Ray's orchestration costs less than
running the stages on every core gains), whether both wrote the same shard bytes, and the loop's
per-stage time split.

    python bench/extract.py [--samples 252] [--repeat 1] [--preset offline] [--batch-size 8] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import demo_data, extract, extract_config, manifest, shard_assembly, shards
from pipeline.image_files import sha256_file


def plain_loop(manifest_path: str, out: str, config: extract_config.ExtractConfig,
               batch_size: int) -> tuple[float, dict]:
    """The extraction in one process, no Ray: each shard's rows read, every stage called in turn
    on each batch, the parts written and the shard assembled.

    Torch and the BLAS and OpenMP pools run one thread here, as they do in each Ray actor (Ray
    sets OMP_NUM_THREADS=1 for fractional-CPU actors; OpenCV keeps its own pool in both): the
    comparison is then between one process doing the stages in turn and the pipeline overlapping
    them, not between thread settings. (Until 2026-12-03 only torch was limited: the loop's
    OpenBLAS ran two threads under the analysis's matrix products, the actors' one.)
    """
    start = time.perf_counter()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    seconds: dict[str, float] = defaultdict(float)
    t = time.perf_counter()
    # The same stages, built the same way, as the pipeline runs for this preset.
    commits, config_hash = extract.run_identity(config, manifest_path)
    steps = [(step.name, step.build()) for step in extract.stage_plan(config, extract.pinned_models(config, commits))]
    seconds["load"] = time.perf_counter() - t
    work, _ = extract.plan_work(manifest.count_rows(manifest_path), Path(out), config.samples_per_shard, False)
    for w in work:
        t = time.perf_counter()
        (whole,) = extract.block_descriptors([w], w.rows)  # the shard's rows as one block
        rows = extract.read_shard_rows(whole, manifest_path)
        seconds["read"] += time.perf_counter() - t
        for i in range(0, len(rows), batch_size):
            batch = {k: [r[k] for r in rows[i:i + batch_size]] for k in rows[0]}
            for name, fn in steps:
                t = time.perf_counter()
                batch = fn(batch)
                seconds[name] += time.perf_counter() - t
            t = time.perf_counter()
            shard_assembly.write_parts(batch, out, config_hash)
            seconds["write"] += time.perf_counter() - t
        t = time.perf_counter()
        shard_assembly.assemble(out, w.shard, config_hash, False)
        seconds["write"] += time.perf_counter() - t
    return time.perf_counter() - start, dict(seconds)


def fresh_loop(manifest_path: str, out: str, config: extract_config.ExtractConfig,
               batch_size: int) -> tuple[float, dict]:
    """``plain_loop`` in a new interpreter, timed from here: it pays the process start and the
    imports each pipeline actor pays. Run in this process, only the first loop would pay the
    imports (the second found torch and transformers loaded: 88 against 77 s, tiny preset, 1,512
    samples)."""
    start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        _, split = pool.submit(plain_loop, manifest_path, out, config, batch_size).result()
    return time.perf_counter() - start, split


def same_shards(a: Path, b: Path, count: int) -> bool:
    """Whether two output folders hold the same bytes in every shard tar."""
    return all(sha256_file(a / shards.tar_name(i)) == sha256_file(b / shards.tar_name(i)) for i in range(count))


def start_ray(num_cpus: int | None) -> float:
    """Start a local Ray and wait until it has run one task per CPU at once; returns the seconds
    it took. ``ray.init`` returns while the workers it prestarts are still importing (about a
    second here): a cluster job finds them running."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=num_cpus, log_to_driver=False)
    @ray.remote(num_cpus=1)
    def ready() -> None:
        return None

    ray.get([ready.remote() for _ in range(int(ray.cluster_resources().get("CPU", 1)))])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(prog="python bench/extract.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=252, help="demo samples to run (252 = all)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every sample this many times under distinct keys (default 1)")
    ap.add_argument("--preset", default="offline", help="prior preset of both runs (default offline: no downloads)")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per batch in every stage of both runs")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    ap.add_argument("--config", default=None, help="extraction YAML (per-stage GPUs), as for pipeline.extract")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = demo_data.build(demo_data.DemoConfig(out=str(Path(tmp) / "data")))
        # Each image under --repeat keys: a run long enough that start-up no longer decides the ratio.
        rows = [{**r, "key": f"{r['key']}_{i}"} if args.repeat > 1 else r
                for i in range(args.repeat) for r in manifest.read(path)[: args.samples]]
        small = str(Path(tmp) / "bench.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=manifest.SCHEMA), small)
        sets = {f"stages.{s}.batch_size": str(args.batch_size) for s in extract.STAGE_NAMES}
        config = extract_config.load(args.config, sets, preset=args.preset, samples_per_shard=max(1, len(rows) // 4))

        # The loop runs before and after the pipeline and its time is the mean of the two: a
        # shared machine's speed drifts by ±25 % over minutes, and a drift between a single loop
        # run and the pipeline run would move the ratio by as much.
        loop_out = [Path(tmp) / "loop_before", Path(tmp) / "loop_after"]
        loop_before, loop_split = fresh_loop(small, str(loop_out[0]), config, args.batch_size)
        import ray

        # Ray's start is timed apart: a cluster job finds Ray running, and on a small run its
        # start (6–9 s on 2 cores) would hide what the pipeline itself costs.
        ray_start = start_ray(args.num_cpus)
        start = time.perf_counter()
        index = extract.extract(small, str(Path(tmp) / "out"), config)
        pipe_time = time.perf_counter() - start
        ray.shutdown()
        loop_after, _ = fresh_loop(small, str(loop_out[1]), config, args.batch_size)
        loop_time = (loop_before + loop_after) / 2
        same = all(same_shards(Path(tmp) / "out", o, len(index["shards"])) for o in loop_out)

    n = len(rows)
    print("\n== bench/extract.py ==")
    print(f"samples: {n} ({args.samples} images × {args.repeat}), preset: {args.preset}, batch size: {args.batch_size}")
    print(f"plain loop: {loop_time:.1f} s  ({n / loop_time:.2f} samples/s; {loop_before:.1f} s before the pipeline, "
          f"{loop_after:.1f} s after), a fresh process each, models loaded once, torch and BLAS on 1 thread")
    print(f"shards: {len(index['shards'])} ({index['samples']} samples ok, {index['failed']} failed), the same bytes "
          f"from the loop and the pipeline: {'yes' if same else 'NO'}")
    print(f"ray pipeline: {pipe_time:.1f} s  ({n / pipe_time:.2f} samples/s), actor loading included; "
          f"Ray's start {ray_start:.1f} s apart")
    print(f"ratio pipeline/loop: {loop_time / pipe_time:.2f}  (target ≥ 1.0); with Ray's start: "
          f"{loop_time / (pipe_time + ray_start):.2f}")
    total = sum(v for k, v in loop_split.items() if k != "load") or 1.0
    print("plain loop time split: load {:.1f} s; ".format(loop_split["load"]) + ", ".join(
        f"{k} {v / total:.0%}" for k, v in loop_split.items() if k != "load"))
    if not same:
        raise SystemExit("the loop and the pipeline wrote different shard bytes: the ratio compares different jobs")


if __name__ == "__main__":
    main()
