"""Few-shot sampling (Dassl's algorithm on Python's random), its JSON cache, and base/new halving."""
from __future__ import annotations

import json
import os
import random

import pytest

from datasets import build_dataset
from datasets.base import Datum, generate_fewshot_dataset, subsample_classes
from test_datasets_support import make_cfg, make_dtd_with_split


def items(labels, prefix="/d/img"):
    return [Datum(impath=f"{prefix}{i}.jpg", label=y, classname=f"c{y}") for i, y in enumerate(labels)]


def test_sample_per_label_in_first_appearance_order():
    data = items([1, 0, 1, 0, 1, 0])  # label 1 appears first, so it is sampled first
    random.seed(1)
    got = generate_fewshot_dataset(data, num_shots=2)
    random.seed(1)
    expected = random.sample([data[0], data[2], data[4]], 2) + random.sample([data[1], data[3], data[5]], 2)
    assert got == expected
    # The same picks written out, so a change of the stream order cannot hide behind the helper above.
    assert [d.impath for d in got] == ["/d/img0.jpg", "/d/img4.jpg", "/d/img3.jpg", "/d/img1.jpg"]


def test_small_group_whole_or_repeated():
    data = items([0, 0, 0, 1])
    random.seed(3)
    got = generate_fewshot_dataset(data, num_shots=3)
    after = random.random()
    random.seed(3)
    expected = random.sample(data[:3], 3) + [data[3]]  # no draw for the short group
    assert got == expected and random.random() == after

    random.seed(3)
    got = generate_fewshot_dataset(data, num_shots=3, repeat=True)
    random.seed(3)
    expected = random.sample(data[:3], 3) + random.choices([data[3]], k=3)
    assert got == expected and len(got) == 6


def test_several_sources_share_the_stream_and_k_below_one_is_identity(capsys):
    a, b = items([0, 0, 0]), items([0, 0, 0, 1, 1], prefix="/e/")
    random.seed(7)
    got_a, got_b = generate_fewshot_dataset(a, b, num_shots=2)
    random.seed(7)
    assert got_a == random.sample(a, 2)
    assert got_b == random.sample(b[:3], 2) + random.sample(b[3:], 2)
    assert capsys.readouterr().out.count("Creating a 2-shot dataset") == 1
    assert generate_fewshot_dataset(a, num_shots=-1) is a
    assert generate_fewshot_dataset(a, b, num_shots=0) == (a, b)


def test_same_seed_same_selection_different_seed_differs():
    data = items([i % 4 for i in range(40)])
    random.seed(11)
    first = generate_fewshot_dataset(data, num_shots=3)
    random.seed(11)
    assert generate_fewshot_dataset(data, num_shots=3) == first
    random.seed(12)
    assert generate_fewshot_dataset(data, num_shots=3) != first


def test_cache_written_as_split_json_and_reloaded(tmp_path, capsys):
    dataset_dir = make_dtd_with_split(tmp_path, n_train=4, n_val=3)
    cfg = make_cfg(tmp_path, "DescribableTextures", NUM_SHOTS=2)
    cfg.SEED = 5
    random.seed(5)
    ds = build_dataset(cfg)
    cache = os.path.join(dataset_dir, "split_fewshot", "shot_2-seed_5.json")
    out = capsys.readouterr().out
    assert f"Saving preprocessed few-shot data to {cache}" in out
    assert out.count("Creating a 2-shot dataset") == 2

    # Same picks as running the algorithm on the split lists: train with K, then val with min(K, 4).
    with open(os.path.join(dataset_dir, "split_zhou_DescribableTextures.json")) as f:
        split = json.load(f)
    image_dir = os.path.join(dataset_dir, "images")
    to_datum = lambda e: Datum(os.path.join(image_dir, e[0]), e[1], classname=e[2])  # noqa: E731
    random.seed(5)
    exp_train = generate_fewshot_dataset([to_datum(e) for e in split["train"]], num_shots=2)
    exp_val = generate_fewshot_dataset([to_datum(e) for e in split["val"]], num_shots=2)
    assert ds.train_x == exp_train and ds.val == exp_val

    with open(cache) as f:
        text = f.read()
    data = json.loads(text)
    assert set(data) == {"train", "val"}
    assert data["train"] == [[os.path.relpath(d.impath, image_dir), d.label, d.classname] for d in exp_train]
    assert text.startswith('{\n    "train": [\n        [\n            "')

    random.seed(999)  # a reload must not depend on the RNG
    again = build_dataset(cfg)
    assert f"Loading preprocessed few-shot data from {cache}" in capsys.readouterr().out
    assert again.train_x == ds.train_x and again.val == ds.val


def test_val_gets_at_most_four_shots(tmp_path):
    make_dtd_with_split(tmp_path, n_train=6, n_val=5)
    ds = build_dataset(make_cfg(tmp_path, "DescribableTextures", NUM_SHOTS=5))
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (3 * 5, 3 * 4, 3)


def test_existing_cache_is_used_and_never_overwritten(tmp_path):
    dataset_dir = make_dtd_with_split(tmp_path)
    cache = os.path.join(dataset_dir, "split_fewshot", "shot_1-seed_-1.json")
    os.makedirs(os.path.dirname(cache))
    chosen = {"train": [["dotted/2.jpg", 0, "dotted"]], "val": [["dotted/3.jpg", 0, "dotted"]]}
    with open(cache, "w") as f:
        json.dump(chosen, f)
    before = open(cache).read()
    ds = build_dataset(make_cfg(tmp_path, "DescribableTextures", NUM_SHOTS=1))  # SEED -1 by default
    assert [d.impath for d in ds.train_x] == [os.path.join(dataset_dir, "images", "dotted", "2.jpg")]
    assert ds.classnames == ["dotted"]
    assert open(cache).read() == before


def test_subsample_base_new_relabels_with_ceil_for_base(capsys):
    train = items([4, 0, 2, 1, 3, 4, 0])
    test = items([0, 1, 2, 3, 4], prefix="/t/")
    base_train, base_test = subsample_classes(train, test, subsample="base")
    assert "SUBSAMPLE BASE CLASSES!" in capsys.readouterr().out
    assert sorted({d.label for d in base_train}) == [0, 1, 2]  # ceil(5 / 2) = 3 base classes
    assert [(d.label, d.classname) for d in base_test] == [(0, "c0"), (1, "c1"), (2, "c2")]
    new_train, new_test = subsample_classes(train, test, subsample="new")
    assert "SUBSAMPLE NEW CLASSES!" in capsys.readouterr().out
    assert [(d.label, d.classname) for d in new_train] == [(1, "c4"), (0, "c3"), (1, "c4")]
    assert [(d.label, d.classname) for d in new_test] == [(0, "c3"), (1, "c4")]
    assert subsample_classes(train, test, subsample="all") == (train, test)
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        subsample_classes(train, subsample="half")


def test_base_new_on_a_reader_after_fewshot(tmp_path):
    make_dtd_with_split(tmp_path, classes=("a", "b", "c"))
    base = build_dataset(make_cfg(tmp_path, "DescribableTextures", SUBSAMPLE_CLASSES="base"))
    new = build_dataset(make_cfg(tmp_path, "DescribableTextures", SUBSAMPLE_CLASSES="new"))
    assert base.classnames == ["a", "b"] and base.num_classes == 2
    assert new.classnames == ["c"] and {d.label for d in new.test} == {0}
