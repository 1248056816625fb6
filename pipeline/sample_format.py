"""The prior-sample format: the contract between extraction, published shards and the trainer.

A sample is one webdataset record, i.e. adjacent tar members sharing a key::

    {key}.lq.png     degraded input, 8-bit RGB PNG                       (always)
    {key}.gt.png     clean target, same size as lq                       (training/test data)
    {key}.ref.png    diffusion-rendered clean reference, any size       (when synthesized)
    {key}.json       SampleMeta: labels, texts, analysis, provenance     (always)
    {key}.npz        embeddings, see EMBEDDINGS (padding not stored)     (when extracted)

Everything here is the single definition: field names, member names, array shapes and dtypes and
the format version. docs/format.md describes the same for people. Decoding never unpickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.image_files import ImageError, decode_rgb, encode_png, png_size
from pipeline.vocabulary import DEGRADATION_TYPES

FORMAT_VERSION = 1

LQ = "lq.png"
GT = "gt.png"
REF = "ref.png"
META = "json"
EMBEDDINGS_MEMBER = "npz"
MEMBERS = (LQ, GT, REF, META, EMBEDDINGS_MEMBER)

# open_clip's text context: decoded token embeddings are padded with zeros to this many positions.
TOKEN_POSITIONS = 77

# name -> (shape with symbolic dims, dtype). E = CLIP embedding width, W = text token width,
# T = TOKEN_POSITIONS. Lengths count the real (non-padding) tokens, start and end tokens included.
EMBEDDINGS: dict[str, tuple[tuple[str, ...], str]] = {
    "clip_image": (("E",), "float16"),
    "caption_tokens": (("T", "W"), "float16"),
    "caption_length": ((), "int32"),
    "degradation_tokens": (("T", "W"), "float16"),
    "degradation_length": ((), "int32"),
}
# Arrays a sample may lack: presets without CLIP (``offline``) have no image embedding.
OPTIONAL_EMBEDDINGS = frozenset({"clip_image"})
# Each token array and the field counting its real tokens. The npz stores only those rows: the
# zero padding to TOKEN_POSITIONS was most of a sample's bytes (≈236 KB at ViT-L widths for two
# texts), and decoding puts it back, so consumers see (T, W) arrays either way.
TOKEN_LENGTHS: dict[str, str] = {"caption_tokens": "caption_length", "degradation_tokens": "degradation_length"}

_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_KEY_LENGTH = 160


class SampleFormatError(ValueError):
    """A sample that does not follow the format; names the sample key and the member."""

    def __init__(self, key: str, member: str, reason: str):
        super().__init__(f"sample {key!r}, member {member!r}: {reason}")
        self.key = key
        self.member = member
        self.reason = reason


def make_key(dataset: str, split: str, relpath: str, variant: str = "") -> str:
    """Deterministic sample key from dataset, split, relative path (and a degradation variant).

    Webdataset splits keys at the first dot, so keys carry no dots; the readable part is
    sanitised and a short hash of the exact inputs keeps two paths that sanitise alike apart.
    """
    exact = "\x1f".join((dataset, split, relpath, variant))
    digest = hashlib.sha1(exact.encode("utf-8")).hexdigest()[:10]
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    parts = [dataset, split, stem] + ([variant] if variant else [])
    readable = "_".join(_KEY_SAFE.sub("-", p).strip("-") for p in parts)
    return f"{readable[: MAX_KEY_LENGTH - 11]}_{digest}"


def parse_degradations(text: str) -> list[dict[str, Any]]:
    """A manifest's ``params`` column as ``SampleMeta.degradations``; ValueError unless it is a JSON
    list of ``{"type": <vocabulary type>, "params": {...}}`` objects."""
    value = json.loads(text)
    if not isinstance(value, list) or not all(
            isinstance(d, dict) and set(d) == {"type", "params"} and d["type"] in DEGRADATION_TYPES
            and isinstance(d["params"], dict) for d in value):
        raise ValueError('not a JSON list of {"type": <vocabulary type>, "params": {...}} objects')
    return value


@dataclass
class SampleMeta:
    """The json member. Degradations are ``{"type": <vocabulary type>, "params": {...}}`` dicts."""

    key: str
    dataset: str
    split: str
    task: str
    width: int
    height: int
    source: dict[str, Any] = field(default_factory=dict)
    degradations: list[dict[str, Any]] = field(default_factory=list)
    degradation_text: str = ""
    degradation_types: list[str] = field(default_factory=list)
    caption: str = ""
    analysis: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, key: str) -> SampleMeta:
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SampleFormatError(key, META, f"invalid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise SampleFormatError(key, META, f"expected a JSON object, got {type(raw).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - raw.keys())
        if missing:
            raise SampleFormatError(key, META, f"missing fields: {', '.join(missing)}")
        unknown = sorted(raw.keys() - names)
        if unknown:
            raise SampleFormatError(key, META, f"unknown fields: {', '.join(unknown)}")
        version = raw.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise SampleFormatError(key, META, f"format version {version}, this lmdir reads {FORMAT_VERSION}")
        if raw["key"] != key:
            raise SampleFormatError(key, META, f"json key {raw['key']!r} does not match the sample key")
        return cls(**raw)


@dataclass
class Sample:
    """One decoded prior sample: pixels as uint8 (H, W, 3) arrays, embeddings as numpy arrays."""

    meta: SampleMeta
    lq: np.ndarray
    gt: np.ndarray | None = None
    ref: np.ndarray | None = None
    embeddings: dict[str, np.ndarray] | None = None

    @property
    def key(self) -> str:
        return self.meta.key


def check_embeddings(embeddings: dict[str, np.ndarray], key: str) -> None:
    """Raise SampleFormatError unless the arrays match EMBEDDINGS (names, ranks, dtypes, sizes)."""
    missing = sorted(EMBEDDINGS.keys() - embeddings.keys() - OPTIONAL_EMBEDDINGS)
    extra = sorted(embeddings.keys() - EMBEDDINGS.keys())
    if missing or extra:
        raise SampleFormatError(key, EMBEDDINGS_MEMBER, f"missing arrays {missing}, unexpected arrays {extra}")
    sizes: dict[str, int] = {"T": TOKEN_POSITIONS}
    for name, (dims, dtype) in EMBEDDINGS.items():
        if name not in embeddings:
            continue
        arr = embeddings[name]
        if arr.dtype != np.dtype(dtype) or arr.ndim != len(dims):
            raise SampleFormatError(key, EMBEDDINGS_MEMBER,
                                    f"{name}: expected {dtype} of rank {len(dims)}, got {arr.dtype} {arr.shape}")
        for dim, size in zip(dims, arr.shape):
            if sizes.setdefault(dim, size) != size:
                raise SampleFormatError(key, EMBEDDINGS_MEMBER,
                                        f"{name}: dimension {dim} is {size}, expected {sizes[dim]}")
    for name in TOKEN_LENGTHS.values():
        length = int(embeddings[name])
        if not 0 <= length <= TOKEN_POSITIONS:
            raise SampleFormatError(key, EMBEDDINGS_MEMBER, f"{name} {length} outside 0..{TOKEN_POSITIONS}")


def _stored_rows(tokens: np.ndarray, length: int) -> np.ndarray:
    # Rows past the length are kept when they are not all zeros: trimming them would make
    # decoding give back other values than were encoded.
    return tokens if tokens[length:].any() else tokens[:length]


def encode_embeddings(embeddings: dict[str, np.ndarray], key: str) -> bytes:
    """The ``npz`` member: checked against EMBEDDINGS, arrays stored in name order, each token
    array without its zero padding (its first ``*_length`` rows; see TOKEN_LENGTHS).

    Uncompressed ``np.savez``: its zip entries carry a fixed timestamp, so the same arrays give the
    same bytes on any machine (deflate's output may change with the zlib build), and decoding
    needs no inflating.
    """
    check_embeddings(embeddings, key)
    stored = {}
    for name in sorted(embeddings):
        stored[name] = embeddings[name]
        if name in TOKEN_LENGTHS:
            stored[name] = _stored_rows(embeddings[name], int(embeddings[TOKEN_LENGTHS[name]]))
    buf = io.BytesIO()
    np.savez(buf, **stored)
    return buf.getvalue()


def _padded(arrays: dict[str, np.ndarray], key: str) -> dict[str, np.ndarray]:
    """Token arrays stored with only their used rows, zero-padded back to TOKEN_POSITIONS rows.

    Arrays already of TOKEN_POSITIONS rows (every npz written before trimming, or padding that
    was not zeros) pass unchanged. Anything else is left for check_embeddings to refuse.
    """
    out = dict(arrays)
    for name, length_name in TOKEN_LENGTHS.items():
        tokens, length = arrays.get(name), arrays.get(length_name)
        if tokens is None or length is None or tokens.ndim != 2 or length.ndim != 0:
            continue
        rows = tokens.shape[0]
        if rows == TOKEN_POSITIONS:
            continue
        if rows != int(length):
            raise SampleFormatError(key, EMBEDDINGS_MEMBER, f"{name} stores {rows} rows; expected its "
                                    f"{length_name} ({int(length)}) or {TOKEN_POSITIONS}")
        full = np.zeros((TOKEN_POSITIONS, tokens.shape[1]), dtype=tokens.dtype)
        full[:rows] = tokens
        out[name] = full
    return out


def decode_embeddings(data: bytes, key: str) -> dict[str, np.ndarray]:
    """Inverse of encode_embeddings: the arrays with token arrays padded to TOKEN_POSITIONS rows,
    checked against EMBEDDINGS. Reads old npz (padding stored) too. Never unpickles."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise SampleFormatError(key, EMBEDDINGS_MEMBER, f"not a readable npz without pickles: {e}") from e
    embeddings = _padded(arrays, key)
    check_embeddings(embeddings, key)
    return embeddings


def encode_record(meta: SampleMeta, pngs: dict[str, bytes],
                  embeddings: dict[str, np.ndarray] | bytes | None = None) -> dict[str, Any]:
    """Webdataset record from already-encoded PNG members (``LQ`` required, ``GT``/``REF`` optional).

    Checks what can be checked without decoding: the key, PNG sizes against the json and each
    other, and the embeddings (arrays, or ``npz`` bytes already made by ``encode_embeddings``).
    Raises SampleFormatError naming key and member.
    """
    key = meta.key
    if "." in key or not key:
        raise SampleFormatError(key, "__key__", "keys must be non-empty and contain no dots")
    unknown = sorted(set(pngs) - {LQ, GT, REF})
    if unknown or LQ not in pngs:
        raise SampleFormatError(key, LQ if LQ not in pngs else unknown[0], f"image members must be {LQ} (required), {GT}, {REF}")
    sizes = {}
    for member, data in pngs.items():
        try:
            sizes[member] = png_size(data)
        except ValueError:
            raise SampleFormatError(key, member, "not a PNG") from None
    if sizes[LQ] != (meta.width, meta.height):
        raise SampleFormatError(key, LQ, f"lq is {sizes[LQ][0]}x{sizes[LQ][1]}, json says {meta.width}x{meta.height}")
    if GT in sizes and sizes[GT] != sizes[LQ]:
        raise SampleFormatError(key, GT, f"gt is {sizes[GT][0]}x{sizes[GT][1]}, lq is {sizes[LQ][0]}x{sizes[LQ][1]}")
    record: dict[str, Any] = {"__key__": key, **pngs, META: meta.to_json()}
    if embeddings is not None:
        record[EMBEDDINGS_MEMBER] = embeddings if isinstance(embeddings, bytes) else encode_embeddings(embeddings, key)
    return record


def encode_sample(sample: Sample) -> dict[str, Any]:
    """Webdataset record (``__key__`` plus member bytes) for a sample; validates as it goes."""
    images = {LQ: sample.lq, GT: sample.gt, REF: sample.ref}
    pngs = {member: encode_png(img) for member, img in images.items() if img is not None}
    return encode_record(sample.meta, pngs, sample.embeddings)


def _decode_image(record: dict[str, Any], member: str, key: str) -> np.ndarray:
    try:
        return decode_rgb(record[member], f"{key}.{member}").pixels
    except ImageError as e:
        raise SampleFormatError(key, member, e.reason) from e


def decode_sample(record: dict[str, Any]) -> Sample:
    """Inverse of encode_sample. Raises SampleFormatError naming the key and the bad member.

    Extra ``__url__``-style fields that webdataset adds are ignored; unknown members are errors,
    so that a writer and a reader of different format versions never half-agree.
    """
    key = record.get("__key__")
    if not isinstance(key, str) or not key:
        raise SampleFormatError(str(key), "__key__", "record has no key")
    members = {k for k in record if not k.startswith("__")}
    unknown = sorted(members - set(MEMBERS))
    if unknown:
        raise SampleFormatError(key, unknown[0], f"unknown member(s) {unknown}; expected some of {list(MEMBERS)}")
    for required in (LQ, META):
        if required not in record:
            raise SampleFormatError(key, required, "missing required member")
    meta = SampleMeta.from_json(record[META], key)
    lq = _decode_image(record, LQ, key)
    if lq.shape[:2] != (meta.height, meta.width):
        raise SampleFormatError(key, LQ, f"image is {lq.shape[1]}x{lq.shape[0]}, json says {meta.width}x{meta.height}")
    gt = _decode_image(record, GT, key) if GT in record else None
    if gt is not None and gt.shape != lq.shape:
        raise SampleFormatError(key, GT, f"gt shape {gt.shape} differs from lq shape {lq.shape}")
    ref = _decode_image(record, REF, key) if REF in record else None
    embeddings = decode_embeddings(record[EMBEDDINGS_MEMBER], key) if EMBEDDINGS_MEMBER in record else None
    return Sample(meta=meta, lq=lq, gt=gt, ref=ref, embeddings=embeddings)
