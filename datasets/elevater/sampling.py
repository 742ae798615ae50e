"""Few-shot subsets and validation splits of ELEVATER tasks, as MVLPT makes them.

Three algorithms, each a re-statement of the original (same RNG calls, same float
arithmetic, same visiting order), so a seed selects the same images given the same
index-file order:

* ``sample_few_shot``: vision-datasets' ``DatasetManifest.sample_few_shot_subset``.
* ``carve_validation``: MVLPT's single-task carve (toolkit ``get_dataloader`` with 20 %):
  per class the first ceil(20 %) images in order; multi-label tasks greedily.
* ``split_train_val``: vision-datasets' ``DatasetManifest.train_val_split``, which MVLPT's
  multi-task path uses on the union of the tasks.

Items only need a ``labels`` tuple of class ids (global ids for a union of tasks).
"""
from __future__ import annotations

import math
import random
from collections import OrderedDict
from typing import List, Protocol, Sequence, Tuple, TypeVar

__all__ = ["sample_few_shot", "carve_validation", "split_train_val", "VAL_FRACTION"]

VAL_FRACTION = 0.2


class Labelled(Protocol):
    @property
    def labels(self) -> Tuple[int, ...]: ...


Item = TypeVar("Item", bound=Labelled)


def sample_few_shot(items: Sequence[Item], num_classes: int, shots: int, seed: int) -> List[Item]:
    """About ``shots`` images per class, kept in the order of a ``random.Random(seed)`` shuffle.

    Walk the shuffled images; skip one whose rarest class already has ``shots``; take it when
    that count is at most shots/2 or its commonest class has at most 1.5*shots; stop once
    every one of ``num_classes`` classes has ``shots``. Negative images (no label) are kept
    up to ``shots``. Single-label tasks get exactly ``shots`` per class (all of a smaller class).
    """
    if shots < 1:
        raise ValueError(f"shots must be positive, got {shots}")
    images = list(items)
    random.Random(seed).shuffle(images)
    taken: List[Item] = []
    per_class = [0] * num_classes
    short = num_classes  # classes with fewer than ``shots``: the original's min(per_class) < shots, in O(1)
    negatives = 0
    for image in images:
        if not image.labels:
            if negatives < shots:
                negatives += 1
                taken.append(image)
            continue
        counts = [per_class[c] for c in image.labels]
        if min(counts) >= shots:
            continue
        if min(counts) <= shots / 2 or max(counts) <= 1.5 * shots:
            taken.append(image)
            for c in image.labels:
                per_class[c] += 1
                short -= per_class[c] == shots
        if short == 0:
            break
    return taken


def carve_validation(items: Sequence[Item], multilabel: bool, fraction: float = VAL_FRACTION
                     ) -> Tuple[List[Item], List[Item]]:
    """MVLPT's single-task validation carve; no randomness.

    Single-label: per class (of the first label, classes in order of first appearance),
    the first ceil(fraction * count) images in ``items`` order go to val. Multi-label:
    each class needs ceil(fraction * count) val images; repeatedly take the lowest class
    still in need, move the first remaining image that has it to val and count it against
    all of its classes.

    The original orders both parts by iterating Python sets of indices (val: the set of
    the picked indices for single-label tasks, the pick order for multi-label ones; train:
    all indices minus val). The same sets are built here, so the orders match on CPython;
    mostly they are ``items`` order, but not always (e.g. when val outnumbers train).
    """
    if multilabel:
        val_indices = _greedy_multilabel_val(items, fraction)
    else:
        by_class: "OrderedDict[int, List[int]]" = OrderedDict()
        for index, item in enumerate(items):
            by_class.setdefault(item.labels[0], []).append(index)
        val_indices = list(set(i for indices in by_class.values()
                               for i in indices[:math.ceil(len(indices) * fraction)]))
    train_indices = list(set(range(len(items))) - set(val_indices))
    return [items[i] for i in train_indices], [items[i] for i in val_indices]


def _greedy_multilabel_val(items: Sequence[Item], fraction: float) -> List[int]:
    rows = [set(item.labels) for item in items]
    counts: "OrderedDict[int, int]" = OrderedDict()
    for row in rows:
        for c in row:
            counts[c] = counts.get(c, 0) + 1
    need = {c: math.ceil(n * fraction) for c, n in counts.items()}
    picked: List[int] = []
    while True:
        wanted = sorted(c for c, n in need.items() if n > 0)
        if not wanted:
            return picked
        index = next(i for i, row in enumerate(rows) if wanted[0] in row)
        picked.append(index)
        for c in rows[index]:
            need[c] -= 1
        rows[index] = set()


def split_train_val(items: Sequence[Item], num_classes: int, seed: int, train_ratio: float = 1 - VAL_FRACTION
                    ) -> Tuple[List[Item], List[Item]]:
    """vision-datasets' greedy split after a ``random.Random(seed)`` shuffle (MVLPT multi-task).

    An image goes to val when, over its classes, the smallest val count is below the
    smallest train count times (1 - r) / r, or equal with a smaller sum; negatives are
    balanced on their own. Both parts keep the shuffled order. With one image per class
    every image goes to train (val is empty).
    """
    images = list(items)
    if int(len(images) * train_ratio) == 0:
        return [], images
    if int(len(images) * train_ratio) == len(images):
        return images, []
    random.Random(seed).shuffle(images)
    val_per_train = (1 - train_ratio) / train_ratio
    train: List[Item] = []
    val: List[Item] = []
    train_counts = [0] * num_classes
    val_counts = [0] * num_classes
    train_negatives = val_negatives = 0
    for image in images:
        if not image.labels:
            if train_negatives == 0 or val_negatives / train_negatives >= val_per_train:
                train_negatives += 1
                train.append(image)
            else:
                val_negatives += 1
                val.append(image)
            continue
        in_train = [train_counts[c] for c in image.labels]
        in_val = [val_counts[c] for c in image.labels]
        scaled_min, scaled_sum = min(in_train) * val_per_train, sum(in_train) * val_per_train
        if min(in_val) < scaled_min or (min(in_val) == scaled_min and sum(in_val) < scaled_sum):
            val.append(image)
            counts = val_counts
        else:
            train.append(image)
            counts = train_counts
        for c in image.labels:
            counts[c] += 1
    return train, val
