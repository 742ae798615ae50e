"""Caltech-101 (caltech-101/{101_ObjectCategories, split_zhou_Caltech101.json}); 100 classes."""
from __future__ import annotations

from typing import List, Tuple

from .base import CoOpDataset, Datum
from .build import DATASET_REGISTRY
from .dtd import read_and_split_data

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CLASSNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(CoOpDataset):
    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    template = "a photo of a {}."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        return read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CLASSNAMES)
