"""What the priors are worth: one recipe trained three times, with priors off, with the analysis
alone and with the analysis and its text, then scored on the recipe's validation photos.

    python bench/priors_ablation.py [--config restore/recipes/lmdir_cpu.yaml] [--out bench/results/ablation]
                                    [--set steps=1000 ...] [--variants none,analysis,analysis+text]

Every variant runs the same recipe, steps and seed (``--set`` changes all of them alike); only
what the restorer is given changes:

- ``none``: no prior path at all (``model_overrides.use_degradation=false``), the plain backbone;
- ``analysis``: the weight-free analysis's degradation vector, no text (prior preset
  ``analysis-only``);
- ``analysis+text``: the vector plus the sentence encoder's tokens of the analysis's sentence
  (prior preset ``offline``, the shipped recipe's).

Runs are ordinary ``restore.train`` run folders under ``--out`` and are resumed when present, so
an interrupted ablation continues. The table is the final validation PSNR per task (the same
validation photos and degradations for every variant, never a test set), its average over tasks,
and each variant's gain over ``none``; it is printed and written to ``<out>/table.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from restore.validate import METRICS, read_metrics

VARIANTS = {
    "none": ["model_overrides.use_degradation=false"],
    "analysis": ["synthesis.prior_preset=analysis-only"],
    "analysis+text": ["synthesis.prior_preset=offline"],
}


def run_variant(name: str, config: str, out: Path, sets: list[str]) -> Path:
    """Train (or resume) one variant; returns its run folder."""
    run = out / name.replace("+", "_")
    command = [sys.executable, "-m", "restore.train", "--config", config, "--out", str(run), "--resume"]
    for item in VARIANTS[name] + sets:
        command += ["--set", item]
    print(f"== {name}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True)
    return run


def final_validation(run: Path) -> dict[str, float]:
    """The last validation record of a run: {task: PSNR} plus "average"."""
    records = read_metrics(run / METRICS)
    last = [r for r in records if "val_psnr" in r]
    if not last:
        raise SystemExit(f"{run}: no validation in metrics.jsonl; set val_every to at most the steps")
    scores = {k.removeprefix("val_psnr_"): v for k, v in last[-1].items() if k.startswith("val_psnr_")}
    scores["average"] = last[-1]["val_psnr"]
    return scores


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: a row per variant, a column per task, the average and the gain over ``none``."""
    tasks = sorted({t for scores in results.values() for t in scores if t != "average"})
    lines = ["| variant | " + " | ".join(tasks) + " | average | vs none |",
             "|---|" + "---:|" * (len(tasks) + 2)]
    base = results.get("none", {}).get("average")
    for name, scores in results.items():
        gain = f"{scores['average'] - base:+.2f}" if base is not None else "—"
        cells = [f"{scores[t]:.2f}" if t in scores else "—" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {scores['average']:.2f} | {gain} |")
    lines.append("\nValidation PSNR (dB, RGB) on the recipe's validation photos, after the same steps and seed.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="restore/recipes/lmdir_cpu.yaml", help="the training recipe (YAML)")
    ap.add_argument("--out", default="bench/results/ablation", help="folder for the three runs and the table")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe field in every variant, e.g. steps=1000")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    results = {name: final_validation(run_variant(name, args.config, out, args.set)) for name in names}
    text = table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
