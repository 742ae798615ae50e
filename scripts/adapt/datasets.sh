# The paper's 11 data sets in its column order (source it; override with DATASETS="...").
DATASETS=${DATASETS:-"caltech101 dtd eurosat fgvc_aircraft food101 oxford_flowers oxford_pets stanford_cars sun397 ucf101 imagenet"}
