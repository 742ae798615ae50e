"""The data set registry and ``build_dataset`` (Dassl's names and message)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from clip.errors import InvalidInputError
from .base import DatasetBase
from .registry import Registry

DATASET_REGISTRY = Registry("dataset")
#: a multi-task data set name -> its member data sets, each one task (``DATASET.NAME General10``)
TASK_SETS: Dict[str, List[str]] = {}
#: a task set name -> ``reader(cfg)``: [(task name, data set)] from the set's own cache, or None without one
TASK_SET_CACHES: Dict[str, Callable[[Any], Optional[List[Tuple[str, DatasetBase]]]]] = {}


def build_dataset(cfg: Any, name: Optional[str] = None) -> DatasetBase:
    """Build the registered data set ``name`` (default ``cfg.DATASET.NAME``) from ``cfg``."""
    name = cfg.DATASET.NAME if name is None else name
    if "," in name:
        raise InvalidInputError(f'DATASET.NAME "{name}" lists several data sets; build them one by one '
                         "or use datasets.DataManager, which makes one task per data set")
    cls = DATASET_REGISTRY.get(name)
    print(f"Loading dataset: {name}")
    return cls(cfg)
