"""Oxford Flowers 102 (oxford_flowers/{jpg, imagelabels.mat, cat_to_name.json, split_zhou_OxfordFlowers.json})."""
from __future__ import annotations

import os
import random
from typing import List, Tuple

from clip.errors import InvalidInputError
from .base import CoOpDataset, Datum, load_mat, require_file
from .build import DATASET_REGISTRY
from .io import read_json


@DATASET_REGISTRY.register()
class OxfordFlowers(CoOpDataset):
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    template = "a photo of a {}, a type of flower."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        """Per label (first-appearance order): shuffle, 50% train, 20% val, the rest test."""
        labels = load_mat(require_file(os.path.join(self.dataset_dir, "imagelabels.mat")))["labels"][0]
        lab2cname = read_json(require_file(os.path.join(self.dataset_dir, "cat_to_name.json")))
        groups = {}
        for i, label in enumerate(labels):
            impath = os.path.join(self.image_dir, f"image_{i + 1:05d}.jpg")
            groups.setdefault(int(label), []).append(impath)
        print("Splitting data into 50% train, 20% val, and 30% test")
        train, val, test = [], [], []
        for label, impaths in groups.items():
            random.shuffle(impaths)
            n_train = round(len(impaths) * 0.5)
            n_val = round(len(impaths) * 0.2)
            if not (n_train > 0 and n_val > 0 and len(impaths) - n_train - n_val > 0):
                raise InvalidInputError(f"Flower label {label} has {len(impaths)} image(s): too few to split")
            cname = lab2cname[str(label)]
            for part, paths in ((train, impaths[:n_train]), (val, impaths[n_train:n_train + n_val]),
                                (test, impaths[n_train + n_val:])):
                part.extend(Datum(impath=p, label=label - 1, classname=cname) for p in paths)
        return train, val, test
