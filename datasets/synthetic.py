"""Small generated data sets in the CoOp layout, so tests and demos run without downloads.

``Synthetic`` (10 coloured shapes/stripes), ``SyntheticB`` (6 textures) and ``SyntheticC``
(4 faded textures, a third task for multi-task tests) write themselves on first use into
``<ROOT>/synthetic/``, ``<ROOT>/synthetic_b/`` and ``<ROOT>/synthetic_c/``: ``images/<class>/<i>.png``
(64x64) plus ``split_zhou_<Name>.json`` with 16 train, 4 val and 8 test images per class.
Each image is drawn from its own NumPy generator seeded by (data set, class, index), so the
pixels are the same on every machine and run. After that they are ordinary CoOp readers.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .base import CoOpDataset
from .build import DATASET_REGISTRY
from .io import write_json

Painter = Callable[[np.random.Generator, int], np.ndarray]  # (rng, size) -> uint8 HxWx3
SPLIT_COUNTS = (("train", 16), ("val", 4), ("test", 8))
IMAGE_SIZE = 64


def _noisy(rng: np.random.Generator, img: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8)


def _jitter(rng: np.random.Generator, colour: Tuple[int, int, int], amount: int = 25) -> Tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    level = int(rng.integers(25, 70))
    return Image.new("RGB", (size, size), (level, level, level))


def _shape(colour: Tuple[int, int, int], draw_fn: Callable[[ImageDraw.ImageDraw, int, int, int, tuple], None]
           ) -> Painter:
    """A painter for one filled shape of ``colour`` at a jittered centre and size on a dark background."""
    def paint(rng: np.random.Generator, size: int) -> np.ndarray:
        img = _background(rng, size)
        cx, cy = (size // 2 + int(rng.integers(-8, 9)) for _ in range(2))
        r = int(rng.integers(size * 7 // 32, size * 11 // 32))
        draw_fn(ImageDraw.Draw(img), cx, cy, r, _jitter(rng, colour))
        return _noisy(rng, np.asarray(img))
    return paint


def _stripes(colour: Tuple[int, int, int], vertical: bool) -> Painter:
    """Full-frame stripes of ``colour`` on a dark background, random period and phase."""
    def paint(rng: np.random.Generator, size: int) -> np.ndarray:
        period, phase = int(rng.integers(8, 14)), int(rng.integers(0, 14))
        coord = np.arange(size)[None, :] if vertical else np.arange(size)[:, None]
        mask = np.broadcast_to(((coord + phase) % period) < period // 2, (size, size))
        img = np.asarray(_background(rng, size)).copy()
        img[mask] = _jitter(rng, colour)
        return _noisy(rng, img)
    return paint


def _star(draw: ImageDraw.ImageDraw, cx: int, cy: int, r: int, fill: tuple) -> None:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    draw.polygon([(cx + rad * np.cos(a), cy - rad * np.sin(a)) for a, rad in zip(angles, radii)], fill=fill)


def _cross(draw: ImageDraw.ImageDraw, cx: int, cy: int, r: int, fill: tuple) -> None:
    w = max(r // 3, 3)
    draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
    draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)


SHAPE_CLASSES: List[Tuple[str, Painter]] = [
    ("red square", _shape((220, 30, 30), lambda d, x, y, r, f: d.rectangle([x - r, y - r, x + r, y + r], fill=f))),
    ("blue circle", _shape((30, 70, 230), lambda d, x, y, r, f: d.ellipse([x - r, y - r, x + r, y + r], fill=f))),
    ("green triangle", _shape((30, 190, 50),
                              lambda d, x, y, r, f: d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=f))),
    ("yellow diamond", _shape((235, 220, 40),
                              lambda d, x, y, r, f: d.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=f))),
    ("purple cross", _shape((150, 40, 200), _cross)),
    ("orange ring", _shape((245, 140, 20),
                           lambda d, x, y, r, f: d.ellipse([x - r, y - r, x + r, y + r], outline=f, width=5))),
    ("cyan star", _shape((40, 215, 225), _star)),
    ("white hexagon", _shape((240, 240, 240), lambda d, x, y, r, f: d.regular_polygon((x, y, r), 6, fill=f))),
    ("pink horizontal stripes", _stripes((250, 130, 190), vertical=False)),
    ("brown vertical stripes", _stripes((150, 90, 40), vertical=True)),
]


def _texture(mask_fn: Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]) -> Painter:
    """A painter for a two-colour texture: a light random colour where ``mask_fn`` holds, a dark one elsewhere."""
    def paint(rng: np.random.Generator, size: int) -> np.ndarray:
        yy, xx = np.mgrid[0:size, 0:size]
        mask = mask_fn(rng, xx, yy)
        light = rng.integers(150, 256, 3)
        dark = rng.integers(0, 90, 3)
        img = np.where(mask[..., None], light, dark).astype(np.uint8)
        return _noisy(rng, img)
    return paint


def _cell(rng: np.random.Generator) -> Tuple[int, int, int]:
    """A random cell size and two phases."""
    s = int(rng.integers(8, 13))
    return s, int(rng.integers(0, s)), int(rng.integers(0, s))


def _checkerboard(rng, xx, yy):
    s, px, py = _cell(rng)
    return (((xx + px) // s + (yy + py) // s) % 2) == 0


def _polka_dots(rng, xx, yy):
    s, px, py = _cell(rng)
    s += 4
    dx, dy = (xx + px) % s - s / 2, (yy + py) % s - s / 2
    return dx * dx + dy * dy < (s / 3.2) ** 2


def _diagonal_stripes(rng, xx, yy):
    s, px, _ = _cell(rng)
    return ((xx + yy + px) % s) < s // 2


def _zigzag(rng, xx, yy):
    s, px, py = _cell(rng)
    wave = np.abs((xx + px) % (2 * s) - s)  # triangle wave along x
    return ((yy + py + wave) % s) < s // 2


def _concentric_rings(rng, xx, yy):
    s, _, _ = _cell(rng)
    cx, cy = rng.integers(16, 48, 2)
    return (np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) // (s // 2)) % 2 == 0


def _grid(rng, xx, yy):
    s, px, py = _cell(rng)
    return ((xx + px) % s < 2) | ((yy + py) % s < 2)


TEXTURE_CLASSES: List[Tuple[str, Painter]] = [
    ("checkerboard", _texture(_checkerboard)),
    ("polka dots", _texture(_polka_dots)),
    ("diagonal stripes", _texture(_diagonal_stripes)),
    ("zigzag", _texture(_zigzag)),
    ("concentric rings", _texture(_concentric_rings)),
    ("grid", _texture(_grid)),
]


def write_synthetic(dataset_dir: str, name: str, classes: Sequence[Tuple[str, Painter]], seed: int) -> None:
    """Generate a data set into a temporary sibling folder, then rename it to ``dataset_dir``.

    The rename makes the data set appear complete or not at all; if another process got
    there first, its copy (identical by construction) is kept and ours discarded.
    """
    parent = os.path.dirname(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dataset_dir)}.", suffix=".tmp", dir=parent)
    try:
        split = {part: [] for part, _ in SPLIT_COUNTS}
        for label, (classname, paint) in enumerate(classes):
            folder = classname.replace(" ", "_")
            os.makedirs(os.path.join(tmp, "images", folder))
            index = 0
            for part, count in SPLIT_COUNTS:
                for _ in range(count):
                    rng = np.random.default_rng([seed, label, index])
                    Image.fromarray(paint(rng, IMAGE_SIZE)).save(os.path.join(tmp, "images", folder, f"{index}.png"))
                    split[part].append([f"{folder}/{index}.png", label, classname])
                    index += 1
        write_json(split, os.path.join(tmp, f"split_zhou_{name}.json"))
        try:
            os.rename(tmp, dataset_dir)
        except OSError:
            if not os.path.isdir(dataset_dir):
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"Generated the {name} data set in {dataset_dir}")


class _GeneratedDataset(CoOpDataset):
    """A CoOp reader whose folder is generated when absent (or empty)."""

    image_subdir = "images"
    classes: Sequence[Tuple[str, Painter]] = ()
    seed = 0

    def ensure_present(self) -> None:
        if not os.path.isdir(self.dataset_dir) or not os.listdir(self.dataset_dir):
            write_synthetic(self.dataset_dir, type(self).__name__, self.classes, self.seed)


@DATASET_REGISTRY.register()
class Synthetic(_GeneratedDataset):
    dataset_dir = "synthetic"
    template = "a photo of a {}."
    classes = SHAPE_CLASSES
    seed = 2022


@DATASET_REGISTRY.register()
class SyntheticB(_GeneratedDataset):
    dataset_dir = "synthetic_b"
    template = "{} texture."
    classes = TEXTURE_CLASSES
    seed = 2023


@DATASET_REGISTRY.register()
class SyntheticC(_GeneratedDataset):
    dataset_dir = "synthetic_c"
    template = "a photo of a {}."
    classes = [("faded " + name, painter) for name, painter in TEXTURE_CLASSES[:4]]
    seed = 2024
