#!/usr/bin/env bash
# The main job on the embedded default (`make demo`): generate the synthetic dataset, train
# MAS-Net (ResNet-10, 8 segments, 64 px, from scratch) on this CPU, evaluate it with 1 and
# 3x2 views, ensemble the two score files, and draw Grad-CAM heat maps.
# Run again, it reuses the trained model (main.py resumes the run folder's checkpoint).
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
RUN=experiments/synthetic/MASNet/resnet10/num_segments_8/demo
EPOCHS=${EPOCHS:-20}

$PYTHON main.py --dataset synthetic --type MASNet --arch resnet10 --num_segments 8 \
                --input_size 64 --pretrain none --batch-size 16 --workers 2 \
                --lr 0.01 --lr_type cos_lr --epochs "$EPOCHS" --dropout 0.2 --weight_decay 1e-4 \
                --eval-freq 5 --print-freq 50 --store_name demo

$PYTHON test.py --dataset synthetic --weights $RUN/checkpoint/ckpt.best.pth.tar \
                --test_crops 1 --batch_size 16 -j 2
$PYTHON test.py --dataset synthetic --weights $RUN/checkpoint/ckpt.best.pth.tar \
                --test_crops 3 --twice_sample --full_res --batch_size 8 -j 2
$PYTHON average_scores.py --dataset synthetic  # score/ may hold other datasets' files too
$PYTHON CAM.py --output $RUN/CAM_result.png

echo
echo "log, TensorBoard events and checkpoints: $RUN/"
echo "score files: score/    Grad-CAM figure: $RUN/CAM_result.png"
echo "TensorBoard: tensorboard --logdir experiments"
