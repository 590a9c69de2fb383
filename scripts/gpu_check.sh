#!/usr/bin/env bash
# On a machine with a CUDA GPU: model benchmark (fp32, AMP fp16/bf16, channels_last, compiled),
# DataParallel + AMP training steps, main.py + test.py on the synthetic dataset, --sync_bn
# (SyncBatchNorm in every MAS form; torchrun with 2+ GPUs); one JSON report
# (outputs/gpu_check.json, or --out FILE), and the measured eager MAS / plain ratios beside those
# predicted for that GPU (docs/memory_traffic.md). Without a GPU it says so and exits 0 (with
# --predict [A100|H100|H200]: after printing that GPU's predictions). See tools/gpu_check.py.
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
$PYTHON tools/gpu_check.py "$@"
