"""Dataset manifests: one parquet index of (LQ, GT) samples that extraction, training and evaluation read.

Sources: paired LQ/GT folders matched by file stem or pattern (several LQ files per GT where a
dataset renders each clean image several times, as RESIDE OTS does), clean folders degraded
synthetically, once or several times per image (the LQ images are written once, so every later
reader sees the same bytes), a Hugging Face ``datasets`` dataset, or a YAML spec combining several
of these (``manifests/*.yaml``). Images are read, measured and dropped one at a time: a build holds
sizes, hashes and notes, never the pixels of a whole dataset.

Nothing is dropped silently: every unreadable file, size mismatch or unmatched file becomes a
row of ``<out>.problems.parquet`` and is counted on the console; conversions that still yield a
usable image (palette, 16-bit, RGBA, grayscale) are recorded as warnings.

    python -m pipeline.manifest paired --lq DIR --gt DIR --dataset rain100l --split test --degradation rain --out M.parquet
    python -m pipeline.manifest paired --lq OTS/hazy --gt OTS/clear --lq-match '^(\\d+)_' --gt-match '^(\\d+)$' --many-lq-per-gt --dataset ots --split train --degradation haze --out M.parquet
    python -m pipeline.manifest synthetic --clean DIR --degrade noise:sigma=25 --samples-per-image 4 --dataset bsd400 --split train --workdir W --out M.parquet
    python -m pipeline.manifest hf --data-dir DIR --dataset mine --split train --degrade jpeg:quality=10..40 --workdir W --out M.parquet
    python -m pipeline.manifest spec manifests/three_task.yaml --root /data --out three_task.parquet
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from pipeline import cli, degrade, vocabulary
from pipeline.image_files import (
    IMAGE_SUFFIXES,
    ImageError,
    decode_rgb,
    read_bytes,
    save_png,
    sha256_hex,
)
from pipeline.sample_format import make_key

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("task", pa.string()),
    ("degradation", pa.string()),      # vocabulary types joined by '+', "clean" for none
    ("params", pa.string()),           # JSON list of {"type", "params"} (sample_format's form)
    ("seed", pa.int64()),              # the synthesis seed, null for real pairs
    ("lq_uri", pa.string()),
    ("gt_uri", pa.string()),           # null for unpaired (real, no reference) images
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("lq_sha256", pa.string()),
    ("gt_sha256", pa.string()),
    ("notes", pa.string()),            # conversions made when decoding, '; '-joined
])
PROBLEM_SCHEMA = pa.schema([("path", pa.string()), ("severity", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class Problem:
    """A file that could not be used (severity "error"), or was used after a conversion ("warning")."""

    path: str
    severity: str
    reason: str


@dataclass
class Manifest:
    rows: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def extend(self, other: Manifest) -> None:
        self.rows.extend(other.rows)
        self.problems.extend(other.problems)


def list_images(folder: str | Path) -> list[str]:
    """Image files under ``folder`` (recursive) as sorted POSIX paths relative to it."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _stem_id(relpath: str, pattern: re.Pattern[str] | None) -> str | None:
    """The id that pairs an LQ with its GT: the relative path without extension, or the groups
    of ``pattern`` joined by '/' (``None`` when the pattern does not match)."""
    stem = relpath.rsplit(".", 1)[0]
    if pattern is None:
        return stem
    m = pattern.search(stem)
    if not m:
        return None
    return "/".join(g or "" for g in m.groups()) if m.groups() else m.group(0)


@dataclass(frozen=True)
class _Measured:
    """What a manifest keeps of an image file: its size, hash and conversion notes, never its
    pixels (a build over millions of files must not hold them), or why the file is unusable."""

    uri: str
    sha256: str = ""
    width: int = 0
    height: int = 0
    notes: tuple[str, ...] = ()
    error: str = ""


def _load(uri: str) -> tuple[_Measured, np.ndarray | None]:
    """Read and decode one file: its measurements and pixels, or (with None) why it is unusable."""
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        return _Measured(uri, error="file not found"), None
    except OSError as e:
        return _Measured(uri, error=f"cannot read file: {e}"), None
    try:
        image = decode_rgb(data, uri)
    except ImageError as e:
        return _Measured(uri, error=e.reason), None
    return _Measured(uri, sha256_hex(data), image.width, image.height, image.notes), image.pixels


