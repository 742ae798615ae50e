"""ELEVATER tasks: the registry entries, reading the toolkit's layout, MVLPT's few-shot/val splits, metrics.

Golden lists marked "vision-datasets 0.2.17" were produced once with that package's
``DatasetManifest`` (the sampler ELEVATER pins and MVLPT imports); those marked "MVLPT carve"
with the set expressions of MVLPT's ``get_dataloader``.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import datasets.elevater.index as elevater_index
from datasets import DATASET_REGISTRY, build_dataset
from datasets.elevater import (ELEVATER_TASKS, METRIC_NAMES, TASKS, MultiLabelDatum, build_elevater_multitask,
                               read_elevater_image)
from datasets.elevater.index import IndexedImage, read_coco_index, read_iris_index
from datasets.elevater.sampling import carve_validation, sample_few_shot, split_train_val
from datasets.elevater.tasks import task_classnames
from datasets.synthetic_elevater import write_elevater_task
from datasets.elevater.loaders import elevater_transform
from datasets.manager import DataManager
from trainers.engine.config import get_cfg_default
from trainers.engine.elevater_metrics import _RECALL_LEVELS, eleven_point_map, mean_per_class_accuracy, roc_auc
from trainers.engine.evaluator import METRIC_REGISTRY, accuracy

CLASS_COUNTS = {
    "caltech-101": 102, "cifar-10": 10, "cifar-100": 100, "country211": 211, "dtd": 47, "eurosat_clip": 10,
    "fer-2013": 7, "fgvc-aircraft-2013b-variants102": 100, "food-101": 101, "gtsrb": 43, "hateful-memes": 2,
    "kitti-distance": 4, "mnist": 10, "oxford-flower-102": 102, "oxford-iiit-pets": 37, "patch-camelyon": 2,
    "rendered-sst2": 2, "resisc45_clip": 45, "stanford-cars": 196, "voc-2007-classification": 20,
}
WRITTEN = ("cifar-10", "voc-2007-classification", "hateful-memes", "eurosat_clip", "gtsrb")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("elevater"))
    for name in WRITTEN:
        write_elevater_task(folder, name)
    return folder


def _cfg(root, shots=-1, seed=-1):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    return cfg


def _red(datum):
    return read_elevater_image(datum.impath).getpixel((0, 0))[0]


# ----------------------------------------------------------------------------- registry

def test_all_twenty_tasks_are_listed_with_mvlpt_names(capsys):
    import train

    assert train.main(["--list-datasets"]) == 0
    listed = capsys.readouterr().out.split("Data sets: ")[1].strip().split(", ")
    assert set(CLASS_COUNTS) <= set(listed)
    assert sorted(ELEVATER_TASKS) == sorted(CLASS_COUNTS)
    assert all(DATASET_REGISTRY.get(name) is ELEVATER_TASKS[name] for name in CLASS_COUNTS)


def test_class_names_templates_and_metrics_are_mvlpts():
    counts = {name: len(task_classnames(name)) for name in ELEVATER_TASKS}
    assert counts == CLASS_COUNTS and sum(counts.values()) == 1151  # MVLPT's 20-task union
    assert task_classnames("fer-2013")[3:5] == ["happy", "neutral"]  # first alias of each list
    assert task_classnames("cifar-100")[:3] == ["chimpanzee", "trout", "skunk"]  # label order, not alphabetical
    assert task_classnames("caltech-101")[26] == "head of a  crocodile"  # kept verbatim
    assert ELEVATER_TASKS["food-101"].template == "a photo of {}, a type of food."
    assert ELEVATER_TASKS["cifar-10"].templates == ELEVATER_TASKS["cifar-100"].templates
    assert len(ELEVATER_TASKS["cifar-10"].templates) == 18
    metrics = {name: cls.metric for name, cls in ELEVATER_TASKS.items()}
    assert {n for n, m in metrics.items() if m == "mean_per_class_accuracy"} == {
        "caltech-101", "fgvc-aircraft-2013b-variants102", "oxford-flower-102", "oxford-iiit-pets"}
    assert metrics["voc-2007-classification"] == "11point_mAP"
    assert metrics["hateful-memes"] == "accuracy" and TASKS["hateful-memes"].elevater_metric == "roc_auc"
    assert set(metrics.values()) <= set(METRIC_NAMES) <= set(METRIC_REGISTRY.names())
    assert [n for n, cls in ELEVATER_TASKS.items() if cls.multilabel] == ["voc-2007-classification"]


# ----------------------------------------------------------------------------- reading the layout

def test_fixture_writes_the_toolkit_file_names(root):
    folder = os.path.join(root, "classification", "cifar_10_20211007")
    assert sorted(os.listdir(folder)) == ["labels.txt", "test.txt", "train.txt", "train.zip", "val.zip"]
    first = open(os.path.join(folder, "train.txt")).readline()
    assert first == "train.zip@train/class 0/00000.png 0\n"
    assert sorted(os.listdir(os.path.join(root, "classification", "eurosat_clip_20210930"))) == [
        "2750.zip", "labels.txt", "test.txt", "train.txt"]
    assert "labelmap.txt" in os.listdir(os.path.join(root, "classification", "gtsrb_20210923"))


def test_fixture_is_byte_identical_across_runs(root, tmp_path):
    again = write_elevater_task(str(tmp_path), "cifar-10")
    for name in ("train.zip", "val.zip", "train.txt"):
        with open(os.path.join(again, name), "rb") as a, \
                open(os.path.join(root, "classification", "cifar_10_20211007", name), "rb") as b:
            assert a.read() == b.read()


def test_full_task_reads_every_image_and_carves_20_percent(root):
    ds = build_dataset(_cfg(root), "cifar-10")  # 6 train / 2 test images per class, no few-shot
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (40, 20, 20)
    assert Counter(d.label for d in ds.val) == {c: 2 for c in range(10)}  # ceil(0.2 * 6) per class
    assert ds.num_classes == 10 and ds.classnames[1] == "automobile" and ds.lab2cname[9] == "truck"
    assert ds.train_x[0].impath.endswith("cifar_10_20211007/train.zip@train/class 0/00020.png")
    assert all(_red(d) == d.label for d in ds.train_x + ds.val + ds.test)  # the image of that line
    assert ds.test[0].impath.split("@")[0].endswith("val.zip")  # cifar-10's test images live in val.zip


def test_shared_zip_and_labelmap_txt(root):
    euro = build_dataset(_cfg(root, shots=2, seed=1), "eurosat_clip")
    assert {d.impath.split("@")[0].rsplit("/", 1)[1] for d in euro.train_x + euro.test} == {"2750.zip"}
    assert all(_red(d) == d.label for d in euro.test)
    assert build_dataset(_cfg(root, shots=1), "gtsrb").num_classes == 43


def test_coco_task_reads_images_by_id_and_categories_by_id(root):
    ds = build_dataset(_cfg(root), "hateful-memes")
    assert ds.classnames == ["meme", "hatespeech meme"] and ds.template == "a {}."
    assert [os.path.basename(d.impath) for d in ds.test] == [f"{i:05d}.png" for i in range(4)]
    assert [d.label for d in ds.test] == [0, 1, 0, 1]
    assert all(_red(d) == d.label for d in ds.test)


def test_multilabel_task_keeps_every_label(root):
    ds = build_dataset(_cfg(root), "voc-2007-classification")
    assert all(isinstance(d, MultiLabelDatum) for d in ds.train_x + ds.val + ds.test)
    line = open(os.path.join(root, "classification", "voc2007_20211007", "test_ic.txt")).read().splitlines()[2]
    assert line.endswith(" 2,9") and ds.test[2].labels == (2, 9) and ds.test[2].label == 2
    assert ds.test[2].classname == "bird" and ds.num_classes == 20
    # the greedy carve gives every class at least ceil(20 %) of its train images
    per_class = Counter(c for d in ds.train_x + ds.val for c in d.labels)
    in_val = Counter(c for d in ds.val for c in d.labels)
    assert all(in_val[c] >= math.ceil(0.2 * n) for c, n in per_class.items())


def test_iris_lines_split_at_the_last_space(tmp_path):
    path = tmp_path / "index.txt"
    path.write_text("a.zip@dir with space/x 1.png 3\n\nb.zip@y.png 1,4\nc.zip@z.png\n")
    assert read_iris_index(str(path)) == [IndexedImage("a.zip@dir with space/x 1.png", (3,)),
                                          IndexedImage("b.zip@y.png", (1, 4)), IndexedImage("c.zip@z.png", ())]
    path.write_text("a.zip@x.png cat\n")
    with pytest.raises(ValueError, match="index.txt:1"):
        read_iris_index(str(path))


def test_coco_zip_file_field_and_unlabelled_images(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "b.png", "zip_file": "imgs.zip"}, {"id": 3, "file_name": "a.png"}],
        "annotations": [{"image_id": 7, "category_id": 5}, {"image_id": 7, "category_id": 4}],
        "categories": [{"id": 5, "name": "five"}, {"id": 4, "name": "four"}]}))
    images, names = read_coco_index(str(path))
    assert names == ["four", "five"]
    assert images == [IndexedImage("a.png", ()), IndexedImage("imgs.zip@b.png", (1, 0))]


def test_missing_task_and_wrong_labelmap_are_clear_errors(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="classification/mnist_20211008"):
        build_dataset(_cfg(tmp_path), "mnist")
    folder = write_elevater_task(str(tmp_path), "mnist", train_per_class=1, test_per_class=1)
    with open(os.path.join(folder, "labels.txt"), "a") as f:
        f.write("ten\n")
    with pytest.raises(ValueError, match="labels.txt lists 11 classes, expected 10"):
        build_dataset(_cfg(tmp_path), "mnist")


def test_missing_zip_member_names_it(root):
    ds = build_dataset(_cfg(root), "cifar-10")
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_elevater_image(ds.train_x[0].impath.split("@")[0] + "@nothing.png")


def test_a_zip_is_opened_once_per_process(root, monkeypatch):
    opened = []
    real = zipfile.ZipFile

    def counting(path, *args, **kwargs):
        opened.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(elevater_index.zipfile, "ZipFile", counting)
    monkeypatch.setattr(elevater_index, "_open_zips", {})
    ds = build_dataset(_cfg(root), "cifar-10")
    for d in ds.train_x[:10]:
        read_elevater_image(d.impath)
    assert len(opened) == 1
    pid = os.getpid()
    monkeypatch.setattr(elevater_index.os, "getpid", lambda: pid + 1)  # as in a forked worker
    read_elevater_image(ds.train_x[0].impath)
    assert len(opened) == 2


def test_images_are_decoded_as_the_toolkit_does(tmp_path):
    import io

    from PIL import Image, ImageFile

    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees
    Image.new("L", (8, 4), 200).save(rotated, format="JPEG", exif=exif)
    truncated = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(truncated, "JPEG")
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        archive.writestr("rotated.jpg", rotated.getvalue())
        archive.writestr("cut.jpg", truncated.getvalue()[:-100])
    img = read_elevater_image(f"{tmp_path}/images.zip@rotated.jpg")
    assert (img.size, img.mode) == ((4, 8), "RGB")
    assert read_elevater_image(f"{tmp_path}/images.zip@cut.jpg").size == (32, 32)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # allowed for that image only


class _Images(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return _red(self.items[i]), self.items[i].label


def test_loader_workers_read_the_zips(root):
    ds = build_dataset(_cfg(root), "cifar-10")
    read_elevater_image(ds.train_x[0].impath)  # the parent holds a handle before the fork
    pairs = [(int(r), int(lab)) for reds, labels in DataLoader(_Images(ds.train_x), batch_size=8, num_workers=2)
             for r, lab in zip(reds, labels)]
    assert len(pairs) == 40 and all(r == lab for r, lab in pairs)


# ----------------------------------------------------------------------------- few-shot and val splits

def test_fewshot_selection_is_deterministic_per_seed(root):
    first = build_dataset(_cfg(root, shots=5, seed=1), "cifar-10")
    again = build_dataset(_cfg(root, shots=5, seed=1), "cifar-10")
    other = build_dataset(_cfg(root, shots=5, seed=2), "cifar-10")
    assert first.train_x == again.train_x and first.val == again.val
    assert set(first.train_x + first.val) != set(other.train_x + other.val)
    assert (len(first.train_x), len(first.val)) == (40, 10)  # 5 shots: 4 train + 1 val per class
    assert Counter(d.label for d in first.val) == {c: 1 for c in range(10)}
    unset = build_dataset(_cfg(root, shots=5), "cifar-10")  # no seed: MVLPT's RANDOM_SEED_SAMPLING 1
    assert unset.train_x == first.train_x


def test_one_shot_validates_on_the_training_set(root):
    ds = build_dataset(_cfg(root, shots=1, seed=3), "cifar-10")
    assert len(ds.train_x) == 10 and ds.val == ds.train_x
    assert sorted(d.label for d in ds.train_x) == list(range(10))


def test_sampler_matches_vision_datasets():
    images = [IndexedImage(str(i), (i % 3,)) for i in range(30)]
    picked = sample_few_shot(images, 3, shots=4, seed=2)
    assert [int(im.path) for im in picked] == [3, 22, 17, 15, 0, 25, 4, 7, 14, 20, 24, 23]  # vision-datasets 0.2.17
    assert [int(im.path) for im in sample_few_shot(images, 3, 4, 7)] == [21, 5, 15, 29, 7, 28, 9, 0, 13, 8, 22, 26]
    train, val = split_train_val(picked, 3, seed=2)
    assert [int(im.path) for im in train] == [20, 15, 7, 14, 17, 25, 24, 22, 3]  # vision-datasets 0.2.17
    assert [int(im.path) for im in val] == [23, 0, 4]


def test_multilabel_sampler_and_negatives_match_vision_datasets():
    labels = [[0], [0, 1], [1, 2], [2], [0, 2], [1], [0, 1, 2], [2], [1], [0], [], [0, 2]]
    images = [IndexedImage(str(i), tuple(lab)) for i, lab in enumerate(labels)]
    assert [int(im.path) for im in sample_few_shot(images, 3, 2, 0)] == [1, 9, 8, 10, 2, 3]  # image 10: a negative
    assert [int(im.path) for im in sample_few_shot(images, 3, 3, 5)] == [10, 2, 11, 7, 1, 6]


def test_carve_takes_the_first_fifth_of_each_class_in_order():
    labels = [3, 3, 1, 3, 1, 3, 3, 1, 1, 1, 3, 1]  # 6 of each: ceil(1.2) = 2 to val
    train, val = carve_validation([IndexedImage(str(i), (c,)) for i, c in enumerate(labels)], multilabel=False)
    assert [int(im.path) for im in val] == [0, 1, 2, 4]
    assert [int(im.path) for im in train] == [3, 5, 6, 7, 8, 9, 10, 11]


def test_carve_orders_like_the_originals_sets():
    labels = [22, 26, 12, 22, 8, 7, 6, 21, 13, 8, 15]  # val outnumbers train: set order is not index order
    train, val = carve_validation([IndexedImage(str(i), (c,)) for i, c in enumerate(labels)], multilabel=False)
    assert [int(im.path) for im in train] == [9, 3]  # MVLPT carve
    assert [int(im.path) for im in val] == [0, 1, 2, 4, 5, 6, 7, 8, 10]


def test_greedy_multilabel_carve_picks_in_class_order():
    labels = [(0, 1), (1,), (0,), (2,), (1, 2), (0,), (2,), (1,), (0, 2), (1,)]
    # class counts 0:4 1:5 2:4 -> needs 1, 1, 1; image 0 serves classes 0 and 1, image 3 class 2
    train, val = carve_validation([IndexedImage(str(i), lab) for i, lab in enumerate(labels)], multilabel=True)
    assert [int(im.path) for im in val] == [0, 3]
    assert [int(im.path) for im in train] == [1, 2, 4, 5, 6, 7, 8, 9]


def test_multitask_samples_the_union_in_sorted_task_order(root):
    cfg = _cfg(root, shots=5, seed=1)
    datasets = build_elevater_multitask(cfg, ["hateful-memes", "cifar-10"])
    assert [type(d).__name__ for d in datasets] == ["Elevater[cifar-10]", "Elevater[hateful-memes]"]
    cifar, memes = datasets
    assert Counter(d.label for d in cifar.train_x) == {c: 4 for c in range(10)}  # greedy 80/20: 4 + 1
    assert Counter(d.label for d in cifar.val) == {c: 1 for c in range(10)}
    assert (len(memes.train_x), len(memes.val)) == (8, 2)
    single = build_dataset(cfg, "cifar-10")
    assert set(single.train_x + single.val) != set(cifar.train_x + cifar.val)  # one shuffle over the union
    one_shot = build_elevater_multitask(_cfg(root, shots=1, seed=1), ["cifar-10", "hateful-memes"])
    assert [len(d.train_x) for d in one_shot] == [10, 2] and all(d.val == [] for d in one_shot)
    with pytest.raises(KeyError, match="Synthetic"):
        build_elevater_multitask(cfg, ["cifar-10", "Synthetic"])


# ----------------------------------------------------------------------------- loaders

def _manager(root, names, shots, batch_size=4, **dataset):
    cfg = _cfg(root, shots=shots, seed=1)
    cfg.DATASET.NAME = names
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = batch_size
    for key, value in dataset.items():
        cfg.DATASET[key] = value
    return DataManager(cfg)


def test_the_toolkit_transform_squashes_without_augmentation_or_crops_on_request():
    cfg = get_cfg_default()
    wide = Image.fromarray(np.arange(10 * 30 * 3, dtype=np.uint8).reshape(10, 30, 3) % 251)
    squash = elevater_transform(cfg)(wide)
    expected = T.Compose([T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)])(wide)
    assert torch.equal(squash, expected) and torch.equal(elevater_transform(cfg)(wide), squash)
    cfg.DATASET.CENTER_CROP = True
    cropped = elevater_transform(cfg)(wide)
    assert cropped.shape == squash.shape and not torch.allclose(cropped, squash)


def test_single_task_loaders_are_the_toolkits(root):
    dm = _manager(root, "cifar-10", shots=5, batch_size=3)
    assert dm.elevater and type(dm.train_loader_x.dataset.transform) is T.Compose
    assert all("Random" not in type(t).__name__ for t in dm.train_loader_x.dataset.transform.transforms)
    train = dm.train_loader_x
    assert (train.batch_size, dm.val_loader.batch_size, dm.test_loader.batch_size) == (3, 3, 64)
    assert not train.drop_last and len(dm.dataset.train_x) % 3 != 0
    order = torch.randperm(len(dm.dataset.train_x), generator=torch.Generator().manual_seed(0)).tolist()
    assert list(train.sampler) == order  # the toolkit's generator seeded with 0, whatever the seed
    one_shot = _manager(root, "cifar-10", shots=1, batch_size=32)
    assert one_shot.train_loader_x.batch_size == 10 and list(one_shot.train_loader_x.sampler) == list(range(10))
    coop_path = _manager(root, "cifar-10", shots=5, COOP=True)  # --dataset-coop: Dassl's loaders
    assert not coop_path.elevater and coop_path.train_loader_x.drop_last


def test_multi_task_loaders_use_the_union_split_in_sorted_order(root):
    dm = _manager(root, "hateful-memes,cifar-10", shots=5)
    assert [t.name for t in dm.tasks] == ["cifar-10", "hateful-memes"]
    union = build_elevater_multitask(_cfg(root, shots=5, seed=1), ["cifar-10", "hateful-memes"])
    assert [d.train_x for d in dm.datasets] == [d.train_x for d in union]
    assert [d.val for d in dm.datasets] == [d.val for d in union]
    loaders = (dm.train_loader_x, dm.val_loader, dm.test_loader)
    assert [loader.batch_size for loader in loaders] == [64, 64, 64]
    assert list(dm.train_loader_x.sampler) == list(range(len(dm.train_loader_x.dataset)))  # one fixed order


def test_multi_label_items_carry_multi_hot_targets_over_all_tasks_classes(root):
    dm = _manager(root, "voc-2007-classification,cifar-10", shots=-1)
    test = dm.test_loader.dataset
    rows = [test[i] for i in range(len(test))]
    voc = [r for r in rows if r["task"] == 1]
    assert all(r["targets"].shape == (30,) for r in rows)
    assert all(r["targets"][r["label"]] == 1 and r["targets"].sum() == 1 for r in rows if r["task"] == 0)
    assert any(r["targets"].sum() == 2 for r in voc)
    for r in voc:
        labels = dm.datasets[1].test[r["index"] - len(dm.datasets[0].test)].labels
        assert r["targets"].nonzero().squeeze(1).tolist() == sorted(10 + c for c in labels)


# ----------------------------------------------------------------------------- metrics

def test_accuracy_takes_the_first_best():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    assert accuracy(scores, torch.tensor([1, 1, 1, 0])) == pytest.approx(3 / 4)


def test_mean_per_class_accuracy_ignores_classes_without_targets():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.3, 0.1], [0.4, 0.3, 0.9]])
    targets = torch.tensor([0, 0, 0, 1])
    # class 2 has no target: its column is dropped, so row 3 predicts class 0 (0.4 > 0.3)
    # class 0: rows 0, 2 right, row 1 wrong -> 2/3; class 1: row 3 wrong -> 0
    assert mean_per_class_accuracy(scores, targets) == pytest.approx((2 / 3 + 0) / 2)
    assert mean_per_class_accuracy(scores[:, :2], torch.tensor([1, 1, 0, 0])) == pytest.approx((1 + 1 / 2) / 2)


def test_eleven_point_map_by_hand():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    # points (recall, precision): (.5, 1), (.5, .5), (1, 2/3), (1, .5) and (0, 1):
    # recall >= 1.0 ... 0.6 -> 2/3 (5 levels); recall >= 0.5 ... 0.0 -> 1 (6 levels)
    assert eleven_point_map(scores, torch.tensor([[1], [0], [1], [0]])) == pytest.approx((5 * 2 / 3 + 6) / 11)
    # top-ranked negative: 0.5 at recall >= 0.1, and 1 at recall 0 from the curve's end point
    assert eleven_point_map(torch.tensor([[0.9], [0.1]]), torch.tensor([[0], [1]])) == pytest.approx(6 / 11)
    # a class without positives is skipped; class-id targets are one-hot
    two = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5]])
    assert eleven_point_map(two, torch.tensor([0, 1])) == pytest.approx(1.0)


def test_eleven_point_map_equals_vision_evaluations_own_test_value():
    targets = torch.tensor([[1, 0], [0, 1], [0, 1], [0, 1], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [1, 0]])
    scores = torch.tensor([[1, 0], [0, 1], [0.5, 0.5], [0.1, 0.9], [0.44, 0.56], [0.09, 0.91], [0.91, 0.09],
                           [0.37, 0.63], [0.34, 0.66], [0.89, 0.11]], dtype=torch.float64)
    assert eleven_point_map(scores, targets) == pytest.approx(0.7406926406926406, abs=1e-12)
    assert _RECALL_LEVELS == np.linspace(1, 0, 11).tolist()  # the same floats as the original's thresholds


def test_roc_auc_binary_ties_and_multilabel():
    scores = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert roc_auc(scores, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)  # column 1 scores class 1
    assert roc_auc(torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([0, 1])) == pytest.approx(0.5)
    hot = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    # column 0: positives 0.9, 0.65 vs negatives 0.6, 0.2 -> 1; column 1: 0.4, 0.35 vs 0.1, 0.8 -> 2/4
    assert roc_auc(scores, hot) == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError, match="2 score columns"):
        roc_auc(torch.rand(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(scores, torch.tensor([1, 1, 1, 1]))


def test_metric_lookup_and_shape_errors():
    assert METRIC_REGISTRY.get("11point_mAP").fn is eleven_point_map
    with pytest.raises(ValueError, match=r"targets must be"):
        eleven_point_map(torch.rand(3, 2), torch.tensor([0, 1]))


@pytest.mark.slow
def test_coop_trains_and_evaluates_on_elevater_tasks_read_from_their_zips(run_train, tmp_path):
    from datasets.synthetic_elevater import write_elevater_task

    root = str(tmp_path / "data")
    for name in ("cifar-10", "hateful-memes"):
        write_elevater_task(root, name)
    code, log = run_train("--root", root, "--seed", "1", "--trainer", "CoOp", "--dataset-config-file",
                          "configs/datasets/synthetic.yaml", "--config-file", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml",
                          "DATASET.NAME", "cifar-10,hateful-memes", "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1",
                          "TRAINER.COOP.N_CTX", "4", output_dir=str(tmp_path / "out"))
    assert code == 0 and "=> task: cifar-10" in log and "=> task: hateful-memes" in log
    assert "* overall_metric:" in log
