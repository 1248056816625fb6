"""Export a trained restorer in its shipped form: fp16 weights, the config, and where they came from.

    python -m restore.export RUN_OR_CHECKPOINT [--out DIR] [--prior-preset offline|tiny|...]

A run folder stands for its ``checkpoints/best`` (else ``last``); name a ``step_*`` folder to pick
another. The output folder (default: ``restore.checkpoint.SHIPPED``, inside the package, which
``restore.infer`` uses when no ``--checkpoint`` is given) holds::

    config.json          the restorer's config
    model.safetensors    the EMA weights in fp16 (Restorer.from_pretrained casts them to fp32)
    training_state.json  {"step", "prior_preset"}: the part of the training state that inference
                         reads (restore.evaluate.load_restorer takes the prior preset from it)
    export.json          where the weights came from: source folder and its weights' sha256, step,
                         prior preset, and the sha256 of the fp16 weights written here

The folder is written under a temporary name and renamed into place, so a failed export leaves
the previous one intact. Weights over MAX_BYTES are refused: the package carries them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline import cli
from pipeline.image_files import sha256_file
from restore import checkpoint
from restore.model import Restorer, count_parameters
from restore.model.restorer import WEIGHTS_FILE
from restore.priors_online import PRESET_CHOICES

EXPORT_FILE = "export.json"
# What a package may reasonably carry; the compact restorer is about 3 MB in fp16.
MAX_BYTES = 10 * 1000 * 1000


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (a repository-relative
    record reads the same on every machine), else absolute."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def export(source: str | Path, out: str | Path = checkpoint.SHIPPED, prior_preset: str | None = None,
           max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Write the shipped form of the restorer at ``source`` (run or checkpoint folder) into ``out``;
    returns the export record (export.json's content).

    ``prior_preset`` states the preset the restorer was trained with when the source's training
    state does not record it (a bare save_pretrained folder); it must be known one way or the other.
    """
    folder = checkpoint.find(source)
    state = checkpoint.read_state(folder) or {}
    recorded = state.get("prior_preset")
    if prior_preset and recorded and prior_preset != recorded:
        raise ValueError(f"{folder}: trained with prior preset {recorded!r}, not {prior_preset!r}")
    prior_preset = prior_preset or recorded
    if prior_preset is None:
        raise ValueError(f"{folder}: the training state does not say which prior preset the restorer "
                         f"was trained with; state it with --prior-preset ({', '.join(PRESET_CHOICES)})")
    model = Restorer.from_pretrained(folder)

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp, dtype=torch.float16)
        size = (tmp / WEIGHTS_FILE).stat().st_size
        if size > max_bytes:
            raise ValueError(f"{folder}: fp16 weights are {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB "
                             "a shipped checkpoint may take; export a smaller model")
        step = state.get("step")
        record = {
            "source": _display(folder),
            "source_sha256": sha256_file(folder / WEIGHTS_FILE),
            "step": step,
            "samples_seen": state.get("samples_seen"),
            "best_psnr": state.get("best_psnr"),
            "prior_preset": prior_preset,
            "weights": WEIGHTS_FILE,
            "weights_dtype": "float16",
            "weights_bytes": size,
            "weights_sha256": sha256_file(tmp / WEIGHTS_FILE),
            "parameters": count_parameters(model),
        }
        (tmp / checkpoint.STATE_JSON).write_text(
            json.dumps({"step": step, "prior_preset": prior_preset}, indent=1, sort_keys=True) + "\n")
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return record


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m restore.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="run folder or checkpoint folder")
    ap.add_argument("--out", default=str(checkpoint.SHIPPED),
                    help="output folder (default: the checkpoint shipped inside the package)")
    ap.add_argument("--prior-preset", default=None, choices=PRESET_CHOICES,
                    help="the prior preset the restorer was trained with, when its training state does not say")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        record = export(args.source, args.out, args.prior_preset)
    except (FileNotFoundError, ValueError) as e:
        return cli.fail(e, status=1)
    print(f"{record['source']} (step {record['step']}, prior preset {record['prior_preset']}) -> {args.out}: "
          f"{record['parameters']:,} parameters, {record['weights_bytes'] / 1e6:.1f} MB fp16, "
          f"sha256 {record['weights_sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
