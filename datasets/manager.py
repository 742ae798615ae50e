"""Data loaders for one or several data sets (tasks), shaped like Dassl's DataManager.

Multi-task is the general case: ``DATASET.NAME: "A,B"`` builds A and B as tasks 0 and 1.
Every item carries its task index and a task-local label; the training loader shuffles the
concatenation of all tasks' training items (so a batch may mix tasks), and the val/test
loaders walk the tasks' lists in task order. A single data set is the one-task case.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torchvision.transforms as T
from PIL import Image, UnidentifiedImageError
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from clip.errors import InvalidInputError, MissingInputError, UnreadableInputError
from .base import DatasetBase, Datum
from .build import TASK_SET_CACHES, TASK_SETS, build_dataset
from .elevater import ELEVATER_TASKS, build_elevater_multitask
from .elevater.index import ZIP_MEMBER_MARK, read_elevater_image
from .elevater.loaders import elevater_loading, elevater_transform
from .transforms import build_transform, interpolation_mode

__all__ = ["Task", "DataManager", "DatasetWrapper", "build_data_loader", "build_sampler", "TaskBalancedSampler", "read_image",
           "find_unreadable_images", "parse_dataset_names", "subsample_tasks", "build_tasks"]


@dataclass(frozen=True)
class Task:
    """One data set of a (multi-task) run; labels of its items run 0..num_classes-1."""

    index: int
    name: str
    classnames: List[str]
    lab2cname: Dict[int, str]
    num_classes: int
    template: str
    class_offset: int = 0  # where this task's classes start in the concatenation of all tasks' classes
    metric: str = "accuracy"  # the evaluator's per-task metric (a METRIC_REGISTRY name), named by the data set


def read_image(path: str, split: str = "") -> Image.Image:
    """Open an image as RGB; a missing or unreadable file is an error that names it and its split."""
    where = f"the {split} split" if split else "the data set's split"
    try:
        if ZIP_MEMBER_MARK in path:
            return read_elevater_image(path)
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise MissingInputError(f"Image file not found: {path} (listed by {where}; "
                                "is DATASET.ROOT right and the data complete?)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableInputError(f"Cannot read image {path} (listed by {where}): {exc}. "
                                   "python train.py --verify-data with the same data arguments lists every "
                                   "bad file") from exc


def find_unreadable_images(datasets: Sequence[DatasetBase]) -> List[str]:
    """Open every image of every split once; one line per file that fails (path, split, reason)."""
    problems, seen = [], set()
    for dataset in datasets:
        for split, items in (("train_x", dataset.train_x), ("val", dataset.val), ("test", dataset.test)):
            for item in items or []:
                if item.impath in seen:
                    continue
                seen.add(item.impath)
                try:
                    with Image.open(item.impath) as img:
                        img.convert("RGB")
                except (OSError, SyntaxError, ValueError) as exc:
                    problems.append(f"{item.impath} ({type(dataset).__name__} {split}): {exc}")
    return problems


class DatasetWrapper(Dataset):
    """Items as Dassl's dicts (label, domain, impath, index, img[, img2...][, img0]) plus ``task``.

    ``class_offsets`` (one per task) switch on ``targets``: a multi-hot row over all tasks'
    classes (every label of a multi-label item), MVLPT's target of its ELEVATER paths.
    """

    def __init__(self, cfg: Any, data_source: Sequence[Datum], transform: Any = None, is_train: bool = False,
                 tasks: Optional[Sequence[int]] = None, split: str = "",
                 class_offsets: Optional[Sequence[int]] = None, num_classes: int = 0) -> None:
        self.data_source = data_source
        self.class_offsets = class_offsets
        self.num_classes = num_classes
        self.split = split
        self.tasks = tasks if tasks is not None else [0] * len(data_source)
        if len(self.tasks) != len(data_source):
            raise ValueError(f"{len(self.tasks)} task indices for {len(data_source)} items")
        self.transform = transform
        self.is_train = is_train
        # Several augmented views per image are a training-time option only.
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        if self.k_tfm > 1 and transform is None:
            raise InvalidInputError(f"Cannot augment the image {self.k_tfm} times (DATALOADER.K_TRANSFORMS) "
                             "because there is no transform (INPUT.NO_TRANSFORM)")
        self.to_tensor = None
        if cfg.DATALOADER.RETURN_IMG0:
            steps = [T.Resize(tuple(cfg.INPUT.SIZE), interpolation=interpolation_mode(cfg.INPUT.INTERPOLATION)),
                     T.ToTensor()]
            if "normalize" in cfg.INPUT.TRANSFORMS:
                steps.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
            self.to_tensor = T.Compose(steps)

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        item = self.data_source[idx]
        output: Dict[str, Any] = {"label": item.label, "domain": item.domain, "impath": item.impath,
                                  "index": idx, "task": self.tasks[idx]}
        if self.class_offsets is not None:
            targets = torch.zeros(self.num_classes)
            labels = getattr(item, "labels", (item.label,))
            targets[[self.class_offsets[self.tasks[idx]] + c for c in labels]] = 1.0
            output["targets"] = targets
        img0 = read_image(item.impath, self.split)
        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._views(tfm, img0)
        else:
            output["img"] = self._views(self.transform, img0)
        if self.to_tensor is not None:
            output["img0"] = self.to_tensor(img0)
        return output

    def _views(self, tfm: Callable, img0: Image.Image) -> Any:
        views = [tfm(img0) for _ in range(self.k_tfm)]
        return views[0] if len(views) == 1 else views


class TaskBalancedSampler(Sampler[int]):
    """Indices whose tasks are equally frequent whatever the tasks' sizes (SoftCPT's spec offers it
    beside the original's uniform draw over the union, where a task's share is its item count).

    Each position picks a task uniformly, then that task's next item in a shuffled order
    (reshuffled when used up); an epoch has as many positions as items. Like ``RandomSampler`` it
    draws its seed from the global torch RNG per epoch, so ``SEED`` fixes the order.
    """

    def __init__(self, tasks: Sequence[int]) -> None:
        groups: Dict[int, List[int]] = {}
        for index, task in enumerate(tasks):
            groups.setdefault(int(task), []).append(index)
        self.groups = [torch.tensor(groups[t]) for t in sorted(groups)]
        self.length = len(tasks)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        orders = [group[torch.randperm(len(group), generator=generator)] for group in self.groups]
        cursors = [0] * len(self.groups)
        for k in torch.randint(len(self.groups), (self.length,), generator=generator).tolist():
            if cursors[k] == len(orders[k]):
                orders[k], cursors[k] = self.groups[k][torch.randperm(len(self.groups[k]), generator=generator)], 0
            yield int(orders[k][cursors[k]])
            cursors[k] += 1


def build_sampler(sampler_type: str, data_source: Sequence[Datum], tasks: Optional[Sequence[int]] = None,
                  generator: Optional[torch.Generator] = None) -> Sampler:
    """PyTorch's RandomSampler (the global torch RNG unless ``generator``; reshuffled every epoch),
    SequentialSampler, or ``TaskBalancedSampler`` over the items' ``tasks`` (all task 0 when not given)."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source, generator=generator)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "TaskBalancedSampler":
        return TaskBalancedSampler(tasks if tasks is not None else [0] * len(data_source))
    raise InvalidInputError(f'Unsupported sampler "{sampler_type}" (DATALOADER.*.SAMPLER); '
                     "supported: RandomSampler, SequentialSampler, TaskBalancedSampler")


