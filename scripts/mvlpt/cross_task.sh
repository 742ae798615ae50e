#!/bin/bash
# MVLPT's cross-task generalisation (paper Table 1): a multi-task source prompt on the CoOp tasks,
# the seeds' best source checkpoints averaged, then every target task from that prompt.
#   bash scripts/mvlpt/cross_task.sh METHOD CFG NCTX SHOTS      e.g. UPT vit_b16 4 20  (MUPT)
# Environment: SOURCE_TASKS (comma list, default the 11 CoOp tasks), TARGET_TASKS (space list,
# default the 12 ELEVATER tasks outside CoOp's), SEEDS, DATA, OUTPUT, EXTRA_OPTS.
#   source: OUTPUT/source/<SOURCE_TASKS>/<METHOD>/<CFG>_<SHOTS>shots/nctx<NCTX>/seed<S>, averaged
#           into the seedless folder (prompt_learner/model-best.pth.tar);
#   target: OUTPUT/target/<TASK>/<METHOD>/<CFG>_<SHOTS>shots/nctx<NCTX>/seed<S>.
set -e
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/common.sh"
setting_args "$@"
SOURCE_TASKS=${SOURCE_TASKS:-${COOP_TASKS}}
TARGET_TASKS=${TARGET_TASKS:-${CROSS_TASK_TARGETS}}

SOURCE=${OUTPUT}/source/${SOURCE_TASKS}/${SETTING}
for SEED in ${SEEDS}; do
    mvlpt_run "${SOURCE}/seed${SEED}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" "${SEED}" \
        --dataset "${SOURCE_TASKS}" --dataset-coop --multi-task
done
"$PYTHON" -m trainers.analysis.avg_ckpt "${SOURCE}" --seeds ${SEEDS}

for TASK in ${TARGET_TASKS}; do
    for SEED in ${SEEDS}; do
        mvlpt_run "${OUTPUT}/target/${TASK}/${SETTING}/seed${SEED}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" \
            "${SEED}" --dataset "${TASK}" --model-dir "${SOURCE}"
    done
done
