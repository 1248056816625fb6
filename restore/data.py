"""Prior shards and on-the-fly synthetic pairs streamed into restorer batches, exactly resumable.

``--shards`` (SPEC) may be local tars named by a brace pattern, a glob or both
(``out/{000000..000003}.tar``, ``out/*.tar``, ``{a,b}/*.tar``), an extraction's folder or its
``index.json``, a published-set manifest (path or URL; its shards are fetched and verified into
the local cache first, see ``pipeline.shard_cache``) or a brace pattern of http(s) URLs.
Decoding uses ``pipeline.sample_format.decode_sample`` only: webdataset's own decoders can
unpickle, ours never do.

The training stream of one rank is split into *logical workers*, one per DataLoader worker. A
logical worker's stream is a sequence of epochs; epoch ``e`` draws shards with replacement
(``resampled``) or walks this rank's and worker's share of them, passes raw records through a
shuffle buffer, and cuts decoded, augmented samples into batches. Every random choice is seeded
by (seed, rank, logical worker, epoch) and, per sample, by its raw position in the epoch, so the
stream is a pure function of those numbers. Each batch carries its worker's position (epoch,
raw records read, batches made); the trainer saves the positions and a resumed run skips raw
records, without decoding them, to continue exactly where it stopped.

Beside (or instead of) shards, the stream can degrade clean photos on the fly
(``restore.synthesis``): each example of an epoch is a *draw*, taken from the shards with
probability ``shard_share`` and synthesised otherwise, so every batch mixes tasks by their
weights. A synthetic example is a pure function of (seed, rank, logical worker, epoch, draw);
positions count draws too, so a resumed stream replays both sources exactly.

Augmentation of shard samples: one random crop, horizontal flip and rotation by a multiple of 90° applied alike
to LQ and GT. The reference (rendered at the diffusion model's resolution) is first *resized to
the LQ image's size*, as the model does at inference, so its textures have the LQ's scale, then
cropped with a window of its own, flipped and rotated like the LQ: a render made from a caption
shows the scene, never the same pixels at the same place, and the restorer's reference branch
learns to find what it needs anywhere in it.

Per-dataset weights (``StreamConfig.dataset_weights``, PromptIR's "Rain100L ×120") need random
access, because an extraction's shards mix its datasets: ``index_shards`` reads the tar headers and
metadata members of local shards once into a ``SampleIndex``, and each shard draw then picks one
sample with probability proportional to its dataset's weight and reads just its bytes. Such a
draw is a pure function of (seed, rank, logical worker, epoch, draw), like a synthetic one.

Bad data never ends a run: an unreadable tar (truncated, missing, a failed download) or a
sample that breaks the format is skipped, counted per worker and logged at a limited rate.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import logging
import math
import multiprocessing
import os
import random
import signal
import tarfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import braceexpand
import cv2
import numpy as np
import torch
import webdataset as wds
from threadpoolctl import threadpool_limits
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline import shard_cache
from pipeline.sample_format import (
    GT,
    META,
    TOKEN_POSITIONS,
    Sample,
    SampleFormatError,
    decode_sample,
)
from pipeline.shards import INDEX
from pipeline.tar_records import BLOCK, TarStreamError, split_key, tar_records, url_records
from pipeline.vocabulary import DEGRADATION_TYPES
from restore.handover import Batches, SlotStream
from restore.lifeline import die_with_parent
from restore.model.priors import PRIOR_NAMES, Priors
from restore.synthesis import SynthesisConfig, Synthesizer

log = logging.getLogger("lmdir.data")

PUBLISHED_SCHEMA = "lmdir-published-set"
# After this many skip messages a worker only logs a summary, at most once per interval.
SKIP_LOG_FIRST = 5
SKIP_LOG_INTERVAL_S = 60.0
# A stream that meets this many bad records or shards, or samples of another split, in a row
# stops: the data (or the split asked for) is wrong, and waiting longer would only hang the run.
BARREN_LIMIT = 2000
# Batches each loader worker makes ahead of the trainer.
PREFETCH = 4


@dataclass(frozen=True)
class ShardSource:
    """What a SPEC resolved to: shard URLs or paths, and what the index says about them."""

    urls: tuple[str, ...]
    samples: int | None = None  # total samples, when an index or manifest gives counts
    prior_preset: str | None = None  # the extraction preset that made the priors, when known
    embedding_dims: dict[str, int] = field(default_factory=dict)  # {"E": clip width, "W": token width}


def _is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _from_index(path: Path) -> ShardSource:
    index = json.loads(path.read_text())
    shards = index.get("shards")
    if not isinstance(shards, list):
        raise ValueError(f"{path}: neither an extraction index (no 'shards' list) nor a published-set manifest")
    urls = tuple(str(path.parent / s["name"]) for s in shards if s.get("samples", 1) > 0)
    if not urls:
        raise ValueError(f"{path}: the index lists no shard with samples")
    return ShardSource(urls, int(index.get("samples", 0)) or None, index.get("preset"),
                       dict(index.get("embedding_dims") or {}))


def _from_published(spec: str) -> ShardSource:
    cache = shard_cache.open_cache(spec)
    manifest = cache.manifest
    presets = tuple(manifest.provenance.presets)
    return ShardSource(tuple(cache.paths()), sum(s.samples for s in manifest.shards),
                       presets[0] if len(presets) == 1 else None, dict(manifest.embedding_dims))


def _local_paths(spec: str) -> tuple[str, ...]:
    """The files a local SPEC names: each brace alternative a path, or a glob's sorted matches."""
    paths: list[str] = []
    for pattern in braceexpand.braceexpand(spec):
        # A file whose name holds glob characters is itself, not a pattern.
        if any(c in pattern for c in "*?[") and not Path(pattern).exists():
            matches = sorted(glob.glob(pattern))
            if not matches:
                part = "" if pattern == spec else f": {pattern}"
                raise FileNotFoundError(f"--shards {spec}{part} matches no file")
            paths.extend(matches)
        else:
            paths.append(pattern)
    return tuple(paths)


