"""SoftCPT's multi-task data sets (General-10, Plant-6, Fashion-20) in the original's layouts.

``DATASET.NAME General10`` (or ``Plant6``, ``Fashion20``) runs every member as one task, in the
original's task order; each member is also a data set of its own (``Caltech101MT``,
``FruitVegetable``, ``Fashion20_t3``, ...). RS-8, the journal version's fourth data set, is not
published (no code, task list or data), so it is not here.

Each member reads ``<its folder>/split_dk_<Name>.json``: ``train``/``val``/``test`` lists of
``[path relative to the image folder, [label], [task]]`` and ``meta`` with ``taskid2cname``,
``taskid2tname`` (the task-name text of the SoftCPT prompt), ``taskid2desc``, ``taskid2type``
and ``taskid2metric``. When the file is missing it is made once and saved, as the original does
(its own files are unpublished, so splits are not the paper's): the CoOp procedure of the same
data set for the General-10 members (they match the original's), 50/20/30 per class otherwise.
Fashion-20 keeps all tasks in one file, with names from ``task_info.csv`` (the original ignores
its meta); our split is stratified per class where the original's is per task.

Task-name texts: the original's ``task_name.txt`` files are unpublished except FruitVegetable's
"fruits and vegetables image classification"; the others are ours, in the same
"<domain> image classification" style, with descriptions "classify <domain> images into <C>
categories" (``TASK_DOMAINS``). As in the original, a ``task_name.txt`` / ``task_desc.txt`` in
the data set's folder is read when its split file is made, and a split file's meta wins over all.

Metrics: ``metric`` is "mean_per_class" for the tasks the original marks ``mean_acc``
(Caltech101, FGVCAircraft, OxfordFlowers, OxfordPets and all of Fashion-20), else "accuracy".

The original's own few-shot pickle of a task set, ``<root>/<general10|plant6>/split_fewshot_mt/
shot_<K>-seed_<SEED>.pkl`` (its tasks, names and items), is read when present, as the original
does: its runs then evaluate on their exact few-shot and test items (image paths rewritten from
``DATALOADER.OLD_DATA_PATH`` to ``NEW_DATA_PATH`` when both are set). Each task's metric and
zero-shot template are those of the set's member at its position, as the original rebuilds them.

Few-shot (train K per class, val min(K, 4) per class, test full) is cached per member in
``<its folder>/split_fewshot_mt/<member>-shot_<K>-seed_<SEED>.json`` together with the split
file's fingerprint, so a cache is never reused for another task, shot count or split; a task
set is the list of its members' caches, so no cache belongs to a task set. (The original keeps
one pickle per task set keyed by shots and seed only.)

``DATASET.SUBSAMPLE_TASKS`` (all, task<i>, base, new) picks tasks and ``SUBSAMPLE_CLASSES`` then
halves each task's classes (``datasets/manager.py``); ``DATALOADER.TRAIN_X.SAMPLER`` is the
original's ``RandomSampler`` over the union (``drop_last``) or ``TaskBalancedSampler``.
"""
from __future__ import annotations

import csv
import hashlib
import functools
import os
import pickle
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from clip.errors import InvalidInputError, UnreadableInputError

from .base import (DatasetBase, Datum, dataset_root, generate_fewshot_dataset, listdir_nohidden, read_split_lists,
                   require_folder, split_entries, subsample_classes)
from .build import DATASET_REGISTRY, TASK_SET_CACHES, TASK_SETS
from .caltech101 import Caltech101
from .dtd import DescribableTextures
from .eurosat import EuroSAT
from .fgvc_aircraft import FGVCAircraft
from .food101 import Food101
from .io import read_json, write_json
from .oxford_flowers import OxfordFlowers
from .oxford_pets import OxfordPets
from .stanford_cars import StanfordCars
from .sun397 import SUN397
from .ucf101 import UCF101

