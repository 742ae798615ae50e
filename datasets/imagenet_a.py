"""ImageNet-A (imagenet-adversarial/{imagenet-a/<wnid>/..., classnames.txt}); test only, 200 classes."""
from .build import DATASET_REGISTRY
from .imagenet import TestOnlyImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetA(TestOnlyImageNetVariant):
    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
