"""The 20 ELEVATER image-classification tasks MVLPT uses: files, class names, templates, metrics.

File names and folders are those of the ELEVATER registry (vision_datasets.json): a task
lives in ``<DATASET.ROOT>/classification/<folder>/``. Class names and templates are
ELEVATER's ``class_map`` / ``template_map`` (in ``classes.json``); label i is name i.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

__all__ = ["TaskSpec", "TASKS", "METRIC_NAMES", "task_classnames", "task_templates"]

#: metric names a task may carry (see trainers/engine/elevater_metrics.py)
METRIC_NAMES = ("accuracy", "mean_per_class_accuracy", "11point_mAP", "roc_auc")


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's files are and how it is scored.

    ``metric`` is MVLPT's choice (its ``class_map_metric``); ``elevater_metric`` is the
    ELEVATER toolkit's, which differs only for hateful-memes (ROC-AUC).
    """

    name: str
    folder: str
    index_format: str  # "iris" (text lines) or "coco" (JSON)
    train_index: str
    train_zip: str
    test_index: str
    test_zip: str
    labelmap: Optional[str]  # IRIS tasks: the class list file; COCO tasks list categories in the index
    metric: str
    elevater_metric: str
    multilabel: bool

    @property
    def root_folder(self) -> str:
        return f"classification/{self.folder}"


def _task(name: str, folder: str, index_format: str, train: Tuple[str, str], test: Tuple[str, str],
          labelmap: Optional[str], metric: str = "accuracy", elevater_metric: Optional[str] = None,
          multilabel: bool = False) -> TaskSpec:
    return TaskSpec(name, folder, index_format, train[0], train[1], test[0], test[1], labelmap, metric,
                    elevater_metric or metric, multilabel)


def _iris(name: str, folder: str, train: Tuple[str, str], test: Tuple[str, str], labelmap: str = "labels.txt",
          **kwargs) -> TaskSpec:
    return _task(name, folder, "iris", train, test, labelmap, **kwargs)


def _coco(name: str, folder: str, train: Tuple[str, str], test: Tuple[str, str], **kwargs) -> TaskSpec:
    return _task(name, folder, "coco", train, test, None, **kwargs)


_PLAIN = (("train.txt", "train.zip"), ("test.txt", "test.zip"))
_VAL_ZIP = (("train.txt", "train.zip"), ("test.txt", "val.zip"))
_MEAN_PER_CLASS = "mean_per_class_accuracy"

TASKS: Dict[str, TaskSpec] = {spec.name: spec for spec in (
    _iris("caltech-101", "caltech_101_20211007", *_PLAIN, metric=_MEAN_PER_CLASS),
    _iris("cifar-10", "cifar_10_20211007", *_VAL_ZIP),
    _iris("cifar-100", "cifar100_20200721", ("train_images.txt", "train_images.zip"),
          ("test_images.txt", "test_images.zip")),
    _iris("country211", "country211_20210924", *_PLAIN),
    _iris("dtd", "dtd_20211007", *_PLAIN),
    _iris("eurosat_clip", "eurosat_clip_20210930", ("train.txt", "2750.zip"), ("test.txt", "2750.zip")),
    _iris("fer-2013", "fer_2013_20211008", *_PLAIN),
    _iris("fgvc-aircraft-2013b-variants102", "fgvc_aircraft_2013b_variants102_20211007", *_PLAIN,
          metric=_MEAN_PER_CLASS),
    _iris("food-101", "food_101_20211007", *_VAL_ZIP),
    _iris("gtsrb", "gtsrb_20210923", ("train.txt", "train.zip"), ("test.txt", "final_test.zip"),
          labelmap="labelmap.txt"),
    _coco("hateful-memes", "hateful_memes_20211014", ("train_meta.json", "img.zip"), ("test_meta.json", "img.zip"),
          elevater_metric="roc_auc"),
    _coco("kitti-distance", "kitti_distance_20210923", ("train_meta.json", "train_images.zip"),
          ("test_meta.json", "test_images.zip")),
    _iris("mnist", "mnist_20211008", *_VAL_ZIP),
    _iris("oxford-flower-102", "oxford_flower_102_20211007", *_PLAIN, metric=_MEAN_PER_CLASS),
    _iris("oxford-iiit-pets", "oxford_iiit_pets_20211007", *_VAL_ZIP, metric=_MEAN_PER_CLASS),
    _iris("patch-camelyon", "patch_camelyon_20211007", *_PLAIN),
    _iris("rendered-sst2", "rendered_sst2_20210924", *_PLAIN),
    _coco("resisc45_clip", "resisc45_clip_20210924", ("train.json", "images.zip"), ("test.json", "images.zip")),
    _iris("stanford-cars", "stanford_cars_20211007", *_VAL_ZIP),
    _iris("voc-2007-classification", "voc2007_20211007", ("train_ic.txt", "train.zip"), ("test_ic.txt", "test.zip"),
          metric="11point_mAP", multilabel=True),
)}


@lru_cache(maxsize=1)
def _class_data() -> Dict[str, Dict[str, list]]:
    with open(os.path.join(os.path.dirname(__file__), "classes.json"), encoding="utf-8") as f:
        return json.load(f)


def task_classnames(name: str) -> List[str]:
    """Class names by label; an entry listing aliases (fer-2013) contributes its first, as MVLPT."""
    return [entry[0] if isinstance(entry, list) else entry for entry in _class_data()[name]["classnames"]]


def task_templates(name: str) -> List[str]:
    """ELEVATER's zero-shot prompt templates for the task (``{}`` is the class name)."""
    return list(_class_data()[name]["templates"])
