#!/usr/bin/env bash
# On a machine with a CUDA GPU: model benchmark (fp32, AMP fp16/bf16, channels_last, compiled),
# DataParallel + AMP training steps, main.py + test.py on the synthetic dataset; one JSON report
# (outputs/gpu_check.json, or --out FILE). Without a GPU it says so and exits 0. See tools/gpu_check.py.
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
$PYTHON tools/gpu_check.py "$@"
