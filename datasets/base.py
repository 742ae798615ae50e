"""Records, split files, few-shot sampling and base/new class halving, as CoOp/Dassl do them.

The few-shot sampler reproduces Dassl's algorithm draw for draw on Python's global
``random``, so a seed picks the same images as the original code given the same split
file. Caches are JSON with paths relative to the image folder (not Dassl's pickles of
absolute paths), so a data root can move between machines.
"""
from __future__ import annotations

import math
import os
import random
from collections import OrderedDict
from numbers import Integral
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from clip.errors import InvalidInputError, MissingInputError
from .io import read_json, write_json

__all__ = [
    "Datum", "DatasetBase", "CoOpDataset", "read_split", "save_split", "split_trainval",
    "generate_fewshot_dataset", "subsample_classes", "split_dataset_by_label",
    "load_or_create_fewshot", "fewshot_cache_path", "listdir_nohidden", "load_mat",
    "read_split_lists", "split_entries", "require_file", "require_folder", "dataset_root",
]

SUBSAMPLE_CHOICES = ("all", "base", "new")


class Datum:
    """One labelled image, read-only like Dassl's (same private attribute names).

    The file is not checked here: statting every image of ImageNet on construction is
    slow, and a missing file is reported with its path when the loader reads it.
    """

    __slots__ = ("_impath", "_label", "_domain", "_classname")

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        if not isinstance(impath, str):
            raise TypeError(f"Datum.impath must be a str, got {type(impath).__name__} {impath!r}")
        if not isinstance(label, Integral) or not isinstance(domain, Integral):
            raise TypeError(f"Datum label/domain must be integers, got {label!r}/{domain!r} for {impath}")
        if not isinstance(classname, str):
            raise TypeError(f"Datum.classname must be a str, got {classname!r} for {impath}")
        self._impath = impath
        self._label = int(label)
        self._domain = int(domain)
        self._classname = classname

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    def _key(self) -> Tuple[str, int, int, str]:
        return (self._impath, self._label, self._domain, self._classname)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Datum) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Datum(impath={self._impath!r}, label={self._label}, "
                f"domain={self._domain}, classname={self._classname!r})")


def split_dataset_by_label(data_source: Iterable[Datum]) -> "OrderedDict[int, List[Datum]]":
    """Group items by label, labels in first-appearance order (the order sampling visits them)."""
    groups: "OrderedDict[int, List[Datum]]" = OrderedDict()
    for item in data_source:
        groups.setdefault(item.label, []).append(item)
    return groups


def split_dataset_by_domain(data_source: Iterable[Datum]) -> "OrderedDict[int, List[Datum]]":
    groups: "OrderedDict[int, List[Datum]]" = OrderedDict()
    for item in data_source:
        groups.setdefault(item.domain, []).append(item)
    return groups


def generate_fewshot_dataset(*data_sources: List[Datum], num_shots: int = -1, repeat: bool = False):
    """Dassl's few-shot sampler: K items per label from each source, on the global ``random``.

    Labels are visited in first-appearance order; a group with at least K items gives
    ``random.sample(group, K)``, a smaller one ``random.choices(group, k=K)`` when
    ``repeat`` else the whole group. One source returns a list, several a list of lists;
    ``num_shots < 1`` returns the input unchanged (a single source itself, else the tuple).
    """
    if num_shots < 1:
        return data_sources[0] if len(data_sources) == 1 else data_sources
    print(f"Creating a {num_shots}-shot dataset")
    output = []
    for data_source in data_sources:
        picked: List[Datum] = []
        for group in split_dataset_by_label(data_source).values():
            if len(group) >= num_shots:
                picked.extend(random.sample(group, num_shots))
            elif repeat:
                picked.extend(random.choices(group, k=num_shots))
            else:
                picked.extend(group)
        output.append(picked)
    return output[0] if len(output) == 1 else output


class DatasetBase:
    """A data set's train_x / train_u / val / test lists (Dassl semantics).

    ``num_classes``, ``lab2cname`` and ``classnames`` come from ``train_x`` only, as in
    Dassl, so they describe the classes actually trained on (after few-shot and base/new).
    The class attribute ``dataset_dir`` is the folder name under ``DATASET.ROOT``;
    readers replace it on the instance with the absolute folder.
    """

    dataset_dir = ""
    domains: List[str] = []
    template = "a photo of a {}."

    def __init__(self, train_x: Optional[List[Datum]] = None, train_u: Optional[List[Datum]] = None,
                 val: Optional[List[Datum]] = None, test: Optional[List[Datum]] = None) -> None:
        if not train_x:
            raise InvalidInputError(f"{type(self).__name__}: train_x is empty; classes are defined by the "
                             "training items (check the split file, NUM_SHOTS and SUBSAMPLE_CLASSES)")
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self) -> List[Datum]:
        return self._train_x

    @property
    def train_u(self) -> Optional[List[Datum]]:
        return self._train_u

    @property
    def val(self) -> Optional[List[Datum]]:
        return self._val

    @property
    def test(self) -> Optional[List[Datum]]:
        return self._test

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> List[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source: Iterable[Datum]) -> int:
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source: Iterable[Datum]) -> Tuple[Dict[int, str], List[str]]:
        """label -> class name (first name seen per label) and the names by ascending label."""
        mapping: Dict[int, str] = {}
        for item in data_source:
            mapping.setdefault(item.label, item.classname)
        labels = sorted(mapping)
        return {label: mapping[label] for label in labels}, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains: Sequence[str], target_domains: Sequence[str]) -> None:
        for domain in list(source_domains) + list(target_domains):
            if domain not in self.domains:
                raise ValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    split_dataset_by_label = staticmethod(split_dataset_by_label)
    split_dataset_by_domain = staticmethod(split_dataset_by_domain)
    generate_fewshot_dataset = staticmethod(generate_fewshot_dataset)


