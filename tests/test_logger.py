"""log.txt tee (never overwriting an earlier log) and the optional tensorboard writer."""
from __future__ import annotations

import os
import re
import sys

import pytest

from trainers.engine import logger
from trainers.engine.logger import close_logger, make_writer, setup_logger, write_scalar


@pytest.fixture(autouse=True)
def restore_stdout():
    yield
    close_logger()


def test_tee_writes_console_and_file(tmp_path, capsys):
    console = sys.stdout
    path = setup_logger(str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "log.txt")
    print("epoch [1/2] batch [1/1]")
    print("* accuracy: 50.0%")
    sys.stdout.flush()
    assert (tmp_path / "run" / "log.txt").read_text() == "epoch [1/2] batch [1/1]\n* accuracy: 50.0%\n"
    close_logger()
    assert sys.stdout is console
    assert capsys.readouterr().out == "epoch [1/2] batch [1/1]\n* accuracy: 50.0%\n"
    print("after close")
    assert "after close" not in (tmp_path / "run" / "log.txt").read_text()


def test_existing_log_is_kept_and_new_one_gets_a_time_suffix(tmp_path):
    (tmp_path / "log.txt").write_text("first run\n")
    path = setup_logger(str(tmp_path))
    print("second run")
    close_logger()
    assert (tmp_path / "log.txt").read_text() == "first run\n"
    assert re.fullmatch(re.escape(str(tmp_path / "log.txt")) + r"-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d", path)
    assert open(path).read() == "second run\n"
    # A third run in the same second still gets its own file.
    third = setup_logger(str(tmp_path))
    close_logger()
    assert third not in (path, str(tmp_path / "log.txt")) and os.path.exists(third)


def test_explicit_file_name_and_no_double_wrapping(tmp_path, capsys):
    console = sys.stdout
    first = setup_logger(str(tmp_path / "a" / "train.log"))
    assert first == str(tmp_path / "a" / "train.log")
    print("one")
    second = setup_logger(str(tmp_path / "b"))
    print("two")
    close_logger()
    assert sys.stdout is console
    assert open(first).read() == "one\n"
    assert open(second).read() == "two\n"
    assert capsys.readouterr().out == "one\ntwo\n"  # printed once each, not once per wrapper


def test_make_writer_without_tensorboard_says_so_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    monkeypatch.setattr(logger, "_writer_unavailable_reported", False)
    assert make_writer(str(tmp_path / "tensorboard")) is None
    assert make_writer(str(tmp_path / "tensorboard")) is None
    out = capsys.readouterr().out
    assert out.count("Tensorboard logging is off") == 1
    write_scalar(None, "train/loss", 1.0, 0)  # no writer: nothing happens


def test_write_scalar_forwards_to_the_writer():
    class Recorder:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    writer = Recorder()
    write_scalar(writer, "test/accuracy", 76.5, 3)
    assert writer.calls == [("test/accuracy", 76.5, 3)]
