"""Checkpoints: Dassl's file layout, atomic writes, and reading old Dassl files without running their pickles."""
from __future__ import annotations

import io
import os
import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from trainers.engine.checkpoint import (BEST_NAME, CheckpointMismatchError, checkpoint_path, find_last_checkpoint,
                                        load_checkpoint, load_state_dict_checked,
                                        resume_from_checkpoint, save_checkpoint)


class PromptLearner(nn.Module):
    def __init__(self, n_ctx: int = 4, width: int = 8, n_cls: int = 3) -> None:
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(n_ctx, width))
        self.register_buffer("token_prefix", torch.randn(n_cls, 1, width))


def trained(model: nn.Module, steps: int = 2):
    """An SGD optimizer and cosine schedule that have taken a few steps (momentum buffers exist)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(steps):
        opt.zero_grad()
        model.ctx.pow(2).sum().backward()
        opt.step()
        sched.step()
    return opt, sched


def test_round_trip_layout_and_pointer(tmp_path, capsys):
    model = PromptLearner()
    opt, sched = trained(model)
    # DataParallel-style keys are stored without "module.".
    state_dict = OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    path = save_checkpoint({"state_dict": state_dict, "epoch": 3, "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "val_result": None}, str(tmp_path / "prompt_learner"))
    folder = tmp_path / "prompt_learner"
    assert path == str(folder / "model.pth.tar-3")
    assert capsys.readouterr().out == f"Checkpoint saved to {path}\n"
    assert sorted(os.listdir(folder)) == ["checkpoint", "model.pth.tar-3"]  # no temporary files left
    assert (folder / "checkpoint").read_text() == "model.pth.tar-3\n"

    loaded = load_checkpoint(path)
    assert list(loaded) == ["state_dict", "epoch", "optimizer", "scheduler", "val_result"]
    assert loaded["epoch"] == 3 and loaded["val_result"] is None
    assert list(loaded["state_dict"]) == ["ctx", "token_prefix"]
    torch.testing.assert_close(loaded["state_dict"]["ctx"], model.ctx.detach())
    torch.testing.assert_close(loaded["optimizer"]["state"][0]["momentum_buffer"],
                               opt.state[model.ctx]["momentum_buffer"])
    assert loaded["scheduler"]["last_epoch"] == 2
    # What we write stays readable by PyTorch's safe loader.
    torch.load(path, weights_only=True)


def test_best_name_pointer_and_path_helpers(tmp_path, capsys):
    model = PromptLearner()
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 2}, str(tmp_path / "m"))
    best = save_checkpoint({"state_dict": model.state_dict(), "epoch": 4, "val_result": 71.5},
                           str(tmp_path / "m"), model_name=BEST_NAME)
    assert best == checkpoint_path(str(tmp_path), "m") == str(tmp_path / "m" / "model-best.pth.tar")
    assert checkpoint_path(str(tmp_path), "m", 2) == str(tmp_path / "m" / "model.pth.tar-2")
    # The pointer names the most recent save, the best file included (Dassl).
    assert (tmp_path / "m" / "checkpoint").read_text() == "model-best.pth.tar\n"
    assert find_last_checkpoint(str(tmp_path), "m") == best
    assert load_checkpoint(best)["val_result"] == 71.5
    assert find_last_checkpoint(str(tmp_path), "absent") is None


def test_is_best_writes_both_files(tmp_path, capsys):
    save_checkpoint({"state_dict": PromptLearner().state_dict(), "epoch": 5}, str(tmp_path), is_best=True)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-5"]
    assert load_checkpoint(str(tmp_path / BEST_NAME))["epoch"] == 5
    assert (tmp_path / "checkpoint").read_text() == "model.pth.tar-5\n"


def test_save_refuses_objects_the_safe_loader_rejects(tmp_path):
    model = PromptLearner()
    opt, sched = trained(model)
    scheduler_state = {"successor": sched, "warmup_epoch": 1}  # what Dassl's warm-up wrapper stored
    with pytest.raises(TypeError, match=r"checkpoint\['scheduler'\]\['successor'\].*CosineAnnealingLR"):
        save_checkpoint({"state_dict": model.state_dict(), "epoch": 1, "scheduler": scheduler_state}, str(tmp_path))
    assert not os.path.exists(tmp_path / "model.pth.tar-1")


def test_resume_restores_model_optimizer_scheduler(tmp_path, capsys):
    model = PromptLearner()
    opt, sched = trained(model, steps=3)
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 3, "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict()}, str(tmp_path / "prompt_learner"))
    capsys.readouterr()

    fresh = PromptLearner()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_sched = torch.optim.lr_scheduler.CosineAnnealingLR(fresh_opt, T_max=10)
    epoch = resume_from_checkpoint(str(tmp_path / "prompt_learner"), fresh, fresh_opt, fresh_sched)["epoch"]
    path = tmp_path / "prompt_learner" / "model.pth.tar-3"
    assert epoch == 3
    assert capsys.readouterr().out.splitlines() == [
        f'Loading checkpoint from "{path}"', "Loaded model weights", "Loaded optimizer", "Loaded scheduler",
        "Previous epoch: 3"]
    torch.testing.assert_close(fresh.ctx, model.ctx)
    torch.testing.assert_close(fresh_opt.state[fresh.ctx]["momentum_buffer"], opt.state[model.ctx]["momentum_buffer"])
    assert fresh_sched.last_epoch == sched.last_epoch == 3
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_resume_without_pointer_takes_highest_epoch(tmp_path, capsys):
    model = PromptLearner()
    for epoch in (2, 10):
        save_checkpoint({"state_dict": model.state_dict(), "epoch": epoch}, str(tmp_path))
    os.remove(tmp_path / "checkpoint")
    assert find_last_checkpoint(str(tmp_path.parent), tmp_path.name) == str(tmp_path / "model.pth.tar-10")
    assert resume_from_checkpoint(str(tmp_path), PromptLearner())["epoch"] == 10


def test_resume_is_strict_and_names_mismatches(tmp_path, capsys):
    save_checkpoint({"state_dict": PromptLearner(n_ctx=16).state_dict(), "epoch": 1}, str(tmp_path))
    with pytest.raises(CheckpointMismatchError) as err:
        resume_from_checkpoint(str(tmp_path), PromptLearner(n_ctx=4))
    assert "ctx: checkpoint [16, 8] vs model [4, 8]" in str(err.value)
    assert str(tmp_path / "model.pth.tar-1") in str(err.value)


def test_shape_mismatch_lists_keys_shapes_and_file():
    model = nn.Module()
    model.prompt_learner = PromptLearner(n_ctx=4, width=512)
    state = {"prompt_learner.ctx": torch.zeros(16, 512), "prompt_learner.token_prefix": torch.zeros(7, 1, 512),
             "extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_checked(model, state, strict=False, source="out/prompt_learner/model.pth.tar-50")
    message = str(err.value)
    assert 'Checkpoint "out/prompt_learner/model.pth.tar-50"' in message
    assert "prompt_learner.ctx: checkpoint [16, 512] vs model [4, 512]" in message
    assert "prompt_learner.token_prefix: checkpoint [7, 1, 512] vs model [3, 1, 512]" in message
    assert "extra.weight" not in message  # unexpected keys are fine when not strict

    with pytest.raises(CheckpointMismatchError, match=r"missing in the checkpoint: prompt_learner.token_prefix"):
        load_state_dict_checked(model, {"prompt_learner.ctx": torch.zeros(4, 512)}, strict=True, source="x")
    result = load_state_dict_checked(model, {"prompt_learner.ctx": torch.ones(4, 512)}, strict=False, source="x")
    assert result.missing_keys == ["prompt_learner.token_prefix"]
    assert bool((model.prompt_learner.ctx == 1).all())


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth.tar"):
        load_checkpoint(str(tmp_path / "nowhere.pth.tar"))
    good = save_checkpoint({"state_dict": PromptLearner().state_dict(), "epoch": 1}, str(tmp_path))
    data = open(good, "rb").read()
    for name, content in (("truncated.pth.tar", data[: len(data) // 2]), ("text.pth.tar", b"not a checkpoint"),
                          ("empty.pth.tar", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(RuntimeError, match=f'Cannot read checkpoint ".*{name}"'):
            load_checkpoint(str(tmp_path / name))


@pytest.fixture
def fake_module(monkeypatch):
    """Register a module under a dotted name for pickling only; it is gone again when loading."""
    def make(dotted: str) -> types.ModuleType:
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        return sys.modules[dotted]
    return make


def test_original_dassl_warmup_checkpoint(tmp_path, fake_module, monkeypatch, capsys):
    """A CoOp checkpoint as Dassl wrote it: its scheduler state pickles the successor scheduler and optimizer."""
    module = fake_module("dassl.optim.lr_scheduler")

    class ConstantWarmupScheduler(torch.optim.lr_scheduler.LRScheduler):
        def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
            self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
            super().__init__(optimizer)

        def get_lr(self):
            return [self.cons_lr for _ in self.base_lrs]

    ConstantWarmupScheduler.__module__ = module.__name__
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    module.ConstantWarmupScheduler = ConstantWarmupScheduler
    model = PromptLearner()
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    warmup = ConstantWarmupScheduler(opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50), 1, 1e-5)
    path = str(tmp_path / "model.pth.tar-50")
    torch.save({"state_dict": model.state_dict(), "epoch": 50, "optimizer": opt.state_dict(),
                "scheduler": warmup.state_dict(), "val_result": None, "scheduler_object": warmup}, path)
    monkeypatch.undo()  # the "dassl" modules no longer exist
    assert "dassl.optim.lr_scheduler" not in sys.modules
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 50
    torch.testing.assert_close(loaded["state_dict"]["ctx"], model.ctx.detach())
    successor = loaded["scheduler"]["successor"]
    assert type(successor) is dict and successor["__class__"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert successor["T_max"] == 50
    assert type(successor["optimizer"]) is dict and successor["optimizer"]["__class__"] == "torch.optim.sgd.SGD"
    assert successor["optimizer"]["defaults"]["lr"] == 0.002
    assert type(successor["optimizer"]["state"]) is dict  # was a defaultdict
    whole = loaded["scheduler_object"]
    assert whole["__class__"] == "dassl.optim.lr_scheduler.ConstantWarmupScheduler" and whole["cons_lr"] == 1e-5
    assert "read as plain dicts" in capsys.readouterr().out


def test_objects_of_vanished_modules_become_plain_dicts(tmp_path, fake_module, monkeypatch):
    module = fake_module("dassl.data.datasets.base_dataset")

    class Datum:
        def __init__(self, impath, label):
            self._impath, self._label = impath, label

    Datum.__module__, Datum.__qualname__ = module.__name__, "Datum"
    module.Datum = Datum
    path = str(tmp_path / "old.pth.tar")
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "epoch": 1, "items": [Datum("/data/a.jpg", 2)]}, path)
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded["items"] == [{"__class__": "dassl.data.datasets.base_dataset.Datum",
                                "_impath": "/data/a.jpg", "_label": 2}]
    torch.testing.assert_close(loaded["state_dict"]["w"], torch.arange(3.0))


class _CallsSystem:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w')",))


def test_malicious_pickles_are_not_executed(tmp_path, capsys):
    markers = [str(tmp_path / "system-ran"), str(tmp_path / "eval-ran")]
    path = str(tmp_path / "evil.pth.tar")
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 1,
                "a": _CallsSystem(markers[0]), "b": _CallsEval(markers[1])}, path)
    loaded = load_checkpoint(path)
    assert not any(os.path.exists(m) for m in markers)
    assert loaded["a"]["__class__"] == f"{os.system.__module__}.system"
    assert loaded["b"] == {"__class__": "builtins.eval", "__args__": [f"open({markers[1]!r}, 'w')"]}
    torch.testing.assert_close(loaded["state_dict"]["w"], torch.ones(2))
    # The same through the pre-1.6 (non-zip) format.
    legacy = str(tmp_path / "legacy.pth.tar")
    torch.save({"a": _CallsSystem(markers[0])}, legacy, _use_new_zipfile_serialization=False)
    assert load_checkpoint(legacy)["a"]["__args__"] == [f"touch {markers[0]}"]
    assert not os.path.exists(markers[0])


def test_python2_strings_are_retried_as_latin1(tmp_path):
    """A legacy-format file whose pickle holds a Python 2 byte string that is not UTF-8."""
    buf = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, buf, protocol=2)  # legacy torch magic number
    pickle.dump(1001, buf, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, buf, protocol=2)
    # {"epoch": 4, "name": <py2 str b"caf\xe9">}
    buf.write(b"\x80\x02}(X\x05\x00\x00\x00epochK\x04X\x04\x00\x00\x00nameU\x04caf\xe9u.")
    pickle.dump([], buf, protocol=2)  # storage keys
    path = tmp_path / "py2.pth.tar"
    path.write_bytes(buf.getvalue())
    assert load_checkpoint(str(path)) == {"epoch": 4, "name": "caf\xe9"}
