#!/usr/bin/env bash
# Synthetic ablation: TSN (no temporal modelling) vs TSM vs MAS-Net, same recipe as the demo.
# Three seeds (SEEDS="0 1 2"); writes score/ablation/seed*/*.npz and prints the README's
# table, mean +- std over the seeds.
# Run again, it reuses the finished runs (main.py resumes a run folder that has a checkpoint);
# delete experiments/synthetic/*/resnet10/num_segments_8/ablation_seed* to train afresh.
set -euo pipefail
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-20}
SEEDS=${SEEDS:-0 1 2}
rm -rf score/ablation
for SEED in $SEEDS; do
  for TYPE in TSN TSM MASNet; do
    $PYTHON main.py --dataset synthetic --type $TYPE --arch resnet10 --num_segments 8 \
                    --input_size 64 --pretrain none --batch-size 16 --workers 2 \
                    --lr 0.01 --lr_type cos_lr --epochs "$EPOCHS" --dropout 0.2 --weight_decay 1e-4 \
                    --eval-freq 5 --print-freq 50 --seed "$SEED" --store_name "ablation_seed$SEED"
    $PYTHON test.py --dataset synthetic --test_crops 1 --batch_size 16 -j 2 \
                    --weights "experiments/synthetic/$TYPE/resnet10/num_segments_8/ablation_seed$SEED/checkpoint/ckpt.pth.tar" \
                    --save_scores "score/ablation/seed$SEED"
  done
done
$PYTHON tools/ablation_table.py score/ablation/seed*/*.npz
$PYTHON tools/plot_curves.py experiments/synthetic/{TSN,TSM,MASNet}/resnet10/num_segments_8/ablation_seed0 \
                             --labels TSN TSM MAS-Net --out imgs/ablation_curves.png
