#!/usr/bin/env bash
# Evaluation commands of the README; score files go to score/, read by average_scores.py.
PYTHON=${PYTHON:-python}
WEIGHTS=${WEIGHTS:-./your.pth.tar}

# center crop & single clip
$PYTHON test.py --dataset somethingv1 --weights $WEIGHTS --test_segments 8 --test_crops 1 --batch_size 32 -j 8

# 3 crops & 2 clips
$PYTHON test.py --dataset somethingv1 --weights $WEIGHTS --test_segments 8 --test_crops 3 --batch_size 8 -j 8 --full_res --twice_sample

# 3 crops & 10 clips
$PYTHON test.py --dataset somethingv1 --weights $WEIGHTS --test_segments 8 --test_crops 3 --batch_size 2 -j 8 --full_res --dense_sample --dense_sample_num 10

# ensemble of the score files written above (e.g. an 8- and a 16-frame model)
$PYTHON average_scores.py
