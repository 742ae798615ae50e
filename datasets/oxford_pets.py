"""Oxford-IIIT Pets (CoOp layout: oxford_pets/{images, annotations, split_zhou_OxfordPets.json})."""
from __future__ import annotations

import os
from typing import List, Tuple

from .base import CoOpDataset, Datum, require_file, split_trainval
from .build import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class OxfordPets(CoOpDataset):
    dataset_dir = "oxford_pets"
    image_subdir = "images"
    template = "a photo of a {}, a type of pet."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        trainval = self.read_annotations("trainval.txt")
        test = self.read_annotations("test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotations(self, split_file: str) -> List[Datum]:
        """Lines ``<imname> <classid 1-based> <species> <breedid>``; the breed is the name minus its number."""
        path = require_file(os.path.join(self.dataset_dir, "annotations", split_file))
        items = []
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                imname, label, _species, _breed = line.strip().split(" ")
                breed = "_".join(imname.split("_")[:-1]).lower()
                items.append(Datum(impath=os.path.join(self.image_dir, imname + ".jpg"),
                                   label=int(label) - 1, classname=breed))
        return items
