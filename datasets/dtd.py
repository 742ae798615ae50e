"""Describable Textures (dtd/{images, imdb, labels, split_zhou_DescribableTextures.json}).

Also home of CoOp's class-folder splitter, which EuroSAT, Caltech101 and Food101 reuse.
"""
from __future__ import annotations

import os
import random
from typing import Dict, List, Optional, Sequence, Tuple

from clip.errors import InvalidInputError, MissingInputError
from .base import CoOpDataset, Datum, listdir_nohidden
from .build import DATASET_REGISTRY


def read_and_split_data(image_dir: str, p_trn: float = 0.5, p_val: float = 0.2,
                        ignored: Sequence[str] = (), new_cnames: Optional[Dict[str, str]] = None
                        ) -> Tuple[List[Datum], List[Datum], List[Datum]]:
    """Split ``image_dir/<class>/<image>`` per class: shuffle, round(p_trn*n) train, round(p_val*n) val.

    Classes are the sorted folder names (minus ``ignored``); images keep directory-listing
    order before the shuffle, as in CoOp, so the result depends on the file system and the
    RNG state. ``new_cnames`` renames folders to class names.
    """
    if not os.path.isdir(image_dir):
        raise MissingInputError(f"missing image folder {image_dir}")
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored)
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, im) for im in listdir_nohidden(category_dir)]
        random.shuffle(images)
        n_train = round(len(images) * p_trn)
        n_val = round(len(images) * p_val)
        if not (n_train > 0 and n_val > 0 and len(images) - n_train - n_val > 0):
            raise InvalidInputError(f"{category_dir} has {len(images)} image(s): too few to split into "
                             "non-empty train, val and test parts")
        classname = (new_cnames or {}).get(category, category)
        for part, paths in ((train, images[:n_train]), (val, images[n_train:n_train + n_val]),
                            (test, images[n_train + n_val:])):
            part.extend(Datum(impath=p, label=label, classname=classname) for p in paths)
    return train, val, test


@DATASET_REGISTRY.register()
class DescribableTextures(CoOpDataset):
    dataset_dir = "dtd"
    image_subdir = "images"
    template = "{} texture."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        return read_and_split_data(self.image_dir)
