"""ImageNetV2 (imagenetv2/{imagenetv2-matched-frequency-format-val/<0..999>/..., classnames.txt}); test only."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import List

from .base import Datum, listdir_nohidden, require_folder
from .build import DATASET_REGISTRY
from .imagenet import TestOnlyImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetV2(TestOnlyImageNetVariant):
    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"

    def read_data(self, classnames: "OrderedDict[str, str]", classnames_file: str) -> List[Datum]:
        """Folder ``<i>`` holds label i, named after the i-th line of classnames.txt (order matters)."""
        names = list(classnames.values())
        items = []
        for label, classname in enumerate(names):
            class_dir = os.path.join(self.image_dir, str(label))
            require_folder(class_dir, type(self).__name__)
            items.extend(Datum(impath=os.path.join(class_dir, im), label=label, classname=classname)
                         for im in listdir_nohidden(class_dir))
        return items
