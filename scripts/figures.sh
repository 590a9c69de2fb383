#!/usr/bin/env bash
# Regenerate every figure in imgs/ (`make figures`): architecture diagrams, and the Grad-CAM
# result and training curves of the demo's model (trained first by scripts/demo.sh if absent).
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
RUN=experiments/synthetic/MASNet/resnet10/num_segments_8/demo

$PYTHON tools/draw_architecture.py --out imgs
[ -f $RUN/checkpoint/ckpt.best.pth.tar ] || PYTHON=$PYTHON bash scripts/demo.sh
$PYTHON CAM.py --video valid_0_0001 --output imgs/CAM_result.png
$PYTHON tools/plot_curves.py $RUN --labels MAS-Net --out imgs/training_curves.png