def _measure(uri: str) -> _Measured:
    return _load(uri)[0]


_In = TypeVar("_In")
_Out = TypeVar("_Out")


def _stream(fn: Callable[[_In], _Out], items: Iterable[_In], total: int | None, desc: str) -> Iterator[_Out]:
    """``fn`` over ``items`` on a thread pool, results in input order, with only a few items per
    thread in flight: memory is bounded by the pool whatever the number of images. Decoding
    releases the GIL in PIL and zlib, so threads give real parallelism here."""
    workers = max(2, os.cpu_count() or 2)
    pending: deque[Future[_Out]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
                bar.update()
        while pending:
            yield pending.popleft().result()
            bar.update()


def _warnings(r: _Measured) -> list[Problem]:
    return [Problem(r.uri, "warning", note) for note in r.notes]


def _pair_rows(out: Manifest, lqs: Sequence[tuple[str, _Measured]], gt: _Measured | None, dataset: str,
               split: str, task: str, types: Sequence[str]) -> None:
    """Add the rows of real LQ files, given with their keys, that pair with one GT (``gt`` None:
    unpaired), and their problems.

    The GT's own error or warnings are recorded once, not once per LQ, in the order a single pair
    records them: errors (LQ, GT), warnings (LQ, GT), then a size mismatch.
    """
    # Real pairs carry their types without parameters: nothing was applied that could be recorded.
    params = json.dumps([{"type": t, "params": {}} for t in types])
    gt_error_recorded = gt_warned = False
    for key, lq in lqs:
        bad = [lq] if lq.error else []
        if gt is not None and gt.error and not gt_error_recorded:
            bad.append(gt)
            gt_error_recorded = True
        out.problems.extend(Problem(r.uri, "error", r.error) for r in bad)
        if lq.error or (gt is not None and gt.error):
            continue
        out.problems.extend(_warnings(lq))
        if gt is not None and not gt_warned:
            out.problems.extend(_warnings(gt))
            gt_warned = True
        if gt is not None and (gt.width, gt.height) != (lq.width, lq.height):
            out.problems.append(Problem(lq.uri, "error", f"LQ is {lq.width}x{lq.height} but its GT "
                                                          f"{gt.uri} is {gt.width}x{gt.height}"))
            continue
        out.rows.append(_row(key, dataset, split, task, types, params, None, lq, gt))


def _types(degradation: str | Sequence[str]) -> list[str]:
    types = degradation.split("+") if isinstance(degradation, str) else list(degradation)
    return [vocabulary.check_type(t) for t in types]


def from_paired(lq_dir: str, gt_dir: str | None, dataset: str, split: str, degradation: str,
                task: str = "", match: str = "", lq_match: str = "", gt_match: str = "",
                many_lq_per_gt: bool = False) -> Manifest:
    """Rows for LQ images matched to GT images by relative path without extension.

    ``match`` (or ``lq_match``/``gt_match`` per side) is a regex on that stem whose groups form the
    id to pair on, e.g. ``rain-(\\d+)`` / ``norain-(\\d+)``. A file its side's pattern does not match
    is not part of that side (recorded as "skipped", e.g. the sharp frames when LQ and GT share a
    folder). With ``gt_dir`` None the LQ images are unpaired (real photos with no reference).

    Two LQ files with one id are an error unless ``many_lq_per_gt``: then each is its own row (its
    own key, from its own path) with the one GT, as in RESIDE OTS, where ``hazy/0001_0.8_0.2.jpg``,
    ``hazy/0001_1_0.08.jpg`` … are renderings of ``clear/0001.jpg`` (``lq_match: '^(\\d+)_'``).
    Two GT files with one id are always an error.
    """
    types = _types(degradation)
    lq_pattern = re.compile(lq_match or match) if (lq_match or match) else None
    gt_pattern = re.compile(gt_match or match) if (gt_match or match) else None
    out = Manifest()

    def ids(folder: str, pattern: re.Pattern[str] | None, side: str, many: bool) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for rel in list_images(folder):
            ident = _stem_id(rel, pattern)
            path = os.path.join(folder, rel)
            if ident is None:
                out.problems.append(Problem(path, "skipped", f"not a {side} file: name does not match {pattern.pattern!r}"))
            elif ident in found and not many:
                hint = ("; if several LQ images share one GT, set many_lq_per_gt (--many-lq-per-gt)"
                        if side == "LQ" and gt_dir is not None else "")
                out.problems.append(Problem(path, "error", f"two {side} files pair as {ident!r} (other: {found[ident][0]}){hint}"))
            else:
                found.setdefault(ident, []).append(rel)
        return found

    lq_by_id = ids(lq_dir, lq_pattern, "LQ", many_lq_per_gt)
    gt_by_id = ids(gt_dir, gt_pattern, "GT", False) if gt_dir is not None else {}
    # One group per GT: its LQ files (one, or several with many_lq_per_gt), so the GT is read once.
    groups: list[tuple[list[str], str | None]] = []
    for ident, rels in sorted(lq_by_id.items()):
        if gt_dir is None:
            groups += [([rel], None) for rel in rels]
        elif ident in gt_by_id:
            groups.append((rels, gt_by_id[ident][0]))
        else:
            out.problems.extend(Problem(os.path.join(lq_dir, rel), "error", f"unmatched LQ file: no GT pairs as {ident!r}")
                                for rel in rels)
    for ident, rels in sorted(gt_by_id.items()):
        if ident not in lq_by_id:
            out.problems.append(Problem(os.path.join(gt_dir, rels[0]), "error", f"unmatched GT file: no LQ pairs as {ident!r}"))

    def measure(group: tuple[list[str], str | None]) -> tuple[list[_Measured], _Measured | None]:
        lq_rels, gt_rel = group
        return ([_measure(os.path.join(lq_dir, rel)) for rel in lq_rels],
                _measure(os.path.join(gt_dir, gt_rel)) if gt_rel else None)

    task = task or vocabulary.task_for(types)
    for (lq_rels, _), (lqs, gt) in zip(groups, _stream(measure, groups, len(groups), f"{dataset}/{split} pairs")):
        keyed = [(make_key(dataset, split, rel), lq) for rel, lq in zip(lq_rels, lqs)]
        _pair_rows(out, keyed, gt, dataset, split, task, types)
    return out


def _row(key: str, dataset: str, split: str, task: str, types: Sequence[str], params: str, seed: int | None,
         lq: _Measured, gt: _Measured | None) -> dict:
    notes = list(lq.notes) + ([f"gt: {n}" for n in gt.notes] if gt else [])
    return {
        "key": key, "dataset": dataset, "split": split, "task": task,
        "degradation": "+".join(types) if types else "clean", "params": params, "seed": seed,
        "lq_uri": lq.uri, "gt_uri": gt.uri if gt else None,
        "width": lq.width, "height": lq.height,
        "lq_sha256": lq.sha256, "gt_sha256": gt.sha256 if gt else None, "notes": "; ".join(notes),
    }


def _variant(spec: str, sample: int = 0) -> str:
    """The key suffix of a spec's degraded copy. Sample 0 keeps the suffix manifests always had;
    later samples of one image (``samples_per_image``) add ``-s<n>``, so their keys and with them
    their seeds differ."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", spec).strip("-")
    return f"{base}-s{sample}" if sample else base


def _check_degrading(specs: Sequence[str], assign: str, samples_per_image: int = 1) -> None:
    """Raise ValueError on a bad spec, assignment or sample count: called before any image is read."""
    for spec in specs:
        degrade.parse_spec(spec)
    if assign not in ("all", "cycle"):
        raise ValueError(f"assign must be 'all' or 'cycle', got {assign!r}")
    if isinstance(samples_per_image, bool) or not isinstance(samples_per_image, int) or samples_per_image < 1:
        raise ValueError(f"samples_per_image must be a whole number of at least 1, got {samples_per_image!r}")


def from_clean(clean: Iterable[tuple[str, str]], specs: Sequence[str], dataset: str, split: str, workdir: str,
               assign: str = "all", kernels: str = "", samples_per_image: int = 1,
               total: int | None = None) -> Manifest:
    """Rows for clean images, given as (URI, relative path) pairs, degraded by each spec
    (``assign="all"``) or by one spec per image in turn (``"cycle"``), ``samples_per_image`` times
    each (distinct keys, so distinct seeds: several noise draws of one photo).

    Degraded LQ images are written under ``workdir/<dataset>/<split>/``; the seed of each comes
    from its key, so rebuilding gives the same bytes. Each clean image is read, degraded and
    dropped in one worker: only its measurements stay. ``total`` (the number of images) sizes the
    progress bar.
    """
    _check_degrading(specs, assign, samples_per_image)
    out = Manifest()
    lq_dir = Path(workdir) / dataset / split
    lq_dir.mkdir(parents=True, exist_ok=True)

    def degrade_one(job: tuple[int, tuple[str, str]]) -> tuple[_Measured, list[dict]]:
        i, (uri, rel) = job
        gt, pixels = _load(uri)
        if pixels is None:
            return gt, []
        rows = []
        for spec in (specs if assign == "all" else [specs[i % len(specs)]]):
            types = degrade.types_of(spec)
            for sample in range(samples_per_image):
                key = make_key(dataset, split, rel, _variant(spec, sample))
                seed = degrade.seed_for(key)
                degraded, applied = degrade.apply(pixels, spec, seed, kernels=kernels)
                path = str(lq_dir / f"{key}.png")
                lq = _Measured(path, sha256_hex(save_png(degraded, path)), degraded.shape[1], degraded.shape[0])
                rows.append(_row(key, dataset, split, vocabulary.task_for(types), types, json.dumps(applied), seed,
                                 lq, gt))
        return gt, rows

    for gt, rows in _stream(degrade_one, enumerate(clean), total, f"{dataset}/{split} degrade"):
        out.problems.extend([Problem(gt.uri, "error", gt.error)] if gt.error else _warnings(gt))
        out.rows.extend(rows)
    return out


def from_clean_folder(clean_dir: str, specs: Sequence[str], dataset: str, split: str, workdir: str,
                      assign: str = "all", kernels: str = "", samples_per_image: int = 1) -> Manifest:
    """``from_clean`` over every image file under ``clean_dir``."""
    _check_degrading(specs, assign, samples_per_image)
    rels = list_images(clean_dir)
    return from_clean(((os.path.join(clean_dir, r), r) for r in rels), specs, dataset, split, workdir, assign,
                      kernels, samples_per_image, total=len(rels))


def from_hf(dataset: str, split: str, workdir: str, hf_id: str = "", data_dir: str = "", hf_split: str = "",
            image_column: str = "image", gt_column: str = "", degradation: str = "", specs: Sequence[str] = (),
            assign: str = "all", kernels: str = "", samples_per_image: int = 1) -> Manifest:
    """Rows from a Hugging Face ``datasets`` dataset: a local ``imagefolder`` (``data_dir``) or a hub
    id whose cache is present (set HF_HUB_OFFLINE=1 to make sure nothing is fetched).

    Either ``gt_column`` names the clean images paired with ``image_column`` (real pairs, typed by
    ``degradation``), or ``specs`` degrade the clean ``image_column`` synthetically (as
    ``from_clean``). Images that exist only as bytes inside the dataset are written to ``workdir``
    so that every row has a URI. Rows are read one at a time, as they are measured.
    """
    import datasets

    if bool(hf_id) == bool(data_dir):
        raise ValueError("give exactly one of hf_id (a hub dataset in the local cache) or data_dir (an imagefolder)")
    if bool(gt_column) == bool(specs):
        raise ValueError("give either gt_column (paired data) or degradation specs (synthetic from clean images)")
    _check_degrading(specs, assign, samples_per_image)
    ds = (datasets.load_dataset("imagefolder", data_dir=data_dir, split=hf_split or "train") if data_dir
          else datasets.load_dataset(hf_id, split=hf_split or "train"))
    columns = [image_column] + ([gt_column] if gt_column else [])
    for column in columns:
        if column not in ds.column_names:
            raise ValueError(f"dataset has no column {column!r}; columns: {ds.column_names}")
        ds = ds.cast_column(column, datasets.Image(decode=False))
    ds = ds.select_columns(columns)
    store = Path(workdir) / dataset / split / "source"
    store.mkdir(parents=True, exist_ok=True)

    def uri_of(item: dict, index: int, column: str) -> tuple[str, str]:
        path = item.get("path")
        if path and os.path.exists(path):
            # datasets hands back absolute paths, whatever form of data_dir it was given.
            return path, (Path(path).resolve().relative_to(Path(data_dir).resolve()).as_posix() if data_dir
                          else Path(path).name)
        rel = f"{column}/{index:08d}{Path(path).suffix if path else '.png'}"
        target = store / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item["bytes"])
        return str(target), rel

    if specs:
        clean = (uri_of(item[image_column], i, image_column) for i, item in enumerate(ds))
        return from_clean(clean, specs, dataset, split, workdir, assign, kernels, samples_per_image, total=len(ds))
    types = _types(degradation or "clean")
    pairs = ((uri_of(item[image_column], i, image_column), uri_of(item[gt_column], i, gt_column))
             for i, item in enumerate(ds))

    def measure(pair: tuple[tuple[str, str], tuple[str, str]]) -> tuple[str, _Measured, _Measured]:
        (lq_uri, rel), (gt_uri, _) = pair
        return rel, _measure(lq_uri), _measure(gt_uri)

    out = Manifest()
    for rel, lq, gt in _stream(measure, pairs, len(ds), f"{dataset}/{split} pairs"):
        _pair_rows(out, [(make_key(dataset, split, rel), lq)], gt, dataset, split, vocabulary.task_for(types), types)
    return out


def _expand(path: str, root: str) -> str:
    return os.path.join(root, path) if root and not os.path.isabs(path) and "://" not in path else path


def _flag(entry: dict, name: str) -> bool:
    # YAML reads `yes`/`true` as booleans; anything else (a quoted "false") would be truthy in Python.
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def from_spec(spec_path: str, root: str, workdir: str, kernels: str = "") -> Manifest:
    """Build every dataset of a YAML spec (see ``manifests/``); folders are relative to ``root``."""
    with open(spec_path) as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict) or not isinstance(spec.get("datasets"), list):
        raise ValueError(f"{spec_path}: a spec is a mapping with a 'datasets' list")
    out = Manifest()
    builders: dict[str, Callable[[dict], Manifest]] = {
        "paired": lambda d: from_paired(_expand(d["lq"], root), _expand(d["gt"], root) if d.get("gt") else None,
                                        d["name"], d["split"], d["degradation"], d.get("task", ""), d.get("match", ""),
                                        d.get("lq_match", ""), d.get("gt_match", ""),
                                        many_lq_per_gt=_flag(d, "many_lq_per_gt")),
        "synthetic": lambda d: from_clean_folder(_expand(d["clean"], root), d["degrade"], d["name"], d["split"],
                                                 workdir, d.get("assign", "all"), d.get("kernels") and _expand(d["kernels"], root) or kernels,
                                                 samples_per_image=d.get("samples_per_image", 1)),
        "hf": lambda d: from_hf(d["name"], d["split"], workdir, hf_id=d.get("hf_id", ""),
                                data_dir=_expand(d["data_dir"], root) if d.get("data_dir") else "",
                                hf_split=d.get("hf_split", ""), image_column=d.get("image_column", "image"),
                                gt_column=d.get("gt_column", ""), degradation=d.get("degradation", ""),
                                specs=d.get("degrade", ()), assign=d.get("assign", "all"), kernels=kernels,
                                samples_per_image=d.get("samples_per_image", 1)),
    }
    for i, entry in enumerate(spec["datasets"]):
        where = f"{spec_path}: datasets[{i}] ({entry.get('name', '?')})"
        kind = entry.get("kind")
        if kind not in builders:
            raise ValueError(f"{where}: kind must be one of {sorted(builders)}, got {kind!r}")
        try:
            out.extend(builders[kind](entry))
        except KeyError as e:
            raise ValueError(f"{where}: missing field {e.args[0]!r}") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        except FileNotFoundError as e:
            out.problems.append(Problem(where, "error", str(e)))
    return out


# Rows per parquet row group: a worker reading one shard's rows reads only the groups covering them.
ROW_GROUP_ROWS = 4096


def row_order(key: str) -> str:
    """Where a row goes in the file: an order drawn from a hash of its key. Extraction cuts shards
    from consecutive rows, so this mixes datasets and tasks in every shard (sorted by key, each
    shard would hold one dataset and a trainer reading a few shards would see one task), and it
    depends on the key alone, so the file is deterministic."""
    return hashlib.sha256(key.encode()).hexdigest()


def _relative_to(uri: str | None, folder: Path) -> str | None:
    """A local image path as stored: relative to the manifest's folder (``resolve_uri`` undoes it),
    so the manifest and its images can move together; URLs as they are."""
    if not uri or "://" in uri:
        return uri
    return os.path.relpath(os.path.abspath(uri), folder)


def write(manifest: Manifest, out_path: str) -> tuple[str, str]:
    """Write the rows (in ``row_order``) and the problems next to them.

    Raises ValueError on duplicate keys: two rows with one key would collide in the shards.
    """
    rows = sorted(manifest.rows, key=lambda r: row_order(r["key"]))
    dupes = [k for k, n in Counter(r["key"] for r in rows).items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate sample keys in manifest: {dupes[:5]}")
    folder = Path(out_path).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "lq_uri": _relative_to(r["lq_uri"], folder), "gt_uri": _relative_to(r["gt_uri"], folder)}
            for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out_path, row_group_size=ROW_GROUP_ROWS)
    problems_path = problems_path_for(out_path)
    pq.write_table(pa.Table.from_pylist([p.__dict__ for p in manifest.problems], schema=PROBLEM_SCHEMA), problems_path)
    return out_path, problems_path


def problems_path_for(manifest_path: str) -> str:
    base = manifest_path[: -len(".parquet")] if manifest_path.endswith(".parquet") else manifest_path
    return base + ".problems.parquet"


def open_manifest(path: str) -> pq.ParquetFile:
    """A manifest parquet, its columns checked against SCHEMA (a clear error for anything else);
    only its footer is read."""
    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such manifest file (python -m pipeline.manifest builds one)") from None
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"{path}: not a readable manifest parquet: {e}") from e
    missing = [n for n in SCHEMA.names if n not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: not an lmdir manifest, missing columns {missing}")
    return parquet


def count_rows(path: str) -> int:
    return open_manifest(path).metadata.num_rows


def resolve_uri(uri: str, root: Path) -> str:
    """An image path as a manifest stores it, made usable anywhere: a relative path is relative to
    the manifest's own folder (so a manifest moved with its images, or read by a Ray job in a copy
    of its working dir, still finds them); absolute paths and URLs are kept."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str(root / uri)


