"""Write a published-set manifest for an extraction output, and optionally upload it to the Hub.

    python -m pipeline.publish DIR --base-url URL [--base-url MIRROR ...] --license LICENSE
        [--name NAME] [--description TEXT] [--out PATH] [--to-hub REPO [--private]]

DIR is what the extraction wrote: DIR/index.json and the shards it lists. Every shard is
re-checked before it is published (size and sha256 against index.json, tar members through
pipeline.safe_tar, sample count), because the manifest is what downloaders will trust. Status
parquets and stats files stay private. With --to-hub the shards, then the manifest, go to a
Hugging Face dataset repository, and the repository's URLs are added as mirrors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import __version__, cli
from pipeline.image_files import sha256_file
from pipeline.published import (
    SHARD_NAME,
    ManifestError,
    ModelRef,
    Provenance,
    PublishedSet,
    ShardEntry,
    manifest_bytes,
    parse_manifest,
    save_manifest,
)
from pipeline.safe_tar import UnsafeTarError, check_tar

INDEX = "index.json"
MANIFEST_NAME = "published.json"
HUB_ENDPOINT = "https://huggingface.co"


class PublishError(ValueError):
    """An extraction output that cannot be published as it is; names the file and the reason."""


@dataclass(frozen=True)
class HubUpload:
    """Where a published set went on the Hub."""

    repo_id: str
    files: tuple[str, ...]
    commit_urls: tuple[str, ...]


def hub_base_urls(repo_id: str, endpoint: str = HUB_ENDPOINT) -> list[str]:
    """Mirrors for a dataset repo: its plain HTTPS resolve URL, then the hf:// (HfFileSystem) URL."""
    return [f"{endpoint.rstrip('/')}/datasets/{repo_id}/resolve/main", f"hf://datasets/{repo_id}"]


