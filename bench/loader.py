"""Training-loader throughput against a plain loop over the same tars, in the same run.

    python -m bench.loader --shards SPEC [--crop 128] [--batch-size 8] [--batches 100]

The plain loop is the floor any loader pays: read the tars in order with the standard library,
decode the same members with ``sample_format.decode_sample`` and cut the same crops, in one
process. The training loader (``restore.data.train_loader``, 1 and 2 workers) adds shuffling,
resampling, per-sample seeding, batching and the transfer from worker processes. Printed: samples/s
of each and the ratio loader / plain loop (the target is ≥ 0.9 with one worker), and the CPU time
per sample of the plain loop, of the loader's workers and of the process they hand batches to. On a
machine shared with other jobs the rates follow the share of the cores each side happens to get;
the CPU times follow the work done, so compare those there.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import time
from pathlib import Path

import numpy as np

from pipeline.sample_format import decode_sample
from restore import data


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds a process (Linux; "self" for this one) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plain_loop(urls: tuple[str, ...], samples: int, crop: int, width: int, clip_width: int) -> float:
    """Samples/s of reading and decoding ``samples`` samples in tar order, one process."""
    done, start = 0, time.perf_counter()
    rng = np.random.default_rng(0)
    while done < samples:
        for url in urls:
            records: dict[str, dict] = {}
            with tarfile.open(url, mode="r:") as tar:
                for info in tar:
                    key, _, member = info.name.partition(".")
                    records.setdefault(key, {"__key__": key})[member] = tar.extractfile(info).read()
            for record in records.values():
                sample = decode_sample(record)
                if sample.gt is None:
                    continue
                data.training_example(sample, crop, rng, width, clip_width)
                done += 1
                if done >= samples:
                    return done / (time.perf_counter() - start)
    return done / (time.perf_counter() - start)


def loader_rate(stream: data.StreamConfig, workers: int, batches: int) -> tuple[float, float, float]:
    """Samples/s of the training loader over ``batches`` batches, after its first batch, and the
    CPU seconds per sample of its workers and of this process."""
    logical = max(1, workers)
    iterator = iter(data.train_loader(stream, 0, 1, workers, tuple(data.Position() for _ in range(logical))))
    next(iterator)  # worker start-up is paid once per run, not per sample
    pids = iterator.worker_pids
    workers_cpu, own_cpu = sum(cpu_seconds(p) for p in pids), cpu_seconds("self")
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed, samples = time.perf_counter() - start, batches * stream.batch_size
    return (samples / elapsed, (sum(cpu_seconds(p) for p in pids) - workers_cpu) / samples,
            (cpu_seconds("self") - own_cpu) / samples)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.loader", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", required=True, help="SPEC as for restore.train")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=100)
    args = ap.parse_args(argv)
    source = data.with_dims(data.resolve(args.shards))
    width, clip_width = source.embedding_dims.get("W", 768), source.embedding_dims.get("E", 768)
    samples = args.batches * args.batch_size
    stream = data.StreamConfig(urls=source.urls, crop=args.crop, batch_size=args.batch_size,
                               batches_per_epoch=10**9, token_width=width, clip_width=clip_width,
                               split=None)
    own_cpu = cpu_seconds("self")
    plain = plain_loop(source.urls, samples, args.crop, width, clip_width)
    plain_cpu = (cpu_seconds("self") - own_cpu) / samples
    print(f"plain loop (tar order, 1 process): {plain:8.1f} samples/s   CPU {plain_cpu * 1e3:5.2f} ms/sample")
    for workers in (1, 2):
        rate, workers_cpu, own_cpu = loader_rate(stream, workers, args.batches)
        print(f"training loader, {workers} worker(s): {rate:8.1f} samples/s   ratio {rate / plain:.2f}   CPU "
              f"{workers_cpu * 1e3:5.2f} ms/sample in workers (ratio {plain_cpu / workers_cpu:.2f}), "
              f"{own_cpu * 1e3:5.2f} in this process")


if __name__ == "__main__":
    main()
