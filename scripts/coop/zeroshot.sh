#!/bin/bash
# Zero-shot CLIP: bash scripts/coop/zeroshot.sh DATASET CFG   (CFG e.g. vit_b16, rn50)
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=${TRAINER:-ZeroshotCLIP}
DATASET=$1
CFG=$2

"$PYTHON" train.py \
    --root "${DATA}" \
    --trainer ${TRAINER} \
    --dataset-config-file configs/datasets/${DATASET}.yaml \
    --config-file configs/trainers/CoOp/${CFG}.yaml \
    --output-dir output/${TRAINER}/${CFG}/${DATASET} \
    --eval-only ${EXTRA_OPTS}
