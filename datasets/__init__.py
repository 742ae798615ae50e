"""Data sets in the CoOp layouts, few-shot sampling, transforms and (multi-task) loaders.

Importing the package registers every reader in ``DATASET_REGISTRY`` under its Dassl/CoOp name.
"""
from .base import DatasetBase, Datum
from .build import DATASET_REGISTRY, build_dataset
from .manager import DataManager, DatasetWrapper, Task
from .transforms import build_transform

# Readers register themselves on import.
from . import (caltech101, dtd, eurosat, fgvc_aircraft, food101, imagenet, imagenet_a, imagenet_r,  # noqa: F401
               imagenet_sketch, imagenetv2, oxford_flowers, oxford_pets, stanford_cars, sun397, synthetic, ucf101)
from . import elevater  # noqa: F401  (registers the 20 ELEVATER tasks under MVLPT's names)
from . import softcpt_mt  # noqa: F401  (SoftCPT's General10, Plant6, Fashion20 and their members)

__all__ = ["DATASET_REGISTRY", "build_dataset", "Datum", "DatasetBase", "DataManager", "DatasetWrapper", "Task",
           "build_transform"]