def resolve(spec: str) -> ShardSource:
    """Turn a ``--shards`` SPEC into shard paths or URLs (see the module docstring).

    Local tars named by a pattern take their sample counts from an ``index.json`` beside them,
    when there is one. A folder stands for its ``index.json``, else for the tars in it. Raises
    FileNotFoundError naming a missing local shard or a glob that matches nothing.
    """
    if Path(spec).is_dir():
        index = Path(spec) / INDEX
        return _from_index(index) if index.is_file() else resolve(str(Path(spec) / "*.tar"))
    if shard_cache.is_manifest(spec):
        if _is_url(spec):
            return _from_published(spec)
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such index or manifest file")
        raw = json.loads(path.read_text())
        if isinstance(raw, dict) and raw.get("schema") == PUBLISHED_SCHEMA:
            return _from_published(spec)
        return _from_index(path)
    if _is_url(spec):
        return ShardSource(tuple(braceexpand.braceexpand(spec)))
    urls = _local_paths(spec)
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"--shards {spec}: {len(missing)} of {len(urls)} shard files do not exist, "
                                f"e.g. {missing[0]}")
    index_path = Path(urls[0]).parent / INDEX
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        counts = {s["name"]: int(s["samples"]) for s in index.get("shards", [])}
        if all(Path(u).name in counts for u in urls):
            return ShardSource(urls, sum(counts[Path(u).name] for u in urls), index.get("preset"),
                               dict(index.get("embedding_dims") or {}))
    return ShardSource(urls)


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers, the same in every process (Python's str hash is not)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class SkipCounter:
    """Counts skipped tars and samples of one worker and logs them at a limited rate.

    Used as the tar reader's ``handler`` (``pipeline.tar_records.url_records``) and for bad
    samples: returning True tells the reader to continue after the error. With
    a ``limit``, more than that many skips in a row (no ``reset`` between) raise instead: data
    that is all bad should stop the run with a reason, not spin on it forever.
    """

    def __init__(self, where: str, limit: int | None = None):
        self.where = where
        self.limit = limit
        self.count = 0
        self.in_a_row = 0
        self._last_log = 0.0
        self._unlogged = 0

    def reset(self) -> None:
        """A good sample arrived."""
        self.in_a_row = 0

    def __call__(self, error: Exception) -> bool:
        self.count += 1
        self.in_a_row += 1
        if self.limit is not None and self.in_a_row > self.limit:
            # Not chained: the message carries the last error, and a DataLoader worker's re-raise
            # would print the chain's first error (the reader's, not this) as the original.
            raise ValueError(f"{self.where}: {self.limit} bad records or shards in a row, the data is "
                             f"unusable; last error: {_short(error)}") from None
        now = time.monotonic()
        if self.count <= SKIP_LOG_FIRST:
            log.warning("%s: skipped bad data (%d so far): %s", self.where, self.count, _short(error))
            self._last_log = now
        elif now - self._last_log >= SKIP_LOG_INTERVAL_S:
            log.warning("%s: skipped %d more bad records or shards (%d so far); latest: %s",
                        self.where, self._unlogged + 1, self.count, _short(error))
            self._last_log, self._unlogged = now, 0
        else:
            self._unlogged += 1
        return True


def _short(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 300 else text[:297] + "..."


# --- samples to arrays -------------------------------------------------------------------------

def prior_arrays(sample: Sample, token_width: int, clip_width: int) -> dict[str, np.ndarray]:
    """The non-image priors of one sample as fixed-shape arrays plus presence flags.

    Absent priors are zeros with a False flag, so any mix of samples stacks into one batch.
    Raises SampleFormatError when the sample's embedding widths differ from the model's.
    """
    out: dict[str, np.ndarray] = {}
    emb = sample.embeddings
    has_image = emb is not None and "clip_image" in emb
    if emb is not None:
        width = emb["caption_tokens"].shape[1]
        e_width = emb["clip_image"].shape[0] if has_image else clip_width
        if (width, e_width) != (token_width, clip_width):
            raise SampleFormatError(sample.key, "npz", f"embeddings are W={width}, E={e_width}; the restorer "
                                                       f"expects W={token_width}, E={clip_width}")
    positions = np.arange(TOKEN_POSITIONS)
    # Embeddings stay float16, as stored (sample_format.EMBEDDINGS): widen() makes them float32
    # where the model reads them.
    for text in ("degradation", "caption"):
        length = int(emb[f"{text}_length"]) if emb is not None else 0
        tokens = emb[f"{text}_tokens"] if emb is not None else np.zeros((TOKEN_POSITIONS, token_width), np.float16)
        out[f"{text}_tokens"] = tokens
        out[f"{text}_mask"] = positions < length
        out[f"present_{text}_tokens"] = np.bool_(length > 0)
    out["clip_image"] = emb["clip_image"] if has_image else np.zeros(clip_width, np.float16)
    out["present_clip_image"] = np.bool_(has_image)
    vector = (sample.meta.analysis or {}).get("vector")
    if vector is not None and len(vector) != len(DEGRADATION_TYPES):
        raise SampleFormatError(sample.key, META, f"analysis vector has {len(vector)} entries, the vocabulary "
                                                  f"{len(DEGRADATION_TYPES)}")
    out["degradation_vector"] = np.asarray(vector if vector is not None else [0.0] * len(DEGRADATION_TYPES),
                                           np.float32)
    out["present_degradation_vector"] = np.bool_(vector is not None)
    return out


def to_chw(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) → float32 (3, H, W) in [0, 1]."""
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / 255.0


def planar(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (3, H, W), contiguous: how a training batch carries an image."""
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def widen(tensor: Tensor) -> Tensor:
    """A batch tensor in the type the model reads: uint8 images as float32 in [0, 1] (the same
    values as ``to_chw``), float16 embeddings as float32, anything else as it is.

    Training batches carry images as uint8 and embeddings as stored (float16), a third of the
    bytes of float32: a batch is copied into shared memory by its loader worker, out of it by the
    trainer (``restore.handover``) and then to the GPU. Widen after that last copy, on the device."""
    if tensor.dtype == torch.uint8:
        # A 0-dim tensor on the same device, not the number: CUDA divides by a Python number as a
        # multiplication by its reciprocal, one ulp off for about half of the 256 values.
        return tensor.float().div_(torch.full((), 255.0, device=tensor.device))
    return tensor.float() if tensor.dtype == torch.float16 else tensor


def widen_priors(priors: Priors) -> Priors:
    """``priors`` with their reference and embeddings widened (``widen``)."""
    return replace(priors, **{name: widen(getattr(priors, name))
                              for name in ("degradation_tokens", "caption_tokens", "clip_image", "reference")
                              if getattr(priors, name) is not None})


def resize_rgb(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize uint8 RGB; area averaging when shrinking, bilinear when enlarging."""
    if pixels.shape[:2] == (height, width):
        return pixels
    shrink = width * height < pixels.shape[0] * pixels.shape[1]
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    pad_h, pad_w = max(0, size - img.shape[0]), max(0, size - img.shape[1])
    if not (pad_h or pad_w):
        return img
    # Symmetric padding works for any pad size, unlike "reflect".
    return np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


def training_example(sample: Sample, crop: int, rng: np.random.Generator, token_width: int,
                     clip_width: int) -> dict[str, np.ndarray]:
    """One augmented training example: the same crop, flip and rotation for LQ and GT; the
    reference, resized to the LQ's size, gets its own crop window and the same flip and rotation.
    Images are uint8 (3, crop, crop) and embeddings float16: ``widen`` them for the model."""
    if sample.gt is None:
        raise SampleFormatError(sample.key, GT, "training needs a GT image")
    height, width = sample.lq.shape[:2]
    images = [sample.lq, sample.gt]
    if sample.ref is not None:
        images.append(resize_rgb(sample.ref, width, height))
    images = [_pad_to(img, crop) for img in images]
    y = int(rng.integers(0, images[0].shape[0] - crop + 1))
    x = int(rng.integers(0, images[0].shape[1] - crop + 1))
    turns, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
    windows = [(y, x)] * 2
    if sample.ref is not None:
        # Drawn after the LQ's draws, so samples without a reference keep their crops.
        windows.append((int(rng.integers(0, images[2].shape[0] - crop + 1)),
                        int(rng.integers(0, images[2].shape[1] - crop + 1))))
    out_images = []
    for img, (top, left) in zip(images, windows):
        img = np.rot90(img[top:top + crop, left:left + crop], turns)
        out_images.append(planar(img[:, ::-1] if flip else img))
    example = {"lq": out_images[0], "gt": out_images[1], **prior_arrays(sample, token_width, clip_width)}
    example["reference"] = out_images[2] if sample.ref is not None else np.zeros_like(out_images[0])
    example["present_reference"] = np.bool_(sample.ref is not None)
    return example


# Where each tensor of a collated batch starts in its buffer: a multiple of any element size.
_ALIGN = 64


def trim_tokens(examples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The examples with their token arrays and masks cut to the batch's longest text (at least
    one position), in place.

    The rows past a text's length are padding (zeros, or an encoder's states at its padding
    positions) that the model masks out (zero attention weight), so the cut changes no output.
    An analysis sentence is about 10-20 of the 77 positions, and the caption of a preset without
    a captioner none: at batch 8 and 384-wide tokens the full arrays were 1.9 of a batch's 3.2 MB,
    stacked, handed from the loader worker to the trainer and attended over for nothing."""
    for text in ("degradation", "caption"):
        longest = max(1, max(int(e[f"{text}_mask"].sum()) for e in examples))
        for e in examples:
            e[f"{text}_tokens"], e[f"{text}_mask"] = e[f"{text}_tokens"][:longest], e[f"{text}_mask"][:longest]
    return examples


def collate(examples: list[dict[str, np.ndarray]], **whole: np.ndarray) -> dict[str, torch.Tensor]:
    """Stack examples (dicts of equally shaped arrays) into a dict of tensors; ``whole`` arrays
    (one per batch, not per example) are added as they are.

    The tensors are views of one buffer, so a loader worker hands a batch over in one copy
    (``restore.handover``). Handed over the DataLoader's own way, a storage per tensor (16 a
    batch), each in a new shared-memory file, a batch of 8 crops of 64² cost the worker 10-15 ms of
    CPU (about what decoding half of its samples takes) and the trainer's process 8-10 ms
    (bench/RESULTS.md).
    """
    count = len(examples)
    layout, size = [], 0
    for name, value in [*examples[0].items(), *whole.items()]:
        value = np.asarray(value)
        shape = value.shape if name in whole else (count, *value.shape)
        nbytes = value.nbytes if name in whole else value.nbytes * count
        layout.append((name, value.dtype, shape, size, nbytes))
        size += -(-nbytes // _ALIGN) * _ALIGN
    buffer = torch.empty(size, dtype=torch.uint8)
    flat = buffer.numpy()
    batch = {}
    for name, dtype, shape, start, nbytes in layout:
        out = flat[start:start + nbytes].view(dtype).reshape(shape)
        if name in whole:
            out[...] = whole[name]
        else:
            # Row by row: np.stack's checks cost more than the copies at these sizes (collate
            # took 0.52 ms a batch of eight 64² crops with it, 0.38 without).
            for i, example in enumerate(examples):
                value = np.asarray(example[name])
                # An assignment would broadcast a smaller array and cast any dtype, silently.
                if value.shape != shape[1:] or value.dtype != dtype:
                    raise ValueError(f"example {i}: {name} is {value.dtype} {value.shape}, "
                                     f"example 0 {dtype} {shape[1:]}")
                out[i] = value
        batch[name] = buffer[start:start + nbytes].view(_torch_dtype(dtype)).view(shape)
    return batch


@functools.cache
def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def batch_priors(batch: dict[str, torch.Tensor]) -> Priors:
    """The Priors of a collated batch (fields plus per-sample presence flags)."""
    return Priors(
        degradation_tokens=batch["degradation_tokens"], degradation_mask=batch["degradation_mask"],
        clip_image=batch["clip_image"], degradation_vector=batch["degradation_vector"],
        caption_tokens=batch["caption_tokens"], caption_mask=batch["caption_mask"],
        reference=batch["reference"],
        present={name: batch[f"present_{name}"] for name in PRIOR_NAMES},
    )


def sample_priors(sample: Sample, token_width: int, clip_width: int, use_reference: bool = True) -> Priors:
    """Priors of one full-size sample as a batch of one (validation, evaluation, inference)."""
    arrays = prior_arrays(sample, token_width, clip_width)
    has_ref = use_reference and sample.ref is not None
    arrays["reference"] = planar(sample.ref) if has_ref else np.zeros((3, 8, 8), np.uint8)
    arrays["present_reference"] = np.bool_(has_ref)
    return widen_priors(batch_priors(collate(trim_tokens([arrays]))))


# --- random access for per-dataset weights ---------------------------------------------------

@dataclass(frozen=True, eq=False)
class SampleIndex:
    """Where each sample of a set of local shards lies, and its (dataset, split, task) label.

    Sample ``i`` is the tar bytes ``[start[i], stop[i])`` of shard ``urls[shard[i]]`` (webdataset
    keeps one sample's members adjacent); ``label[i]`` indexes ``labels``.
    """

    urls: tuple[str, ...]
    shard: np.ndarray  # (N,) int32
    start: np.ndarray  # (N,) int64
    stop: np.ndarray  # (N,) int64
    label: np.ndarray  # (N,) int32
    labels: tuple[tuple[str, str, str], ...]  # (dataset, split, task)
    unreadable: tuple[str, ...] = ()  # shards that could not be read: left out, as the stream skips them

    def __len__(self) -> int:
        return len(self.shard)

    def counts(self, split: str | None) -> Counter[tuple[str, str]]:
        """Samples per (dataset, task) in ``split`` (None: in every split)."""
        per_label = np.bincount(self.label, minlength=len(self.labels))
        counts: Counter[tuple[str, str]] = Counter()
        for (dataset, sample_split, task), n in zip(self.labels, per_label):
            if split is None or sample_split == split:
                counts[dataset, task] += int(n)
        return counts

    def ids(self, split: str | None) -> np.ndarray:
        """The samples of ``split`` (None: all), in index order."""
        keep = np.asarray([split is None or s == split for _, s, _ in self.labels], bool)
        return np.flatnonzero(keep[self.label])

    def record(self, i: int) -> dict[str, Any]:
        """The webdataset record of sample ``i`` (``__key__``, ``__url__`` and its members' bytes)."""
        url = self.urls[self.shard[i]]
        with open(url, "rb") as f:
            f.seek(int(self.start[i]))
            chunk = f.read(int(self.stop[i] - self.start[i]))
        record = next(tar_records(io.BytesIO(chunk), url), None)
        if record is None:
            raise TarStreamError(url, int(self.start[i]), "no member where the index says sample "
                                                          f"{i} lies (was the shard rewritten?)")
        return record


def index_shards(urls: tuple[str, ...]) -> SampleIndex:
    """Read the tar headers and metadata members of local shards into a SampleIndex (no image
    is read: about 1 ms a sample on a busy 2-core machine). An unreadable shard is listed in ``unreadable``;
    a URL raises ValueError, since random access needs the shards on a local disk."""
    remote = [u for u in urls if _is_url(u)]
    if remote:
        raise ValueError(f"per-dataset weights read samples by offset and need local shards, got {remote[0]}; "
                         "download the set first (python -m pipeline.download)")
    shard, start, stop, label = [], [], [], []
    labels: dict[tuple[str, str, str], int] = {}
    unreadable = []
    for number, url in enumerate(urls):
        rows = []
        try:
            with tarfile.open(url, mode="r:") as tar:
                key, first, last, meta = None, 0, 0, None
                for member in tar:
                    parts = split_key(member.name) if member.isreg() else None
                    if parts is None:
                        continue  # no record's member (the reader passes it over too)
                    if parts[0] != key:
                        if key is not None:
                            rows.append((first, last, meta))
                        key, first, meta = parts[0], member.offset, None
                    last = member.offset_data + -(-member.size // BLOCK) * BLOCK
                    if parts[1] == META:
                        meta = _json_or_none(tar.extractfile(member).read())
                if key is not None:
                    rows.append((first, last, meta))
        except (tarfile.TarError, OSError) as e:
            log.warning("%s: cannot index this shard, it is left out: %s", url, _short(e))
            unreadable.append(url)
            continue
        for first, last, meta in rows:
            if not isinstance(meta, dict):
                continue  # no readable metadata: decode_sample would reject the sample anyway
            labelled = (str(meta.get("dataset")), str(meta.get("split")), str(meta.get("task")))
            shard.append(number)
            start.append(first)
            stop.append(last)
            label.append(labels.setdefault(labelled, len(labels)))
    return SampleIndex(tuple(urls), np.asarray(shard, np.int32), np.asarray(start, np.int64),
                       np.asarray(stop, np.int64), np.asarray(label, np.int32), tuple(labels), tuple(unreadable))


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@dataclass(frozen=True)
class DatasetShare:
    """One dataset of a weighted mix: its samples in the training split, weight and share of draws."""

    dataset: str
    task: str
    samples: int
    weight: float  # 0: never drawn (a dataset of the shards that the weights do not name)
    share: float


def dataset_mix(index: SampleIndex, weights: Mapping[str, float], split: str | None) -> list[DatasetShare]:
    """Each dataset's share of draws, ∝ samples × weight (PromptIR's epoch of repeated lists).

    Raises ValueError when a named dataset has no sample in ``split`` or nothing can be drawn.
    """
    counts = index.counts(split)
    per_dataset = Counter()
    tasks: dict[str, set[str]] = {}
    for (dataset, task), n in counts.items():
        per_dataset[dataset] += n
        tasks.setdefault(dataset, set()).add(task)
    missing = sorted(d for d, w in weights.items() if w > 0 and not per_dataset[d])
    if missing:
        found = ", ".join(f"{d} ({n})" for d, n in sorted(per_dataset.items())) or "none"
        raise ValueError(f"dataset_weights names {', '.join(missing)}, but the shards hold no such sample in split "
                         f"{split!r} (they hold: {found}); extract it, or set dataset_weights.{missing[0]}=0")
    total = sum(n * weights.get(d, 0.0) for d, n in per_dataset.items())
    if total <= 0:
        raise ValueError("dataset_weights leave nothing to draw: give a dataset of the shards a weight above 0")
    return [DatasetShare(d, "+".join(sorted(tasks[d])), n, weights.get(d, 0.0), n * weights.get(d, 0.0) / total)
            for d, n in sorted(per_dataset.items(), key=lambda kv: -kv[1] * weights.get(kv[0], 0.0))]


def _weighted_ids(index: SampleIndex, weights: Mapping[str, float], split: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The drawable samples and the cumulative sum of their weights."""
    ids = index.ids(split)
    w = np.asarray([weights.get(dataset, 0.0) for dataset, _, _ in index.labels], np.float64)[index.label[ids]]
    keep = w > 0
    return ids[keep], np.cumsum(w[keep])


# --- the training stream ----------------------------------------------------------------------

@dataclass(frozen=True)
class Position:
    """Where a logical worker's stream stands: epoch, raw shard records read, batches made and
    examples drawn (from shards or synthesis) in it."""

    epoch: int = 0
    raw: int = 0
    batches: int = 0
    draws: int = 0


@dataclass(frozen=True)
class StreamConfig:
    """Everything a DataLoader worker needs to rebuild its part of the stream (picklable)."""

    urls: tuple[str, ...]
    crop: int
    batch_size: int
    batches_per_epoch: int  # per logical worker
    token_width: int
    clip_width: int
    shuffle_buffer: int = 256
    seed: int = 0
    split: str | None = "train"
    resampled: bool = True
    synthesis: SynthesisConfig | None = None  # degrade clean photos on the fly (restore.synthesis)
    shard_share: float = 1.0  # with both sources: the share of examples taken from the shards
    # Per-dataset weights: shard samples are drawn from ``index`` with probability ∝ the weight of
    # their dataset (absent datasets: never) instead of streamed from the tars. Both or neither.
    index: SampleIndex | None = None
    dataset_weights: Mapping[str, float] | None = None


def _split_of(record: dict[str, Any]) -> str | None:
    try:
        return json.loads(record[META]).get("split")
    except (KeyError, ValueError, AttributeError, TypeError):
        return None  # decode_sample reports the real problem


# Seed tags that keep a draw's source choice, its synthetic sample and its indexed shard sample
# apart from the seeds of streamed shard samples.
_SOURCE_TAG, _SYNTH_TAG, _INDEXED_TAG = 1, 2, 3


def synthetic_example(sample: Sample, token_width: int, clip_width: int) -> dict[str, np.ndarray]:
    """A synthesised crop (already cropped and augmented before it was degraded) as arrays."""
    example = {"lq": planar(sample.lq), "gt": planar(sample.gt), **prior_arrays(sample, token_width, clip_width)}
    example["reference"] = np.zeros_like(example["lq"])
    example["present_reference"] = np.bool_(False)
    return example


class TrainStream(IterableDataset):
    """The batches of one rank: an infinite sequence of epochs per logical worker.

    Each example of an epoch is a *draw*: from the shards, or from the synthesiser, chosen by a
    seed of (epoch, draw), so tasks mix inside every batch by their weights. ``start[w]`` is the
    Position logical worker ``w`` resumes from; DataLoader worker ``i`` plays logical worker
    ``(i + rotation) % workers``, so a resumed DataLoader, which asks its workers in turn
    starting with worker 0, continues the global batch order.
    """

    def __init__(self, config: StreamConfig, rank: int, world: int, workers: int, start: tuple[Position, ...],
                 rotation: int = 0):
        super().__init__()
        if len(start) != workers:
            raise ValueError(f"need one start position per logical worker ({workers}), got {len(start)}")
        if not config.urls and config.synthesis is None:
            raise ValueError("the training stream needs shards, synthesis, or both")
        if (config.index is None) != (config.dataset_weights is None):
            raise ValueError("per-dataset weights need both StreamConfig.index and StreamConfig.dataset_weights")
        self.config, self.rank, self.world, self.workers = config, rank, world, workers
        self.start, self.rotation = start, rotation
        self.weighted = None
        if config.index is not None:
            self.weighted = _weighted_ids(config.index, config.dataset_weights, config.split)
            if not len(self.weighted[0]):
                raise ValueError(f"no sample of split {config.split!r} has a dataset weight above 0")

    def _shards(self, logical: int, rng: random.Random) -> Iterator[str]:
        urls = self.config.urls
        if self.config.resampled:
            while True:
                yield urls[rng.randrange(len(urls))]
        # Without resampling: this rank's and this worker's share, reshuffled on each pass.
        mine = list(urls[self.rank::self.world][logical::self.workers])
        if not mine:
            raise ValueError(f"{len(urls)} shards cannot be split over {self.world} ranks x {self.workers} "
                             f"workers; use resampled shards or fewer workers")
        while True:
            rng.shuffle(mine)
            yield from mine

    def _shard_examples(self, logical: int, epoch_seed: int, start_raw: int,
                        skips: SkipCounter) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """(example, raw records read so far) from this epoch's shard records, past ``start_raw``."""
        c = self.config
        rng = random.Random(epoch_seed)
        records = url_records(self._shards(logical, rng), skips)
        records = wds.shuffle(c.shuffle_buffer, min(c.shuffle_buffer, 64), rng=rng)(iter(records))
        raw = other_split = 0
        for record in records:
            raw += 1
            if raw <= start_raw:
                continue  # read before a resume: skipped without decoding
            if c.split is not None and _split_of(record) not in (c.split, None):
                other_split += 1
                if other_split > BARREN_LIMIT:
                    raise RuntimeError(f"rank {self.rank} worker {logical}: {BARREN_LIMIT} samples in a row "
                                       f"are not in split {c.split!r}; check --shards and the split")
                continue
            try:
                sample = decode_sample(record)
                example = training_example(sample, c.crop, np.random.default_rng(stream_seed(epoch_seed, raw)),
                                           c.token_width, c.clip_width)
            except (SampleFormatError, ValueError) as e:
                skips(e)
                continue
            skips.reset()
            other_split = 0
            yield example, raw

    def _indexed_example(self, epoch_seed: int, draw: int) -> dict[str, np.ndarray]:
        """Draw ``draw`` of the epoch as one weighted pick of the index, read and augmented."""
        c = self.config
        ids, cumulative = self.weighted
        rng = np.random.default_rng(stream_seed(epoch_seed, _INDEXED_TAG, draw))
        pick = ids[min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(ids) - 1)]
        try:
            record = c.index.record(int(pick))
        except (OSError, TarStreamError) as e:
            raise ValueError(f"{c.index.urls[c.index.shard[pick]]}: cannot read sample {pick}: {e}") from e
        return training_example(decode_sample(record), c.crop, rng, c.token_width, c.clip_width)

    def _from_shards(self, epoch_seed: int, draw: int) -> bool:
        c = self.config
        if c.synthesis is None or not c.urls:
            return bool(c.urls)
        return np.random.default_rng(stream_seed(epoch_seed, _SOURCE_TAG, draw)).random() < c.shard_share

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        logical = (worker + self.rotation) % self.workers
        skips = SkipCounter(f"rank {self.rank} worker {logical}", limit=BARREN_LIMIT)
        position = self.start[logical]
        c = self.config
        synthesizer = Synthesizer(c.synthesis) if c.synthesis is not None else None
        while True:
            epoch_seed = stream_seed(c.seed, self.rank, logical, position.epoch)
            streamed = bool(c.urls) and self.weighted is None
            shard_examples = self._shard_examples(logical, epoch_seed, position.raw, skips) if streamed else None
            examples, raw, batches, draws = [], position.raw, position.batches, position.draws
            while True:
                draws += 1
                from_shards = self._from_shards(epoch_seed, draw=draws)
                if from_shards and streamed:
                    example, raw = next(shard_examples)
                else:
                    try:
                        if from_shards:
                            example = self._indexed_example(epoch_seed, draws)
                        else:
                            sample = synthesizer.sample(stream_seed(epoch_seed, _SYNTH_TAG, draws), c.crop)
                            example = synthetic_example(sample, c.token_width, c.clip_width)
                    except (SampleFormatError, ValueError) as e:
                        skips(e)
                        continue
                    skips.reset()
                examples.append(example)
                if len(examples) == c.batch_size:
                    batches += 1
                    done = batches == c.batches_per_epoch
                    following = Position(position.epoch + 1) if done else Position(position.epoch, raw, batches, draws)
                    position_row = [logical, following.epoch, following.raw, following.batches, following.draws]
                    yield collate(trim_tokens(examples), position=np.array(position_row, np.int64),
                                  skipped=np.array([logical, skips.count], np.int64))
                    examples = []
                    if done:
                        break
            position = Position(position.epoch + 1)


def batches_per_epoch(samples: int, batch_size: int, world: int, workers: int) -> int:
    """Batches each logical worker makes per epoch so one epoch covers ``samples`` on all ranks."""
    return max(1, math.ceil(samples / (batch_size * world * workers)))


def _init_worker(trainer: int, _: int) -> None:
    # Its parent is the fork server, which dies with the trainer (restore.lifeline).
    die_with_parent(ancestor=trainer)
    # Ctrl-C reaches the whole process group, but the trainer answers it by finishing its step
    # and saving a checkpoint (restore.train): its workers must live on to deliver that step's
    # batches. The DataLoader stops them when the trainer is done with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Workers decode, crop, degrade and analyse with numpy, OpenCV and BLAS; thread pools of their
    # own in every worker would compete with the training process for the same cores (measured:
    # an unpinned worker spun two cores and took 80 ms per synthetic sample instead of 30).
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    threadpool_limits(1)


def train_loader(config: StreamConfig, rank: int, world: int, workers: int, start: tuple[Position, ...],
                 rotation: int = 0, pin_memory: bool = False) -> Batches:
    """The batches of this rank's TrainStream, an iterator (``workers`` = 0 reads in this process;
    otherwise workers hand batches over through shared slots, ``restore.handover``)."""
    stream = TrainStream(config, rank, world, max(1, workers), start, rotation)
    if workers == 0:
        return Batches(DataLoader(stream, batch_size=None, num_workers=0, pin_memory=pin_memory))
    # Workers start from a fork server, never forked from this process: a fork inherits the
    # OpenMP and OpenCV thread pools of whatever ran here before (validation decoding, Ray, the
    # analysis) in a broken state, and the worker then hangs on its first threaded call.
    context = multiprocessing.get_context("forkserver")
    # Applies when this starts the fork server (the first loader of the process); the default
    # preload, __main__, stays.
    context.set_forkserver_preload(["__main__", "restore.lifeline_forkserver"])
    loader = DataLoader(SlotStream(stream, slots=PREFETCH + 1), batch_size=None, num_workers=workers,
                        persistent_workers=True, prefetch_factor=PREFETCH,
                        worker_init_fn=functools.partial(_init_worker, os.getpid()), multiprocessing_context=context)
    return Batches(loader, pin_memory=pin_memory)


def read_samples(urls: tuple[str, ...] | list[str], split: str | None = None, limit: int | None = None,
                 skips: SkipCounter | None = None) -> Iterator[Sample]:
    """Decoded samples of the shards, in order, once (validation, evaluation): bad ones skipped."""
    skips = skips or SkipCounter("reader")
    count = 0
    for record in url_records(urls, skips):
        if split is not None and _split_of(record) not in (split, None):
            continue
        try:
            sample = decode_sample(record)
        except SampleFormatError as e:
            skips(e)
            continue
        if split is not None and sample.meta.split != split:
            continue
        yield sample
        count += 1
        if limit is not None and count >= limit:
            return


def peek_dims(urls: tuple[str, ...]) -> dict[str, int]:
    """Embedding widths {"W"[, "E"]} of the first sample with embeddings (empty if none has any;
    no "E" without a CLIP image embedding)."""
    for sample in read_samples(urls[:4]):
        if sample.embeddings is not None:
            emb = sample.embeddings
            return {"W": int(emb["caption_tokens"].shape[1]),
                    **({"E": int(emb["clip_image"].shape[0])} if "clip_image" in emb else {})}
    return {}


def with_dims(source: ShardSource) -> ShardSource:
    """``source`` with its embedding widths filled in from the data when no index gave them."""
    return source if source.embedding_dims else replace(source, embedding_dims=peek_dims(source.urls))
