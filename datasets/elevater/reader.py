"""Registry readers for the ELEVATER tasks, with MVLPT's few-shot subsets and validation carve.

``build_dataset(cfg, "cifar-10")`` reads ``<ROOT>/classification/cifar_10_20211007/``:
test is the whole test index; train is the train index reduced to K = ``DATASET.NUM_SHOTS``
images per class (K < 1: all), seeded with ``SEED`` (1 when unset, MVLPT's default
``RANDOM_SEED_SAMPLING``); val is carved from that train set (20 %, see
``sampling.carve_validation``), except for K = 1, where val is the train set itself.
``build_elevater_multitask`` makes MVLPT's multi-task subsets instead (one sampling and one
split over the union of the tasks).

What equals the original (checked against vision-datasets 0.2.17 and MVLPT's carve):
given the same index files, the images the few-shot sampler picks and their order
(single- and multi-task), which images go to val, and the order of train and val
(the carve orders them by iterating Python sets, as the original, so on CPython).
Not covered here: the loaders' shuffling and batch sizes, which belong to the data manager.

Items are ``Datum``s whose ``impath`` is ``<task folder>/<archive>.zip@<member>``; open them
with ``read_elevater_image``. Single-label tasks carry an int ``label``. The multi-label
task (VOC 2007) yields ``MultiLabelDatum``s: ``labels`` holds every class id, ``label``
the first one (-1 for an image without any).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..base import DatasetBase, Datum, dataset_root, require_file, require_folder
from ..build import DATASET_REGISTRY
from .index import IndexedImage, read_coco_index, read_iris_index, read_labelmap
from .sampling import carve_validation, sample_few_shot, split_train_val
from .tasks import TASKS, TaskSpec, task_classnames, task_templates

__all__ = ["ElevaterDataset", "MultiLabelDatum", "build_elevater_multitask", "sampling_seed", "ELEVATER_TASKS"]

#: registry name -> reader class, in sorted name order (MVLPT's multi-task order)
ELEVATER_TASKS: Dict[str, type] = {}


class MultiLabelDatum(Datum):
    """A Datum of a multi-label task: ``labels`` are all its class ids, ``label`` the first."""

    __slots__ = ("_labels",)

    def __init__(self, impath: str, labels: Sequence[int], classname: str = "") -> None:
        super().__init__(impath=impath, label=labels[0] if labels else -1, classname=classname)
        self._labels = tuple(int(c) for c in labels)

    @property
    def labels(self) -> Tuple[int, ...]:
        return self._labels

    def _key(self) -> tuple:
        return super()._key() + (self._labels,)

    def __repr__(self) -> str:
        return f"MultiLabelDatum(impath={self.impath!r}, labels={self._labels}, classname={self.classname!r})"


def sampling_seed(cfg: Any) -> int:
    """MVLPT's RANDOM_SEED_SAMPLING: the run's seed, or 1 when none is set."""
    return cfg.SEED if cfg.SEED >= 0 else 1


class ElevaterDataset(DatasetBase):
    """One ELEVATER task; subclasses (one per task, made below) set ``task``.

    ``classnames``/``num_classes``/``lab2cname`` are the task's full class list (ELEVATER's
    class map), not only the classes present in ``train_x``. ``metric`` names the metric
    used to score the task, ``templates`` its zero-shot templates (``template`` the first).
    """

    task: TaskSpec
    metric = "accuracy"
    multilabel = False
    templates: List[str] = []

    def __init__(self, cfg: Any, train_val: Optional[Tuple[List[IndexedImage], List[IndexedImage]]] = None) -> None:
        """``train_val``: ready-made train and val images (multi-task); else sample this task alone."""
        self.dataset_dir = self.task_folder(cfg)
        self._classes = task_classnames(self.task.name)
        if train_val is None:
            train_images, num_labels = self.read_index(cfg, "train")
            train_val = single_task_split(train_images, num_labels, self.multilabel, cfg.DATASET.NUM_SHOTS,
                                          sampling_seed(cfg))
        train, val = train_val
        test, _ = self.read_index(cfg, "test")
        super().__init__(train_x=self._data(train), val=self._data(val), test=self._data(test))

    @classmethod
    def task_folder(cls, cfg: Any) -> str:
        folder = os.path.join(dataset_root(cfg), cls.task.root_folder)
        require_folder(folder, cls.task.name)
        return folder

    @classmethod
    def read_index(cls, cfg: Any, usage: str) -> Tuple[List[IndexedImage], int]:
        """The ``usage`` ("train"/"test") index in file order, and the task's label count."""
        folder = cls.task_folder(cfg)
        spec = cls.task
        index_path = require_file(os.path.join(folder, spec.train_index if usage == "train" else spec.test_index))
        if spec.index_format == "coco":
            images, labelmap = read_coco_index(index_path)
        else:
            images = read_iris_index(index_path)
            labelmap = read_labelmap(require_file(os.path.join(folder, spec.labelmap)))
        expected = len(task_classnames(spec.name))
        if len(labelmap) != expected:
            raise ValueError(f"{spec.name}: {index_path if spec.index_format == 'coco' else spec.labelmap} "
                             f"lists {len(labelmap)} classes, expected {expected}")
        bad = next((img for img in images if any(not 0 <= c < expected for c in img.labels)
                    or (not img.labels and not cls.multilabel)), None)
        if bad is not None:
            raise ValueError(f"{index_path}: image {bad.path!r} has labels {list(bad.labels)}; "
                             f"expected {'class ids' if cls.multilabel else 'one class id'} in 0..{expected - 1}")
        return images, len(labelmap)

    def _data(self, images: Sequence[IndexedImage]) -> List[Datum]:
        items: List[Datum] = []
        for image in images:
            impath = os.path.join(self.dataset_dir, image.path)
            if self.multilabel:
                name = self._classes[image.labels[0]] if image.labels else ""
                items.append(MultiLabelDatum(impath, image.labels, classname=name))
            else:
                items.append(Datum(impath=impath, label=image.labels[0], classname=self._classes[image.labels[0]]))
        return items

    @property
    def classnames(self) -> List[str]:
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def lab2cname(self) -> Dict[int, str]:
        return dict(enumerate(self._classes))


