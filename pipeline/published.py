"""The published-set manifest: what a downloader trusts before it fetches a single shard.

A published set is a list of webdataset shards (the prior-sample format of
pipeline.sample_format) plus one JSON manifest that pins every shard by size and sha256, says
where to fetch it (one or more mirrors) and how it was made. The manifest is the trust root:
everything in it is validated here (schema, types, sizes, URL schemes, shard names) before any
byte is fetched, and every shard is checked against it before it is used. docs/published.md
describes the same for people.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.sample_format import FORMAT_VERSION

SCHEMA = "lmdir-published-set"
SCHEMA_VERSION = 1

# Schemes a mirror may use. http(s) goes through requests; the rest through fsspec (hf through
# huggingface_hub's HfFileSystem). Listed rather than "anything fsspec knows" because fsspec also
# knows protocols that run commands or read arbitrary local state, and a manifest may be hostile.
URL_SCHEMES = frozenset({"http", "https", "file", "hf", "s3", "gs", "gcs", "az", "abfs", "abfss"})

# Bounds that keep a hostile manifest from exhausting memory or disk before anything is checked.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_SHARDS = 100_000
MAX_SHARD_BYTES = 64 * 1024**3
MAX_SHARD_SAMPLES = 10_000_000
MAX_MIRRORS = 16
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 20_000
MAX_TEXT_LENGTH = 256

# A shard name is a plain file name: it becomes a path under the download directory.
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,120}(\.[A-Za-z0-9_-]{1,16})*\.tar$")
SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
CONFIG_HASH = re.compile(r"^[0-9a-f]{8,128}$")


class ManifestError(ValueError):
    """A manifest that cannot be trusted as given; names the source, the field and the reason."""

    def __init__(self, source: str, field: str, reason: str):
        super().__init__(f"{source}: {field}: {reason}")
        self.source = source
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ShardEntry:
    """One shard: a plain file name, its exact size and sha256, and how many samples it holds."""

    name: str
    bytes: int
    samples: int
    sha256: str


@dataclass(frozen=True)
class ModelRef:
    """A model used to make the priors: hub id (or local name), the revision asked for, and the
    commit (or weights fingerprint) actually loaded, when known."""

    id: str
    revision: str | None
    commit: str | None = None


@dataclass(frozen=True)
class Provenance:
    """How the shards were made: extraction presets, config hashes, models, lmdir version."""

    presets: tuple[str, ...]
    config_hashes: tuple[str, ...]
    models: Mapping[str, ModelRef]
    lmdir_version: str


@dataclass(frozen=True)
class PublishedSet:
    """A validated published-set manifest. Build one with parse_manifest or load_manifest."""

    name: str
    description: str
    format_version: int
    license: str
    base_urls: tuple[str, ...]
    shards: tuple[ShardEntry, ...]
    provenance: Provenance
    embedding_dims: Mapping[str, int]

    def urls(self, shard: ShardEntry) -> list[str]:
        """The shard's URL on every mirror, in the manifest's order of preference."""
        return [f"{base}/{shard.name}" for base in self.base_urls]

    @property
    def total_bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def total_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON data (the inverse of parse_manifest)."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "format_version": self.format_version,
            "license": self.license,
            "base_urls": list(self.base_urls),
            "shards": [{"name": s.name, "bytes": s.bytes, "samples": s.samples, "sha256": s.sha256}
                       for s in self.shards],
            "provenance": {
                "presets": list(self.provenance.presets),
                "config_hashes": list(self.provenance.config_hashes),
                "models": {role: {"id": m.id, "revision": m.revision, "commit": m.commit}
                           for role, m in sorted(self.provenance.models.items())},
                "lmdir_version": self.provenance.lmdir_version,
            },
            "embedding_dims": dict(sorted(self.embedding_dims.items())),
        }


def manifest_bytes(manifest: PublishedSet) -> bytes:
    """Canonical JSON bytes of a manifest (sorted keys, stable layout, trailing newline)."""
    return (json.dumps(manifest.to_json_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def save_manifest(manifest: PublishedSet, path: str | Path) -> Path:
    """Write the manifest atomically (tmp file + os.replace) so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(manifest_bytes(manifest))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_manifest(path: str | Path) -> PublishedSet:
    """Read and validate a manifest from a local file; raises ManifestError naming the field."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(str(path), "(file)", f"{size} bytes exceeds the limit of {MAX_MANIFEST_BYTES}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(str(path), "(file)", "file not found") from None
    except OSError as e:
        raise ManifestError(str(path), "(file)", f"cannot read: {e}") from e
    return parse_manifest_bytes(data, str(path))


def parse_manifest_bytes(data: bytes, source: str) -> PublishedSet:
    """Validate manifest bytes (size, UTF-8, strict JSON, then the schema)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(source, "(file)", f"{len(data)} bytes exceeds the limit of {MAX_MANIFEST_BYTES}")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                         parse_constant=_no_constants)
    except UnicodeDecodeError as e:
        raise ManifestError(source, "(file)", f"not UTF-8: {e}") from e
    except json.JSONDecodeError as e:
        raise ManifestError(source, "(file)", f"invalid JSON: {e}") from e
    except ValueError as e:  # raised by the two hooks above
        raise ManifestError(source, "(file)", str(e)) from e
    return parse_manifest(raw, source)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "sha256" keys in one object would let two readers trust different values.
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate keys {duplicates}")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_manifest(raw: Any, source: str) -> PublishedSet:
    """Validate decoded manifest JSON and build a PublishedSet, or raise ManifestError."""
    v = _Validator(source)
    top = v.object(raw, "", required={"schema", "schema_version", "name", "description", "format_version",
                                      "license", "base_urls", "shards", "provenance", "embedding_dims"})
    if top["schema"] != SCHEMA:
        raise ManifestError(source, "schema", f"expected {SCHEMA!r}, got {top['schema']!r}")
    schema_version = v.integer(top["schema_version"], "schema_version", 1, 1_000)
    if schema_version != SCHEMA_VERSION:
        raise ManifestError(source, "schema_version",
                            f"manifest schema version {schema_version}, this lmdir reads {SCHEMA_VERSION}")
    format_version = v.integer(top["format_version"], "format_version", 1, 1_000)
    if format_version != FORMAT_VERSION:
        raise ManifestError(source, "format_version",
                            f"shards use sample format {format_version}, this lmdir reads {FORMAT_VERSION}")
    name = v.pattern(top["name"], "name", SET_NAME, "a name of letters, digits, '.', '_' or '-'")
    description = v.text(top["description"], "description", MAX_DESCRIPTION_LENGTH, allow_empty=True)
    license_ = v.text(top["license"], "license", MAX_TEXT_LENGTH)
    base_urls = tuple(v.url(u, f"base_urls[{i}]")
                      for i, u in enumerate(v.array(top["base_urls"], "base_urls", 1, MAX_MIRRORS)))
    if len(set(base_urls)) != len(base_urls):
        raise ManifestError(source, "base_urls", "the same mirror is listed twice")
    shards = tuple(v.shard(s, f"shards[{i}]")
                   for i, s in enumerate(v.array(top["shards"], "shards", 1, MAX_SHARDS)))
    seen: set[str] = set()
    for i, shard in enumerate(shards):
        if shard.name in seen:
            raise ManifestError(source, f"shards[{i}].name", f"{shard.name!r} is listed twice")
        seen.add(shard.name)
    provenance = v.provenance(top["provenance"], "provenance")
    dims = v.mapping(top["embedding_dims"], "embedding_dims", max_keys=16)
    embedding_dims = {k: v.integer(d, f"embedding_dims.{k}", 1, 1 << 20) for k, d in sorted(dims.items())}
    return PublishedSet(name=name, description=description, format_version=format_version,
                        license=license_, base_urls=base_urls, shards=shards, provenance=provenance,
                        embedding_dims=embedding_dims)