def build_manifest(directory: str | Path, base_urls: list[str], license: str, name: str | None = None,
                   description: str = "") -> PublishedSet:
    """Check the extraction output in ``directory`` and describe it as a published set."""
    directory = Path(directory)
    index_path = directory / INDEX
    index = _read_index(index_path)
    shards = []
    for i, raw in enumerate(index["shards"]):
        shards.append(_checked_shard(directory, raw, f"{index_path}: shards[{i}]"))
    models = {}
    for role, ref in index["models"].items():
        if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
            raise PublishError(f"{index_path}: models.{role}: expected {{\"id\": ..., \"revision\": ..., "
                               f"\"commit\": ...}}, got {ref!r:.80}")
        models[role] = ModelRef(id=ref["id"], revision=ref.get("revision"), commit=ref.get("commit"))
    manifest = PublishedSet(
        name=name or index["name"],
        description=description,
        format_version=index["format_version"],
        license=license,
        base_urls=tuple(base_urls),
        shards=tuple(shards),
        provenance=Provenance(presets=(index["preset"],), config_hashes=(index["config_hash"],),
                              models=models, lmdir_version=__version__),
        embedding_dims=dict(index["embedding_dims"]),
    )
    # The same validation a downloader runs: nothing is published that a downloader would refuse.
    return parse_manifest(manifest.to_json_dict(), f"manifest for {directory}")


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(f"{path}: not found; is this an extraction output directory?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PublishError(f"{path}: unreadable: {e}") from e
    if not isinstance(index, dict):
        raise PublishError(f"{path}: expected a JSON object")
    fields = {"format_version": int, "name": str, "preset": str, "config_hash": str, "shards": list,
              "models": dict, "embedding_dims": dict}
    for field, kind in fields.items():
        if not isinstance(index.get(field), kind):
            raise PublishError(f"{path}: {field}: expected {kind.__name__}, got {index.get(field)!r:.80}")
    if not index["shards"]:
        raise PublishError(f"{path}: shards: the extraction wrote no shards")
    return index


def _checked_shard(directory: Path, raw: Any, where: str) -> ShardEntry:
    if not isinstance(raw, dict):
        raise PublishError(f"{where}: expected an object")
    name = raw.get("name")
    # Checked before the name is used as a path: index.json must not point outside DIR.
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise PublishError(f"{where}.name: {name!r} is not a plain shard file name")
    for field in ("bytes", "samples"):
        if not isinstance(raw.get(field), int):
            raise PublishError(f"{where}.{field}: expected an integer, got {raw.get(field)!r}")
    path = directory / name
    if not path.is_file():
        raise PublishError(f"{path}: listed in {INDEX} but missing")
    size = path.stat().st_size
    if size != raw["bytes"]:
        raise PublishError(f"{path}: {size} bytes, {INDEX} says {raw['bytes']}")
    digest = sha256_file(path)
    if digest != raw.get("sha256"):
        raise PublishError(f"{path}: sha256 {digest}, {INDEX} says {raw.get('sha256')!r}")
    try:
        summary = check_tar(path, shard=name)
    except UnsafeTarError as e:
        raise PublishError(f"{path}: refusing to publish: {e}") from e
    if summary.samples != raw["samples"]:
        raise PublishError(f"{path}: holds {summary.samples} samples, {INDEX} says {raw['samples']}")
    return ShardEntry(name=name, bytes=size, samples=summary.samples, sha256=digest)


def upload_to_hub(directory: str | Path, manifest: PublishedSet, repo_id: str, private: bool = False,
                  token: str | None = None, endpoint: str | None = None) -> HubUpload:
    """Upload the manifest's shards, then the manifest, to a Hugging Face dataset repository.

    Two commits, shards first: a reader who sees the manifest can always fetch what it lists.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    shard_names = [s.name for s in manifest.shards]
    shards_commit = api.upload_folder(
        repo_id=repo_id, repo_type="dataset", folder_path=str(directory), allow_patterns=shard_names,
        commit_message=f"lmdir published set {manifest.name}: {len(shard_names)} shards")
    manifest_commit = api.upload_file(
        path_or_fileobj=manifest_bytes(manifest), path_in_repo=MANIFEST_NAME, repo_id=repo_id,
        repo_type="dataset", commit_message=f"lmdir published set {manifest.name}: manifest")
    return HubUpload(repo_id=repo_id, files=(*shard_names, MANIFEST_NAME),
                     commit_urls=(shards_commit.commit_url, manifest_commit.commit_url))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="extraction output directory (holds index.json and the shards)")
    parser.add_argument("--base-url", action="append", default=[],
                        help="where the shards will be served (shard URL = base + '/' + name); "
                             "repeat for mirrors, in order of preference")
    parser.add_argument("--license", required=True,
                        help="license of the published priors (SPDX id or a short text); the source "
                             "datasets' and models' terms apply to them")
    parser.add_argument("--name", help="set name (default: the extraction's name)")
    parser.add_argument("--description", default="", help="what the set is, for people")
    parser.add_argument("--out", help=f"manifest path (default: DIR/{MANIFEST_NAME})")
    parser.add_argument("--to-hub", metavar="REPO", help="upload shards and manifest to this HF dataset repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # HF_ENDPOINT is huggingface_hub's own setting for a self-hosted Hub; its URLs are the mirrors.
    endpoint = os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT
    base_urls = list(args.base_url)
    if args.to_hub:
        base_urls += [u for u in hub_base_urls(args.to_hub, endpoint) if u not in base_urls]
    if not base_urls:
        return cli.fail("give at least one --base-url (or --to-hub REPO)")
    try:
        manifest = build_manifest(args.directory, base_urls, args.license, args.name, args.description)
        out = save_manifest(manifest, args.out or Path(args.directory) / MANIFEST_NAME)
    except (PublishError, ManifestError, OSError) as e:  # OSError: an --out that cannot be written
        return cli.fail(e)
    print(f"{out}: {manifest.name}, {len(manifest.shards)} shards, {manifest.total_samples} samples, "
          f"{manifest.total_bytes} bytes, mirrors {', '.join(manifest.base_urls)}")
    if args.to_hub:
        from huggingface_hub import errors as hub_errors

        # huggingface_hub >= 1.0 raises httpx errors (errors.HTTPError); older releases raised
        # requests' errors, which are OSErrors.
        upload_errors = (OSError, getattr(hub_errors, "HTTPError", OSError))
        try:
            upload = upload_to_hub(args.directory, manifest, args.to_hub, private=args.private,
                                   endpoint=endpoint)
        except upload_errors as e:
            return cli.fail(f"upload to the Hub dataset {args.to_hub} failed: {e}", status=1)
        print(f"uploaded {len(upload.files)} files to {args.to_hub}: {' '.join(upload.commit_urls)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
