"""Reading ELEVATER's on-disk format: IRIS/COCO index files, label maps, images inside zips.

An image path ``train.zip@0/img 1.png`` names a member of ``train.zip`` beside the index
file. Zips are read in place, one open handle per zip per process: a handle inherited
through ``fork`` shares its file offset with the parent, so DataLoader workers open their own.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Dict, List, NamedTuple, Tuple

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["IndexedImage", "read_iris_index", "read_coco_index", "read_labelmap", "read_elevater_image",
           "ZIP_MEMBER_MARK"]

ZIP_MEMBER_MARK = ".zip@"


class IndexedImage(NamedTuple):
    """One line of an index: the image path relative to the task folder and its class ids.

    ``labels`` keeps the file's order (and repeats); it is empty for a negative image.
    """

    path: str
    labels: Tuple[int, ...]


def read_labelmap(path: str) -> List[str]:
    """Class names of a labels.txt / labelmap.txt, one per non-blank line."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_iris_index(path: str) -> List[IndexedImage]:
    """Lines ``<image path> <label>[,<label>...]`` in file order.

    The label is split off at the last space because image paths may contain spaces.
    """
    images = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(" ", 1)
            try:
                labels = tuple(int(x) for x in parts[1].split(",")) if len(parts) == 2 else ()
            except ValueError:
                raise ValueError(f"{path}:{number}: expected '<image path> <label>[,<label>...]', "
                                 f"got {line!r}") from None
            images.append(IndexedImage(parts[0].replace("\\", "/"), labels))
    return images


def read_coco_index(path: str) -> Tuple[List[IndexedImage], List[str]]:
    """Images (sorted by id) and class names (categories sorted by id) of a COCO index.

    A category's label is its position among the sorted category ids, which equals
    vision-datasets' ``id - min(id)`` for the consecutive ids the ELEVATER files use.
    An image is ``<zip_file>@<file_name>`` when it names a zip, else its ``file_name``.
    """
    with open(path, encoding="utf-8") as f:
        coco = json.load(f)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    labels: Dict[object, List[int]] = {img["id"]: [] for img in coco["images"]}
    for annotation in coco["annotations"]:
        labels[annotation["image_id"]].append(label_of[annotation["category_id"]])
    images = []
    for img in sorted(coco["images"], key=lambda i: i["id"]):
        name = img["file_name"].replace("\\", "/")
        if img.get("zip_file"):
            name = f"{img['zip_file']}@{name}"
        images.append(IndexedImage(name, tuple(labels[img["id"]])))
    return images, [c["name"] for c in categories]


_open_zips: Dict[str, zipfile.ZipFile] = {}
_open_zips_pid = -1


def _zip_handle(zip_path: str) -> zipfile.ZipFile:
    global _open_zips_pid
    if _open_zips_pid != os.getpid():  # a forked worker: the parent's handles are not ours to use
        _open_zips.clear()
        _open_zips_pid = os.getpid()
    handle = _open_zips.get(zip_path)
    if handle is None:
        try:
            handle = _open_zips[zip_path] = zipfile.ZipFile(zip_path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"Zip file not found: {zip_path} (named by the task's index file; "
                                    "see DATASETS.md for the ELEVATER layout)") from exc
    return handle


def read_elevater_image(path: str) -> Image.Image:
    """Open ``<folder>/<archive>.zip@<member>`` (or a plain file) as RGB, EXIF orientation applied."""
    try:
        if ZIP_MEMBER_MARK in path:
            archive, member = path.split(ZIP_MEMBER_MARK, 1)
            try:
                data = _zip_handle(archive + ".zip").read(member)
            except KeyError:
                raise FileNotFoundError(f"Image {member!r} not found in {archive}.zip") from None
            img = Image.open(io.BytesIO(data))
        else:
            img = Image.open(path)
        with img:
            _load_allowing_truncation(img)
            return ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, zipfile.BadZipFile, SyntaxError) as exc:
        raise OSError(f"Cannot read image {path}: {exc}") from exc


def _load_allowing_truncation(img: Image.Image) -> None:
    """Decode, accepting a truncated file as the toolkit does (PIL's LOAD_TRUNCATED_IMAGES).

    The flag is global in PIL, so it is set only around this one retry.
    """
    try:
        img.load()
    except OSError as exc:
        if "truncated" not in str(exc):
            raise
        previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
        try:
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
