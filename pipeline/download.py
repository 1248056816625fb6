"""Download a published set's shards: parallel, resumable, verified, mirror by mirror.

    python -m pipeline.download MANIFEST --dest DIR [--shards RANGE] [--jobs N] [--verify]

For each selected shard: if DIR/<name> is there with the manifest's size (and, with --verify,
its sha256) nothing is fetched. Otherwise bytes go into DIR/<name>.part, resumed from its size
(HTTP Range / seek), retried with exponential back-off, mirror after mirror. Only a complete part
whose sha256 matches the manifest and whose tar passes pipeline.safe_tar is renamed to DIR/<name>;
a mismatching file is deleted and reported, never renamed, never read as a shard.

DIR then holds ``index.json``, listing the verified shards there as an extraction's index does,
so that the trainer's ``--shards DIR`` reads them without fetching anything again, and a copy of
the manifest (``published.json``) to re-check or resume from. Ctrl-C stops the transfers; a
rerun of the same command resumes them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from pipeline import cli
from pipeline.image_files import sha256_file
from pipeline.published import (
    MAX_MANIFEST_BYTES,
    PublishedSet,
    ShardEntry,
    load_manifest,
    parse_manifest_bytes,
    save_manifest,
)
from pipeline.safe_tar import UnsafeTarError, check_tar
from pipeline.shards import INDEX, atomic_write
from pipeline.transfer import TransferError, fetch_into, read_small

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
# The name pipeline.publish gives a manifest next to its shards.
MANIFEST_COPY = "published.json"


@dataclass(frozen=True)
class DownloadOptions:
    """How hard to try. ``retries`` counts attempts per mirror; back-off doubles from ``backoff``."""

    jobs: int = 4
    verify: bool = False
    retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0
    timeout: float = 60.0
    progress: bool = True


@dataclass(frozen=True)
class Rejection:
    """A file that was deleted because it did not match the manifest (or its tar was unsafe)."""

    shard: str
    source: str
    reason: str


@dataclass(frozen=True)
class Failure:
    """A shard that could not be made available, with every mirror's last error."""

    shard: str
    reason: str


@dataclass(frozen=True)
class DownloadReport:
    """What a download did. ``paths`` are the verified local shards, in manifest order."""

    downloaded: tuple[str, ...]
    present: tuple[str, ...]
    rejected: tuple[Rejection, ...]
    failed: tuple[Failure, ...]
    paths: tuple[Path, ...]

    @property
    def ok(self) -> bool:
        return not self.failed


class DownloadError(RuntimeError):
    """Raised when a manifest or destination makes the whole download impossible."""


def fetch_manifest(source: str, timeout: float = 60.0) -> PublishedSet:
    """Load and validate a manifest from a local path or a URL (http(s), file, hf, fsspec)."""
    if "://" not in source:
        return load_manifest(source)
    try:
        data = read_small(source, MAX_MANIFEST_BYTES, timeout)
    except TransferError as e:
        raise DownloadError(f"cannot fetch the manifest: {e}") from e
    return parse_manifest_bytes(data, source)


def parse_shard_range(text: str | None, count: int) -> list[int]:
    """Shard indices from "0-9,12,20-23" (inclusive ranges); None or "" means all ``count`` shards."""
    if not text:
        return list(range(count))
    indices: list[int] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise ValueError(f"--shards {text!r}: {part!r} is not an index or a range like 3-7") from None
        if not 0 <= first <= last < count:
            raise ValueError(f"--shards {text!r}: {part!r} is outside 0-{count - 1} "
                             f"(the manifest has {count} shards)")
        indices.extend(range(first, last + 1))
    return sorted(set(indices))


