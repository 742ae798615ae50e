"""ImageNet (imagenet/{images/{train,val}/<wnid>/..., classnames.txt}) and the class-folder helpers of its variants.

The file listing is cached once as ``preprocessed.json`` (split-file format, paths relative
to ``images/``) instead of CoOp's ``preprocessed.pkl``; images keep directory-listing order,
so later few-shot draws depend only on that file.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Dict, List, Sequence, Tuple

from .base import (CoOpDataset, DatasetBase, Datum, read_split_lists, split_entries, dataset_root,
                   listdir_nohidden, require_file, require_folder)
from .build import DATASET_REGISTRY
from .io import write_json


def read_classnames(path: str) -> "OrderedDict[str, str]":
    """``classnames.txt`` lines ``<wnid> <class name with spaces>`` -> wnid -> name, in file order."""
    classnames: "OrderedDict[str, str]" = OrderedDict()
    with open(require_file(path)) as f:
        for line in f:
            if line.strip():
                folder, *words = line.strip().split(" ")
                classnames[folder] = " ".join(words)
    return classnames


def read_class_folders(image_dir: str, folders: Sequence[str], classnames: Dict[str, str],
                       classnames_file: str) -> List[Datum]:
    """Label i = ``folders[i]``; its images in listing order; class names looked up by folder (wnid)."""
    items = []
    for label, folder in enumerate(folders):
        if folder not in classnames:
            raise KeyError(f"Folder {os.path.join(image_dir, folder)} has no entry in {classnames_file}")
        folder_dir = os.path.join(image_dir, folder)
        items.extend(Datum(impath=os.path.join(folder_dir, name), label=label, classname=classnames[folder])
                     for name in listdir_nohidden(folder_dir))
    return items


def sorted_subfolders(path: str) -> List[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


@DATASET_REGISTRY.register()
class ImageNet(CoOpDataset):
    """Few-shot on train only; the official val set (in class folders) is both test and val."""

    dataset_dir = "imagenet"
    image_subdir = "images"
    fewshot_val = False
    template = "a photo of a {}."

    def load_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        listing = os.path.join(self.dataset_dir, "preprocessed.json")
        if os.path.exists(listing):
            train, test = read_split_lists(listing, self.image_dir, ("train", "test"))
            return train, [], test
        classnames_file = os.path.join(self.dataset_dir, "classnames.txt")
        classnames = read_classnames(classnames_file)
        train, test = (self.read_split_folder(classnames, classnames_file, s) for s in ("train", "val"))
        write_json({"train": split_entries(train, self.image_dir), "test": split_entries(test, self.image_dir)},
                   listing)
        print(f"Saved the ImageNet file listing to {listing}")
        return train, [], test

    def read_split_folder(self, classnames: Dict[str, str], classnames_file: str, split: str) -> List[Datum]:
        split_dir = os.path.join(self.image_dir, split)
        require_folder(split_dir, type(self).__name__)
        return read_class_folders(split_dir, sorted_subfolders(split_dir), classnames, classnames_file)


class TestOnlyImageNetVariant(DatasetBase):
    """A test-only ImageNet variant: train_x = test = every image; no val, few-shot or base/new."""

    image_subdir = ""
    template = "a photo of a {}."

    def __init__(self, cfg: Any) -> None:
        self.dataset_dir = os.path.join(dataset_root(cfg), type(self).dataset_dir)
        require_folder(self.dataset_dir, type(self).__name__)
        self.image_dir = os.path.join(self.dataset_dir, self.image_subdir)
        require_folder(self.image_dir, type(self).__name__)
        classnames_file = os.path.join(self.dataset_dir, "classnames.txt")
        data = self.read_data(read_classnames(classnames_file), classnames_file)
        super().__init__(train_x=data, test=data)

    def read_data(self, classnames: "OrderedDict[str, str]", classnames_file: str) -> List[Datum]:
        """Sorted wnid folders, label = position (so ImageNet-A/R get labels 0..199, not 1k indices)."""
        return read_class_folders(self.image_dir, sorted_subfolders(self.image_dir), classnames, classnames_file)
