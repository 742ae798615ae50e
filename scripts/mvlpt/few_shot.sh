#!/bin/bash
# MVLPT few-shot runs on ELEVATER tasks (paper Table 2), single-task or multi-task adaptation.
#   bash scripts/mvlpt/few_shot.sh METHOD CFG NCTX SHOTS            e.g. VPT vit_b16 16 20
# Environment:
#   TASKS      space list of tasks (default all 20 ELEVATER tasks);
#   MULTI=1    one multi-task run over TASKS (a Table 5 group) instead of one run per task;
#   EVALKEY    model selection of a multi-task run: "average" (default) or a task name;
#   MODEL_DIR  a source prompt folder (e.g. the averaged source of cross_task.sh): MCoOp/MVPT/MUPT;
#   SEEDS, DATA, OUTPUT, EXTRA_OPTS.
# Output: OUTPUT/few_shot/<TASK or task1,task2,...>/<METHOD>/<CFG>_<SHOTS>shots/nctx<NCTX>/seed<S>;
# a multi-task run also keeps each task's best epoch under best_per_task/<task>/.
set -e
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/common.sh"
METHOD=$1
CFG=$2
NCTX=$3
SHOTS=$4
TASKS=${TASKS:-${ELEVATER_TASKS}}
EVALKEY=${EVALKEY:-average}
SETTING=${METHOD}/${CFG}_${SHOTS}shots/nctx${NCTX}
INIT=()
if [ -n "${MODEL_DIR}" ]; then
    INIT=(--model-dir "${MODEL_DIR}")
fi

if [ "${MULTI}" = "1" ]; then
    GROUP=$(echo ${TASKS} | tr ' ' ',')
    for SEED in ${SEEDS}; do
        mvlpt_run "${OUTPUT}/few_shot/${GROUP}/${SETTING}/seed${SEED}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" \
            "${SEED}" --dataset "${GROUP}" --multi-task --multi-task-evalkey "${EVALKEY}" "${INIT[@]}" \
            TRAINER.MVLPT.SAVE_BEST_PER_TASK True
    done
else
    for TASK in ${TASKS}; do
        for SEED in ${SEEDS}; do
            mvlpt_run "${OUTPUT}/few_shot/${TASK}/${SETTING}/seed${SEED}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" \
                "${SEED}" --dataset "${TASK}" "${INIT[@]}"
        done
    done
fi
