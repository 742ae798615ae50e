# Shared by the run scripts (source it). Environment overrides:
#   DATA   data set root (default ./data)     SEEDS  seeds to loop over (default "1 2 3")
#   PYTHON interpreter (default python)
DATA=${DATA:-./data}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}

# A run is finished when it wrote results.json; an unfinished output folder is resumed.
run_unless_finished() {
    local dir=$1
    shift
    if [ -f "${dir}/results.json" ]; then
        echo "Oops! The results exist at ${dir} (so skip this job)"
    else
        "$PYTHON" train.py --output-dir "${dir}" "$@"
    fi
}

# One job of a method on a data set (train.py's common flags), skipped when finished:
#   run_job DIR TRAINER DATASET CFG SEED [more train.py flags, then KEY VALUE options]
run_job() {
    local dir=$1 trainer=$2 dataset=$3 cfg=$4 seed=$5
    shift 5
    run_unless_finished "${dir}" --root "${DATA}" --seed "${seed}" --trainer "${trainer}" \
        --dataset-config-file "configs/datasets/${dataset}.yaml" \
        --config-file "configs/trainers/${trainer}/${cfg}.yaml" "$@"
}
