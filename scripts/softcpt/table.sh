#!/bin/bash
# Every run of the paper's main table for one data set (zero-shot CLIP; 1, 2, 4, 8, 16 shots; seeds from SEEDS),
# then the table beside the paper's numbers:
#   bash scripts/softcpt/table.sh DATASET [CFG]      e.g. bash scripts/softcpt/table.sh fashion20
set -e
DATASET=$1
CFG=${2:-rn50_ep50}
HERE="$(dirname "$0")"
bash "${HERE}/zeroshot.sh" ${DATASET} ${CFG%%_ep*}
for SHOTS in 1 2 4 8 16; do
    for VARIANT in NATA NATS; do
        bash "${HERE}/main.sh" ${DATASET} ${CFG} ${SHOTS} ${VARIANT}
    done
    for BASELINE in CoOp-MT CoOp-CA CoOp-CS; do
        bash "${HERE}/hard.sh" ${DATASET} ${CFG} ${SHOTS} ${BASELINE}
    done
done
"${PYTHON:-python}" "${HERE}/results.py" output --dataset ${DATASET} --cfg ${CFG}