# ----------------------------------------------------------------------------- split files

def _relative(impath: str, prefix: str) -> str:
    """The split-file form of a path: the prefix removed, then one leading "/" (CoOp's rule)."""
    if impath.startswith(prefix):
        impath = impath[len(prefix):]
    return impath[1:] if impath.startswith("/") else impath


def split_entries(items: Iterable[Datum], prefix: str) -> List[list]:
    """Items as split-file entries ``[relative_path, label, classname]``."""
    return [[_relative(item.impath, prefix), item.label, item.classname] for item in items]


def _from_entries(entries: Any, prefix: str, path: str, key: str) -> List[Datum]:
    if not isinstance(entries, list):
        raise InvalidInputError(f'{path}: "{key}" must be a list of [relative_path, label, classname]')
    out = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise InvalidInputError(f'{path}: "{key}"[{i}] must be [relative_path, label, classname], got {entry!r}')
        relpath, label, classname = entry
        out.append(Datum(impath=os.path.join(prefix, relpath), label=int(label), classname=classname))
    return out


def read_split_lists(path: str, prefix: str, keys: Sequence[str]) -> List[List[Datum]]:
    """The lists under ``keys`` of a split-format JSON (split, few-shot cache, ImageNet listing)."""
    data = read_json(path)
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise InvalidInputError(f"{path}: missing key(s) {missing}; expected an object with {list(keys)}")
    return [_from_entries(data[k], prefix, path, k) for k in keys]


def read_split(path: str, prefix: str) -> Tuple[List[Datum], List[Datum], List[Datum]]:
    """Read a ``split_zhou_<Name>.json``; each relative path is joined onto ``prefix``."""
    if not os.path.isfile(path):
        name = os.path.basename(path)
        which = name[len("split_zhou_"):-len(".json")] if name.startswith("split_zhou_") else ""
        what = f'data set "{which}"' if which else "data set"
        raise MissingInputError(f"Split file of {what} not found: {path} (see DATASETS.md)")
    print(f"Reading split from {path}")
    train, val, test = read_split_lists(path, prefix, ("train", "val", "test"))
    return train, val, test


def save_split(train: List[Datum], val: List[Datum], test: List[Datum], path: str, prefix: str) -> None:
    """Write a split file in CoOp's format (4-space indent, paths relative to ``prefix``).

    An existing file is user data and is never replaced.
    """
    if os.path.exists(path):
        raise FileExistsError(f"Split file already exists, not overwriting: {path}")
    split = {"train": split_entries(train, prefix), "val": split_entries(val, prefix),
             "test": split_entries(test, prefix)}
    write_json(split, path)
    print(f"Saved split to {path}")


def split_trainval(trainval: List[Datum], p_val: float = 0.2) -> Tuple[List[Datum], List[Datum]]:
    """CoOp's per-label train/val split: shuffle each label's items, the first round(p*n) go to val."""
    print(f"Splitting trainval into {1 - p_val:.0%} train and {p_val:.0%} val")
    train, val = [], []
    for label, group in split_dataset_by_label(trainval).items():
        n_val = round(len(group) * p_val)
        if n_val <= 0:
            raise InvalidInputError(f"Label {label} has {len(group)} trainval item(s): too few for a "
                             f"{p_val:.0%} validation split")
        random.shuffle(group)
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    return train, val


# ----------------------------------------------------------------------------- base/new classes