@functools.lru_cache(maxsize=None)
def loader_workers(requested: int) -> int:
    """DATALOADER.NUM_WORKERS, lowered (with one note) to the CPUs this process may use."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > available:
        print(f"Note: DATALOADER.NUM_WORKERS {requested} lowered to the {available} CPU(s) available")
        return available
    return requested


def build_data_loader(cfg: Any, sampler_type: str, data_source: Sequence[Datum], batch_size: int,
                      tfm: Any = None, is_train: bool = True, tasks: Optional[Sequence[int]] = None,
                      what: str = "data", generator: Optional[torch.Generator] = None,
                      drop_last: Optional[bool] = None, **wrapper_args: Any) -> DataLoader:
    """A DataLoader as Dassl builds it; a training set smaller than one batch keeps its partial batch.

    ``drop_last`` None: Dassl's rule (training drops a last partial batch); ``wrapper_args`` go to
    ``DatasetWrapper``."""
    if not data_source:
        raise InvalidInputError(f"Cannot build a loader over an empty {what} list")
    if is_train and len(data_source) < batch_size:
        warnings.warn(f"The {what} set has {len(data_source)} items, fewer than the batch size {batch_size} "
                      f"(DATALOADER.TRAIN_X.BATCH_SIZE): each epoch is one partial batch of {len(data_source)}",
                      stacklevel=2)
    return DataLoader(
        DatasetWrapper(cfg, data_source, transform=tfm, is_train=is_train, tasks=tasks, split=what, **wrapper_args),
        batch_size=batch_size,
        sampler=build_sampler(sampler_type, data_source, tasks, generator),
        num_workers=loader_workers(cfg.DATALOADER.NUM_WORKERS),
        drop_last=(is_train and len(data_source) >= batch_size) if drop_last is None else drop_last,
        pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
    )


def parse_dataset_names(name: str) -> List[str]:
    """``"A, B"`` -> ``["A", "B"]``; each name once; a task set (``General10``) gives its members."""
    names = [n.strip() for n in name.split(",") if n.strip()]
    names = [member for n in names for member in TASK_SETS.get(n, [n])]
    if not names:
        raise InvalidInputError("DATASET.NAME is empty: set it to a registered data set (or a comma-separated list)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInputError(f"DATASET.NAME lists {repeated} more than once: {name!r}")
    return names


def _elevater_path(cfg: Any, names: Sequence[str]) -> bool:
    """MVLPT's ELEVATER data path: every task is an ELEVATER task and ``DATASET.COOP`` is off."""
    return not cfg.DATASET.get("COOP", False) and all(name in ELEVATER_TASKS for name in names)


