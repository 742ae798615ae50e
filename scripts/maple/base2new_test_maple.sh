#!/bin/bash
# MaPLe base-to-new, evaluating on the new classes: bash scripts/maple/base2new_test_maple.sh DATASET SEED
# (models from base2new_train_maple.sh; LOADEP=<epoch> when CFG trains for another number of epochs).
TRAINER=MaPLe CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx} LOADEP=${LOADEP:-5} \
    exec bash "$(dirname "$0")/../cocoop/base2new_test.sh" "$@"
