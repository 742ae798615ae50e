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
