#!/bin/bash
# MaPLe cross-dataset / domain generalisation, training on all ImageNet classes:
#   bash scripts/maple/xd_train_maple.sh SEED   (the original's form "xd_train_maple.sh imagenet SEED" works too)
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=MaPLe
if [ $# -ge 2 ]; then
    DATASET=$1
    SEED=$2
else
    DATASET=imagenet
    SEED=$1
fi
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets}
SHOTS=16

DIR=output/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}
run_unless_finished "${DIR}" \
    --root "${DATA}" \
    --seed "${SEED}" \
    --trainer ${TRAINER} \
    --dataset-config-file configs/datasets/${DATASET}.yaml \
    --config-file configs/trainers/${TRAINER}/${CFG}.yaml \
    DATASET.NUM_SHOTS ${SHOTS} ${EXTRA_OPTS}