def subsample_classes(*data_lists: List[Datum], subsample: str = "all"):
    """CoOp's base/new split: first ceil(n/2) labels of the first list are "base", the rest "new".

    Selected labels are renumbered 0, 1, ... in sorted order in every list; items of other
    labels are dropped. "all" returns the inputs unchanged (as a tuple).
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise InvalidInputError(f"DATASET.SUBSAMPLE_CLASSES must be one of {list(SUBSAMPLE_CHOICES)}, "
                         f"got {subsample!r}")
    if subsample == "all":
        return data_lists
    labels = sorted({item.label for item in data_lists[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {old: new for new, old in enumerate(selected)}
    return tuple(
        [Datum(impath=item.impath, label=relabel[item.label], domain=item.domain, classname=item.classname)
         for item in items if item.label in relabel]
        for items in data_lists)


# ----------------------------------------------------------------------------- few-shot cache

def fewshot_cache_path(dataset_dir: str, num_shots: int, seed: int) -> str:
    return os.path.join(dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.json")


def load_or_create_fewshot(dataset_dir: str, prefix: str, num_shots: int, seed: int,
                           train: List[Datum], val: Optional[List[Datum]] = None
                           ) -> Tuple[List[Datum], Optional[List[Datum]]]:
    """The few-shot block every CoOp reader runs, with its cache.

    Returns (train, val) unchanged when ``num_shots < 1``. Otherwise loads
    ``split_fewshot/shot_<K>-seed_<SEED>.json`` if present, else samples train with K then
    val with min(K, 4) (one RNG stream, this order) and writes the cache once. ``val=None``
    is ImageNet's case: only train is sampled and cached. The cache key ignores the split
    file and SUBSAMPLE_CLASSES, as CoOp's does, so base and new runs share it.
    """
    if num_shots < 1:
        return train, val
    path = fewshot_cache_path(dataset_dir, num_shots, seed)
    keys = ("train",) if val is None else ("train", "val")
    if os.path.exists(path):
        print(f"Loading preprocessed few-shot data from {path}")
        lists = read_split_lists(path, prefix, keys)
        return lists[0], (lists[1] if val is not None else None)
    train = generate_fewshot_dataset(train, num_shots=num_shots)
    if val is not None:
        val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    data = {"train": split_entries(train, prefix)}
    if val is not None:
        data["val"] = split_entries(val, prefix)
    print(f"Saving preprocessed few-shot data to {path}")
    write_json(data, path)
    return train, val


# ----------------------------------------------------------------------------- helpers for readers

def listdir_nohidden(path: str, sort: bool = False) -> List[str]:
    """Entries of a folder without dot-files, in listing order unless ``sort`` (Dassl's helper)."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def load_mat(path: str) -> Dict[str, Any]:
    """Read a MATLAB file; SciPy is imported here because only split fallbacks need it."""
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise ImportError(f"Reading {path} needs SciPy (pip install scipy); it is only needed to "
                          "build a missing split file from the raw annotations") from exc
    return loadmat(path)


def dataset_root(cfg: Any) -> str:
    return os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))


class CoOpDataset(DatasetBase):
    """A CoOp reader: split file (or fallback) -> few-shot cache -> base/new -> DatasetBase.

    Subclasses set ``dataset_dir`` (folder under ROOT), ``image_subdir`` (the prefix of the
    split paths, relative to the data set folder; "" = the folder itself) and ``template``,
    and implement ``build_split`` to make the split when the JSON is absent.
    """

    image_subdir = "images"
    fewshot_val = True  # False: ImageNet, whose val is its test set

    def __init__(self, cfg: Any) -> None:
        self.dataset_dir = os.path.join(dataset_root(cfg), type(self).dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, self.image_subdir) if self.image_subdir \
            else self.dataset_dir
        self.split_path = os.path.join(self.dataset_dir, f"split_zhou_{type(self).__name__}.json")
        self.ensure_present()
        train, val, test = self.load_split()
        train, val_fs = load_or_create_fewshot(self.dataset_dir, self.image_dir, cfg.DATASET.NUM_SHOTS,
                                               cfg.SEED, train, val if self.fewshot_val else None)
        if self.fewshot_val:
            val = val_fs
            train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        else:
            train, test = subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
            val = test
        super().__init__(train_x=train, val=val, test=test)

    def ensure_present(self) -> None:
        """Fail early with the expected folder when the data set is not on disk."""
        require_folder(self.dataset_dir, type(self).__name__)

    def load_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        if os.path.exists(self.split_path):
            return read_split(self.split_path, self.image_dir)
        try:
            train, val, test = self.build_split()
        except FileNotFoundError as exc:
            raise MissingInputError(
                f'Split file of data set "{type(self).__name__}" not found: {self.split_path}, and it '
                f"cannot be built from the raw annotations ({exc}). Put the split file there as "
                "described in DATASETS.md") from exc
        save_split(train, val, test, self.split_path, self.image_dir)
        return train, val, test

    def build_split(self) -> Tuple[List[Datum], List[Datum], List[Datum]]:
        """Make train/val/test from the raw annotations (CoOp's fallback for a missing JSON)."""
        raise MissingInputError(f"no fallback split builder for {type(self).__name__}")


def require_folder(path: str, dataset: str) -> None:
    if not os.path.isdir(path):
        raise MissingInputError(f'Data set "{dataset}" not found: expected the folder {path} '
                                "(DATASET.ROOT + the data set's folder). See DATASETS.md for the layout")


def require_file(path: str) -> str:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it."""
    if not os.path.isfile(path):
        raise MissingInputError(f"expected file not found: {path} (see DATASETS.md)")
    return path