def subsample_tasks(names: List[str], which: str) -> List[str]:
    """SoftCPT's ``DATASET.SUBSAMPLE_TASKS``: ``all``, ``task<i>`` (task i alone, then task 0),
    ``base`` (the first ceil(T/2) tasks) or ``new`` (the others); classes are subsampled per task after."""
    half = (len(names) + 1) // 2
    if which == "all":
        return names
    if which in ("base", "new"):
        kept = names[:half] if which == "base" else names[half:]
    elif which.startswith("task") and which[4:].isdigit() and int(which[4:]) < len(names):
        kept = [names[int(which[4:])]]
    else:
        raise InvalidInputError(f"DATASET.SUBSAMPLE_TASKS must be all, base, new or task<i> with i < {len(names)} "
                                f"(the tasks of DATASET.NAME: {', '.join(names)}), got {which!r}")
    if not kept:
        raise InvalidInputError(f"DATASET.SUBSAMPLE_TASKS {which} keeps no task of the {len(names)} in DATASET.NAME")
    return kept


def build_tasks(cfg: Any) -> "tuple[List[str], List[DatasetBase]]":
    """(names, data sets) of the tasks of ``DATASET.NAME`` after ``SUBSAMPLE_TASKS``: one data set
    per name, or a task set's own cache when it has one (the original SoftCPT's few-shot pickles)."""
    reader = TASK_SET_CACHES.get(cfg.DATASET.NAME.strip())
    cached = reader(cfg) if reader is not None else None
    if cached is not None:
        names = subsample_tasks([name for name, _ in cached], cfg.DATASET.SUBSAMPLE_TASKS)
        return names, [dataset for name, dataset in cached if name in names]
    names = subsample_tasks(parse_dataset_names(cfg.DATASET.NAME), cfg.DATASET.SUBSAMPLE_TASKS)
    if _elevater_path(cfg, names) and len(names) > 1:
        names = sorted(names)  # MVLPT's multi-task manifest orders the tasks by name
        return names, list(build_elevater_multitask(cfg, names))
    return names, [build_dataset(cfg, name) for name in names]


def _concat(lists: Sequence[Optional[List[Datum]]]) -> tuple:
    """Concatenate per-task lists -> (items, parallel task indices)."""
    items, tasks = [], []
    for t, data in enumerate(lists):
        items.extend(data or [])
        tasks.extend([t] * len(data or []))
    return items, tasks


