#!/bin/bash
# CoOp few-shot training: bash scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC
# e.g. bash scripts/coop/main.sh oxford_pets vit_b16 end 16 16 False   (run from the repo root)
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=CoOp
DATASET=$1
CFG=$2   # config file
CTP=$3   # class token position (end or middle)
NCTX=$4  # number of context tokens
SHOTS=$5 # number of shots (1, 2, 4, 8, 16)
CSC=$6   # class-specific context (False or True)

for SEED in ${SEEDS}; do
    DIR=output/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}
    run_job "${DIR}" ${TRAINER} ${DATASET} ${CFG} ${SEED} \
        TRAINER.COOP.N_CTX ${NCTX} \
        TRAINER.COOP.CSC ${CSC} \
        TRAINER.COOP.CLASS_TOKEN_POSITION ${CTP} \
        DATASET.NUM_SHOTS ${SHOTS} ${EXTRA_OPTS}
done
