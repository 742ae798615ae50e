#!/bin/bash
# MaPLe base-to-new, evaluating on the new classes: bash scripts/maple/base2new_test_maple.sh DATASET SEED
# (models from base2new_train_maple.sh; LOADEP=<epoch> when CFG trains for another number of epochs).
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=MaPLe
DATASET=$1
SEED=$2
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx}
SHOTS=16
LOADEP=${LOADEP:-5}
SUB=new

COMMON_DIR=${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}
MODEL_DIR=output/base2new/train_base/${COMMON_DIR}
DIR=output/base2new/test_${SUB}/${COMMON_DIR}
run_unless_finished "${DIR}" \
    --root "${DATA}" \
    --seed "${SEED}" \
    --trainer ${TRAINER} \
    --dataset-config-file configs/datasets/${DATASET}.yaml \
    --config-file configs/trainers/${TRAINER}/${CFG}.yaml \
    --model-dir "${MODEL_DIR}" \
    --load-epoch ${LOADEP} \
    --eval-only \
    DATASET.NUM_SHOTS ${SHOTS} \
    DATASET.SUBSAMPLE_CLASSES ${SUB} ${EXTRA_OPTS}
