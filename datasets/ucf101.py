"""UCF101 mid-frames (ucf101/{UCF-101-midframes, ucfTrainTestlist, split_zhou_UCF101.json})."""
from __future__ import annotations

import os
import re
from typing import Dict, List, Tuple

from .base import CoOpDataset, Datum, require_file, split_trainval
from .build import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class UCF101(CoOpDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    template = "a photo of a person doing {}."

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        cname2lab = {}
        with open(require_file(os.path.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt"))) as f:
            for line in f:
                if line.strip():
                    label, action = line.strip().split(" ")
                    cname2lab[action] = int(label) - 1
        trainval = self.read_list(cname2lab, "trainlist01.txt")
        test = self.read_list(cname2lab, "testlist01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_list(self, cname2lab: Dict[str, int], list_file: str) -> List[Datum]:
        """First field ``Action/v_....avi``; ApplyEyeMakeup -> folder and class name Apply_Eye_Makeup."""
        items = []
        with open(require_file(os.path.join(self.dataset_dir, "ucfTrainTestlist", list_file))) as f:
            for line in f:
                if not line.strip():
                    continue
                action, filename = line.strip().split(" ")[0].split("/")
                renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
                impath = os.path.join(self.image_dir, renamed, filename.replace(".avi", ".jpg"))
                items.append(Datum(impath=impath, label=cname2lab[action], classname=renamed))
        return items