def download(manifest: PublishedSet, dest: str | Path, shards: Sequence[int] | None = None,
             options: DownloadOptions = DownloadOptions()) -> DownloadReport:
    """Make the selected shards (indices into manifest.shards; all by default) present in ``dest``."""
    dest = Path(dest)
    (dest / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    selected = [manifest.shards[i] for i in (range(len(manifest.shards)) if shards is None else shards)]
    _check_free_space(dest, selected)
    progress = _Progress(selected, dest, options.progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
            try:
                results = list(pool.map(lambda s: _fetch_shard(manifest, s, dest, options, progress), selected))
            except KeyboardInterrupt:
                # Workers stop at their next chunk or back-off, leaving what arrived in .part files
                # for the next run to resume; shards not started yet are cancelled.
                progress.stop()
                pool.shutdown(cancel_futures=True)
                raise
    finally:
        progress.close()
    return DownloadReport(
        downloaded=tuple(r.shard for r in results if r.status == "downloaded"),
        present=tuple(r.shard for r in results if r.status == "present"),
        rejected=tuple(x for r in results for x in r.rejected),
        failed=tuple(r.failure for r in results if r.failure is not None),
        paths=tuple(dest / r.shard for r in results if r.failure is None),
    )


@dataclass(frozen=True)
class _ShardResult:
    shard: str
    status: str
    rejected: tuple[Rejection, ...] = ()
    failure: Failure | None = None


def _fetch_shard(manifest: PublishedSet, entry: ShardEntry, dest: Path, options: DownloadOptions,
                 progress: _Progress) -> _ShardResult:
    final = dest / entry.name
    part = dest / f"{entry.name}.part"
    rejected: list[Rejection] = []

    def reject(source: str, reason: str) -> None:
        log.warning("rejected %s from %s: %s (deleted)", entry.name, source, reason)
        rejected.append(Rejection(entry.name, source, reason))

    # Another process (a second trainer rank on this node) may be fetching the same shard.
    with _locked(dest / LOCK_DIR / f"{entry.name}.lock"):
        if final.exists():
            problem = _present_problem(final, entry, options.verify)
            if problem is None:
                progress.file_done()
                return _ShardResult(entry.name, "present")
            progress.add_bytes(-min(final.stat().st_size, entry.bytes))
            final.unlink()
            reject(str(final), problem)
        session = requests.Session()
        errors: list[str] = []
        try:
            for url in manifest.urls(entry):
                failure = _from_mirror(url, entry, part, options, progress, session, reject)
                if failure is None:
                    os.replace(part, final)
                    progress.file_done()
                    return _ShardResult(entry.name, "downloaded", tuple(rejected))
                errors.append(failure.reason)
                if failure.final:
                    break
        finally:
            session.close()
    progress.file_done()
    return _ShardResult(entry.name, "failed", tuple(rejected), Failure(entry.name, "; ".join(errors)))


@dataclass(frozen=True)
class _MirrorFailure:
    reason: str
    final: bool = False  # no other mirror can help either


def _from_mirror(url: str, entry: ShardEntry, part: Path, options: DownloadOptions, progress: _Progress,
                 session: requests.Session, reject: Callable[[str, str], None]) -> _MirrorFailure | None:
    """Bring ``part`` to a verified, safe copy of the shard from one mirror; None on success."""
    error = "no attempt made"
    for attempt in range(options.retries):
        if attempt:
            progress.pause(min(options.backoff * 2 ** (attempt - 1), options.backoff_max))
        resumed_from = part.stat().st_size if part.exists() else 0
        try:
            fetch_into(url, part, entry.bytes, options.timeout, progress.add_bytes, session)
        except TransferError as e:
            error = str(e)
            log.info("attempt %d/%d for %s: %s", attempt + 1, options.retries, entry.name, e)
            if not e.retry:
                return _MirrorFailure(error)
            continue
        digest = sha256_file(part)
        if digest != entry.sha256:
            part.unlink()
            progress.add_bytes(-entry.bytes)
            error = f"{url}: sha256 {digest} does not match the manifest's {entry.sha256}"
            reject(url, f"sha256 {digest} does not match the manifest's {entry.sha256}")
            if resumed_from:
                # The stale prefix from an earlier run may be what was wrong: once more from zero.
                continue
            return _MirrorFailure(error)
        try:
            check_tar(part, shard=entry.name)
        except UnsafeTarError as e:
            # The bytes are the publisher's own, so every mirror would serve the same tar.
            part.unlink()
            progress.add_bytes(-entry.bytes)
            reject(url, str(e))
            return _MirrorFailure(f"unsafe tar: {e}", final=True)
        return None
    return _MirrorFailure(error)


def _present_problem(path: Path, entry: ShardEntry, verify: bool) -> str | None:
    """Why an existing file can't stand for the shard, or None. Without ``verify`` only the size."""
    size = path.stat().st_size
    if size != entry.bytes:
        return f"local file is {size} bytes, the manifest says {entry.bytes}"
    if verify:
        digest = sha256_file(path)
        if digest != entry.sha256:
            return f"local file's sha256 {digest} does not match the manifest's {entry.sha256}"
        try:
            check_tar(path, shard=entry.name)
        except UnsafeTarError as e:
            return str(e)
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_free_space(dest: Path, selected: Sequence[ShardEntry]) -> None:
    needed = 0
    for entry in selected:
        final, part = dest / entry.name, dest / f"{entry.name}.part"
        if final.exists() and final.stat().st_size == entry.bytes:
            continue
        needed += entry.bytes - (part.stat().st_size if part.exists() else 0)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise DownloadError(f"{dest}: {needed} bytes still to download, only {free} free")


class _Stopped(Exception):
    """Raised in a worker thread once the download is interrupted (Ctrl-C in the main thread)."""


class _Progress:
    """Two tqdm bars (files, bytes) shared by the worker threads, and the signal that stops them:
    every transfer reports its bytes here, so each notices a stop within one chunk."""

    def __init__(self, selected: Sequence[ShardEntry], dest: Path, enabled: bool):
        start = sum(_local_size(dest, s) for s in selected)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._files = tqdm(total=len(selected), unit="file", desc="shards", disable=not enabled, position=0)
        self._bytes = tqdm(total=sum(s.bytes for s in selected), initial=start, unit="B", unit_scale=True,
                           unit_divisor=1024, desc="bytes", disable=not enabled, position=1)

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes.update(n)
        if self._stopped.is_set():
            raise _Stopped()

    def pause(self, seconds: float) -> None:
        """Sleep between retries, cut short by a stop."""
        if self._stopped.wait(seconds):
            raise _Stopped()

    def stop(self) -> None:
        self._stopped.set()

    def file_done(self) -> None:
        with self._lock:
            self._files.update(1)

    def close(self) -> None:
        self._bytes.close()
        self._files.close()


def _local_size(dest: Path, entry: ShardEntry) -> int:
    for path in (dest / entry.name, dest / f"{entry.name}.part"):
        if path.exists():
            return min(path.stat().st_size, entry.bytes)
    return 0


def complete_shards(manifest: PublishedSet, dest: str | Path) -> list[ShardEntry]:
    """The manifest's shards present in ``dest`` under their own name with the manifest's size:
    only a verified download is ever renamed to that name."""
    dest = Path(dest)
    return [s for s in manifest.shards if (dest / s.name).is_file() and (dest / s.name).stat().st_size == s.bytes]


def write_index(manifest: PublishedSet, dest: str | Path, source: str) -> tuple[Path, int]:
    """Write ``dest/index.json`` in the layout of an extraction's index (pipeline.shards), listing
    the complete shards in ``dest``, and the manifest (fetched from ``source``) as
    ``dest/published.json``. Returns the index path and the number of shards it lists.

    The trainer reads a folder's shards through its index (``--shards DIR``); given the manifest
    instead it would fetch the set again into its cache. An index that this function did not write
    is left alone: ``dest`` is then the extraction's own output, checked against its manifest, and
    its index says more (settings, failures) than a manifest can.
    """
    dest = Path(dest)
    path = dest / INDEX
    if path.is_file():
        existing = json.loads(path.read_text())
        if "downloaded_from" not in existing:
            return path, len(existing["shards"])
    shards = complete_shards(manifest, dest)
    provenance = manifest.provenance

    def single(values: tuple[str, ...]) -> str | None:
        # An index describes one extraction; a set merged from several has no single preset or hash.
        return values[0] if len(values) == 1 else None

    index = {
        "format_version": manifest.format_version, "name": manifest.name, "license": manifest.license,
        "downloaded_from": source,
        "preset": single(provenance.presets), "config_hash": single(provenance.config_hashes),
        "models": {role: {"id": m.id, "revision": m.revision, "commit": m.commit}
                   for role, m in sorted(provenance.models.items())},
        "embedding_dims": dict(manifest.embedding_dims),
        "samples": sum(s.samples for s in shards), "failed": 0,
        "shards": [{"name": s.name, "samples": s.samples, "failed": 0, "bytes": s.bytes, "sha256": s.sha256}
                   for s in shards],
    }
    save_manifest(manifest, dest / MANIFEST_COPY)
    atomic_write(path, json.dumps(index, indent=1, sort_keys=True).encode())
    return path, len(shards)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="published-set manifest: a local path or a URL")
    parser.add_argument("--dest", required=True, help="directory the shards go into")
    parser.add_argument("--shards", help='indices to fetch, e.g. "0-9,12" (default: all)')
    parser.add_argument("--jobs", type=int, default=4, help="shards fetched in parallel (default 4)")
    parser.add_argument("--verify", action="store_true",
                        help="re-hash shards already present instead of trusting their size")
    parser.add_argument("--retries", type=int, default=4, help="attempts per mirror (default 4)")
    parser.add_argument("--timeout", type=float, default=60.0, help="connect/read timeout in seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        manifest = fetch_manifest(args.manifest, args.timeout)
        indices = parse_shard_range(args.shards, len(manifest.shards))
    except (ValueError, DownloadError) as e:
        return cli.fail(e)
    except KeyboardInterrupt:
        return cli.interrupted("nothing was downloaded yet")
    options = DownloadOptions(jobs=args.jobs, verify=args.verify, retries=max(1, args.retries),
                              timeout=args.timeout, progress=not args.no_progress)
    try:
        report = download(manifest, args.dest, indices, options)
        index, listed = write_index(manifest, args.dest, args.manifest)
    except (DownloadError, OSError) as e:  # OSError: a --dest that cannot be created or written
        return cli.fail(e)
    except KeyboardInterrupt:
        selected = {manifest.shards[i].name for i in indices}
        done = sum(s.name in selected for s in complete_shards(manifest, args.dest))
        return cli.interrupted(f"{done} of {len(selected)} shards are complete and verified in {args.dest}; "
                               "partly downloaded ones are kept as .part files: rerun the same command to resume")
    print(f"{manifest.name}: {len(report.downloaded)} downloaded, {len(report.present)} already present, "
          f"{len(report.rejected)} rejected, {len(report.failed)} failed")
    for r in report.rejected:
        print(f"  rejected and deleted {r.shard} from {r.source}: {r.reason}", file=sys.stderr)
    for f in report.failed:
        print(f"  FAILED {f.shard}: {f.reason}", file=sys.stderr)
    print(f"{index}: {listed} of {len(manifest.shards)} shards; train on them with --shards {args.dest}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
