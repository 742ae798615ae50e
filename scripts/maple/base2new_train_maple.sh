#!/bin/bash
# MaPLe base-to-new, training on the base classes: bash scripts/maple/base2new_train_maple.sh DATASET SEED
# (run from the repo root; CFG=vit_b16_c2_ep10_batch4_2ctx for DePT's 10-epoch recipe, then LOADEP=10 to test).
# Same protocol and output layout as CoCoOp's script, with MaPLe's trainer and config.
TRAINER=MaPLe CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx} exec bash "$(dirname "$0")/../cocoop/base2new_train.sh" "$@"
