"""Shared builders for the data tests: configs and tiny image trees in the real layouts.

(Named test_datasets_*.py to sit with the data tests; it holds no tests itself.)
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

from PIL import Image

from trainers.engine.config import get_cfg_default


def make_cfg(root, name: str = "", **dataset_keys):
    """A default config on ``root`` with workers off (tests run in-process)."""
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    for key, value in dataset_keys.items():
        cfg.DATASET[key] = value
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.USE_CUDA = False
    cfg.INPUT.SIZE = (8, 8)
    return cfg


def write_png(path: str, colour=(0, 0, 0), size: int = 8) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="PNG")
    return path


def make_class_tree(image_dir: str, classes: Sequence[str], n: int = 5, ext: str = ".jpg") -> Dict[str, List[str]]:
    """``image_dir/<class>/<i><ext>`` (PNG bytes whatever the extension); returns class -> file names."""
    out = {}
    for c, cname in enumerate(classes):
        names = [f"{i}{ext}" for i in range(n)]
        for name in names:
            write_png(os.path.join(image_dir, cname, name), colour=(c * 40, 0, 0))
        out[cname] = names
    return out


def write_split(path: str, split: Dict[str, list]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(split, f, indent=4)


def make_dtd_with_split(root, classes=("banded", "dotted", "zigzagged"), n_train=3, n_val=1, n_test=1) -> str:
    """A DTD folder with images and a split file; per class the first images go to train, then val, then test."""
    dataset_dir = os.path.join(str(root), "dtd")
    make_class_tree(os.path.join(dataset_dir, "images"), classes, n=n_train + n_val + n_test)
    split = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(classes):
        for i in range(n_train + n_val + n_test):
            part = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            split[part].append([f"{cname}/{i}.jpg", label, cname])
    write_split(os.path.join(dataset_dir, "split_zhou_DescribableTextures.json"), split)
    return dataset_dir
