#!/bin/bash
# DePT's base-to-new protocol for any trainer (DePT wrappers and baselines alike): train on the base
# half of the classes, evaluate the last epoch on the new half, then print the base/new/H table.
#   bash scripts/dept/base2new.sh TRAINER CFG [DATASET ...]     (run from the repo root)
# e.g. bash scripts/dept/base2new.sh ExtrasLinearProbeCoOp vit_b16_ep10_bs4_lr35 oxford_pets dtd
# Without data sets: DePT's eleven. Runs land in DePT's layout:
#   ${OUTPUT}/train_base/TRAINER/DATASET/shots${SHOTS}/CFG/seed<S>   (base accuracy, fused head)
#   ${OUTPUT}/test_new/TRAINER/DATASET/shots${SHOTS}/CFG/seed<S>     (new accuracy, ITM head)
# Environment: SHOTS (16), OUTPUT (output/base2new), DATA, SEEDS, PYTHON (scripts/common.sh), and
# EXTRA_OPTS (KEY VALUE pairs appended to every command). Finished runs (results.json) are skipped.
set -e
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/common.sh"
TRAINER=$1
CFG=$2
shift 2 || { echo "usage: bash scripts/dept/base2new.sh TRAINER CFG [DATASET ...]" >&2; exit 2; }
DATASETS=${*:-${DEPT_BASE2NEW_DATASETS}}
SHOTS=${SHOTS:-16}
OUTPUT=${OUTPUT:-output/base2new}

for DATASET in ${DATASETS}; do
    for SEED in ${SEEDS}; do
        RUN=${TRAINER}/${DATASET}/shots${SHOTS}/${CFG}/seed${SEED}
        run_job "${OUTPUT}/train_base/${RUN}" "${TRAINER}" "${DATASET}" "${CFG}" "${SEED}" \
            DATASET.NUM_SHOTS "${SHOTS}" DATASET.SUBSAMPLE_CLASSES base ${EXTRA_OPTS}
        run_job "${OUTPUT}/test_new/${RUN}" "${TRAINER}" "${DATASET}" "${CFG}" "${SEED}" \
            --model-dir "${OUTPUT}/train_base/${RUN}" --load-epoch -1 \
            --eval-only DATASET.NUM_SHOTS "${SHOTS}" DATASET.SUBSAMPLE_CLASSES new ${EXTRA_OPTS}
    done
done
"$PYTHON" -m trainers.analysis.base2new_table "${OUTPUT}"
