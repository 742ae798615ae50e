#!/bin/bash
# MVLPT's transferability map (paper Fig. 4): a single-task prompt per task (as few_shot.sh trains
# it), evaluated on every task, then the map normalised per target and its heatmap.
#   bash scripts/mvlpt/transferability.sh METHOD CFG NCTX SHOTS      e.g. UPT vit_b16 4 20
# Environment: TASKS (space list, default all 20 ELEVATER tasks), SEEDS, DATA, OUTPUT, EXTRA_OPTS.
#   prompts:     OUTPUT/few_shot/<TASK>/<METHOD>/<CFG>_<SHOTS>shots/nctx<NCTX>/seed<S> (shared with few_shot.sh)
#   evaluations: OUTPUT/transfer/<METHOD>/<CFG>_<SHOTS>shots/nctx<NCTX>/<SOURCE>/<TARGET>/seed<S>
#   map:         transfer_raw.csv, transfer_normalised.csv, transfer_map.png in the transfer folder.
set -e
source "$(dirname "$0")/../common.sh"
source "$(dirname "$0")/common.sh"
setting_args "$@"
TASKS=${TASKS:-${ELEVATER_TASKS}}
MAP=${OUTPUT}/transfer/${SETTING}

for SOURCE in ${TASKS}; do
    for SEED in ${SEEDS}; do
        PROMPT=${OUTPUT}/few_shot/${SOURCE}/${SETTING}/seed${SEED}
        mvlpt_run "${PROMPT}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" "${SEED}" --dataset "${SOURCE}"
        for TARGET in ${TASKS}; do
            mvlpt_run "${MAP}/${SOURCE}/${TARGET}/seed${SEED}" "${METHOD}" "${CFG}" "${NCTX}" "${SHOTS}" "${SEED}" \
                --dataset "${TARGET}" --eval-only --model-dir "${PROMPT}"
        done
    done
done
"$PYTHON" -m trainers.analysis.mvlpt_transfer "${MAP}"
