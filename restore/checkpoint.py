"""Training checkpoints without pickle: everything a run needs to resume exactly.

One checkpoint is one folder, written under a temporary name and renamed into place, so a run
killed while saving leaves the previous checkpoints intact::

    RUN/checkpoints/step_00001000/
        config.json, model.safetensors     the EMA weights: Restorer.from_pretrained loads them
        raw.safetensors                    the trained (non-EMA) weights
        optimizer.safetensors              the optimizer's tensors (AdamW moments, steps)
        training_state.safetensors         RNG states and other tensors of the trainer
        training_state.json                step, samples seen, data positions, param groups, config
    RUN/checkpoints/last -> step_00001000  relative symlinks, replaced atomically
    RUN/checkpoints/best -> step_00000500

``keep`` newest step folders are kept, plus whatever ``best`` points to.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# The checkpoint that ships inside the package (fp16 weights, restore.export writes it): what
# restore.infer, restore.evaluate and the demo use when no --checkpoint is given.
SHIPPED = Path(__file__).resolve().parent / "weights" / "lmdir-cpu"

RAW = "raw.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
LAST, BEST = "last", "best"
STEP_PREFIX = "step_"


class ModelEMA:
    """Exponential moving average of a model's parameters *and* buffers (as timm's ModelEmaV2).

    The decay ramps up as ``min(decay, (1 + updates) / (10 + updates))``, so early averages are
    not dominated by the random initialisation in short runs.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    def decay_at(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """Move the average towards ``model`` after its ``updates``-th optimizer step (0-based)."""
        decay = self.decay_at(updates)
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        floating = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        # One fused kernel per dtype and device for all floating tensors, instead of a lerp (a
        # kernel launch and its Python) per tensor: a base restorer has several hundred.
        torch._foreach_lerp_([averaged[i] for i in floating], [current[i] for i in floating], 1.0 - decay)
        for i in set(range(len(averaged))) - set(floating):  # integer buffers (BatchNorm's counter)
            averaged[i].copy_(current[i])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer's state_dict as flat tensors (``state.<param>.<name>``) plus JSON for the rest."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"state.{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any],
                         saved_names: list[str] | None = None) -> None:
    """Inverse of optimizer_to_files: load the state into ``optimizer``.

    When the saved parameter groups differ from the optimizer's (the trainer changed how it groups
    parameters), each parameter's state is found by its name: the optimizer's groups must carry
    ``param_names``, and so do the saved ones, or ``saved_names`` lists them in the saved order
    (checkpoints from before groups were named).
    """
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param, name = key.split(".", 2)
        state.setdefault(int(param), {})[name] = value
    for param, values in meta["scalars"].items():
        state.setdefault(int(param), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        names = [n for g in groups for n in g.get("param_names", [])] or saved_names
        if names is None or any("param_names" not in g for g in optimizer.param_groups):
            raise ValueError("the checkpoint's optimizer groups its parameters differently and names none of them")
        by_name = dict(zip(names, (state.get(i) for g in groups for i in g["params"]), strict=True))
        current = [n for g in optimizer.param_groups for n in g["param_names"]]
        state = {i: by_name[n] for i, n in enumerate(current) if by_name.get(n)}
        ids = iter(range(len(current)))
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [next(ids) for _ in g["params"]]}
                  for g in optimizer.param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def step_dirs(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def _point(root: Path, link: str, target: str) -> None:
    tmp = root / f".{link}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / link)


def save(root: str | Path, step: int, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any], tensors: dict[str, Tensor], keep: int, best: bool = False) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically, point ``last`` (and ``best``) at it, prune.

    ``ema`` must have ``save_pretrained`` (a Restorer); ``state`` is JSON data, ``tensors`` CPU
    tensors (RNG states and the like).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{STEP_PREFIX}{step:08d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    ema.save_pretrained(tmp)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / RAW))
    opt_tensors, opt_meta = optimizer_to_files(optimizer)
    save_file(opt_tensors, str(tmp / OPTIMIZER))
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
    _write_json(tmp / STATE_JSON, {**state, "step": step, "optimizer": opt_meta})
    _fsync_dir(tmp)
    final = root / name
    if final.exists():  # the same step saved again (e.g. a resumed run's first save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _point(root, LAST, name)
    if best:
        _point(root, BEST, name)
    _fsync_dir(root)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, never the ones ``last`` or ``best`` name."""
    protected = {os.readlink(root / link) for link in (LAST, BEST) if (root / link).is_symlink()}
    dirs = step_dirs(root)
    for old in dirs[: max(0, len(dirs) - keep)]:
        if old.name not in protected:
            shutil.rmtree(old)


@dataclass(frozen=True)
class Loaded:
    """What a checkpoint held besides the weights it loaded into the modules."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, Tensor]


def _load(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file: {e}") from e


def load(directory: str | Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
         saved_names: list[str] | None = None) -> Loaded:
    """Load weights, EMA weights and optimizer state of a checkpoint folder into the given objects
    (``saved_names``: see optimizer_from_files)."""
    directory = Path(directory).resolve()
    for name in (RAW, OPTIMIZER, STATE_TENSORS, STATE_JSON, "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: not a training checkpoint, {name} is missing")
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in _load(directory / RAW).items()})
    ema.load_state_dict({k: v.to(device) for k, v in _load(directory / "model.safetensors").items()})
    state = json.loads((directory / STATE_JSON).read_text())
    # CPU tensors: load_state_dict moves moments to their parameter's device and keeps AdamW's
    # step counters on the CPU, where non-capturable AdamW needs them.
    optimizer_from_files(optimizer, _load(directory / OPTIMIZER), state["optimizer"], saved_names)
    return Loaded(directory, state, _load(directory / STATE_TENSORS))


def read_state(directory: str | Path) -> dict[str, Any] | None:
    """The training_state.json of a checkpoint folder, or None for a bare save_pretrained folder."""
    path = Path(directory) / STATE_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def find(path: str | Path | None) -> Path:
    """The weights folder ``path`` names: a checkpoint or save_pretrained folder itself, or a run
    folder, whose ``checkpoints/best`` (else ``checkpoints/last``) is taken; None: the checkpoint
    shipped in the package."""
    if path is None:
        if not (SHIPPED / "model.safetensors").is_file():
            raise FileNotFoundError(f"no --checkpoint given and the shipped checkpoint {SHIPPED} is missing; "
                                    "pass --checkpoint RUN_OR_CHECKPOINT, or export a trained run there with: "
                                    "python -m restore.export runs/lmdir_cpu")
        return SHIPPED
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path.resolve()
    for link in (BEST, LAST):
        candidate = path / "checkpoints" / link
        if (candidate / "model.safetensors").is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"{path}: no restorer here (neither model.safetensors nor a run's "
                            f"checkpoints/{BEST} or checkpoints/{LAST})")
