#!/bin/bash
# MaPLe cross-dataset / domain generalisation, training on all ImageNet classes:
#   bash scripts/maple/xd_train_maple.sh SEED   (the original's form "xd_train_maple.sh imagenet SEED" works too)
if [ $# -ge 2 ]; then
    export DATASET=$1
    shift
fi
TRAINER=MaPLe CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets} \
    exec bash "$(dirname "$0")/../cocoop/xd_train.sh" "$@"
