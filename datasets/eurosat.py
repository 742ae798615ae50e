"""EuroSAT (eurosat/{2750, split_zhou_EuroSAT.json}); folder names are renamed to CoOp's class names."""
from __future__ import annotations

from typing import List, Tuple

from .base import CoOpDataset, Datum
from .build import DATASET_REGISTRY
from .dtd import read_and_split_data

NEW_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(CoOpDataset):
    dataset_dir = "eurosat"
    image_subdir = "2750"
    template = "a centered satellite photo of {}."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        return read_and_split_data(self.image_dir, new_cnames=NEW_CLASSNAMES)
