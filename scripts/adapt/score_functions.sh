#!/bin/bash
# Table 3: the score functions at T_target 128:
#   bash scripts/adapt/score_functions.sh     then: python -m trainers.analysis.adapt_tables output/adapt --table 3
set -e
source "$(dirname "$0")/datasets.sh"
for DATASET in ${DATASETS}; do
    for SCORE in snip grad_norm l2; do
        bash "$(dirname "$0")/main.sh" ${DATASET} 128 ${SCORE}
    done
done
