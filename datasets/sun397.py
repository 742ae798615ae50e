"""SUN397 (sun397/{SUN397, ClassName.txt, Training_01.txt, Testing_01.txt, split_zhou_SUN397.json})."""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from .base import CoOpDataset, Datum, require_file, split_trainval
from .build import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class SUN397(CoOpDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    template = "a photo of a {}."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        with open(require_file(os.path.join(self.dataset_dir, "ClassName.txt"))) as f:
            classes = [line.strip()[1:] for line in f if line.strip()]  # "/a/abbey" -> "a/abbey"
        cname2lab = {c: i for i, c in enumerate(classes)}
        trainval = self.read_list(cname2lab, "Training_01.txt")
        test = self.read_list(cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_list(self, cname2lab: Dict[str, int], list_file: str) -> List[Datum]:
        """Lines ``/a/abbey/sun_x.jpg``; "b/bakery/shop" becomes the class name "shop bakery"."""
        items = []
        with open(require_file(os.path.join(self.dataset_dir, list_file))) as f:
            for line in f:
                if not line.strip():
                    continue
                imname = line.strip()[1:]
                folder = os.path.dirname(imname)
                classname = " ".join(folder.split("/")[1:][::-1])
                items.append(Datum(impath=os.path.join(self.image_dir, imname),
                                   label=cname2lab[folder], classname=classname))
        return items
