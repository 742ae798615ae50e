# Shared by the DePT scripts (source after ../common.sh).
# DePT's data sets, in the order of its configs.py.
DEPT_BASE2NEW_DATASETS="dtd caltech101 eurosat ucf101 oxford_flowers oxford_pets stanford_cars fgvc_aircraft food101 sun397 imagenet"
DEPT_XD_TARGETS="caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101 imagenetv2 imagenet_sketch imagenet_a imagenet_r"

# The highest epoch saved in a run folder (DePT's --load-epoch -1, for trainers that do not take -1).
latest_epoch() {
    local epochs
    epochs=$(ls "$1"/*/model.pth.tar-* 2>/dev/null | sed 's/.*model\.pth\.tar-//' | sort -n)
    if [ -z "${epochs}" ]; then
        echo "No model.pth.tar-<epoch> in $1/*/ (did training finish?)" >&2
        return 1
    fi
    echo "${epochs}" | tail -n 1
}
