#!/bin/bash
# DePT's cross-data-set and domain-generalisation protocol: train on all ImageNet classes, evaluate
# the last epoch on the other data sets (DePT models keep the CAT head on the ImageNet variants).
#   bash scripts/dept/xd.sh TRAINER CFG [TARGET ...]     (run from the repo root)
# e.g. bash scripts/dept/xd.sh ExtrasLinearProbeCoOp vit_b16_ep10_bs4_lr35
# Without targets: DePT's ten cross-data-set targets and four ImageNet variants. Layout (DePT's):
#   ${OUTPUT}/TRAINER/imagenet/shots${SHOTS}/CFG/seed<S>   (source; its log holds the ImageNet accuracy)
#   ${OUTPUT}/TRAINER/TARGET/shots${SHOTS}/CFG/seed<S>
# Environment: SHOTS (16), OUTPUT (output/xd), DATA, SEEDS, PYTHON, EXTRA_OPTS (see base2new.sh).
set -e
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/common.sh"
TRAINER=$1
CFG=$2
shift 2 || { echo "usage: bash scripts/dept/xd.sh TRAINER CFG [TARGET ...]" >&2; exit 2; }
TARGETS=${*:-${DEPT_XD_TARGETS}}
SHOTS=${SHOTS:-16}
OUTPUT=${OUTPUT:-output/xd}

for SEED in ${SEEDS}; do
    SOURCE=${OUTPUT}/${TRAINER}/imagenet/shots${SHOTS}/${CFG}/seed${SEED}
    run_job "${SOURCE}" "${TRAINER}" imagenet "${CFG}" "${SEED}" \
        DATASET.NUM_SHOTS "${SHOTS}" DATASET.SUBSAMPLE_CLASSES all ${EXTRA_OPTS}
done
for DATASET in ${TARGETS}; do
    for SEED in ${SEEDS}; do
        SOURCE=${OUTPUT}/${TRAINER}/imagenet/shots${SHOTS}/${CFG}/seed${SEED}
        run_job "${OUTPUT}/${TRAINER}/${DATASET}/shots${SHOTS}/${CFG}/seed${SEED}" "${TRAINER}" "${DATASET}" "${CFG}" \
            "${SEED}" --model-dir "${SOURCE}" --load-epoch -1 \
            --eval-only DATASET.SUBSAMPLE_CLASSES all ${EXTRA_OPTS}
    done
done
"$PYTHON" parse_test_res.py "${OUTPUT}/${TRAINER}/imagenet/shots${SHOTS}/${CFG}"
for DATASET in ${TARGETS}; do
    "$PYTHON" parse_test_res.py "${OUTPUT}/${TRAINER}/${DATASET}/shots${SHOTS}/${CFG}" --test-log
done
