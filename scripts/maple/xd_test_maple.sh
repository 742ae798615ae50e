#!/bin/bash
# Evaluate the ImageNet-trained MaPLe (xd_train_maple.sh) on another data set:
#   bash scripts/maple/xd_test_maple.sh DATASET SEED
TRAINER=MaPLe CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets} LOADEP=${LOADEP:-2} \
    exec bash "$(dirname "$0")/../cocoop/xd_test.sh" "$@"
