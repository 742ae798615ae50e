#!/bin/bash
# MaPLe base-to-new, training on the base classes: bash scripts/maple/base2new_train_maple.sh DATASET SEED
# (run from the repo root; CFG=vit_b16_c2_ep10_batch4_2ctx for DePT's 10-epoch recipe, then LOADEP=10 to test).
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=MaPLe
DATASET=$1
SEED=$2
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx}
SHOTS=16

DIR=output/base2new/train_base/${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}
run_unless_finished "${DIR}" \
    --root "${DATA}" \
    --seed "${SEED}" \
    --trainer ${TRAINER} \
    --dataset-config-file configs/datasets/${DATASET}.yaml \
    --config-file configs/trainers/${TRAINER}/${CFG}.yaml \
    DATASET.NUM_SHOTS ${SHOTS} \
    DATASET.SUBSAMPLE_CLASSES base ${EXTRA_OPTS}
