"""Mistakes in a user's input end train.py with one short message naming the path or key, a
non-zero exit status and no traceback; --debug shows the traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import train
from clip.errors import UserInputError
from trainers.engine.logger import close_logger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--seed", "1", "--trainer", "CoOp", "--config-file", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml"]
SYNTHETIC = ["--dataset-config-file", "configs/datasets/synthetic.yaml"]


def run_cli(*argv: str, env: dict = None):
    """train.py in a subprocess: (exit status, stdout + stderr)."""
    result = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=600)
    return result.returncode, result.stdout + result.stderr


def run_in_process(capsys, *argv: str):
    try:
        code = train.main(list(argv))
    finally:
        close_logger()
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_reported(code: int, output: str, *names: str) -> None:
    assert code == train.EXIT_INPUT_ERROR, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("Error: "), last
    for name in names:
        assert name in last, (name, last)


def test_missing_data_root_and_empty_data_set_folder(capsys, tmp_path):
    missing = str(tmp_path / "nowhere")
    assert_reported(*run_in_process(capsys, *TINY, "--root", missing, "--output-dir", str(tmp_path / "a"),
                                    "--dataset-config-file", "configs/datasets/oxford_pets.yaml"),
                    os.path.join(missing, "oxford_pets"))
    (tmp_path / "data" / "oxford_pets").mkdir(parents=True)
    assert_reported(*run_in_process(capsys, *TINY, "--root", str(tmp_path / "data"), "--output-dir",
                                    str(tmp_path / "b"), "--dataset-config-file", "configs/datasets/oxford_pets.yaml"),
                    "split_zhou_OxfordPets.json")


def test_typo_in_trainer_and_config_key(capsys, data_root, tmp_path):
    code, out = run_in_process(capsys, *TINY[:2], "--trainer", "Coop", "--root", data_root, *SYNTHETIC,
                               "--output-dir", str(tmp_path / "a"))
    assert code == 2 and "Traceback" not in out and "CoOp" in out.strip().splitlines()[-1]
    assert_reported(*run_in_process(capsys, *TINY, "--root", data_root, *SYNTHETIC, "--output-dir",
                                    str(tmp_path / "b"), "TRAINER.COOP.NCTX", "4"), "TRAINER.COOP.N_CTX")


def test_a_trainer_setting_its_check_rejects_is_an_error_line(capsys, data_root, tmp_path):
    # MVLPT's own YAML with neither prompt length set: the trainer's check_cfg refuses it
    assert_reported(*run_in_process(capsys, "--root", data_root, "--trainer", "MVLPT", "--config-file",
                                    "configs/trainers/MVLPT/vit_b16.yaml", "--dataset", "Synthetic", "--shots", "1",
                                    "--output-dir", str(tmp_path / "out")),
                    "TRAINER.MVLPT.COOP.N_CTX", "TRAINER.MVLPT.VPT.N_CTX")


def test_eval_only_with_a_model_dir_that_does_not_exist(capsys, data_root, tmp_path):
    missing = str(tmp_path / "no_run")
    assert_reported(*run_in_process(capsys, *TINY, "--root", data_root, *SYNTHETIC, "--output-dir",
                                    str(tmp_path / "out"), "--eval-only", "--model-dir", missing), missing)


@pytest.mark.slow
def test_corrupt_test_image_names_the_file_and_split_also_from_a_worker(data_root, tmp_path):
    root = tmp_path / "data"
    assert train.main(["--root", data_root, *SYNTHETIC, "--verify-data"]) == 0  # also generates it on first use
    shutil.copytree(os.path.join(data_root, "synthetic"), root / "synthetic")
    split = json.load(open(root / "synthetic" / "split_zhou_Synthetic.json"))
    bad = root / "synthetic" / "images" / split["test"][0][0]
    bad.write_bytes(b"not an image")
    code, out = run_cli(*TINY, "--root", str(root), *SYNTHETIC, "--output-dir", str(tmp_path / "out"), "--eval-only",
                        "DATALOADER.NUM_WORKERS", "1", "TRAINER.COOP.PREC", "fp32")
    assert_reported(code, out, str(bad), "test split")

    code, out = run_cli(*TINY, "--root", str(root), *SYNTHETIC, "--verify-data")
    assert code == train.EXIT_INPUT_ERROR and f"Unreadable image: {bad} (Synthetic test)" in out
    assert "1 unreadable image(s)" in out


@pytest.mark.slow
def test_truncated_clip_file_names_the_file_and_debug_shows_the_traceback(tmp_path, data_root):
    clip_file = tmp_path / "ViT-B-16.pt"
    clip_file.write_bytes(b"\x80\x02truncated")
    args = [*TINY, "--root", data_root, *SYNTHETIC, "--output-dir", str(tmp_path / "out"),
            "MODEL.BACKBONE.PATH", str(clip_file)]
    assert_reported(*run_cli(*args), str(clip_file))
    code, out = run_cli(*args, env={"VLPROMPT_DEBUG": "1"})
    assert code != 0 and "Traceback" in out and "UnusableFileError" in out


def test_bugs_keep_their_traceback(monkeypatch, data_root, tmp_path):
    def broken(cfg):
        raise KeyError("a bug")

    monkeypatch.setattr(train, "build_trainer", broken)
    with pytest.raises(KeyError):
        try:
            train.main([*TINY, "--root", data_root, *SYNTHETIC, "--output-dir", str(tmp_path)])
        finally:
            close_logger()
    assert not issubclass(KeyError, UserInputError)


def test_a_second_run_into_a_live_runs_folder_exits_and_a_dead_runs_lock_is_taken_over(capsys, data_root, tmp_path):
    import socket

    from trainers.engine.lock import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-12-01T10:00:00"}
    (out / LOCK_NAME).write_text(json.dumps(holder))
    code, text = run_in_process(capsys, *TINY, "--root", data_root, *SYNTHETIC, "--output-dir", str(out),
                                "--eval-only")
    assert_reported(code, text, f"PID {os.getpid()}", str(out))
    assert sorted(os.listdir(out)) == [LOCK_NAME]  # touched nothing

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(json.dumps(dict(holder, pid=int(finished.stdout))))
    code, text = run_in_process(capsys, *TINY, "--root", data_root, *SYNTHETIC, "--output-dir", str(out),
                                "--eval-only", "TRAINER.COOP.PREC", "fp32")
    assert code == 0 and "taking over the lock of a run that is gone" in text
    assert not (out / LOCK_NAME).exists()


def test_nan_loss_names_epoch_batch_and_precision(capsys, data_root, tmp_path, monkeypatch):
    from trainers.base import PromptTrainer

    original = PromptTrainer.loss_terms

    def nan_terms(self, batch):
        output = original(self, batch)
        output.losses["ce"] = output.losses["ce"] * float("nan")
        return output

    monkeypatch.setattr(PromptTrainer, "loss_terms", nan_terms)
    assert_reported(*run_in_process(capsys, *TINY, "--root", data_root, *SYNTHETIC, "--output-dir",
                                    str(tmp_path), "TRAINER.COOP.PREC", "fp16", "OPTIM.MAX_EPOCH", "1"),
                    "epoch 1, batch 1", "fp16", "TRAINER.COOP.PREC fp32")


def test_a_failed_checkpoint_write_keeps_the_previous_file_and_names_the_path(tmp_path, monkeypatch):
    import errno

    import torch

    from datasets.io import OutputWriteError
    from trainers.engine.checkpoint import load_checkpoint, save_checkpoint

    os.umask(0o022)
    first = save_checkpoint({"state_dict": {"ctx": torch.ones(2)}, "epoch": 1}, str(tmp_path), model_name="m.pth.tar")
    assert oct(os.stat(first).st_mode & 0o777) == oct(0o644)  # the umask's permissions, not mkstemp's 0600

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OutputWriteError, match=r"Cannot write .*m\.pth\.tar: No space left on device"):
        save_checkpoint({"state_dict": {"ctx": torch.zeros(2)}, "epoch": 2}, str(tmp_path), model_name="m.pth.tar")
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(first)["state_dict"]["ctx"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "m.pth.tar"]
