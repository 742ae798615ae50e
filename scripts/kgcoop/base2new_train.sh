#!/bin/bash
# KgCoOp base-to-new, training on the base classes: bash scripts/kgcoop/base2new_train.sh DATASET SEED [W]
# (run from the repo root; W is the knowledge-guided weight TRAINER.COOP.W, 8.0 as in KgCoOp's scripts).
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=KgCoOp
DATASET=$1
SEED=$2
WEIGHT=${3:-8.0}
CFG=${CFG:-vit_b16_ep100_ctxv1}
CTP=end  # class token position
NCTX=4   # number of context tokens ("a photo of a")
SHOTS=16
CSC=False

DIR=output/base2new/train_base/${DATASET}/shots_${SHOTS}_${WEIGHT}/${TRAINER}/${CFG}/seed${SEED}
run_job "${DIR}" ${TRAINER} ${DATASET} ${CFG} ${SEED} \
    TRAINER.COOP.N_CTX ${NCTX} \
    TRAINER.COOP.CSC ${CSC} \
    TRAINER.COOP.W ${WEIGHT} \
    TRAINER.COOP.CLASS_TOKEN_POSITION ${CTP} \
    DATASET.NUM_SHOTS ${SHOTS} \
    DATASET.SUBSAMPLE_CLASSES base ${EXTRA_OPTS}
