"""How MVLPT's ELEVATER paths load images: the toolkit's transform and its loader settings.

The data manager uses these when every task of a run is an ELEVATER task and the run is not
on MVLPT's CoOp-data path (``DATASET.COOP``/``--dataset-coop`` off), as MVLPT chooses its
data manager:

* one transform for train, val and test, no augmentation: a squash resize to ``INPUT.SIZE``
  (bicubic, aspect ratio ignored), or with ``DATASET.CENTER_CROP`` a resize of the shorter side
  and a centre crop; then ToTensor and Normalize(``INPUT.PIXEL_MEAN``/``PIXEL_STD``);
* single task: training shuffled by a generator seeded with 0 whatever the run's seed (the
  toolkit's), ``DATALOADER.TRAIN_X.BATCH_SIZE`` per batch, the last partial batch kept; val
  in order, batches of that size too; test in order, batches of 64. With 1 shot, training is
  not shuffled and batches hold min(batch size, images);
* several tasks (MVLPT's multi-task manifest): training in one fixed order (the split's
  shuffle) every epoch, batches of 64, as are val and test.

Where the batch order is the original's: the single-task training order (same torch
``randperm`` calls on the same generator) and every evaluation order. Not reproduced: the
toolkit's worker seeding, which no transform here reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["ElevaterLoading", "elevater_transform", "elevater_loading", "TOOLKIT_BATCH_SIZE", "SHUFFLE_SEED"]

#: the toolkit's default batch size (get_dataloader's batch_size_per_gpu)
TOOLKIT_BATCH_SIZE = 64
#: the toolkit seeds its shuffling generator with 0 in every run
SHUFFLE_SEED = 0


def elevater_transform(cfg: Any) -> T.Compose:
    """The toolkit's transform for every split (see the module docstring)."""
    size = tuple(cfg.INPUT.SIZE)
    if cfg.DATASET.get("CENTER_CROP", False):
        resize = [T.Resize(size[0], interpolation=InterpolationMode.BICUBIC), T.CenterCrop(size)]
    else:
        resize = [T.Resize(size, interpolation=InterpolationMode.BICUBIC)]
    return T.Compose(resize + [T.ToTensor(), T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)])


@dataclass(frozen=True)
class ElevaterLoading:
    """Batch sizes and the training order of one run's ELEVATER loaders."""

    train_batch_size: int
    val_batch_size: int
    test_batch_size: int
    train_generator: Optional[torch.Generator]  # None: training batches in a fixed order


def elevater_loading(cfg: Any, num_tasks: int, num_train: int) -> ElevaterLoading:
    """The toolkit's loader settings for ``num_tasks`` tasks with ``num_train`` training images."""
    if num_tasks > 1:
        return ElevaterLoading(TOOLKIT_BATCH_SIZE, TOOLKIT_BATCH_SIZE, TOOLKIT_BATCH_SIZE, None)
    batch_size = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    if cfg.DATASET.NUM_SHOTS == 1:
        batch_size = max(1, min(batch_size, num_train))
        return ElevaterLoading(batch_size, batch_size, TOOLKIT_BATCH_SIZE, None)
    return ElevaterLoading(batch_size, batch_size, TOOLKIT_BATCH_SIZE, torch.Generator().manual_seed(SHUFFLE_SEED))
