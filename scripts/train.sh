#!/usr/bin/env bash
# The release's training recipes (ResNet-50, 4 GPUs with DataParallel):
#   bash scripts/train.sh            # v1_8: MAS-Net 8 frames on Something-Something V1 (the README's command)
#   bash scripts/train.sh v2_16      # any recipe below; extra flags are appended, e.g.
#   bash scripts/train.sh k400_8 --dataset_path /data/
# Recipes taken verbatim from the release's scripts: v1_8, v2_16, k400_8 (scripts/train.sh) and
# k400_16 (train_kinetics16.sh of commit adaf45f, which passes no --weight_decay / --lr_type: its
# opts.py defaults of that commit, 1e-4 and step_lr, are written out here). v1_16 and v2_8 are
# not in the release; they use its recipe of the same frame count (v2_16, v1_8).
# Writes experiments/<dataset>/MASNet/resnet50/num_segments_<T>/MAS_Net[<recipe>]/.
# One process per GPU instead of DataParallel (also multi-node):
#   torchrun --nproc_per_node 4 main.py <the same flags without --gpus>
set -euo pipefail
PYTHON=${PYTHON:-python}
RECIPE=${1:-v1_8}
shift || true

case "$RECIPE" in
  v1_8|v2_8)
    DATASET=something${RECIPE%_8}; SEGMENTS=8
    FLAGS=(--lr 0.01 --epochs 70 --batch-size 32 --dropout 0.5 --weight_decay 5e-4
           --lr_type MAS_lr --lr_steps 30 40 50 60 --workers 8) ;;
  v1_16|v2_16)
    DATASET=something${RECIPE%_16}; SEGMENTS=16
    FLAGS=(--lr 0.005 --epochs 70 --batch-size 16 --dropout 0.8 --weight_decay 5e-4
           --lr_type MAS_lr --lr_steps 30 40 50 60 --workers 8) ;;
  k400_8)
    DATASET=kinetics; SEGMENTS=8
    FLAGS=(--lr 0.01 --epochs 100 --batch-size 32 --dropout 0.5 --weight_decay 1e-4
           --lr_type step_lr --lr_steps 65 75 90 --workers 32) ;;
  k400_16)
    DATASET=kinetics; SEGMENTS=16
    FLAGS=(--lr 0.005 --epochs 100 --batch-size 16 --dropout 0.8 --weight_decay 1e-4
           --lr_type step_lr --lr_steps 50 75 90 --workers 12) ;;
  *)
    echo "scripts/train.sh: unknown recipe '$RECIPE' (v1_8, v1_16, v2_8, v2_16, k400_8, k400_16)" >&2
    exit 2 ;;
esac

$PYTHON main.py --dataset_path ../../datasets/ --dataset "$DATASET" --arch resnet50 \
                --num_segments "$SEGMENTS" --store_name "MAS_Net[$RECIPE]" --gpus 0 1 2 3 \
                "${FLAGS[@]}" "$@"
