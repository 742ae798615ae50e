"""FGVC-Aircraft (fgvc_aircraft/{images, variants.txt, images_variant_{train,val,test}.txt}).

No split JSON: the official variant lists are always read, as in CoOp.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from clip.errors import InvalidInputError
from .base import CoOpDataset, Datum, require_file
from .build import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class FGVCAircraft(CoOpDataset):
    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"
    template = "a photo of a {}, a type of aircraft."

    def load_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        path = require_file(os.path.join(self.dataset_dir, "variants.txt"))
        with open(path) as f:
            classnames = [line.strip() for line in f if line.strip()]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        train, val, test = (self.read_variants(cname2lab, f"images_variant_{s}.txt")
                            for s in ("train", "val", "test"))
        return train, val, test

    def read_variants(self, cname2lab: Dict[str, int], split_file: str) -> List[Datum]:
        """Lines ``<imageid> <variant name, possibly with spaces>``."""
        path = require_file(os.path.join(self.dataset_dir, split_file))
        items = []
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                imageid, *words = line.strip().split(" ")
                classname = " ".join(words)
                if classname not in cname2lab:
                    raise InvalidInputError(f"{path}:{n}: variant {classname!r} is not in variants.txt")
                items.append(Datum(impath=os.path.join(self.image_dir, imageid + ".jpg"),
                                   label=cname2lab[classname], classname=classname))
        return items
