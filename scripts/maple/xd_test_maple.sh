#!/bin/bash
# Evaluate the ImageNet-trained MaPLe (xd_train_maple.sh) on another data set:
#   bash scripts/maple/xd_test_maple.sh DATASET SEED
# (cross-dataset targets, or imagenetv2 / imagenet_sketch / imagenet_a / imagenet_r for domain generalisation).
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=MaPLe
DATASET=$1
SEED=$2
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets}
SHOTS=16
LOADEP=${LOADEP:-2}

DIR=output/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/${DATASET}/seed${SEED}
run_unless_finished "${DIR}" \
    --root "${DATA}" \
    --seed "${SEED}" \
    --trainer ${TRAINER} \
    --dataset-config-file configs/datasets/${DATASET}.yaml \
    --config-file configs/trainers/${TRAINER}/${CFG}.yaml \
    --model-dir output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED} \
    --load-epoch ${LOADEP} \
    --eval-only ${EXTRA_OPTS}
