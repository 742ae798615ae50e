"""Every registered trainer (DePT wrappers included) runs end to end on the Synthetic fixtures."""
import glob
import os

import pytest

import trainers  # noqa: F401
from trainers.engine.registry import TRAINER_REGISTRY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER_PREFIXES = ("ExtrasLinearProbe", "DePT")


def tiny_config(name: str) -> str:
    """The trainer's own tiny CPU config, else the wrapped baseline's (DePT YAMLs equal the baselines')."""
    candidates = [name] + [name[len(p):] for p in WRAPPER_PREFIXES if name.startswith(p)]
    if name.startswith("Zeroshot"):
        candidates.append("CoOp")
    for folder in candidates:
        found = sorted(glob.glob(os.path.join(REPO, "configs", "trainers", folder, "tiny_*.yaml")))
        if found:
            return found[0]
    raise AssertionError(f"no tiny config for {name}")


def test_every_trainer_has_a_tiny_config():
    names = TRAINER_REGISTRY.names()
    assert {"CoOp", "CoCoOp", "KgCoOp", "MaPLe", "ZeroshotCLIP", "ExtrasLinearProbeMaPLe"} <= set(names)
    for name in names:
        assert os.path.isfile(tiny_config(name))


#: baselines whose DePT wrapper tests/test_dept.py runs end to end (training, then new-class evaluation)
DEPT_TESTED_ELSEWHERE = {"CoOp", "CoCoOp", "KgCoOp", "MaPLe"}


def end_to_end_names() -> list:
    """Each trainer class once: one name per DePT wrapper (``DePT<X>`` is ``ExtrasLinearProbe<X>``),
    none for wrappers that tests/test_dept.py already runs end to end."""
    names = []
    for name in TRAINER_REGISTRY.names():
        if name.startswith(WRAPPER_PREFIXES[1]) and not name.startswith(WRAPPER_PREFIXES[0]):
            continue
        if name.startswith(WRAPPER_PREFIXES[0]) and name[len(WRAPPER_PREFIXES[0]):] in DEPT_TESTED_ELSEWHERE:
            continue
        names.append(name)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", end_to_end_names())
def test_trainer_runs_base_training_and_evaluation(name, run_train, data_root, tmp_path):
    flags = ["--eval-only"] if name.startswith("Zeroshot") else []
    code, log = run_train("--root", data_root, "--seed", "1", "--trainer", name, "--dataset-config-file",
                          "configs/datasets/synthetic.yaml", "--config-file", tiny_config(name), *flags,
                          "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base", "OPTIM.MAX_EPOCH", "1",
                          output_dir=str(tmp_path))
    assert code == 0
    assert "* total: 40" in log and "* accuracy:" in log  # 5 base classes x 8 test images
    if not flags:
        assert "Finish training" in log and os.path.isfile(os.path.join(tmp_path, "results.json"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TRAINER_REGISTRY.names() if not n.startswith(WRAPPER_PREFIXES)])
def test_trainer_runs_multi_task(name, run_train, data_root, tmp_path):
    flags = ["--eval-only"] if name.startswith("Zeroshot") else []
    code, log = run_train("--root", data_root, "--seed", "1", "--trainer", name, "--dataset-config-file",
                          "configs/datasets/synthetic.yaml", "--config-file", tiny_config(name), *flags,
                          "DATASET.NAME", "Synthetic,SyntheticB", "DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "1",
                          output_dir=str(tmp_path))
    assert code == 0 and "=> task: Synthetic" in log and "=> task: SyntheticB" in log
