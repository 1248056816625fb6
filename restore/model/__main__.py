"""``python -m restore.model --summary --preset base --size 256``: the model's size and compute."""

from __future__ import annotations

import argparse

import torch

from restore.model.config import PRESETS, preset
from restore.model.restorer import Restorer
from restore.model.summary import format_table, summarize


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m restore.model", description=__doc__)
    parser.add_argument("--summary", action="store_true", required=True,
                        help="print parameters and MACs per component")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="base", help="restorer preset (default: base)")
    parser.add_argument("--size", type=int, default=256, help="square input size in pixels")
    parser.add_argument("--no-priors", action="store_true", help="the backbone alone (all prior paths off)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = preset(args.preset)
    if args.no_priors:
        config = config.without_priors()
    torch.manual_seed(0)
    model = Restorer(config)
    print(format_table(summarize(model, args.size), args.size))


if __name__ == "__main__":
    main()