MEAN_PER_CLASS, ACCURACY = "mean_per_class", "accuracy"
#: the original's metric names -> the evaluator's
METRIC_NAMES = {"mean_acc": MEAN_PER_CLASS, "overall_acc": ACCURACY}
Splits = Tuple[List[Datum], List[Datum], List[Datum]]

#: member -> the domain words of its task name "<domain> image classification" (ours except FruitVegetable)
TASK_DOMAINS = {
    "Caltech101MT": "object", "DescribableTexturesMT": "texture", "EuroSATMT": "satellite land use",
    "FGVCAircraftMT": "aircraft model", "Food101MT": "food", "OxfordFlowersMT": "flower species",
    "OxfordPetsMT": "pet breed", "StanfordCarsMT": "car model", "SUN397MT": "scene", "UCF101MT": "human action",
    "FruitVegetable": "fruits and vegetables", "KaggleFlower": "flower", "KaggleMushroom": "mushroom",
    "KaggleVegetable": "vegetable", "PlantSeedlingV1": "plant seedling", "PlantVillage": "plant leaf disease",
}

#: PlantVillage folder -> class name (the original's names)
PLANT_VILLAGE_NAMES = {
    "Apple___Apple_scab": "apple leaf with scab disease",
    "Apple___Black_rot": "apple leaf with black rot",
    "Apple___Cedar_apple_rust": "apple leaf with cedar apple rust",
    "Apple___healthy": "healthy apple leaf",
    "Background_without_leaves": "background without leaves",
    "Blueberry___healthy": "healthy blueberry leaf",
    "Cherry___Powdery_mildew": "cherry leaf with powdery mildew",
    "Cherry___healthy": "healthy cherry leaf",
    "Corn___Cercospora_leaf_spot Gray_leaf_spot": "corn leaf with cercospora leaf spot or gray leaf spot",
    "Corn___Common_rust": "corn leaf with common rust",
    "Corn___Northern_Leaf_Blight": "corn leaf with northern leaf blight",
    "Corn___healthy": "healthy corn leaf",
    "Grape___Black_rot": "grape leaf with black rot",
    "Grape___Esca_(Black_Measles)": "grape leaf with black measles",
    "Grape___Leaf_blight_(Isariopsis_Leaf_Spot)": "grape leaf with leaf blight",
    "Grape___healthy": "healthy grape leaf",
    "Orange___Haunglongbing_(Citrus_greening)": "orange leaf with citrus greening disease",
    "Peach___Bacterial_spot": "peach leaf with bacterial spot",
    "Peach___healthy": "healthy peach leaf",
    "Pepper,_bell___Bacterial_spot": "pepper with bacterial spot",
    "Pepper,_bell___healthy": "healthy pepper leaf",
    "Potato___Early_blight": "potato leaf with early blight",
    "Potato___Late_blight": "potato leaf with late blight",
    "Potato___healthy": "healthy potato leaf",
    "Raspberry___healthy": "healthy raspberry leaf",
    "Soybean___healthy": "healthy soybean leaf",
    "Squash___Powdery_mildew": "squash with powdery mildew",
    "Strawberry___Leaf_scorch": "strawberry leaf with scorch disease",
    "Strawberry___healthy": "healthy strawberry leaf",
    "Tomato___Bacterial_spot": "tomato leaf with bacterial spot",
    "Tomato___Early_blight": "tomato leaf with early blight",
    "Tomato___Late_blight": "tomato leaf with late blight",
    "Tomato___Leaf_Mold": "tomato leaf with mold",
    "Tomato___Septoria_leaf_spot": "tomato leaf with septoria leaf spot",
    "Tomato___Spider_mites Two-spotted_spider_mite": "tomato leaf with spider mites or two-spotted spider mite",
    "Tomato___Target_Spot": "tomato leaf with target spot",
    "Tomato___Tomato_mosaic_virus": "tomato leaf with tomato mosaic virus",
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus": "tomato leaf with tomato yellow leaf curl virus",
    "Tomato___healthy": "healthy tomato leaf",
}


