#!/bin/bash
# The hard-sharing CoOp baselines (trainer MTCoOpHard), one joint run over all tasks:
#   bash scripts/softcpt/hard.sh DATASET CFG SHOTS BASELINE      (run from the repo root)
# e.g. bash scripts/softcpt/hard.sh plant6 rn50_ep50 4 CoOp-CA
# BASELINE: CoOp-MT (one context for every class of every task), CoOp-CA (one per task),
# CoOp-CS (one per class); 16 context tokens. Output: output/DATASET/BASELINE/CFG_SHOTSshots/seedS.
set -e
source "$(dirname "$0")/../common.sh"
DATASET=$1
CFG=$2
SHOTS=$3
BASELINE=$4

case ${BASELINE} in
    CoOp-MT) CSC=False; TSC=False ;;
    CoOp-CA) CSC=False; TSC=True ;;
    CoOp-CS) CSC=True; TSC=False ;;
    *) echo "unknown baseline ${BASELINE} (CoOp-MT CoOp-CA CoOp-CS)" >&2; exit 2 ;;
esac

for SEED in ${SEEDS}; do
    DIR=output/${DATASET}/${BASELINE}/${CFG}_${SHOTS}shots/seed${SEED}
    run_job "${DIR}" MTCoOpHard ${DATASET} ${CFG} ${SEED} \
        TRAINER.MTCOOPH.N_CTX 16 \
        TRAINER.MTCOOPH.CSC ${CSC} \
        TRAINER.MTCOOPH.TSC ${TSC} \
        DATASET.NUM_SHOTS ${SHOTS} ${EXTRA_OPTS}
done