def read(path: str) -> list[dict]:
    """The rows of a manifest parquet (all in memory: for test sets and demos, not for extraction,
    which reads each shard's rows where it runs), with image paths resolved (``resolve_uri``)."""
    rows = open_manifest(path).read(columns=SCHEMA.names).to_pylist()
    root = Path(path).resolve().parent
    for row in rows:
        row["lq_uri"] = resolve_uri(row["lq_uri"], root)
        if row["gt_uri"]:
            row["gt_uri"] = resolve_uri(row["gt_uri"], root)
    return rows


def summarize(manifest: Manifest) -> str:
    """Counts people want after a build: rows per dataset/split/degradation, problems by reason."""
    lines = [f"{len(manifest.rows)} samples"]
    for (ds, split, deg), n in sorted(Counter((r["dataset"], r["split"], r["degradation"]) for r in manifest.rows).items()):
        lines.append(f"  {ds}/{split} {deg}: {n}")
    by_severity = {s: [p for p in manifest.problems if p.severity == s] for s in ("error", "warning", "skipped")}
    lines.append(f"{len(by_severity['error'])} files left out with errors, {len(by_severity['warning'])} used "
                 f"after a conversion (warnings), {len(by_severity['skipped'])} not matching their side's pattern")
    shown = by_severity["error"] + by_severity["warning"]
    for p in shown[:20]:
        lines.append(f"  [{p.severity}] {p.path}: {p.reason}")
    if len(shown) > 20:
        lines.append(f"  ... {len(shown) - 20} more in the problems file")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline.manifest", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="source", required=True)

    def common(p: argparse.ArgumentParser, named: bool = True) -> None:
        if named:
            p.add_argument("--dataset", required=True, help="dataset name, part of every key")
            p.add_argument("--split", required=True, help="train, val or test")
        p.add_argument("--out", required=True, help="manifest parquet to write")
        p.add_argument("--workdir", default="", help="where synthesized LQ images go (default: next to --out)")
        p.add_argument("--kernels", default="", help="npz of blur kernels for kernel-blur specs")

    p = sub.add_parser("paired", help="LQ/GT folders matched by file stem")
    common(p)
    p.add_argument("--lq", required=True, help="folder of degraded (LQ) images, searched recursively")
    p.add_argument("--gt", default=None, help="folder of clean (GT) images; omit for real degraded images "
                                              "without reference")
    p.add_argument("--degradation", required=True, help="vocabulary type(s), '+'-joined, e.g. rain")
    p.add_argument("--task", default="", help="task name (default: derived from --degradation, e.g. derain)")
    p.add_argument("--match", default="", help="regex on file stems whose groups form the id LQ and GT pair on")
    p.add_argument("--lq-match", default="", help="like --match, for LQ files only")
    p.add_argument("--gt-match", default="", help="like --match, for GT files only")
    p.add_argument("--many-lq-per-gt", action="store_true",
                   help="several LQ files may pair with one GT (e.g. RESIDE OTS hazy/0001_0.8_0.2.jpg, "
                        "hazy/0001_1_0.08.jpg … of clear/0001.jpg): each is its own row")
    p = sub.add_parser("synthetic", help="clean folder + synthetic degradations")
    common(p)
    p.add_argument("--clean", required=True, help="folder of clean images, searched recursively")
    p.add_argument("--degrade", action="append", required=True,
                   help="degradation spec, e.g. noise:sigma=15..50 (see pipeline/degrade.py); repeat for several")
    p.add_argument("--assign", choices=("all", "cycle"), default="all",
                   help="all: every image gets every spec; cycle: one spec per image in turn")
    p.add_argument("--samples-per-image", type=int, default=1, metavar="N",
                   help="N degraded copies of each clean image per spec, each its own row, key and seed "
                        "(e.g. several noise draws; default 1)")
    p = sub.add_parser("hf", help="a Hugging Face datasets dataset (local imagefolder or cached hub id)")
    common(p)
    p.add_argument("--hf-id", default="", help="hub dataset id, read from the local cache (give this or --data-dir)")
    p.add_argument("--data-dir", default="", help="a local imagefolder (give this or --hf-id)")
    p.add_argument("--hf-split", default="", help="the dataset's own split to read (default: train)")
    p.add_argument("--image-column", default="image", help="column of the LQ images, or of the clean ones "
                                                           "with --degrade (default: image)")
    p.add_argument("--gt-column", default="", help="column of the clean images paired with --image-column")
    p.add_argument("--degradation", default="", help="vocabulary type(s) of real pairs, '+'-joined")
    p.add_argument("--degrade", action="append", default=[],
                   help="degradation spec to apply to the clean --image-column; repeat for several")
    p.add_argument("--assign", choices=("all", "cycle"), default="all",
                   help="all: every image gets every spec; cycle: one spec per image in turn")
    p.add_argument("--samples-per-image", type=int, default=1, metavar="N",
                   help="N degraded copies of each clean image per spec, each its own row, key and seed "
                        "(e.g. several noise draws; default 1)")
    p = sub.add_parser("spec", help="a YAML spec of several datasets (see manifests/)")
    common(p, named=False)
    p.add_argument("spec", help="YAML spec file, e.g. manifests/three_task.yaml")
    p.add_argument("--root", default="", help="folder the spec's relative paths start from")
    return ap