def single_task_split(train_images: List[IndexedImage], num_labels: int, multilabel: bool, shots: int, seed: int
                      ) -> Tuple[List[IndexedImage], List[IndexedImage]]:
    """MVLPT's single-task train/val: sample K per class, then carve 20 % (K = 1: val = train)."""
    if shots >= 1:
        train_images = sample_few_shot(train_images, num_labels, shots, seed)
    if shots == 1:
        return train_images, list(train_images)
    return carve_validation(train_images, multilabel)


class _TaskImage(NamedTuple):
    """An image of one task in the union, labelled with global class ids."""

    task: int
    image: IndexedImage
    labels: Tuple[int, ...]


def build_elevater_multitask(cfg: Any, names: Sequence[str]) -> List[ElevaterDataset]:
    """MVLPT's multi-task ELEVATER data: tasks in sorted name order, one few-shot sampling
    (K per class of the union) and one greedy 80/20 split over all tasks' train images.

    With K = 1 every val list is empty, as in the original. Returns the datasets in
    sorted order; ``names`` must be registered ELEVATER tasks.
    """
    unknown = [n for n in names if n not in ELEVATER_TASKS]
    if unknown:
        raise KeyError(f"Not ELEVATER tasks: {unknown}; known: {', '.join(ELEVATER_TASKS)}")
    ordered = sorted(set(names))
    union: List[_TaskImage] = []
    offset = 0
    for task_index, name in enumerate(ordered):
        images, num_labels = ELEVATER_TASKS[name].read_index(cfg, "train")
        union.extend(_TaskImage(task_index, image, tuple(offset + c for c in image.labels)) for image in images)
        offset += num_labels
    seed = sampling_seed(cfg)
    if cfg.DATASET.NUM_SHOTS >= 1:
        union = sample_few_shot(union, offset, cfg.DATASET.NUM_SHOTS, seed)
    train, val = split_train_val(union, offset, seed)
    return [ELEVATER_TASKS[name](cfg, train_val=([t.image for t in train if t.task == task_index],
                                                 [t.image for t in val if t.task == task_index]))
            for task_index, name in enumerate(ordered)]


def _register_tasks() -> None:
    for name in sorted(TASKS):
        spec = TASKS[name]
        templates = task_templates(name)
        cls = type(f"Elevater[{name}]", (ElevaterDataset,), {
            "__doc__": f"ELEVATER task {name} ({spec.root_folder}), scored with {spec.metric}.",
            "task": spec, "metric": spec.metric, "multilabel": spec.multilabel, "templates": templates,
            "template": templates[0], "dataset_dir": spec.root_folder, "__module__": __name__})
        ELEVATER_TASKS[name] = DATASET_REGISTRY.register(cls, name=name)


_register_tasks()
