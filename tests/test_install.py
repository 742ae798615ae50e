"""An install leaves ``import clip`` / ``import datasets`` to other packages; vlprompt's commands work from anywhere."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("clip", "datasets", "trainers", "train", "parse_test_res")
# Prints, for each top-level name of the project, where this interpreter would import it from.
PROBE = ("import importlib.util, sys\n"
         "for name in sys.argv[1:]:\n"
         "    spec = importlib.util.find_spec(name)\n"
         "    print(name, spec.origin if spec is not None and spec.origin else '-')\n")


def _venv(path) -> str:
    """A virtual environment that sees this one's packages (torch is not installed again); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    return os.path.join(str(path), "bin", "python")


def _pip_install(python: str, *args: str) -> None:
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *args],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _assert_not_shadowing(python: str, cwd: str, *owned: str) -> None:
    """No project name resolves into a folder this install owns (the checkout, the environment)."""
    done = subprocess.run([python, "-c", PROBE, *NAMES], cwd=cwd, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    where = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    for name in NAMES:
        origin = os.path.realpath(where[name]) if where[name] != "-" else "-"
        assert not any(origin.startswith(os.path.realpath(folder) + os.sep) for folder in owned), (name, origin)


def _command_works(venv: str, cwd: str, expected_root: str, commands=("vlprompt-train",)) -> None:
    """The console commands run from anywhere, on this install's copy of the code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for command in commands:
        done = subprocess.run([os.path.join(venv, "bin", command), "--help"], cwd=cwd, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0 and "usage" in done.stdout, (command, done.stderr[-2000:])
    python = os.path.join(venv, "bin", "python")
    code = ("import vlprompt, sys; vlprompt.use_project_modules(); import clip, train; "
            "print(clip.__file__); print(train.__file__); print(clip.tokenize('a photo').shape[1])")
    done = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    clip_file, train_file, width = done.stdout.split()
    assert clip_file.startswith(os.path.realpath(expected_root)) and os.path.dirname(train_file) == \
        os.path.realpath(expected_root) and width == "77"


@pytest.mark.slow
def test_editable_install_does_not_shadow_and_commands_work(tmp_path):
    python = _venv(tmp_path / "venv")
    _pip_install(python, "-e", REPO)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _assert_not_shadowing(python, str(outside), REPO, str(tmp_path / "venv"))
    _command_works(str(tmp_path / "venv"), str(outside), REPO, ("vlprompt-train", "vlprompt-sweep", "vlprompt-parse"))


@pytest.mark.slow
def test_regular_install_ships_the_code_inside_vlprompt(tmp_path):
    source = tmp_path / "source"  # a copy: a regular build writes build/ and *.egg-info into the source folder
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "output", "data", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".venv", "tests"))
    python = _venv(tmp_path / "venv")
    _pip_install(python, str(source))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    venv = str(tmp_path / "venv")
    _assert_not_shadowing(python, str(outside), REPO, str(source), venv)
    site = subprocess.run([python, "-c", "import vlprompt, os; print(os.path.dirname(vlprompt.__file__))"],
                          cwd=str(outside), capture_output=True, text=True).stdout.strip()
    _command_works(venv, str(outside), os.path.join(site, "_src"))


def test_the_repository_root_still_imports_the_project_modules():
    """``python train.py`` and ``python -m trainers...`` from the root, and pytest (pythonpath = .), see our code."""
    for name in ("clip", "datasets", "trainers"):
        origin = importlib.util.find_spec(name).origin
        assert os.path.dirname(os.path.dirname(origin)) == REPO, (name, origin)
