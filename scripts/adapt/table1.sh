#!/bin/bash
# Table 1: Adapt (Snip) at T_target 128 and 32 on the 11 data sets, 16 shots, seeds 1-3:
#   bash scripts/adapt/table1.sh     then: python -m trainers.analysis.adapt_tables output/adapt --table 1
set -e
source "$(dirname "$0")/datasets.sh"
for DATASET in ${DATASETS}; do
    for TTARGET in 128 32; do
        bash "$(dirname "$0")/main.sh" ${DATASET} ${TTARGET} snip
    done
done
