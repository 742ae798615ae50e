#!/bin/bash
# CoCoOp base-to-new, evaluating on the new classes: bash scripts/cocoop/base2new_test.sh DATASET SEED
# (models from base2new_train.sh; LOADEP=<epoch> to load another epoch, e.g. for CoOp configs).
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-CoCoOp}
DATASET=$1
SEED=$2
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=16
LOADEP=${LOADEP:-10}
SUB=new

COMMON_DIR=${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}
MODEL_DIR=output/base2new/train_base/${COMMON_DIR}
DIR=output/base2new/test_${SUB}/${COMMON_DIR}
run_job "${DIR}" ${TRAINER} ${DATASET} ${CFG} ${SEED} \
    --model-dir "${MODEL_DIR}" \
    --load-epoch ${LOADEP} \
    --eval-only \
    DATASET.NUM_SHOTS ${SHOTS} \
    DATASET.SUBSAMPLE_CLASSES ${SUB} ${EXTRA_OPTS}
