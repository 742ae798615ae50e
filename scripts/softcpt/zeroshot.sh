#!/bin/bash
# Zero-shot CLIP on a SoftCPT data set, every task with its own hand-written template (the
# original's per-task templates), scored as SoftCPT (each task's metric, unweighted mean):
#   bash scripts/softcpt/zeroshot.sh DATASET CFG      (run from the repo root)
# e.g. bash scripts/softcpt/zeroshot.sh plant6 rn50
# CFG: a CoOp config (rn50, vit_b16, ...). One run over all tasks (the original runs one per task
# and averages by hand; each task only sees its own classes, so the numbers are the same).
# Output: output/DATASET/ZS-CLIP/CFG (results.py shows it in the Avg. column).
set -e
source "$(dirname "$0")/../common.sh"
DATASET=$1
CFG=$2

run_unless_finished "output/${DATASET}/ZS-CLIP/${CFG}" --root "${DATA}" --trainer ZeroshotCLIP \
    --dataset-config-file "configs/datasets/${DATASET}.yaml" \
    --config-file "configs/trainers/CoOp/${CFG}.yaml" --eval-only \
    DATASET.NUM_SHOTS 1 TEST.EVALUATOR ClassificationMT TEST.PER_TASK_RESULT True ${EXTRA_OPTS}
