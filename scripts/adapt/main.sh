#!/bin/bash
# Adapt few-shot training on one data set, every seed (run from the repo root):
#   bash scripts/adapt/main.sh DATASET T_TARGET [SCORE]      SCORE: snip (default) | grad_norm | l2
# Env: CFG (vit_b16), SHOTS (16), MAX_CTX (16 slots per layer and branch; T_TARGET 512 needs 32),
#      OUT (output/adapt), plus common.sh's DATA, SEEDS, PYTHON, EXTRA_OPTS.
# Layout: ${OUT}/DATASET/shots_SHOTS/Adapt/CFG/T<T>_ctx<MAX_CTX>_<SCORE>/seed<S>, read by
#   python -m trainers.analysis.adapt_tables output/adapt
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=Adapt
DATASET=$1
TTARGET=$2
SCORE=${3:-snip}
CFG=${CFG:-vit_b16}
SHOTS=${SHOTS:-16}
MAX_CTX=${MAX_CTX:-16}
OUT=${OUT:-output/adapt}

for SEED in ${SEEDS}; do
    DIR=${OUT}/${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/T${TTARGET}_ctx${MAX_CTX}_${SCORE}/seed${SEED}
    run_job "${DIR}" ${TRAINER} ${DATASET} ${CFG} ${SEED} \
        TRAINER.ADAPT.T_TARGET ${TTARGET} \
        TRAINER.ADAPT.SCORE ${SCORE} \
        TRAINER.ADAPT.MAX_CTX ${MAX_CTX} \
        DATASET.NUM_SHOTS ${SHOTS} ${EXTRA_OPTS}
done
