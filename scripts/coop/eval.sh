#!/bin/bash
# Evaluate ImageNet-trained CoOp models on another data set:
#   bash scripts/coop/eval.sh DATASET CFG   (models from scripts/coop/main.sh imagenet CFG end 16 16 False)
set -e
source "$(dirname "$0")/../common.sh"
TRAINER=CoOp
SHOTS=16
NCTX=16
CSC=False
CTP=end
DATASET=$1
CFG=$2
LOADEP=${LOADEP:-50}

for SEED in ${SEEDS}; do
    "$PYTHON" train.py \
        --root "${DATA}" \
        --seed "${SEED}" \
        --trainer ${TRAINER} \
        --dataset-config-file configs/datasets/${DATASET}.yaml \
        --config-file configs/trainers/${TRAINER}/${CFG}.yaml \
        --output-dir output/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/${DATASET}/seed${SEED} \
        --model-dir output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED} \
        --load-epoch ${LOADEP} \
        --eval-only \
        TRAINER.COOP.N_CTX ${NCTX} \
        TRAINER.COOP.CSC ${CSC} \
        TRAINER.COOP.CLASS_TOKEN_POSITION ${CTP} ${EXTRA_OPTS}
done
