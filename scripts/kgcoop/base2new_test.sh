#!/bin/bash
# KgCoOp base-to-new, evaluating on the new classes: bash scripts/kgcoop/base2new_test.sh DATASET SEED [W]
# (models from base2new_train.sh with the same W; LOADEP=<epoch> to load another epoch).
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=KgCoOp
DATASET=$1
SEED=$2
WEIGHT=${3:-8.0}
CFG=${CFG:-vit_b16_ep100_ctxv1}
CTP=end
NCTX=4
SHOTS=16
CSC=False
LOADEP=${LOADEP:-100}
SUB=new

COMMON_DIR=${DATASET}/shots_${SHOTS}_${WEIGHT}/${TRAINER}/${CFG}/seed${SEED}
MODEL_DIR=output/base2new/train_base/${COMMON_DIR}
DIR=output/base2new/test_${SUB}/${COMMON_DIR}
run_job "${DIR}" ${TRAINER} ${DATASET} ${CFG} ${SEED} \
    --model-dir "${MODEL_DIR}" \
    --load-epoch ${LOADEP} \
    --eval-only \
    TRAINER.COOP.N_CTX ${NCTX} \
    TRAINER.COOP.CSC ${CSC} \
    TRAINER.COOP.CLASS_TOKEN_POSITION ${CTP} \
    DATASET.NUM_SHOTS ${SHOTS} \
    DATASET.SUBSAMPLE_CLASSES ${SUB} ${EXTRA_OPTS}
