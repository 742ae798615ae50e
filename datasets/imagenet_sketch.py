"""ImageNet-Sketch (imagenet-sketch/{images/<wnid>/..., classnames.txt}); test only."""
from .build import DATASET_REGISTRY
from .imagenet import TestOnlyImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(TestOnlyImageNetVariant):
    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
