"""Dataset manifests: one parquet index of (LQ, GT) samples that extraction, training and evaluation read.

Sources: paired LQ/GT folders matched by file stem, clean folders degraded synthetically (the LQ
images are written once, so every later reader sees the same bytes), a Hugging Face ``datasets``
dataset, or a YAML spec combining several of these (``manifests/*.yaml``).

Nothing is dropped silently: every unreadable file, size mismatch or unmatched file becomes a
row of ``<out>.problems.parquet`` and is counted on the console; conversions that still yield a
usable image (palette, 16-bit, RGBA, grayscale) are recorded as warnings.

    python -m pipeline.manifest paired --lq DIR --gt DIR --dataset rain100l --split test --degradation rain --out M.parquet
    python -m pipeline.manifest synthetic --clean DIR --degrade noise:sigma=25 --dataset kodak --split test --workdir W --out M.parquet
    python -m pipeline.manifest hf --data-dir DIR --dataset mine --split train --degrade jpeg:quality=10..40 --workdir W --out M.parquet
    python -m pipeline.manifest spec manifests/three_task.yaml --root /data --out three_task.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from pipeline import cli, degrade, vocabulary
from pipeline.image_files import (
    IMAGE_SUFFIXES,
    ImageError,
    LoadedImage,
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
class _Read:
    uri: str
    image: LoadedImage | None
    sha256: str
    error: str = ""


def _read(uri: str) -> _Read:
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        return _Read(uri, None, "", "file not found")
    except OSError as e:
        return _Read(uri, None, "", f"cannot read file: {e}")
    try:
        return _Read(uri, decode_rgb(data, uri), sha256_hex(data))
    except ImageError as e:
        return _Read(uri, None, "", e.reason)


def _read_all(uris: Sequence[str], desc: str) -> list[_Read]:
    # Decoding releases the GIL in PIL and zlib, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return list(tqdm(pool.map(_read, uris), total=len(uris), desc=desc, unit="img", leave=False))


def _warnings(r: _Read) -> list[Problem]:
    return [Problem(r.uri, "warning", note) for note in (r.image.notes if r.image else ())]


def _types(degradation: str | Sequence[str]) -> list[str]:
    types = degradation.split("+") if isinstance(degradation, str) else list(degradation)
    return [vocabulary.check_type(t) for t in types]


def from_paired(lq_dir: str, gt_dir: str | None, dataset: str, split: str, degradation: str,
                task: str = "", match: str = "", lq_match: str = "", gt_match: str = "") -> Manifest:
    """Rows for LQ images matched to GT images by relative path without extension.

    ``match`` (or ``lq_match``/``gt_match`` per side) is a regex on that stem whose groups form the
    id to pair on, e.g. ``rain-(\\d+)`` / ``norain-(\\d+)``. A file its side's pattern does not match
    is not part of that side (recorded as "skipped", e.g. the sharp frames when LQ and GT share a
    folder). With ``gt_dir`` None the LQ images are unpaired (real photos with no reference).
    """
    types = _types(degradation)
    lq_pattern = re.compile(lq_match or match) if (lq_match or match) else None
    gt_pattern = re.compile(gt_match or match) if (gt_match or match) else None
    out = Manifest()

    def ids(folder: str, pattern: re.Pattern[str] | None, side: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for rel in list_images(folder):
            ident = _stem_id(rel, pattern)
            path = os.path.join(folder, rel)
            if ident is None:
                out.problems.append(Problem(path, "skipped", f"not a {side} file: name does not match {pattern.pattern!r}"))
            elif ident in found:
                out.problems.append(Problem(path, "error", f"two {side} files pair as {ident!r} (other: {found[ident]})"))
            else:
                found[ident] = rel
        return found

    lq_by_id = ids(lq_dir, lq_pattern, "LQ")
    gt_by_id = ids(gt_dir, gt_pattern, "GT") if gt_dir is not None else {}
    pairs: list[tuple[str, str | None]] = []
    for ident, rel in sorted(lq_by_id.items()):
        if gt_dir is None:
            pairs.append((rel, None))
        elif ident in gt_by_id:
            pairs.append((rel, gt_by_id[ident]))
        else:
            out.problems.append(Problem(os.path.join(lq_dir, rel), "error", f"unmatched LQ file: no GT pairs as {ident!r}"))
    for ident, rel in sorted(gt_by_id.items()):
        if ident not in lq_by_id:
            out.problems.append(Problem(os.path.join(gt_dir, rel), "error", f"unmatched GT file: no LQ pairs as {ident!r}"))

    lq_reads = _read_all([os.path.join(lq_dir, p[0]) for p in pairs], f"{dataset}/{split} LQ")
    gt_reads = _read_all([os.path.join(gt_dir, p[1]) for p in pairs if p[1]], f"{dataset}/{split} GT") if gt_dir else []
    gt_iter = iter(gt_reads)
    params = json.dumps([{"type": t, "params": {}} for t in types])
    for (lq_rel, gt_rel), lq in zip(pairs, lq_reads):
        gt = next(gt_iter) if gt_rel else None
        bad = [r for r in (lq, gt) if r is not None and r.image is None]
        for r in bad:
            out.problems.append(Problem(r.uri, "error", r.error))
        if bad:
            continue
        out.problems.extend(_warnings(lq) + (_warnings(gt) if gt else []))
        if gt is not None and (gt.image.width, gt.image.height) != (lq.image.width, lq.image.height):
            out.problems.append(Problem(lq.uri, "error", f"LQ is {lq.image.width}x{lq.image.height} but its GT "
                                                          f"{gt.uri} is {gt.image.width}x{gt.image.height}"))
            continue
        out.rows.append(_row(make_key(dataset, split, lq_rel), dataset, split, task or vocabulary.task_for(types),
                             types, params, None, lq, gt))
    return out


def _row(key: str, dataset: str, split: str, task: str, types: Sequence[str], params: str, seed: int | None,
         lq: _Read, gt: _Read | None) -> dict:
    notes = list(lq.image.notes) + ([f"gt: {n}" for n in gt.image.notes] if gt else [])
    return {
        "key": key, "dataset": dataset, "split": split, "task": task,
        "degradation": "+".join(types) if types else "clean", "params": params, "seed": seed,
        "lq_uri": lq.uri, "gt_uri": gt.uri if gt else None,
        "width": lq.image.width, "height": lq.image.height,
        "lq_sha256": lq.sha256, "gt_sha256": gt.sha256 if gt else None, "notes": "; ".join(notes),
    }


def _variant(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", spec).strip("-")


def _check_degrading(specs: Sequence[str], assign: str) -> None:
    """Raise ValueError on a bad spec or assignment: called before any image is read."""
    for spec in specs:
        degrade.parse_spec(spec)
    if assign not in ("all", "cycle"):
        raise ValueError(f"assign must be 'all' or 'cycle', got {assign!r}")


def from_clean(clean: Sequence[_Read], relpaths: Sequence[str], specs: Sequence[str], dataset: str, split: str,
               workdir: str, assign: str = "all", kernels: str = "") -> Manifest:
    """Rows for clean images degraded by each spec (``assign="all"``) or by one spec per image in
    turn (``"cycle"``). Degraded LQ images are written under ``workdir/<dataset>/<split>/``; the seed
    of each comes from its key, so rebuilding gives the same bytes."""
    _check_degrading(specs, assign)
    out = Manifest()
    lq_dir = Path(workdir) / dataset / split
    lq_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, (rel, gt) in enumerate(zip(relpaths, clean)):
        if gt.image is None:
            out.problems.append(Problem(gt.uri, "error", gt.error))
            continue
        out.problems.extend(_warnings(gt))
        for spec in (specs if assign == "all" else [specs[i % len(specs)]]):
            jobs.append((rel, gt, spec))

    def make(job: tuple[str, _Read, str]) -> dict:
        rel, gt, spec = job
        key = make_key(dataset, split, rel, _variant(spec))
        seed = degrade.seed_for(key)
        pixels, applied = degrade.apply(gt.image.pixels, spec, seed, kernels=kernels)
        path = str(lq_dir / f"{key}.png")
        data = save_png(pixels, path)
        lq = _Read(path, LoadedImage(pixels, "RGB", "PNG"), sha256_hex(data))
        types = degrade.types_of(spec)
        return _row(key, dataset, split, vocabulary.task_for(types), types, json.dumps(applied), seed, lq, gt)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        out.rows.extend(tqdm(pool.map(make, jobs), total=len(jobs), desc=f"{dataset}/{split} degrade",
                             unit="img", leave=False))
    return out


def from_clean_folder(clean_dir: str, specs: Sequence[str], dataset: str, split: str, workdir: str,
                      assign: str = "all", kernels: str = "") -> Manifest:
    """``from_clean`` over every image file under ``clean_dir``."""
    _check_degrading(specs, assign)
    rels = list_images(clean_dir)
    reads = _read_all([os.path.join(clean_dir, r) for r in rels], f"{dataset}/{split} clean")
    return from_clean(reads, rels, specs, dataset, split, workdir, assign, kernels)


def from_hf(dataset: str, split: str, workdir: str, hf_id: str = "", data_dir: str = "", hf_split: str = "",
            image_column: str = "image", gt_column: str = "", degradation: str = "", specs: Sequence[str] = (),
            assign: str = "all", kernels: str = "") -> Manifest:
    """Rows from a Hugging Face ``datasets`` dataset: a local ``imagefolder`` (``data_dir``) or a hub
    id whose cache is present (set HF_HUB_OFFLINE=1 to make sure nothing is fetched).

    Either ``gt_column`` names the clean images paired with ``image_column`` (real pairs, typed by
    ``degradation``), or ``specs`` degrade the clean ``image_column`` synthetically. Images that
    exist only as bytes inside the dataset are written to ``workdir`` so that every row has a URI.
    """
    import datasets

    if bool(hf_id) == bool(data_dir):
        raise ValueError("give exactly one of hf_id (a hub dataset in the local cache) or data_dir (an imagefolder)")
    if bool(gt_column) == bool(specs):
        raise ValueError("give either gt_column (paired data) or degradation specs (synthetic from clean images)")
    _check_degrading(specs, assign)
    ds = (datasets.load_dataset("imagefolder", data_dir=data_dir, split=hf_split or "train") if data_dir
          else datasets.load_dataset(hf_id, split=hf_split or "train"))
    columns = [image_column] + ([gt_column] if gt_column else [])
    for column in columns:
        if column not in ds.column_names:
            raise ValueError(f"dataset has no column {column!r}; columns: {ds.column_names}")
        ds = ds.cast_column(column, datasets.Image(decode=False))
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

    rows = [(i, {c: ds[i][c] for c in columns}) for i in range(len(ds))]
    if specs:
        located = [uri_of(r[image_column], i, image_column) for i, r in rows]
        reads = _read_all([u for u, _ in located], f"{dataset}/{split} clean")
        return from_clean(reads, [rel for _, rel in located], specs, dataset, split, workdir, assign, kernels)
    types = _types(degradation or "clean")
    params = json.dumps([{"type": t, "params": {}} for t in types])
    out = Manifest()
    lq_located = [uri_of(r[image_column], i, image_column) for i, r in rows]
    gt_located = [uri_of(r[gt_column], i, gt_column) for i, r in rows]
    lq_reads = _read_all([u for u, _ in lq_located], f"{dataset}/{split} LQ")
    gt_reads = _read_all([u for u, _ in gt_located], f"{dataset}/{split} GT")
    for (_, rel), lq, gt in zip(lq_located, lq_reads, gt_reads):
        bad = [r for r in (lq, gt) if r.image is None]
        out.problems.extend(Problem(r.uri, "error", r.error) for r in bad)
        if bad:
            continue
        out.problems.extend(_warnings(lq) + _warnings(gt))
        if (gt.image.width, gt.image.height) != (lq.image.width, lq.image.height):
            out.problems.append(Problem(lq.uri, "error", f"LQ is {lq.image.width}x{lq.image.height} but its GT "
                                                          f"{gt.uri} is {gt.image.width}x{gt.image.height}"))
            continue
        out.rows.append(_row(make_key(dataset, split, rel), dataset, split, vocabulary.task_for(types), types,
                             params, None, lq, gt))
    return out


def _expand(path: str, root: str) -> str:
    return os.path.join(root, path) if root and not os.path.isabs(path) and "://" not in path else path


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
                                        d.get("lq_match", ""), d.get("gt_match", "")),
        "synthetic": lambda d: from_clean_folder(_expand(d["clean"], root), d["degrade"], d["name"], d["split"],
                                                 workdir, d.get("assign", "all"), d.get("kernels") and _expand(d["kernels"], root) or kernels),
        "hf": lambda d: from_hf(d["name"], d["split"], workdir, hf_id=d.get("hf_id", ""),
                                data_dir=_expand(d["data_dir"], root) if d.get("data_dir") else "",
                                hf_split=d.get("hf_split", ""), image_column=d.get("image_column", "image"),
                                gt_column=d.get("gt_column", ""), degradation=d.get("degradation", ""),
                                specs=d.get("degrade", ()), assign=d.get("assign", "all"), kernels=kernels),
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
        except FileNotFoundError as e:
            out.problems.append(Problem(where, "error", str(e)))
    return out


def write(manifest: Manifest, out_path: str) -> tuple[str, str]:
    """Write the rows (sorted by key, so the file is deterministic) and the problems next to them.

    Raises ValueError on duplicate keys: two rows with one key would collide in the shards.
    """
    rows = sorted(manifest.rows, key=lambda r: r["key"])
    dupes = [k for k, n in Counter(r["key"] for r in rows).items() if n > 1]
    if dupes:
        raise ValueError(f"duplicate sample keys in manifest: {dupes[:5]}")
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out_path)
    problems_path = problems_path_for(out_path)
    pq.write_table(pa.Table.from_pylist([p.__dict__ for p in manifest.problems], schema=PROBLEM_SCHEMA), problems_path)
    return out_path, problems_path


def problems_path_for(manifest_path: str) -> str:
    base = manifest_path[: -len(".parquet")] if manifest_path.endswith(".parquet") else manifest_path
    return base + ".problems.parquet"


def read(path: str) -> list[dict]:
    """The rows of a manifest parquet, checked against SCHEMA (a clear error for anything else)."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such manifest file (python -m pipeline.manifest builds one)") from None
    except (OSError, pa.ArrowInvalid) as e:
        raise ValueError(f"{path}: not a readable manifest parquet: {e}") from e
    missing = [n for n in SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not an lmdir manifest, missing columns {missing}")
    return table.select(SCHEMA.names).to_pylist()


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
    p = sub.add_parser("synthetic", help="clean folder + synthetic degradations")
    common(p)
    p.add_argument("--clean", required=True, help="folder of clean images, searched recursively")
    p.add_argument("--degrade", action="append", required=True,
                   help="degradation spec, e.g. noise:sigma=15..50 (see pipeline/degrade.py); repeat for several")
    p.add_argument("--assign", choices=("all", "cycle"), default="all",
                   help="all: every image gets every spec; cycle: one spec per image in turn")
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
                           args.lq_match, args.gt_match)
    if args.source == "synthetic":
        return from_clean_folder(args.clean, args.degrade, args.dataset, args.split, workdir, args.assign,
                                 args.kernels)
    if args.source == "hf":
        return from_hf(args.dataset, args.split, workdir, args.hf_id, args.data_dir, args.hf_split,
                       args.image_column, args.gt_column, args.degradation, args.degrade, args.assign, args.kernels)
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