def from_args(args: argparse.Namespace) -> Manifest:
    """The manifest the parsed command line asks for."""
    workdir = args.workdir or str(Path(args.out).with_suffix("")) + "_lq"
    if args.source == "paired":
        return from_paired(args.lq, args.gt, args.dataset, args.split, args.degradation, args.task, args.match,
                           args.lq_match, args.gt_match, args.many_lq_per_gt)
    if args.source == "synthetic":
        return from_clean_folder(args.clean, args.degrade, args.dataset, args.split, workdir, args.assign,
                                 args.kernels, args.samples_per_image)
    if args.source == "hf":
        return from_hf(args.dataset, args.split, workdir, args.hf_id, args.data_dir, args.hf_split,
                       args.image_column, args.gt_column, args.degradation, args.degrade, args.assign, args.kernels,
                       args.samples_per_image)
    return from_spec(args.spec, args.root, workdir, args.kernels)


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = from_args(args)
        out, problems = write(manifest, args.out)
    # Missing folders and files (OSError), unknown types, specs and columns (ValueError), a bad
    # --match regex (re.error), a spec that is not YAML: all the user's to fix, all named in the message.
    except (OSError, ValueError, re.error, yaml.YAMLError) as e:
        return cli.fail(e)
    print(summarize(manifest))
    print(f"manifest: {out}\nproblems: {problems}")
    return 0 if manifest.rows else 1


if __name__ == "__main__":
    sys.exit(main())
