#!/usr/bin/env bash
# Training commands of the paper (Something-Something V1/V2, ResNet-50, 4 GPUs).
# Each writes to experiments/<dataset>/MASNet/resnet50/num_segments_<T>/<store_name>/.
# Multi-node / one process per GPU instead of DataParallel:
#   torchrun --nproc_per_node 4 main.py <same flags without --gpus>
PYTHON=${PYTHON:-python}

# MAS-Net 8 frames, Something-Something V1
$PYTHON main.py --lr 0.01 --epochs 70 --dataset_path ../../datasets/ --dataset somethingv1 \
                --arch resnet50 --num_segments 8 --store_name MAS_Net[v1_8] \
                --gpus 0 1 2 3 --workers 8 --batch-size 32 \
                --dropout 0.5 --weight_decay 5e-4 \
                --lr_type MAS_lr --lr_steps 30 40 50 60

# MAS-Net 16 frames, Something-Something V1
# $PYTHON main.py --lr 0.01 --epochs 70 --dataset_path ../../datasets/ --dataset somethingv1 \
#                 --arch resnet50 --num_segments 16 --store_name MAS_Net[v1_16] \
#                 --gpus 0 1 2 3 --workers 8 --batch-size 16 \
#                 --dropout 0.5 --weight_decay 5e-4 \
#                 --lr_type MAS_lr --lr_steps 30 40 50 60
