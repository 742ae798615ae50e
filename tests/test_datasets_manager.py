"""DataManager: single- and multi-task loaders, batch contents, partial batches, read errors."""
from __future__ import annotations

import os

import pytest
import torch

from datasets import DataManager
from test_datasets_support import make_cfg, make_dtd_with_split


def _cfg(root, name, shots=2, batch=8):
    cfg = make_cfg(root, name, NUM_SHOTS=shots)
    cfg.SEED = 1
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = batch
    cfg.DATALOADER.TEST.BATCH_SIZE = 32
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    return cfg


def test_single_task(tmp_path, capsys):
    dm = DataManager(_cfg(tmp_path, "Synthetic"))
    out = capsys.readouterr().out
    assert "Loading dataset: Synthetic" in out
    for row in ("Dataset    Synthetic", "# classes  10", "# train_x  20", "# val      20", "# test     80"):
        assert row in out
    assert len(dm.tasks) == 1 and dm.num_classes == 10 and dm.dataset is dm.datasets[0]
    assert dm.lab2cname[0] == "red square" and dm.dataset.classnames[1] == "blue circle"
    assert dm.tasks[0].template == "a photo of a {}." and dm.train_loader_u is None
    assert (len(dm.train_loader_x), len(dm.val_loader), len(dm.test_loader)) == (2, 1, 3)  # 20 // 8 (drop_last)
    batch = next(iter(dm.train_loader_x))
    assert set(batch) == {"img", "label", "domain", "impath", "index", "task"}
    assert batch["img"].shape == (8, 3, 8, 8)
    assert batch["label"].dtype == torch.int64 and batch["task"].dtype == torch.int64
    assert batch["task"].tolist() == [0] * 8 and len(batch["impath"]) == 8
    test = next(iter(dm.test_loader))
    assert test["index"].tolist() == list(range(32))  # sequential


def test_multi_task_batches_mix_tasks_with_local_labels(tmp_path):
    cfg = _cfg(tmp_path, "Synthetic, SyntheticB", batch=64)
    with pytest.warns(UserWarning, match="32 items, fewer than the batch size 64"):
        dm = DataManager(cfg)
    assert [t.name for t in dm.tasks] == ["Synthetic", "SyntheticB"]
    assert [t.num_classes for t in dm.tasks] == [10, 6] and [t.class_offset for t in dm.tasks] == [0, 10]
    assert dm.num_classes == 16 and dm.tasks[1].template == "{} texture."
    assert dm.tasks[1].classnames[0] == "checkerboard"

    assert len(dm.train_loader_x) == 1  # 20 + 12 items, one partial batch kept
    batch = next(iter(dm.train_loader_x))
    assert batch["img"].shape[0] == 32 and set(batch["task"].tolist()) == {0, 1}
    for task, label in zip(batch["task"].tolist(), batch["label"].tolist()):
        assert 0 <= label < dm.tasks[task].num_classes

    tasks, labels = [], []
    for b in dm.test_loader:
        tasks += b["task"].tolist()
        labels += b["label"].tolist()
    assert tasks == [0] * 80 + [1] * 48  # concatenation in task order
    assert max(labels[80:]) == 5


def test_a_data_set_names_its_tasks_metric(tmp_path, monkeypatch):
    """The evaluator scores each task by the metric its data set names (accuracy when it names none)."""
    from datasets.synthetic import SyntheticB
    monkeypatch.setattr(SyntheticB, "metric", "mean_per_class", raising=False)
    dm = DataManager(_cfg(tmp_path, "Synthetic, SyntheticB"))
    assert [t.metric for t in dm.tasks] == ["accuracy", "mean_per_class"]


def test_shuffling_follows_torch_global_seed(tmp_path):
    dm = DataManager(_cfg(tmp_path, "Synthetic", batch=4))

    def epoch_order(seed):
        torch.manual_seed(seed)
        return [i for b in dm.train_loader_x for i in b["index"].tolist()]

    assert epoch_order(0) == epoch_order(0)
    assert epoch_order(0) != epoch_order(1)
    assert sorted(epoch_order(0)) == list(range(20))


def test_duplicate_or_empty_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="more than once"):
        DataManager(_cfg(tmp_path, "Synthetic,Synthetic"))
    with pytest.raises(ValueError, match="DATASET.NAME is empty"):
        DataManager(_cfg(tmp_path, ""))


def test_custom_transforms_are_used(tmp_path, capsys):
    def to_size(img):
        return torch.zeros(3, 2, 2)

    dm = DataManager(_cfg(tmp_path, "Synthetic"), custom_tfm_train=to_size, custom_tfm_test=to_size)
    out = capsys.readouterr().out
    assert "* Using custom transform for training" in out and "* Using custom transform for testing" in out
    assert next(iter(dm.test_loader))["img"].shape == (32, 3, 2, 2)


def test_missing_image_is_reported_with_its_path(tmp_path):
    dataset_dir = make_dtd_with_split(tmp_path)
    missing = os.path.join(dataset_dir, "images", "banded", "4.jpg")  # a test image
    os.remove(missing)
    dm = DataManager(_cfg(tmp_path, "DescribableTextures", shots=-1))  # building does not stat files
    with pytest.raises(FileNotFoundError, match=missing):
        list(dm.test_loader)


def test_corrupt_image_is_reported_with_its_path(tmp_path):
    dataset_dir = make_dtd_with_split(tmp_path)
    corrupt = os.path.join(dataset_dir, "images", "dotted", "4.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"not an image")
    dm = DataManager(_cfg(tmp_path, "DescribableTextures", shots=-1))
    with pytest.raises(OSError, match=f"Cannot read image {corrupt}"):
        list(dm.test_loader)
