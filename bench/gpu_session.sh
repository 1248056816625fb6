#!/usr/bin/env bash
# The measurements that need a GPU, in one run on a lent GPU machine; each result is recorded in
# bench/RESULTS.md.
#
#   OUT=gpu_out bash bench/gpu_session.sh      # about 6 minutes of GPU time on one H100/H200
#
# 1. bench/model.py: bf16 training images/s, MFU and peak memory of the backbone and of the
#    restorer with all priors, at 128² and 256² patches (the priors' overhead, target ≤ 1.25× at 128²).
# 2. A smoke run (not a result) with the 3-task recipe's settings (restore/recipes/promptir_3task.yaml:
#    base model, 128² crops, batch 8 per GPU, AdamW 2e-4 with warmup) on the ../shared/data/train
#    photos degraded on the fly with its three tasks (noise σ 15–50, rain, haze) and the offline
#    priors, which the loader workers compute: images/s and GPU memory from the run's metrics, MFU
#    from bench/model.py's count of a training step's FLOPs.
#
# Knobs (environment): STEPS (300), WORKERS (loader workers per GPU, 8), GPUS (1), MODEL (base),
# CROP (128), SKIP_MODEL_BENCH=1 to run the smoke run only. On a CPU, e.g. SKIP_MODEL_BENCH=1
# MODEL=tiny CROP=32 STEPS=60 WORKERS=1, the smoke run checks this script end to end.
set -euo pipefail
OUT=${OUT:-gpu_session}
STEPS=${STEPS:-300}
WORKERS=${WORKERS:-8}
GPUS=${GPUS:-1}
MODEL=${MODEL:-base}
CROP=${CROP:-128}
PHOTOS=${PHOTOS:-../shared/data/train/CBSD365}
mkdir -p "$OUT"

if [ "${SKIP_MODEL_BENCH:-0}" != 1 ]; then
  python -m bench.model --device cuda --sizes 128,256 --reps 20 | tee "$OUT/model.md"
fi

# The recipe's optimisation and batch settings; the data are photos degraded on the fly instead of
# the extracted shards, which a fresh machine does not have.
cat > "$OUT/smoke.yaml" <<EOF
out: $OUT/smoke
model: $MODEL
synthesis:
  photos: [$PHOTOS]
  prior_preset: offline
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
log_every: 25
val_every: $STEPS
save_every: $STEPS
keep: 1
EOF
torchrun --standalone --nproc_per_node "$GPUS" -m restore.train --config "$OUT/smoke.yaml" 2>&1 | tail -n 20 | tee "$OUT/smoke.log"

python - "$OUT" "$MODEL" "$CROP" "$GPUS" <<'EOF'
"""The smoke run's throughput, memory and MFU, from its metrics after the first logging window."""
import json
import sys
from pathlib import Path

import torch

from bench.model import build, peak_tflops, training_flops

out, model, crop, gpus = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
records = [json.loads(line) for line in (out / "smoke" / "metrics.jsonl").read_text().splitlines()]
train = [r for r in records if "train_images_per_s" in r][1:]  # the first window holds start-up
rate = sum(r["train_images_per_s"] for r in train) / len(train)
flops = training_flops(*build("all priors", model, crop, 1, None))  # per image
lines = [f"smoke run: {len(train)} logging windows after the first, {rate:.1f} images/s (all GPUs)"]
if torch.cuda.is_available():
    peak = peak_tflops(torch.cuda.get_device_name())
    memory = max(r.get("train_gpu_peak_gib", 0.0) for r in train)
    mfu = f"{flops * rate / gpus / (peak * 1e12):.1%}" if peak else "n/a (unknown GPU)"
    lines.append(f"{torch.cuda.get_device_name()}: GPU memory peak {memory:.2f} GiB, MFU {mfu} "
                 f"({flops / 1e9:.1f} GFLOP a training image at {crop}²)")
print("\n".join(lines))
(out / "smoke.md").write_text("\n".join(lines) + "\n")
EOF
