# Shared by the MVLPT scripts (source it after scripts/common.sh).
#   METHOD (CoOp, VPT or UPT) and NCTX become MVLPT's overrides, as in the original scripts:
#   CoOp: text context only; VPT: visual prompts only; UPT: both (through the unified transformer).
# Environment: OUTPUT (default output/mvlpt), EXTRA_OPTS (more KEY VALUE options for every run).
OUTPUT=${OUTPUT:-output/mvlpt}

#: the 11 CoOp source tasks (cross-task setting) and the 12 ELEVATER targets that do not overlap them
COOP_TASKS="ImageNet,Caltech101,Food101,StanfordCars,OxfordPets,OxfordFlowers,FGVCAircraft,SUN397,DescribableTextures,EuroSAT,UCF101"
CROSS_TASK_TARGETS="hateful-memes cifar-10 mnist resisc45_clip country211 voc-2007-classification cifar-100 patch-camelyon rendered-sst2 gtsrb fer-2013 kitti-distance"
ELEVATER_TASKS="caltech-101 cifar-10 cifar-100 country211 dtd eurosat_clip fer-2013 fgvc-aircraft-2013b-variants102 food-101 gtsrb hateful-memes kitti-distance mnist oxford-flower-102 oxford-iiit-pets patch-camelyon rendered-sst2 resisc45_clip stanford-cars voc-2007-classification"

# setting_args METHOD CFG NCTX SHOTS: the scripts' four arguments, and SETTING, the folder part they name
setting_args() {
    if [ $# -lt 4 ]; then
        echo "usage: bash $0 METHOD CFG NCTX SHOTS   (e.g. UPT vit_b16 4 20)" >&2
        return 2
    fi
    METHOD=$1
    CFG=$2
    NCTX=$3
    SHOTS=$4
    SETTING=${METHOD}/${CFG}_${SHOTS}shots/nctx${NCTX}
}

# method_options METHOD NCTX -> train.py flags and options choosing the prompt type
method_options() {
    local method=$1 nctx=$2
    case ${method} in
        CoOp) echo "--cut-contextlen TRAINER.MVLPT.COOP.N_CTX ${nctx} TRAINER.MVLPT.VPT.N_CTX 0" ;;
        VPT) echo "TRAINER.MVLPT.COOP.N_CTX 0 TRAINER.MVLPT.VPT.N_CTX ${nctx}" ;;
        UPT) echo "--cut-contextlen TRAINER.MVLPT.COOP.N_CTX ${nctx} TRAINER.MVLPT.VPT.N_CTX ${nctx}" ;;
        *) echo "unknown method ${method}: use CoOp, VPT or UPT" >&2; return 1 ;;
    esac
}

# mvlpt_run DIR METHOD CFG NCTX SHOTS SEED [more train.py flags]: one MVLPT run, skipped when finished
mvlpt_run() {
    local dir=$1 method=$2 cfg=$3 nctx=$4 shots=$5 seed=$6
    shift 6
    local options
    options=$(method_options "${method}" "${nctx}")
    # shellcheck disable=SC2086  # options and EXTRA_OPTS are word lists
    run_unless_finished "${dir}" --root "${DATA}" --seed "${seed}" --trainer MVLPT \
        --config-file "configs/trainers/MVLPT/${cfg}.yaml" --shots "${shots}" "$@" ${options} \
        TRAINER.MVLPT.COOP.CLASS_TOKEN_POSITION middle TRAINER.MVLPT.COOP.CSC False \
        TEST.NO_TEST False TEST.FINAL_MODEL best_val ${EXTRA_OPTS}
}
