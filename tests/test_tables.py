"""The base-to-new table: seed means before the harmonic mean, both output layouts, DePT's CSV."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainers.analysis import base2new_table as table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(accuracy: float, val: float = 12.3) -> str:
    """A training or eval log: an earlier evaluation, then the final result block."""
    return (f"Evaluate on the *val* set\n=> result\n* total: 40\n* accuracy: {val:.1f}%\nFinish training\n"
            f"Evaluate on the *test* set\n=> result\n* total: 40\n* correct: 1\n* accuracy: {accuracy:.1f}%\n"
            f"* error: {100 - accuracy:.1f}%\n* macro_f1: 1.0%\n")


def write_runs(root, kind: str, run: str, accuracies: dict) -> None:
    for seed, acc in accuracies.items():
        folder = root / kind / run / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "log.txt").write_text(log(acc))


def dept_layout(root):
    for dataset, base, new in (("dtd", (80.0, 82.0, 84.0), (50.0, 60.0, 70.0)),
                               ("imagenet", (76.0, 76.5, 77.0), (70.0, 70.5, 71.0))):
        run = f"ExtrasLinearProbeCoOp/{dataset}/shots16/vit_b16_ep10_bs4_lr35"
        write_runs(root, "train_base", run, dict(zip((1, 2, 3), base)))
        write_runs(root, "test_new", run, dict(zip((1, 2, 3), new)))
    return str(root)


def hm(base: float, new: float) -> float:
    return 2 * base * new / (base + new)


def test_seed_means_come_before_the_harmonic_mean(tmp_path):
    settings = table.collect(dept_layout(tmp_path))
    setting = table.Setting("ExtrasLinearProbeCoOp", "vit_b16_ep10_bs4_lr35", "shots16")
    assert list(settings) == [setting]
    rows, average, notes = table.table_rows(settings[setting])
    assert [r.dataset for r in rows] == ["imagenet", "dtd"] and not notes  # DePT's data set order
    dtd = rows[1]
    assert (dtd.base, dtd.new, dtd.seeds) == (82.0, 60.0, [1, 2, 3])
    assert dtd.h == pytest.approx(hm(82.0, 60.0)) == pytest.approx(69.2958, abs=1e-4)
    per_seed_mean = sum(hm(b, n) for b, n in ((80, 50), (82, 60), (84, 70))) / 3
    assert abs(dtd.h - per_seed_mean) > 0.2  # the other order would give 69.07
    assert (average.base, average.new) == (79.25, 65.25)
    assert average.h == pytest.approx(hm(79.25, 65.25)) == pytest.approx(71.5718, abs=1e-4)


def test_table_and_dept_csv(tmp_path, capsys):
    root = dept_layout(tmp_path / "b2n")
    assert table.main([root, "--csv", str(tmp_path / "results")]) == 0
    printed = capsys.readouterr().out
    assert "ExtrasLinearProbeCoOp / vit_b16_ep10_bs4_lr35 / shots16" in printed
    assert "dtd        82.00   60.00  69.30  1,2,3" in printed and "average    79.25   65.25  71.57" in printed
    csv = (tmp_path / "results" / "b2n-ExtrasLinearProbeCoOp-vit_b16_ep10_bs4_lr35.csv").read_text().splitlines()
    assert csv[0] == ("dataset,base_acc_seed1,new_acc_seed1,H_seed1,base_acc_seed2,new_acc_seed2,H_seed2,"
                      "base_acc_seed3,new_acc_seed3,H_seed3,base_acc,new_acc,H")
    assert csv[2] == "dtd,80,50,61.54,82,60,69.3,84,70,76.36,82,60,69.3"
    assert csv[3].startswith("average,78,60,") and csv[3].endswith(",79.25,65.25,71.57")


def test_coop_layout_newest_log_and_incomplete_seeds(tmp_path, capsys):
    run = "oxford_pets/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1"
    write_runs(tmp_path, "train_base", run, {1: 90.0, 2: 92.0, 3: 50.0})
    write_runs(tmp_path, "test_new", run, {1: 95.0, 2: 97.0})  # seed 3 was never evaluated
    rerun = tmp_path / "train_base" / run / "seed1"
    (rerun / "log.txt-2026-01-01-00-00-00").write_text(log(94.0))  # a later run of the same folder
    (rerun / "log.txt-2026-01-02-00-00-00").write_text("crashed before testing\n")
    write_runs(tmp_path, "train_base", "eurosat/shots_16_8.0/KgCoOp/vit_b16_ep100_ctxv1", {1: 70.0})
    write_runs(tmp_path, "test_new", "eurosat/shots_16_8.0/KgCoOp/vit_b16_ep100_ctxv1", {1: 60.0})
    settings = table.collect(str(tmp_path))
    assert [(s.trainer, s.shots) for s in settings] == [("CoCoOp", "shots_16"), ("KgCoOp", "shots_16_8.0")]
    rows, average, notes = table.table_rows(settings[table.Setting("CoCoOp", "vit_b16_c4_ep10_batch1_ctxv1",
                                                                   "shots_16")])
    assert (rows[0].base, rows[0].new, rows[0].seeds) == (93.0, 96.0, [1, 2])
    assert notes == ["oxford_pets: seed(s) 3 lack a base or new accuracy"]


@pytest.mark.slow
def test_runs_as_a_module_and_says_when_nothing_is_there(tmp_path):
    (tmp_path / "train_base").mkdir()
    done = subprocess.run([sys.executable, "-m", "trainers.analysis.base2new_table", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "No seed<S> run folders" in done.stdout
    with pytest.raises(FileNotFoundError, match="No train_base folder"):
        table.collect(str(tmp_path / "missing"))


def test_dept_scripts_parse():
    for name in ("base2new.sh", "xd.sh", "common.sh"):
        done = subprocess.run(["bash", "-n", os.path.join(REPO, "scripts", "dept", name)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