class DataManager:
    """Builds the task(s) named by ``cfg.DATASET.NAME``, the transforms and the loaders."""

    def __init__(self, cfg: Any, custom_tfm_train: Any = None, custom_tfm_test: Any = None) -> None:
        names, self.datasets = build_tasks(cfg)
        self.elevater = _elevater_path(cfg, names)
        offsets = [sum(d.num_classes for d in self.datasets[:t]) for t in range(len(names))]
        self.tasks: List[Task] = [
            Task(index=t, name=name, classnames=list(d.classnames), lab2cname=dict(d.lab2cname),
                 num_classes=d.num_classes, template=d.template, class_offset=offsets[t],
                 metric=getattr(d, "metric", "accuracy"))
            for t, (name, d) in enumerate(zip(names, self.datasets))]

        default_train, default_test = build_transform, build_transform
        if self.elevater:
            print("* ELEVATER loaders: no augmentation, "
                  + ("resize and centre crop" if cfg.DATASET.get("CENTER_CROP", False) else "squash resize"))
            default_train = default_test = lambda cfg, is_train: elevater_transform(cfg)
        if custom_tfm_train is None:
            tfm_train = default_train(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = default_test(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        loader_cfg = cfg.DATALOADER
        train_x, train_tasks = _concat([d.train_x for d in self.datasets])
        # multi-hot targets over all tasks' classes when a task is multi-label (MVLPT's soft targets)
        targets = {}
        if any(getattr(d, "multilabel", False) for d in self.datasets):
            targets = {"class_offsets": offsets, "num_classes": self.num_classes}
        train_sampler, batch_sizes, generator, drop_last = loader_cfg.TRAIN_X.SAMPLER, None, None, None
        if self.elevater:
            loading = elevater_loading(cfg, len(names), len(train_x))
            batch_sizes = (loading.train_batch_size, loading.val_batch_size, loading.test_batch_size)
            generator, drop_last = loading.train_generator, False
            train_sampler = "SequentialSampler" if generator is None else "RandomSampler"
        train_bs, val_bs, test_bs = batch_sizes or (loader_cfg.TRAIN_X.BATCH_SIZE, loader_cfg.TEST.BATCH_SIZE,
                                                    loader_cfg.TEST.BATCH_SIZE)
        self.train_loader_x = build_data_loader(cfg, train_sampler, train_x, train_bs, tfm_train, True, train_tasks,
                                                what="training", generator=generator, drop_last=drop_last,
                                                **targets)
        self.train_loader_u = None
        train_u, train_u_tasks = _concat([d.train_u for d in self.datasets])
        if train_u:
            same = loader_cfg.TRAIN_U.SAME_AS_X
            node = loader_cfg.TRAIN_X if same else loader_cfg.TRAIN_U
            self.train_loader_u = build_data_loader(cfg, node.SAMPLER, train_u, node.BATCH_SIZE, tfm_train,
                                                    True, train_u_tasks, what="unlabelled training")
        val, val_tasks = _concat([d.val for d in self.datasets])
        self.val_loader = None
        if val:
            self.val_loader = build_data_loader(cfg, loader_cfg.TEST.SAMPLER, val, val_bs, tfm_test, False,
                                                val_tasks, what="validation", **targets)
        test, test_tasks = _concat([d.test for d in self.datasets])
        self.test_loader = build_data_loader(cfg, loader_cfg.TEST.SAMPLER, test, test_bs, tfm_test, False,
                                             test_tasks, what="test", **targets)

        self.dataset = self.datasets[0]
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self) -> int:
        """Task 0's class count in a single-task run; the sum over tasks otherwise."""
        return sum(task.num_classes for task in self.tasks)

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self.tasks[0].lab2cname

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    def show_dataset_summary(self, cfg: Any) -> None:
        """Dassl's two-column table; one Dataset/# classes/# train_x/# val/# test block per task."""
        rows: List[List[str]] = []
        for task, dataset in zip(self.tasks, self.datasets):
            rows.append(["Dataset", task.name])
            if task.index == 0 and cfg.DATASET.SOURCE_DOMAINS:
                rows.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
            if task.index == 0 and cfg.DATASET.TARGET_DOMAINS:
                rows.append(["Target", cfg.DATASET.TARGET_DOMAINS])
            rows.append(["# classes", f"{task.num_classes:,}"])
            rows.append(["# train_x", f"{len(dataset.train_x):,}"])
            if dataset.train_u:
                rows.append(["# train_u", f"{len(dataset.train_u):,}"])
            if dataset.val:
                rows.append(["# val", f"{len(dataset.val):,}"])
            rows.append(["# test", f"{len(dataset.test or []):,}"])
        print(tabulate(rows))
