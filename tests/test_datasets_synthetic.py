"""The generated Synthetic / SyntheticB data sets: written once, atomically, deterministically."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from datasets import build_dataset
from datasets.synthetic import SHAPE_CLASSES, TEXTURE_CLASSES
from test_datasets_support import make_cfg


def _pixels(folder):
    out = {}
    for cls in sorted(os.listdir(os.path.join(folder, "images"))):
        for name in os.listdir(os.path.join(folder, "images", cls)):
            out[f"{cls}/{name}"] = np.asarray(Image.open(os.path.join(folder, "images", cls, name)))
    return out


def test_writes_itself_once_in_the_coop_layout(tmp_path, capsys):
    ds = build_dataset(make_cfg(tmp_path, "Synthetic"))
    folder = tmp_path / "synthetic"
    assert "Generated the Synthetic data set" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["synthetic"]  # no temporary folder left behind
    split = json.load(open(folder / "split_zhou_Synthetic.json"))
    assert [len(split[k]) for k in ("train", "val", "test")] == [160, 40, 80]
    assert split["train"][0] == ["red_square/0.png", 0, "red square"]
    assert ds.classnames == [name for name, _ in SHAPE_CLASSES] and len(set(ds.classnames)) == 10
    img = Image.open(folder / "images" / "blue_circle" / "27.png")
    assert img.size == (64, 64) and img.mode == "RGB"

    stamp = os.stat(folder / "images" / "red_square" / "0.png").st_mtime_ns
    again = build_dataset(make_cfg(tmp_path, "Synthetic"))
    assert "Generated" not in capsys.readouterr().out
    assert os.stat(folder / "images" / "red_square" / "0.png").st_mtime_ns == stamp
    assert again.train_x == ds.train_x


def test_images_are_deterministic_and_classes_differ(tmp_path):
    ds = build_dataset(make_cfg(tmp_path / "a", "SyntheticB"))
    build_dataset(make_cfg(tmp_path / "b", "SyntheticB"))
    first, second = _pixels(tmp_path / "a" / "synthetic_b"), _pixels(tmp_path / "b" / "synthetic_b")
    assert first.keys() == second.keys() and len(first) == 6 * 28
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not np.array_equal(first["grid/0.png"], first["grid/1.png"])  # per-image jitter
    assert ds.classnames == [name for name, _ in TEXTURE_CLASSES]
    assert not set(ds.classnames) & {name for name, _ in SHAPE_CLASSES}


def test_colour_separates_the_shape_classes(tmp_path):
    build_dataset(make_cfg(tmp_path, "Synthetic"))
    pixels = _pixels(tmp_path / "synthetic")
    means = {cls: np.mean([pixels[f"{cls}/{i}.png"].reshape(-1, 3).mean(0) for i in range(16)], axis=0)
             for cls in ("red_square", "blue_circle", "green_triangle")}
    assert np.argmax(means["red_square"]) == 0
    assert np.argmax(means["green_triangle"]) == 1
    assert np.argmax(means["blue_circle"]) == 2


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = Image.Image.save

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(make_cfg(tmp_path, "Synthetic"))
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    assert build_dataset(make_cfg(tmp_path, "Synthetic")).num_classes == 10


def test_fewshot_and_base_new_like_any_coop_reader(tmp_path):
    cfg = make_cfg(tmp_path, "Synthetic", NUM_SHOTS=2, SUBSAMPLE_CLASSES="new")
    cfg.SEED = 1
    ds = build_dataset(cfg)
    assert ds.classnames == [name for name, _ in SHAPE_CLASSES][5:]
    assert len(ds.train_x) == 10 and len(ds.val) == 10 and len(ds.test) == 40
    assert os.path.isfile(tmp_path / "synthetic" / "split_fewshot" / "shot_2-seed_1.json")
