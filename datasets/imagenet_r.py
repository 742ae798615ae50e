"""ImageNet-R (imagenet-rendition/{imagenet-r/<wnid>/..., classnames.txt}); test only, 200 classes."""
from .build import DATASET_REGISTRY
from .imagenet import TestOnlyImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetR(TestOnlyImageNetVariant):
    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
