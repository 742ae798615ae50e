"""Tiny generated ELEVATER tasks in the toolkit's download layout, for tests and demos.

``write_elevater_task(root, "cifar-10")`` writes ``<root>/classification/cifar_10_20211007/``
with the task's real file names: the train/test index files (IRIS lines or COCO JSON),
the zips they point into (shared when the task shares one, as eurosat_clip's 2750.zip),
and labels.txt / labelmap.txt. Every class of the task gets ``train_per_class`` train and
``test_per_class`` test images of 8x8 pixels whose red channel is the class id, so a test
can tell which image it read. Member names contain a space, as real index paths may.
The bytes are the same on every run (fixed zip timestamps, seeded pixels).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from .elevater.tasks import TASKS, TaskSpec, task_classnames

__all__ = ["write_elevater_task", "IMAGE_SIZE"]

IMAGE_SIZE = 8
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _png(label: int, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    pixels[..., 0] = label
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _labels_of(spec: TaskSpec, index: int, num_classes: int) -> Tuple[int, ...]:
    """Class-interleaved labels; in a multi-label task every third image also has a second class."""
    label = index % num_classes
    if spec.multilabel and index % 3 == 2:
        return (label, (label + 7) % num_classes)
    return (label,)


def _iris_index(members: List[Tuple[str, Tuple[int, ...]]]) -> str:
    return "".join(f"{path} {','.join(str(c) for c in labels)}\n" for path, labels in members)


def _coco_index(members: List[Tuple[str, Tuple[int, ...]]], classnames: List[str]) -> str:
    """Images listed in descending id order (readers sort by id); category ids start at 1."""
    images, annotations = [], []
    for i, (path, labels) in enumerate(members):
        images.append({"id": i + 1, "file_name": path, "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        annotations.extend({"id": len(annotations) + k + 1, "image_id": i + 1, "category_id": c + 1}
                           for k, c in enumerate(labels))
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(classnames)]
    return json.dumps({"images": images[::-1], "annotations": annotations, "categories": categories}, indent=1)


def write_elevater_task(root: str, name: str, train_per_class: int = 6, test_per_class: int = 2, seed: int = 0
                        ) -> str:
    """Write task ``name`` under ``root`` (once: an existing folder is kept); return its folder."""
    spec = TASKS[name]
    folder = os.path.join(root, spec.root_folder)
    if os.path.isdir(folder):
        return folder
    classnames = task_classnames(name)
    zips: Dict[str, Dict[str, bytes]] = {}
    indices: Dict[str, str] = {}
    for usage, index_file, zip_name, per_class in (("train", spec.train_index, spec.train_zip, train_per_class),
                                                    ("test", spec.test_index, spec.test_zip, test_per_class)):
        members = []
        for i in range(per_class * len(classnames)):
            labels = _labels_of(spec, i, len(classnames))
            member = f"{usage}/class {labels[0]}/{i:05d}.png"
            rng = np.random.default_rng([seed, len(usage), i])
            zips.setdefault(zip_name, {})[member] = _png(labels[0], rng)
            members.append((f"{zip_name}@{member}", labels))
        indices[index_file] = _coco_index(members, classnames) if spec.index_format == "coco" \
            else _iris_index(members)

    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{spec.folder}.", suffix=".tmp", dir=parent)
    try:
        for index_file, text in indices.items():
            with open(os.path.join(tmp, index_file), "w", encoding="utf-8") as f:
                f.write(text)
        if spec.labelmap:
            with open(os.path.join(tmp, spec.labelmap), "w", encoding="utf-8") as f:
                f.write("".join(f"{c}\n" for c in classnames))
        for zip_name, members in zips.items():
            with zipfile.ZipFile(os.path.join(tmp, zip_name), "w", zipfile.ZIP_STORED) as archive:
                for member, data in members.items():
                    archive.writestr(zipfile.ZipInfo(member, date_time=_ZIP_TIME), data)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process wrote it first; its copy is identical
            if not os.path.isdir(folder):
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
