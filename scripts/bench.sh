#!/usr/bin/env bash
# Speed and memory measurements of docs/speed.md (`make bench`); ratios are measured in one process.
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
$PYTHON tools/flops.py --type MASNet --arch resnet50 --num_segments 8
$PYTHON tools/flops.py --type MASNet --arch resnet50 --num_segments 16
$PYTHON tools/bench_model.py --num_segments 8 --size 224 --repeats 15 --profile
$PYTHON tools/bench_data.py --clips 300
$PYTHON tools/bench_data.py --videos --clips 10
