"""The ELEVATER image-classification tasks (MVLPT's target tasks) read from the toolkit's download layout.

Importing this package registers the 20 tasks in ``DATASET_REGISTRY`` under MVLPT's names
("cifar-10", "voc-2007-classification", ...). See ``reader`` for the splits and what is
bit-exact with the original, ``tasks`` for files, class names and metrics.
"""
from .index import read_elevater_image
from .reader import ELEVATER_TASKS, ElevaterDataset, MultiLabelDatum, build_elevater_multitask
from .tasks import METRIC_NAMES, TASKS, TaskSpec

__all__ = ["ELEVATER_TASKS", "ElevaterDataset", "MultiLabelDatum", "build_elevater_multitask", "read_elevater_image",
           "METRIC_NAMES", "TASKS", "TaskSpec"]
