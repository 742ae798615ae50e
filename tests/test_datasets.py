"""Split files, the CoOp readers on tiny trees in their real layouts, and the errors users see."""
from __future__ import annotations

import builtins
import json
import os
import random

import numpy as np
import pytest

import datasets
from datasets import DATASET_REGISTRY, build_dataset
from datasets.base import Datum, load_mat, read_split, save_split
from test_datasets_support import make_cfg, make_class_tree, write_png, write_split

COOP_NAMES = ["OxfordPets", "OxfordFlowers", "FGVCAircraft", "DescribableTextures", "EuroSAT", "StanfordCars",
              "Food101", "SUN397", "Caltech101", "UCF101", "ImageNet", "ImageNetSketch", "ImageNetV2",
              "ImageNetA", "ImageNetR"]
TEMPLATES = {"OxfordPets": "a photo of a {}, a type of pet.", "DescribableTextures": "{} texture.",
             "EuroSAT": "a centered satellite photo of {}.", "UCF101": "a photo of a person doing {}.",
             "Food101": "a photo of {}, a type of food.", "ImageNetA": "a photo of a {}."}
CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs", "datasets")


def test_every_coop_reader_is_registered_with_its_yaml_and_template():
    assert set(COOP_NAMES + ["Synthetic", "SyntheticB"]) <= set(DATASET_REGISTRY.names())
    for name, template in TEMPLATES.items():
        assert DATASET_REGISTRY.get(name).template == template
    yaml_names = {}
    for fname in os.listdir(CONFIG_DIR):
        with open(os.path.join(CONFIG_DIR, fname)) as f:
            yaml_names[fname] = f.read().split('NAME: "')[1].split('"')[0]
    assert yaml_names["dtd.yaml"] == "DescribableTextures" and yaml_names["imagenetv2.yaml"] == "ImageNetV2"
    assert set(COOP_NAMES + ["Synthetic", "SyntheticB"]) <= set(yaml_names.values())
    from datasets.build import TASK_SETS
    assert all(name in DATASET_REGISTRY or name in TASK_SETS for name in yaml_names.values())  # e.g. SoftCPT's


def test_split_round_trip_and_format(tmp_path, capsys):
    prefix = str(tmp_path / "images")
    train = [Datum(f"{prefix}/cat/1.jpg", 0, classname="cat"), Datum(f"{prefix}/dog/2.jpg", 1, classname="dog")]
    val, test = [Datum(f"{prefix}/cat/3.jpg", 0, classname="cat")], [Datum(f"{prefix}/dog/4.jpg", 1, classname="dog")]
    path = str(tmp_path / "split_zhou_Toy.json")
    save_split(train, val, test, path, prefix)
    text = open(path).read()
    assert json.loads(text) == {"train": [["cat/1.jpg", 0, "cat"], ["dog/2.jpg", 1, "dog"]],
                                "val": [["cat/3.jpg", 0, "cat"]], "test": [["dog/4.jpg", 1, "dog"]]}
    assert text.startswith('{\n    "train": [\n        [\n            "cat/1.jpg",\n            0,')
    assert read_split(path, prefix) == (train, val, test)
    assert f"Reading split from {path}" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="split_zhou_Toy.json"):
        save_split(train, val, test, path, prefix)


