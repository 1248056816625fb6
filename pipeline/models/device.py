"""Where and in what precision the frozen models run, and how they may reach the model hub.

One place decides this for every model stage, so the MLLM, the diffusion model and CLIP in one
Ray actor never disagree about the device or the dtype.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that place a model, not here: the extraction driver reads
# the hub settings below and never runs a model, and importing torch costs it over a second.
DTYPE_NAMES = ("bfloat16", "float16", "float32")


def pick_device() -> torch.device:
    """The first visible CUDA device when there is one (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"`` is bf16 on a GPU and fp32 on the CPU (CPU bf16 matmuls are slow and lossy)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use 'auto' or one of {sorted(DTYPE_NAMES)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def hub_offline() -> bool:
    """True when the user set HF_HUB_OFFLINE; we never set or clear it ourselves."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_kwargs(revision: str | None) -> dict:
    """Keyword arguments for ``from_pretrained``: the pinned revision, and no network when offline."""
    kwargs: dict = {"revision": revision}
    if hub_offline():
        kwargs["local_files_only"] = True
    return kwargs


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None
