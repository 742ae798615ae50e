# Shared by the DePT scripts (source after ../common.sh).
# DePT's data sets, in the order of its configs.py.
DEPT_BASE2NEW_DATASETS="dtd caltech101 eurosat ucf101 oxford_flowers oxford_pets stanford_cars fgvc_aircraft food101 sun397 imagenet"
DEPT_XD_TARGETS="caltech101 oxford_pets stanford_cars oxford_flowers food101 fgvc_aircraft sun397 dtd eurosat ucf101 imagenetv2 imagenet_sketch imagenet_a imagenet_r"