@dataclass(frozen=True)
class _Validator:
    """Type and size checks that raise ManifestError naming ``source`` and the field path."""

    source: str

    def fail(self, field: str, reason: str) -> ManifestError:
        return ManifestError(self.source, field or "(top level)", reason)

    def object(self, value: Any, field: str, required: set[str]) -> dict[str, Any]:
        """An object with exactly the ``required`` fields."""
        if not isinstance(value, dict):
            raise self.fail(field, f"expected an object, got {_kind(value)}")
        missing = sorted(required - value.keys())
        if missing:
            raise self.fail(field, f"missing fields: {', '.join(missing)}")
        unknown = sorted(value.keys() - required)
        if unknown:
            raise self.fail(field, f"unknown fields: {', '.join(unknown)}")
        return value

    def mapping(self, value: Any, field: str, max_keys: int) -> dict[str, Any]:
        """An object with free-form keys (model roles, embedding dimensions), at most ``max_keys``."""
        if not isinstance(value, dict):
            raise self.fail(field, f"expected an object, got {_kind(value)}")
        if len(value) > max_keys:
            raise self.fail(field, f"{len(value)} entries exceeds the limit of {max_keys}")
        return value

    def array(self, value: Any, field: str, min_len: int, max_len: int) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(field, f"expected an array, got {_kind(value)}")
        if not min_len <= len(value) <= max_len:
            raise self.fail(field, f"{len(value)} entries; expected {min_len} to {max_len}")
        return value

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        # bool is an int in Python; true must not pass as 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(field, f"expected an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise self.fail(field, f"{value} outside {low}..{high}")
        return value

    def text(self, value: Any, field: str, max_len: int, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {_kind(value)}")
        if not value and not allow_empty:
            raise self.fail(field, "must not be empty")
        if len(value) > max_len:
            raise self.fail(field, f"{len(value)} characters exceeds the limit of {max_len}")
        if any(ord(c) < 32 and c not in "\n\t" for c in value):
            raise self.fail(field, "contains control characters")
        return value

    def optional_text(self, value: Any, field: str) -> str | None:
        return None if value is None else self.text(value, field, MAX_TEXT_LENGTH)

    def pattern(self, value: Any, field: str, regex: re.Pattern[str], what: str) -> str:
        text = self.text(value, field, MAX_TEXT_LENGTH)
        if not regex.fullmatch(text):
            raise self.fail(field, f"{text!r} is not {what}")
        return text

    def url(self, value: Any, field: str) -> str:
        url = self.text(value, field, MAX_URL_LENGTH)
        if any(c.isspace() for c in url) or "::" in url:
            # fsspec reads "a::b" as a chain of file systems; a mirror is one location.
            raise self.fail(field, f"{url!r} must be a single URL without spaces or '::' chains")
        parts = urlsplit(url)
        if parts.scheme not in URL_SCHEMES:
            raise self.fail(field, f"scheme {parts.scheme or '(none)'!r} is not one of {sorted(URL_SCHEMES)}")
        if parts.username is not None or parts.password is not None:
            raise self.fail(field, "URLs must not carry credentials; use the tool's own credential store")
        if parts.query or parts.fragment:
            raise self.fail(field, "base URLs must not carry a query or fragment (shard names are appended)")
        if parts.scheme in ("http", "https") and not parts.hostname:
            raise self.fail(field, f"{url!r} has no host")
        if url.endswith("/"):
            raise self.fail(field, "must not end with '/' (shard URL = base URL + '/' + name)")
        return url

    def shard(self, value: Any, field: str) -> ShardEntry:
        obj = self.object(value, field, required={"name", "bytes", "samples", "sha256"})
        return ShardEntry(
            name=self.pattern(obj["name"], f"{field}.name", SHARD_NAME,
                              "a plain file name ending in .tar (letters, digits, '_', '-', '.')"),
            bytes=self.integer(obj["bytes"], f"{field}.bytes", 1, MAX_SHARD_BYTES),
            samples=self.integer(obj["samples"], f"{field}.samples", 0, MAX_SHARD_SAMPLES),
            sha256=self.pattern(obj["sha256"], f"{field}.sha256", SHA256, "64 lowercase hex digits"),
        )

    def provenance(self, value: Any, field: str) -> Provenance:
        obj = self.object(value, field, required={"presets", "config_hashes", "models", "lmdir_version"})
        presets = tuple(self.text(p, f"{field}.presets[{i}]", MAX_TEXT_LENGTH)
                        for i, p in enumerate(self.array(obj["presets"], f"{field}.presets", 1, 64)))
        hashes = tuple(self.pattern(h, f"{field}.config_hashes[{i}]", CONFIG_HASH, "a lowercase hex digest")
                       for i, h in enumerate(self.array(obj["config_hashes"], f"{field}.config_hashes", 1, 64)))
        roles = self.mapping(obj["models"], f"{field}.models", max_keys=32)
        models = {}
        for role, ref in sorted(roles.items()):
            where = f"{field}.models.{role}"
            self.text(role, where, 64)
            ref = self.object(ref, where, required={"id", "revision", "commit"})
            models[role] = ModelRef(id=self.text(ref["id"], f"{where}.id", MAX_TEXT_LENGTH),
                                    revision=self.optional_text(ref["revision"], f"{where}.revision"),
                                    commit=self.optional_text(ref["commit"], f"{where}.commit"))
        version = self.text(obj["lmdir_version"], f"{field}.lmdir_version", 64)
        return Provenance(presets=presets, config_hashes=hashes, models=models, lmdir_version=version)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