def task_name_text(domain: str) -> str:
    return f"{domain} image classification"


def task_description(domain: str, num_classes: int) -> str:
    return f"classify {domain} images into {num_classes} categories"


def split_class_folders(folders: Sequence[Tuple[str, str]], p_train: float = 0.5, p_val: float = 0.2) -> Splits:
    """Per class (label = position in ``folders``, a list of (folder, class name)): shuffle its
    images on the global ``random`` and cut round(p x n) train, round(p x n) val, the rest test."""
    train, val, test = [], [], []
    for label, (folder, classname) in enumerate(folders):
        images = [os.path.join(folder, name) for name in sorted(listdir_nohidden(folder))]
        random.shuffle(images)
        n_train, n_val = round(len(images) * p_train), round(len(images) * p_val)
        if not (n_train > 0 and n_val > 0 and len(images) > n_train + n_val):
            raise ValueError(f"{folder} has {len(images)} image(s): too few for non-empty train, val and test parts")
        for part, paths in ((train, images[:n_train]), (val, images[n_train:n_train + n_val]),
                            (test, images[n_train + n_val:])):
            part.extend(Datum(impath=p, label=label, classname=classname) for p in paths)
    return train, val, test


def file_fingerprint(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


class SoftCPTSource(DatasetBase):
    """One task of a SoftCPT data set, read from (or written to) its ``split_dk_<Name>.json``."""

    dataset_dir = ""
    image_subdir = ""
    split_name = ""  # the <Name> of split_dk_<Name>.json
    task_index = 0  # its task's index inside the split file (0 except in Fashion-20's shared file)
    original_metric = "overall_acc"
    template = "a photo of a {}."

    def __init__(self, cfg: Any) -> None:
        self.dataset_dir = os.path.join(dataset_root(cfg), type(self).dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, self.image_subdir) if self.image_subdir else self.dataset_dir
        require_folder(self.dataset_dir, type(self).__name__)
        self.split_path = os.path.join(self.dataset_dir, f"split_dk_{self.split_name}.json")
        if not os.path.exists(self.split_path):
            self.write_split()
        train, val, test, meta = self.read_split()
        self.task_name, self.task_description = meta["tname"], meta["desc"]
        self.metric = METRIC_NAMES[meta["metric"]]
        train, val = self.few_shot(cfg, train, val)
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    # ----- the split file ---------------------------------------------------------------
    def build_splits(self) -> List[Splits]:
        """Every task's (train, val, test) for a new split file (one task unless Fashion-20)."""
        raise NotImplementedError

    def authored_text(self, filename: str, default: str) -> str:
        """The text of ``<data set folder>/<filename>`` (the original's task_name.txt, task_desc.txt) if present."""
        path = os.path.join(self.dataset_dir, filename)
        if not os.path.isfile(path):
            return default
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or default

    def split_meta(self, classnames: List[List[str]]) -> Dict[str, list]:
        domain = TASK_DOMAINS[type(self).__name__]
        desc = self.authored_text("task_desc.txt", task_description(domain, len(classnames[0])))
        return {"taskid2cname": classnames, "taskid2desc": [desc], "taskid2type": ["sl"],
                "taskid2tname": [self.authored_text("task_name.txt", task_name_text(domain))],
                "taskid2metric": [self.original_metric]}

    def write_split(self) -> None:
        print(f"No split file at {self.split_path}: making one (the original's are unpublished)")
        splits = self.build_splits()
        classnames = [[name for _, name in sorted({(d.label, d.classname) for d in train})]
                      for train, _, _ in splits]
        data: Dict[str, Any] = {"train": [], "val": [], "test": []}
        for task, parts in enumerate(splits):
            for key, items in zip(("train", "val", "test"), parts):
                data[key].extend([path, [label], [task]] for path, label, _ in split_entries(items, self.image_dir))
        data["meta"] = self.split_meta(classnames)
        write_json(data, self.split_path)
        print(f"Saved split to {self.split_path}")

    def task_meta(self, meta: Dict[str, list]) -> Dict[str, Any]:
        """This task's class names, name text, description and metric from the file's meta."""
        i = self.task_index
        return {"classnames": meta["taskid2cname"][i], "tname": meta["taskid2tname"][i],
                "desc": meta["taskid2desc"][i], "metric": meta["taskid2metric"][i]}

    def read_split(self) -> Tuple[List[Datum], List[Datum], List[Datum], Dict[str, Any]]:
        print(f"Reading split from {self.split_path}")
        data = read_json(self.split_path)
        meta = self.task_meta(data["meta"])
        names = meta["classnames"]
        parts = [[Datum(impath=os.path.join(self.image_dir, path), label=int(labels[0]),
                        classname=names[int(labels[0])])
                  for path, labels, tasks in data[key] if int(tasks[0]) == self.task_index]
                 for key in ("train", "val", "test")]
        return parts[0], parts[1], parts[2], meta

    # ----- few-shot ---------------------------------------------------------------------
    def few_shot(self, cfg: Any, train: List[Datum], val: List[Datum]) -> Tuple[List[Datum], List[Datum]]:
        """K train and min(K, 4) val items per class, cached per (member, K, seed, split file)."""
        shots = cfg.DATASET.NUM_SHOTS
        if shots < 1:
            return train, val
        name = type(self).__name__
        path = os.path.join(self.dataset_dir, "split_fewshot_mt", f"{name}-shot_{shots}-seed_{cfg.SEED}.json")
        fingerprint = file_fingerprint(self.split_path)
        if os.path.exists(path) and read_json(path).get("split_sha1") == fingerprint:
            print(f"Loading preprocessed few-shot data from {path}")
            train, val = read_split_lists(path, self.image_dir, ("train", "val"))
            return train, val
        if os.path.exists(path):
            print(f"{path} was sampled from another split file: sampling again")
        train = generate_fewshot_dataset(train, num_shots=shots)
        val = generate_fewshot_dataset(val, num_shots=min(shots, 4))
        write_json({"task": name, "num_shots": shots, "seed": cfg.SEED, "split_sha1": fingerprint,
                    "train": split_entries(train, self.image_dir), "val": split_entries(val, self.image_dir)}, path)
        print(f"Saving preprocessed few-shot data to {path}")
        return train, val


class CoOpSplitSource(SoftCPTSource):
    """A General-10 member: its CoOp reader's split procedure (the original's) into split_dk form."""

    coop_reader: type = DatasetBase

    def build_splits(self) -> List[Splits]:
        reader = self.coop_reader.__new__(self.coop_reader)
        reader.dataset_dir, reader.image_dir = self.dataset_dir, self.image_dir
        return [reader.build_split()]


class FolderSource(SoftCPTSource):
    """Class folders under the image folder, 50/20/30 per class; class names from ``renamed``."""

    renamed: Dict[str, str] = {}

    def class_folders(self, image_dir: str) -> List[Tuple[str, str]]:
        return [(os.path.join(image_dir, c), self.renamed.get(c, c)) for c in sorted(listdir_nohidden(image_dir))]

    def build_splits(self) -> List[Splits]:
        return [split_class_folders(self.class_folders(self.image_dir))]


class PooledFolderSource(FolderSource):
    """``images/{train,test,validation}/<class>``: each folder split 50/20/30 per class, then pooled."""

    def build_splits(self) -> List[Splits]:
        pooled: Splits = ([], [], [])
        classes = None
        for part in ("train", "test", "validation"):
            folders = self.class_folders(os.path.join(self.image_dir, part))
            names = [name for _, name in folders]
            if classes is not None and names != classes:
                raise ValueError(f"{self.image_dir}/{part} has other classes than the train folder")
            classes = names
            for whole, piece in zip(pooled, split_class_folders(folders)):
                whole.extend(piece)
        return [pooled]


def _register(name: str, base: type, **attrs: Any) -> type:
    cls = type(name, (base,), {"__module__": __name__, "__doc__": f"SoftCPT task {name}.", **attrs})
    return DATASET_REGISTRY.register(cls)


#: (CoOp reader, original metric) in General-10's task order
GENERAL10 = ((Caltech101, "mean_acc"), (DescribableTextures, "overall_acc"), (EuroSAT, "overall_acc"),
             (FGVCAircraft, "mean_acc"), (Food101, "overall_acc"), (OxfordFlowers, "mean_acc"),
             (OxfordPets, "mean_acc"), (StanfordCars, "overall_acc"), (SUN397, "overall_acc"), (UCF101, "overall_acc"))
for _reader, _metric in GENERAL10:
    _register(f"{_reader.__name__}MT", CoOpSplitSource, coop_reader=_reader, dataset_dir=_reader.dataset_dir,
              image_subdir=_reader.image_subdir, split_name=_reader.__name__, original_metric=_metric,
              template=_reader.template)
TASK_SETS["General10"] = [f"{reader.__name__}MT" for reader, _ in GENERAL10]

#: (name, base, folder, image folder, zero-shot template, renamed) in Plant-6's task order
PLANT6 = (
    ("FruitVegetable", PooledFolderSource, "fruit_vegetable", "images",
     "a photo of a {}, a type of fruit or vegetable.", {}),
    ("KaggleFlower", FolderSource, "kaggle_flower_recognition", "flowers", "a photo of a {}, a type of flower.", {}),
    ("KaggleMushroom", FolderSource, "kaggle_mushroom", "Mushrooms", "a photo of a {}, a type of mushroom.", {}),
    ("KaggleVegetable", PooledFolderSource, "kaggle_vegetable", "images", "a photo of a {}, a type of vegetable.", {}),
    ("PlantSeedlingV1", FolderSource, "PlantSeedlingV1", "Nonsegmented", "a photo of a {}, a type of seedling.", {}),
    ("PlantVillage", FolderSource, "PlantVillage", "Plant_leave_diseases_dataset_without_augmentation",
     "a photo of a plant leaf with {} disease.", PLANT_VILLAGE_NAMES),
)
for _name, _base, _folder, _images, _template, _renamed in PLANT6:
    _register(_name, _base, dataset_dir=_folder, image_subdir=_images, split_name=_name, template=_template,
              renamed=_renamed)
TASK_SETS["Plant6"] = [entry[0] for entry in PLANT6]

#: the garment each Fashion-20 task is about (its zero-shot template "a photo of {}, a type of <garment>.")
FASHION20_GARMENTS = (["pants"] * 3 + ["tops"] * 4 + ["shoes"] * 7
                      + ["hat", "socks", "socks", "skirt", "tops", "underwear"])


class Fashion20Task(SoftCPTSource):
    """One attribute task of Fashion-20 (``images/<task>/<class>/``, names from ``task_info.csv``)."""

    dataset_dir = "fashion20"
    image_subdir = "images"
    split_name = "Fashion20"
    original_metric = "mean_acc"

    def task_info(self) -> List[Tuple[str, List[str]]]:
        """(task name, class names) per task: columns 2 and 4 of the tab-separated CSV after its header."""
        with open(os.path.join(self.dataset_dir, "task_info.csv"), newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))[1:]
        return [(row[1].strip().replace(" ", "_"), [c.strip() for c in row[3].split(",")]) for row in rows if row]

    def build_splits(self) -> List[Splits]:
        splits = []
        for task, (_, classnames) in enumerate(self.task_info()):
            folders = [(os.path.join(self.image_dir, str(task), str(label)), name)
                       for label, name in enumerate(classnames)]
            splits.append(split_class_folders(folders))
        return splits

    def split_meta(self, classnames: List[List[str]]) -> Dict[str, list]:
        names = [name for name, _ in self.task_info()]
        return {"taskid2cname": classnames,
                "taskid2desc": [task_description(n.replace("_", " "), len(c)) for n, c in zip(names, classnames)],
                "taskid2type": ["sl"] * len(names), "taskid2tname": names,
                "taskid2metric": [self.original_metric] * len(names)}

    def task_meta(self, meta: Dict[str, list]) -> Dict[str, Any]:
        """Names from task_info.csv whatever the file's meta says, as the original."""
        name, classnames = self.task_info()[self.task_index]
        readable = name.replace("_", " ")
        return {"classnames": classnames, "tname": readable, "desc": task_description(readable, len(classnames)),
                "metric": self.original_metric}


