#!/bin/bash
# Evaluate the ImageNet-trained CoCoOp (xd_train.sh) on another data set: bash scripts/cocoop/xd_test.sh DATASET SEED
# (cross-dataset targets, or imagenetv2 / imagenet_sketch / imagenet_a / imagenet_r for domain generalisation).
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
DATASET=$1
SEED=$2
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16
LOADEP=${LOADEP:-10}

DIR=output/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/${DATASET}/seed${SEED}
run_job "${DIR}" ${TRAINER} ${DATASET} ${CFG} ${SEED} \
    --model-dir output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED} \
    --load-epoch ${LOADEP} \
    --eval-only ${EXTRA_OPTS}
