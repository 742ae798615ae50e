#!/bin/bash
# MVLPT few-shot runs on ELEVATER tasks (paper Table 2), single-task or multi-task adaptation.
#   bash scripts/mvlpt/few_shot.sh METHOD CFG NCTX SHOTS            e.g. VPT vit_b16 16 20
# Environment:
#   TASKS      space list of tasks (default all 20 ELEVATER tasks);
#   MULTI=1    one multi-task run over TASKS (any group) instead of one run per task;
#   GROUP_SIZE 2 or 3: per task of TASKS, its Table 5 group for METHOD (the task plus its Task 1,
#              and Task 2 for 3; scripts/mvlpt/table5_groups.json) as one multi-task run;
#   EVALKEY    model selection of a multi-task run: "average" (default) or a task name;
#   MODEL_DIR  a source prompt folder (e.g. the averaged source of cross_task.sh): MCoOp/MVPT/MUPT;
#   SEEDS, DATA, OUTPUT, EXTRA_OPTS.
# Output: OUTPUT/few_shot/<TASK or task1,task2,...>/<METHOD>/<CFG>_<SHOTS>shots/nctx<NCTX>/seed<S>
# (OUTPUT/few_shot_from_source/... with MODEL_DIR);
# a multi-task run also keeps each task's best epoch under best_per_task/<task>/ and evaluates it
# there (results.json), which `python -m trainers.analysis.mvlpt_tables OUTPUT --per-task-best` reads.
set -e
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/common.sh"
setting_args "$@"
TASKS=${TASKS:-${ELEVATER_TASKS}}
EVALKEY=${EVALKEY:-average}
INIT=()
KIND=few_shot
if [ -n "${MODEL_DIR}" ]; then
    INIT=(--model-dir "${MODEL_DIR}")
    KIND=few_shot_from_source  # Table 2's source "M" rows, kept apart from the random-init ones
fi

# run_group "task1,task2,...": one multi-task run per seed, then each task's own best epoch evaluated
run_group() {
    local group=$1 seed dir task
    for seed in ${SEEDS}; do
        dir=${OUTPUT}/${KIND}/${group}/${SETTING}/seed${seed}
        mvlpt_run "${dir}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" "${seed}" --dataset "${group}" --multi-task \
            --multi-task-evalkey "${EVALKEY}" "${INIT[@]}" TRAINER.MVLPT.SAVE_BEST_PER_TASK True
        for task in ${group//,/ }; do
            mvlpt_run "${dir}/best_per_task/${task}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" "${seed}" \
                --dataset "${group}" --multi-task --eval-only --model-dir "${dir}/best_per_task/${task}"
        done
    done
}

if [ -n "${GROUP_SIZE}" ]; then
    for TASK in ${TASKS}; do
        run_group "$("$PYTHON" -m trainers.analysis.mvlpt_tables --group "${METHOD}" "${TASK}" "${GROUP_SIZE}")"
    done
elif [ "${MULTI}" = "1" ]; then
    run_group "$(echo ${TASKS} | tr ' ' ',')"
else
    for TASK in ${TASKS}; do
        for SEED in ${SEEDS}; do
            mvlpt_run "${OUTPUT}/${KIND}/${TASK}/${SETTING}/seed${SEED}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" \
                "${SEED}" --dataset "${TASK}" "${INIT[@]}"
        done
    done
fi