def test_oxford_pets_from_split_json(tmp_path):
    image_dir = tmp_path / "oxford_pets" / "images"
    for name in ("Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2"):
        write_png(str(image_dir / f"{name}.jpg"))
    write_split(str(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"),
                {"train": [["Abyssinian_1.jpg", 0, "abyssinian"], ["beagle_1.jpg", 1, "beagle"]],
                 "val": [["Abyssinian_2.jpg", 0, "abyssinian"]], "test": [["beagle_2.jpg", 1, "beagle"]]})
    ds = build_dataset(make_cfg(tmp_path, "OxfordPets"))
    assert ds.classnames == ["abyssinian", "beagle"] and ds.num_classes == 2
    assert ds.lab2cname == {0: "abyssinian", 1: "beagle"}
    assert ds.test == [Datum(str(image_dir / "beagle_2.jpg"), 1, classname="beagle")]
    assert ds.dataset_dir == str(tmp_path / "oxford_pets")


def test_oxford_pets_fallback_from_annotations(tmp_path):
    base = tmp_path / "oxford_pets"
    lines = [f"great_pyrenees_{i} 1 2 1" for i in range(5)] + [f"Bombay_{i} 2 1 3" for i in range(5)]
    os.makedirs(base / "annotations")
    (base / "annotations" / "trainval.txt").write_text("\n".join(lines) + "\n")
    (base / "annotations" / "test.txt").write_text("Bombay_9 2 1 3\n")
    random.seed(0)
    ds = build_dataset(make_cfg(tmp_path, "OxfordPets"))
    assert ds.classnames == ["great_pyrenees", "bombay"]
    assert len(ds.train_x) == 8 and len(ds.val) == 2  # 20% of each class of trainval
    assert ds.test == [Datum(str(base / "images" / "Bombay_9.jpg"), 1, classname="bombay")]
    saved = json.load(open(base / "split_zhou_OxfordPets.json"))
    assert saved["test"] == [["Bombay_9.jpg", 1, "bombay"]]


def test_dtd_fallback_splitter_and_saved_split(tmp_path, capsys):
    image_dir = tmp_path / "dtd" / "images"
    make_class_tree(str(image_dir), ["zigzagged", "banded", "dotted"], n=5)
    random.seed(4)
    ds = build_dataset(make_cfg(tmp_path, "DescribableTextures"))
    assert "Splitting into 50% train, 20% val, and 30% test" in capsys.readouterr().out
    assert ds.classnames == ["banded", "dotted", "zigzagged"]  # sorted folders
    # Per class: listing order, shuffled, then round(2.5)=2 train, round(1.0)=1 val, 2 test.
    random.seed(4)
    expected_train = []
    for label, cname in enumerate(ds.classnames):
        files = [str(image_dir / cname / f) for f in os.listdir(image_dir / cname)]
        random.shuffle(files)
        expected_train += [Datum(p, label, classname=cname) for p in files[:2]]
    assert ds.train_x == expected_train
    assert (len(ds.val), len(ds.test)) == (3, 6)
    saved = json.load(open(tmp_path / "dtd" / "split_zhou_DescribableTextures.json"))
    assert saved["train"][0] == [os.path.relpath(expected_train[0].impath, image_dir), 0, "banded"]


def test_eurosat_and_caltech_fallbacks_rename_and_ignore(tmp_path):
    make_class_tree(str(tmp_path / "eurosat" / "2750"), ["SeaLake", "AnnualCrop", "Forest"], n=5)
    ds = build_dataset(make_cfg(tmp_path, "EuroSAT"))
    assert ds.classnames == ["Annual Crop Land", "Forest", "Sea or Lake"]
    make_class_tree(str(tmp_path / "caltech-101" / "101_ObjectCategories"),
                    ["BACKGROUND_Google", "Faces", "Faces_easy", "airplanes", "ant"], n=5)
    ds = build_dataset(make_cfg(tmp_path, "Caltech101"))
    assert ds.classnames == ["face", "airplane", "ant"]


def test_fgvc_aircraft_reads_official_lists(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    os.makedirs(base)
    (base / "variants.txt").write_text("707-320\nA300B4\nDHC-1\n")
    (base / "images_variant_train.txt").write_text("0001 A300B4\n0002 707-320\n0003 DHC-1\n")
    (base / "images_variant_val.txt").write_text("0004 DHC-1\n")
    (base / "images_variant_test.txt").write_text("0005 A300B4\n")
    ds = build_dataset(make_cfg(tmp_path, "FGVCAircraft"))
    assert [(d.label, d.classname) for d in ds.train_x] == [(1, "A300B4"), (0, "707-320"), (2, "DHC-1")]
    assert ds.train_x[0].impath == str(base / "images" / "0001.jpg")
    assert ds.classnames == ["707-320", "A300B4", "DHC-1"]
    assert not os.path.exists(base / "split_zhou_FGVCAircraft.json")


def test_sun397_and_ucf101_fallback_class_names(tmp_path):
    sun = tmp_path / "sun397"
    os.makedirs(sun)
    (sun / "ClassName.txt").write_text("/a/abbey\n/b/bakery/shop\n")
    train = [f"/a/abbey/sun_{i}.jpg" for i in range(5)] + [f"/b/bakery/shop/sun_{i}.jpg" for i in range(5)]
    (sun / "Training_01.txt").write_text("\n".join(train) + "\n")
    (sun / "Testing_01.txt").write_text("/b/bakery/shop/sun_9.jpg\n")
    ds = build_dataset(make_cfg(tmp_path, "SUN397"))
    assert ds.classnames == ["abbey", "shop bakery"]
    assert ds.test[0].impath == str(sun / "SUN397" / "b" / "bakery" / "shop" / "sun_9.jpg")

    lists = tmp_path / "ucf101" / "ucfTrainTestlist"
    os.makedirs(lists)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    train = [f"ApplyEyeMakeup/v_ApplyEyeMakeup_g0{i}_c01.avi 1" for i in range(5)]
    train += [f"YoYo/v_YoYo_g0{i}_c01.avi 2" for i in range(5)]
    (lists / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (lists / "testlist01.txt").write_text("YoYo/v_YoYo_g09_c01.avi\n")
    ds = build_dataset(make_cfg(tmp_path, "UCF101"))
    assert ds.classnames == ["Apply_Eye_Makeup", "Yo_Yo"]
    assert ds.test[0].impath == str(tmp_path / "ucf101" / "UCF-101-midframes" / "Yo_Yo" / "v_YoYo_g09_c01.jpg")


def test_flowers_and_cars_fallbacks_from_mat_files(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    flowers = tmp_path / "oxford_flowers"
    os.makedirs(flowers)
    savemat(str(flowers / "imagelabels.mat"), {"labels": np.array([[2, 1, 1, 1, 1, 1, 2, 2, 2, 2]])})
    (flowers / "cat_to_name.json").write_text('{"1": "pink primrose", "2": "hard-leaved pocket orchid"}')
    ds = build_dataset(make_cfg(tmp_path, "OxfordFlowers"))
    assert ds.classnames == ["pink primrose", "hard-leaved pocket orchid"]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (4, 2, 4)
    assert str(flowers / "jpg" / "image_00001.jpg") in {d.impath for d in ds.train_x + ds.val + ds.test}

    cars = tmp_path / "stanford_cars"
    os.makedirs(cars / "devkit")
    annos = np.zeros((1, 10), dtype=[("fname", "O"), ("class", "O")])
    for i in range(10):
        annos[0, i] = (f"{i:05d}.jpg", np.array([[1 + i % 2]], dtype=np.uint8))
    savemat(str(cars / "devkit" / "cars_train_annos.mat"), {"annotations": annos})
    savemat(str(cars / "cars_test_annos_withlabels.mat"), {"annotations": annos[:, :2]})
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = "AM General Hummer SUV 2000", "Acura RL Sedan 2012"
    savemat(str(cars / "devkit" / "cars_meta.mat"), {"class_names": names})
    ds = build_dataset(make_cfg(tmp_path, "StanfordCars"))
    assert ds.classnames == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan"]
    assert ds.test[0].impath == str(cars / "cars_test" / "00000.jpg")
    saved = json.load(open(cars / "split_zhou_StanfordCars.json"))
    assert saved["test"][0][0] == "cars_test/00000.jpg"  # relative to the data set folder itself


def test_mat_files_without_scipy_fail_clearly(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match="needs SciPy"):
        load_mat(str(tmp_path / "imagelabels.mat"))


def _imagenet_tree(root, wnids=("n02", "n01", "n03"), n=2):
    base = root / "imagenet"
    for split in ("train", "val"):
        make_class_tree(str(base / "images" / split), list(wnids), n=n, ext=".JPEG")
    (base / "classnames.txt").write_text("n01 tench\nn02 goldfish\nn03 great white shark\n")
    return base


def test_imagenet_listing_cache_val_is_test_and_fewshot_train_only(tmp_path):
    base = _imagenet_tree(tmp_path)
    cfg = make_cfg(tmp_path, "ImageNet", NUM_SHOTS=1)
    cfg.SEED = 2
    ds = build_dataset(cfg)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert len(ds.train_x) == 3 and len(ds.test) == 6 and ds.val is ds.test
    listing = json.load(open(base / "preprocessed.json"))
    assert {e[0].split("/")[0] for e in listing["train"]} == {"train"}
    assert {e[0].split("/")[0] for e in listing["test"]} == {"val"}
    assert set(json.load(open(base / "split_fewshot" / "shot_1-seed_2.json"))) == {"train"}
    # The listing is reused: images added later are not picked up.
    write_png(str(base / "images" / "val" / "n01" / "new.JPEG"))
    assert len(build_dataset(make_cfg(tmp_path, "ImageNet")).test) == 6


def test_imagenet_variants_are_test_only_with_their_labels(tmp_path):
    adv = tmp_path / "imagenet-adversarial"
    make_class_tree(str(adv / "imagenet-a"), ["n03", "n01"], n=2)
    (adv / "imagenet-a" / "README.txt").write_text("not a class")
    (adv / "classnames.txt").write_text("n01 tench\nn02 goldfish\nn03 great white shark\n")
    ds = build_dataset(make_cfg(tmp_path, "ImageNetA", NUM_SHOTS=1, SUBSAMPLE_CLASSES="base"))
    assert ds.classnames == ["tench", "great white shark"]  # labels 0..k-1 in sorted wnid order
    assert ds.train_x is ds.test and len(ds.test) == 4 and ds.val is None

    v2 = tmp_path / "imagenetv2"
    make_class_tree(str(v2 / "imagenetv2-matched-frequency-format-val"), ["0", "1"], n=2)
    (v2 / "classnames.txt").write_text("n01 tench\nn02 goldfish\n")
    ds = build_dataset(make_cfg(tmp_path, "ImageNetV2"))
    assert ds.classnames == ["tench", "goldfish"]


# ----------------------------------------------------------------------------- errors

def test_missing_dataset_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "OxfordPets"))
    assert str(tmp_path / "oxford_pets") in str(err.value) and "DATASETS.md" in str(err.value)
    with pytest.raises(FileNotFoundError, match="imagenet-sketch"):
        build_dataset(make_cfg(tmp_path, "ImageNetSketch"))


def test_missing_split_file_names_path_and_dataset(tmp_path):
    os.makedirs(tmp_path / "food-101")
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(make_cfg(tmp_path, "Food101"))
    message = str(err.value)
    assert str(tmp_path / "food-101" / "split_zhou_Food101.json") in message and '"Food101"' in message
    with pytest.raises(FileNotFoundError, match='"OxfordPets".*split_zhou_OxfordPets.json'):
        read_split(str(tmp_path / "split_zhou_OxfordPets.json"), str(tmp_path))


def test_unknown_dataset_name_suggests_the_close_one(tmp_path):
    with pytest.raises(KeyError, match="OxfordPets"):
        build_dataset(make_cfg(tmp_path, "OxfordPet"))


def test_datum_is_read_only_and_does_not_touch_the_disk():
    d = Datum("/nowhere/x.jpg", 3, classname="x")
    assert (d.impath, d.label, d.domain, d.classname) == ("/nowhere/x.jpg", 3, 0, "x")
    with pytest.raises(AttributeError):
        d.label = 4
    with pytest.raises(TypeError):
        Datum("/nowhere/x.jpg", "3")


def test_package_exports():
    for name in ("DATASET_REGISTRY", "build_dataset", "Datum", "DatasetBase", "DataManager"):
        assert hasattr(datasets, name)
