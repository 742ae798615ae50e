"""Stanford Cars (stanford_cars/{cars_train, cars_test, devkit, cars_test_annos_withlabels.mat, split_zhou_StanfordCars.json}).

Split paths are relative to the data set folder itself (e.g. ``cars_train/00001.jpg``).
"""
from __future__ import annotations

import os
from typing import List, Tuple

from .base import CoOpDataset, Datum, load_mat, require_file, split_trainval
from .build import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class StanfordCars(CoOpDataset):
    dataset_dir = "stanford_cars"
    image_subdir = ""
    template = "a photo of a {}."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        meta = os.path.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_mat("cars_train", os.path.join(self.dataset_dir, "devkit", "cars_train_annos.mat"), meta)
        test = self.read_mat("cars_test", os.path.join(self.dataset_dir, "cars_test_annos_withlabels.mat"), meta)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_mat(self, image_subdir: str, anno_file: str, meta_file: str) -> List[Datum]:
        """Annotations ``fname``/``class`` (1-based); the class name's trailing year moves to the front."""
        annos = load_mat(require_file(anno_file))["annotations"][0]
        names = load_mat(require_file(meta_file))["class_names"][0]
        items = []
        for anno in annos:
            label = int(anno["class"][0, 0]) - 1
            words = str(names[label][0]).split(" ")
            classname = " ".join([words[-1]] + words[:-1])
            impath = os.path.join(self.dataset_dir, image_subdir, str(anno["fname"][0]))
            items.append(Datum(impath=impath, label=label, classname=classname))
        return items
