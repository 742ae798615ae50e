"""Food-101 (food-101/{images, meta, split_zhou_Food101.json}); the fallback ignores the official lists, as CoOp."""
from __future__ import annotations

from typing import List, Tuple

from .base import CoOpDataset, Datum
from .build import DATASET_REGISTRY
from .dtd import read_and_split_data


@DATASET_REGISTRY.register()
class Food101(CoOpDataset):
    dataset_dir = "food-101"
    image_subdir = "images"
    template = "a photo of {}, a type of food."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        return read_and_split_data(self.image_dir)
