"""Where a model's weights come from, in a form that pins them: for the provenance of every prior.

A Hub id is recorded with the commit its files were loaded from (the snapshot folder name in the
Hub cache), a tiny model with the fingerprint of its build, a local folder with its path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.models import tiny
from pipeline.models.device import hub_offline
from pipeline.models.presets import TINY_SCHEME


def is_hub_id(name: str) -> bool:
    """``org/name`` that is not an existing local path and not a tiny model."""
    return (not name.startswith(TINY_SCHEME) and not Path(name).exists()
            and name.count("/") == 1 and not name.startswith((".", "/")))


def commit_from_cache_path(path: str | Path) -> str | None:
    """The commit hash in a Hub cache path ``.../snapshots/<commit>/...``, if it is one."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def hub_commit(repo_id: str, revision: str | None, probe_file: str) -> str | None:
    """The commit a small, already-cached file of ``repo_id`` was loaded from."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id, probe_file, revision=revision, local_files_only=hub_offline())
    return commit_from_cache_path(path)


def describe_source(name: str, revision: str | None, probe_file: str) -> dict:
    """Provenance of one model: what was asked for and what exactly was loaded."""
    if name.startswith(TINY_SCHEME):
        return {"model": name, "revision": revision, "resolved": f"tiny-sha256:{tiny.fingerprint()}"}
    if is_hub_id(name):
        return {"model": name, "revision": revision, "resolved": hub_commit(name, revision, probe_file)}
    return {"model": str(Path(name).resolve()), "revision": revision, "resolved": None}


def package_path(package: str, relpath: str) -> Path:
    """A file or folder shipped inside an installed Python package, found without importing it;
    FileNotFoundError (an OSError) with the pip command when the package or the path is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {package!r} is not installed (pip install {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / relpath
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the installed package {package!r}")
    return path
