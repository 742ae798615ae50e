#!/bin/bash
# Table 2: the T_target sweep (Snip). T 512 exceeds the 2 x 12 x 16 = 384 slots of MAX_CTX 16, so it runs
# with 32 slots per layer and branch (spec §6.1):
#   bash scripts/adapt/sweep_ttarget.sh     then: python -m trainers.analysis.adapt_tables output/adapt --table 2
set -e
source "$(dirname "$0")/datasets.sh"
for DATASET in ${DATASETS}; do
    for TTARGET in 256 128 64 32 16; do
        bash "$(dirname "$0")/main.sh" ${DATASET} ${TTARGET} snip
    done
    MAX_CTX=32 bash "$(dirname "$0")/main.sh" ${DATASET} 512 snip
done
