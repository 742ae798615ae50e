#!/bin/bash
# Adaptive T_target (our protocol, spec §5): train every T of GRID (Snip), evaluate each last-epoch model
# on the few-shot validation split, pick per data set the T with the best mean validation accuracy:
#   bash scripts/adapt/select_ttarget.sh [DATASET ...]      (default: the 11 data sets)
# Env: GRID ("8 16 32 64 128 256"), VALOUT (output/adapt_val), and main.sh's CFG, SHOTS, MAX_CTX, OUT.
set -e
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/datasets.sh"
[ $# -gt 0 ] && DATASETS="$*"
GRID=${GRID:-"8 16 32 64 128 256"}
CFG=${CFG:-vit_b16}
SHOTS=${SHOTS:-16}
MAX_CTX=${MAX_CTX:-16}
OUT=${OUT:-output/adapt}
VALOUT=${VALOUT:-output/adapt_val}

for DATASET in ${DATASETS}; do
    for TTARGET in ${GRID}; do
        CFG=${CFG} SHOTS=${SHOTS} MAX_CTX=${MAX_CTX} OUT=${OUT} bash "$(dirname "$0")/main.sh" ${DATASET} ${TTARGET} snip
        for SEED in ${SEEDS}; do
            RUN=${DATASET}/shots_${SHOTS}/Adapt/${CFG}/T${TTARGET}_ctx${MAX_CTX}_snip/seed${SEED}
            run_unless_finished "${VALOUT}/${RUN}" --root "${DATA}" --seed ${SEED} --trainer Adapt \
                --dataset-config-file configs/datasets/${DATASET}.yaml \
                --config-file configs/trainers/Adapt/${CFG}.yaml \
                --model-dir "${OUT}/${RUN}" --load-epoch -1 --eval-only \
                TRAINER.ADAPT.T_TARGET ${TTARGET} TRAINER.ADAPT.MAX_CTX ${MAX_CTX} \
                DATASET.NUM_SHOTS ${SHOTS} TEST.SPLIT val ${EXTRA_OPTS}
        done
    done
done
"$PYTHON" -m trainers.analysis.adapt_select "${OUT}" "${VALOUT}" --grid ${GRID} --shots ${SHOTS} --max-ctx ${MAX_CTX}