for _index, _garment in enumerate(FASHION20_GARMENTS):
    _register(f"Fashion20_t{_index}", Fashion20Task, task_index=_index,
              template=f"a photo of {{}}, a type of {_garment}.")
TASK_SETS["Fashion20"] = [f"Fashion20_t{i}" for i in range(len(FASHION20_GARMENTS))]


# ----- the original's few-shot pickles of a whole task set ---------------------------------------

class OriginalDatum:
    """Stand-in for Dassl's ``DatumMT`` while reading the original's pickles (attributes only)."""

    _impath: str
    _label: List[int]
    _task: List[int]


class OriginalCacheUnpickler(pickle.Unpickler):
    """Unpickles only the original's few-shot records: lists, dicts, strings, numbers and DatumMT."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("dassl.") and name in ("DatumMT", "Datum"):
            return OriginalDatum
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a SoftCPT few-shot file")


class CachedTask(DatasetBase):
    """One task of an original few-shot pickle (task-local labels, its name text and metric)."""

    def __init__(self, train: List[Datum], val: List[Datum], test: List[Datum], task_name: str,
                 metric: str, template: str) -> None:
        self.task_name, self.metric, self.template = task_name, metric, template
        super().__init__(train_x=train, val=val or None, test=test)


def read_original_fewshot(cfg: Any, set_name: str, folder: str) -> Optional[List[Tuple[str, DatasetBase]]]:
    """The tasks of ``<root>/<folder>/split_fewshot_mt/shot_<K>-seed_<SEED>.pkl`` (None when absent),
    named after the set's members by position, classes halved per task by ``SUBSAMPLE_CLASSES``."""
    if cfg.DATASET.NUM_SHOTS < 1:
        return None
    path = os.path.join(dataset_root(cfg), folder, "split_fewshot_mt",
                        f"shot_{cfg.DATASET.NUM_SHOTS}-seed_{cfg.SEED}.pkl")
    if not os.path.isfile(path):
        return None
    print(f"Loading the original's few-shot data from {path}")
    try:
        with open(path, "rb") as f:
            data = OriginalCacheUnpickler(f).load()
        classnames, tnames = data["taskid2cname"], data["taskid2tname"]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableInputError(f"{path} is not a SoftCPT few-shot file ({exc}); move it away to sample anew") from exc
    old, new = cfg.DATALOADER.OLD_DATA_PATH, cfg.DATALOADER.NEW_DATA_PATH
    members = TASK_SETS[set_name]
    tasks = []
    for t, (names, tname) in enumerate(zip(classnames, tnames)):
        parts = [[Datum(impath=new + d._impath[len(old):] if old and new and d._impath.startswith(old) else d._impath,
                        label=int(d._label[0]), classname=names[int(d._label[0])])
                  for d in data[key] if int(d._task[0]) == t] for key in ("train", "val", "test")]
        parts = subsample_classes(*parts, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        member = DATASET_REGISTRY.get(members[t]) if t < len(members) else None
        if member is None:
            raise InvalidInputError(f"{path} holds {len(tnames)} tasks, more than the {len(members)} of {set_name}")
        tasks.append((members[t], CachedTask(*parts, task_name=tname, metric=METRIC_NAMES[member.original_metric],
                                             template=member.template)))
    return tasks


for _set, _folder in (("General10", "general10"), ("Plant6", "plant6")):
    TASK_SET_CACHES[_set] = functools.partial(read_original_fewshot, set_name=_set, folder=_folder)
