#!/usr/bin/env bash
# Training commands of the paper (Something-Something, ResNet-50, 4 GPUs, DataParallel).
#   bash scripts/train.sh                                  # MAS-Net 8 frames on V1 (the README's command)
#   SEGMENTS=16 DATASET=somethingv2 bash scripts/train.sh  # 16 frames on V2 (batch 16)
# Writes experiments/<dataset>/MASNet/resnet50/num_segments_<T>/MAS_Net[<v>_<T>]/.
# One process per GPU instead of DataParallel (also multi-node):
#   torchrun --nproc_per_node 4 main.py <same flags without --gpus>
set -euo pipefail
PYTHON=${PYTHON:-python}
DATASET=${DATASET:-somethingv1}
SEGMENTS=${SEGMENTS:-8}
if [ "$SEGMENTS" -ge 16 ]; then BATCH=16; else BATCH=32; fi
VERSION=v${DATASET#somethingv}

$PYTHON main.py --lr 0.01 --epochs 70 --dataset_path ../../datasets/ --dataset "$DATASET" \
                --arch resnet50 --num_segments "$SEGMENTS" --store_name "MAS_Net[${VERSION}_${SEGMENTS}]" \
                --gpus 0 1 2 3 --workers 8 --batch-size "$BATCH" \
                --dropout 0.5 --weight_decay 5e-4 \
                --lr_type MAS_lr --lr_steps 30 40 50 60
