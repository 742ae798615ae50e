#!/bin/bash
# CoCoOp cross-dataset / domain generalisation, training on ImageNet: bash scripts/cocoop/xd_train.sh SEED
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
DATASET=${DATASET:-imagenet}
SEED=$1
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16

DIR=output/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}
run_job "${DIR}" ${TRAINER} ${DATASET} ${CFG} ${SEED} \
    DATASET.NUM_SHOTS ${SHOTS} ${EXTRA_OPTS}
