#!/bin/bash
# CoCoOp base-to-new, training on the base classes: bash scripts/cocoop/base2new_train.sh DATASET SEED
# (run from the repo root). For CoOp set TRAINER=CoOp CFG=vit_b16_ctxv1 (vit_b16_ep50_ctxv1 for imagenet).
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
DATASET=$1
SEED=$2
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16

DIR=output/base2new/train_base/${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}
run_job "${DIR}" ${TRAINER} ${DATASET} ${CFG} ${SEED} \
    DATASET.NUM_SHOTS ${SHOTS} \
    DATASET.SUBSAMPLE_CLASSES base ${EXTRA_OPTS}
