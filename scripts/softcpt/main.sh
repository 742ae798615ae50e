#!/bin/bash
# SoftCPT (trainer MTCoOp) few-shot training and test, one variant:
#   bash scripts/softcpt/main.sh DATASET CFG SHOTS VARIANT      (run from the repo root)
# e.g. bash scripts/softcpt/main.sh general10 rn50_ep50 16 NATA
# DATASET: general10 | plant6 | fashion20 (or any configs/datasets/<name>.yaml); CFG: rn50_ep50, vit_b16_ep50, ...
# VARIANT: NATA NATS CATA CSTA CATS CSTS, with the README's M = 4 task tokens, K = 4 class tokens
# (CA/CS), L = 16 generated tokens and PG_TYPE lin. The class-aware variants sample classes at
# CLS_SAMPLE_RATE 0.1 on General-10 (the original's cls_sample script), none elsewhere; override
# with CSR=<rate>. SINGLE_STEP=True gives one optimizer step per iteration instead of the
# original's 3 (NA*) or 4 (CA/CS*). Output: output/DATASET/SoftCPT-VARIANT/CFG_SHOTSshots/seedS.
set -e
source "$(dirname "$0")/../common.sh"
DATASET=$1
CFG=$2
SHOTS=$3
VARIANT=$4

case ${VARIANT} in
    NATA) CSC=False; CLASS_N_CTX=0; CLASS_CSC=False; TASK_CSC=False ;;
    NATS) CSC=False; CLASS_N_CTX=0; CLASS_CSC=False; TASK_CSC=True ;;
    CATA) CSC=True; CLASS_N_CTX=4; CLASS_CSC=False; TASK_CSC=False ;;
    CSTA) CSC=True; CLASS_N_CTX=4; CLASS_CSC=True; TASK_CSC=False ;;
    CATS) CSC=True; CLASS_N_CTX=4; CLASS_CSC=False; TASK_CSC=True ;;
    CSTS) CSC=True; CLASS_N_CTX=4; CLASS_CSC=True; TASK_CSC=True ;;
    *) echo "unknown variant ${VARIANT} (NATA NATS CATA CSTA CATS CSTS)" >&2; exit 2 ;;
esac
if [ -z "${CSR}" ]; then
    if [ "${CSC}" = True ] && [ "${DATASET}" = general10 ]; then CSR=0.1; else CSR=0.0; fi
fi

for SEED in ${SEEDS}; do
    DIR=output/${DATASET}/SoftCPT-${VARIANT}/${CFG}_${SHOTS}shots/seed${SEED}
    run_job "${DIR}" MTCoOp ${DATASET} ${CFG} ${SEED} \
        TRAINER.MTCOOP.N_CTX 16 \
        TRAINER.MTCOOP.PG_TYPE lin \
        TRAINER.MTCOOP.TASK_N_CTX 4 \
        TRAINER.MTCOOP.TASK_CSC ${TASK_CSC} \
        TRAINER.MTCOOP.CSC ${CSC} \
        TRAINER.MTCOOP.CLASS_N_CTX ${CLASS_N_CTX} \
        TRAINER.MTCOOP.CLASS_CSC ${CLASS_CSC} \
        TRAINER.MTCOOP.CLS_SAMPLE_RATE ${CSR} \
        TRAINER.MTCOOP.SINGLE_STEP ${SINGLE_STEP:-False} \
        DATASET.NUM_SHOTS ${SHOTS} ${EXTRA_OPTS}
done
