"""parse_test_res.py must print what CoOp's parser prints for the same logs; results.json and summary stats."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from yacs.config import CfgNode as CN

import parse_test_res
from trainers.engine.results import summarize, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def result_block(accuracy: float, decimals: int = 1) -> str:
    return (f"=> result\n* total: 1,000\n* correct: {int(accuracy * 10):,}\n"
            f"* accuracy: {accuracy:.{decimals}f}%\n* error: {100 - accuracy:.{decimals}f}%\n"
            f"* macro_f1: {accuracy - 1:.{decimals}f}%\n")


def train_log(accuracy: float) -> str:
    """Our training log: a val evaluation before the markers must not count; the final test does."""
    return ("epoch [1/2] batch [1/1] time 0.1 (0.1) data 0.0 (0.0) loss 1.0 (1.0) acc 50.0 (50.0) lr 2e-3 eta 0:00:01\n"
            "Evaluate on the *val* set\n" + result_block(11.1) +
            "Checkpoint saved to out/prompt_learner/model.pth.tar-2\nFinished training\nFinish training\n"
            "Deploy the last-epoch model\nEvaluate on the *test* set\n" + result_block(accuracy) +
            "Elapsed: 0:00:05\n")


def make_runs(root, logs):
    for seed, text in logs.items():
        (root / seed).mkdir(parents=True)
        (root / seed / "log.txt").write_text(text)
    return str(root)


def coop_summary(directory, values, spread):
    """The lines CoOp's parser prints (its own formulas: np.mean and np.std)."""
    lines = [f"Parsing files in {directory}"]
    lines += [f"file: {os.path.join(directory, f'seed{i + 1}', 'log.txt')}. accuracy: {v:.2f}%. "
              for i, v in enumerate(values)]
    return lines + ["===", f"Summary of directory: {directory}",
                    f"* accuracy: {np.mean(values):.2f}% +- {spread:.2f}%", "==="]


def test_training_logs_match_coop_output(tmp_path, capsys):
    values = [70.1, 72.3, 74.0]
    d = make_runs(tmp_path / "exp", {f"seed{i + 1}": train_log(v) for i, v in enumerate(values)})
    [summary] = parse_test_res.main([d])
    out = capsys.readouterr().out.splitlines()
    expected = coop_summary(d, values, np.std(values))
    assert out[: len(expected)] == expected
    assert expected[-2] == "* accuracy: 72.13% +- 1.60%"
    assert summary.values == values
    # The extra table after CoOp's output.
    table = "\n".join(out[len(expected):])
    assert "setting" in table and "95% CI" in table
    assert "72.13 ± 1.60" in table and "± 1.81" in table


def test_ci95(tmp_path, capsys):
    values = [70.1, 72.3, 74.0]
    d = make_runs(tmp_path / "exp", {f"seed{i + 1}": train_log(v) for i, v in enumerate(values)})
    parse_test_res.main([d, "--ci95"])
    out = capsys.readouterr().out.splitlines()
    ci = 1.96 * np.std(values) / np.sqrt(len(values))
    assert out[:8] == coop_summary(d, values, ci)
    assert out[6] == "* accuracy: 72.13% +- 1.81%"


def test_test_logs_need_the_flag(tmp_path, capsys):
    logs = {"seed1": "Loading weights to prompt_learner\nEvaluate on the *test* set\n" + result_block(64.4),
            "seed2": "Evaluate on the *test* set\n" + result_block(65.6)}
    d = make_runs(tmp_path / "new", logs)
    with pytest.raises(AssertionError, match="Nothing found in"):
        parse_test_res.main([d])
    capsys.readouterr()
    [summary] = parse_test_res.main([d, "--test-log"])
    assert summary.values == [64.4, 65.6]
    assert "* accuracy: 65.00% +- 0.60%" in capsys.readouterr().out


def test_old_dassl_logs_and_keyword(tmp_path, capsys):
    """Two-decimal results after only "Finished training" (Dassl < 0.6.1), and --keyword."""
    def old(accuracy: float) -> str:
        return "Finished training\nDo evaluation on test set\n" + result_block(accuracy, decimals=2)
    d = make_runs(tmp_path / "old", {"seed1": old(80.25), "seed2": old(81.75)})
    parse_test_res.main([d])
    assert "* accuracy: 81.00% +- 0.75%" in capsys.readouterr().out
    parse_test_res.main([d, "--keyword", "macro_f1"])
    out = capsys.readouterr().out
    assert f"file: {os.path.join(d, 'seed1', 'log.txt')}. macro_f1: 79.25%. " in out.splitlines()
    assert "* macro_f1: 80.00% +- 0.75%" in out


def test_multi_task_log_reports_the_mean_and_tasks(tmp_path, capsys):
    def log(a: float, b: float) -> str:
        mean = (a + b) / 2
        return ("Finished training\nFinish training\nEvaluate on the *test* set\n"
                f"=> task: Caltech101\n* total: 100\n* correct: 90\n* accuracy: {a:.1f}%\n* error: 0.0%\n"
                f"=> task: OxfordPets\n* total: 100\n* correct: 80\n* accuracy: {b:.1f}%\n* error: 0.0%\n"
                f"=> result\n* total: 200\n* correct: 170\n* accuracy: {mean:.1f}%\n* error: 0.0%\n")
    d = make_runs(tmp_path / "mt", {"seed1": log(90.0, 80.0), "seed2": log(92.0, 84.0)})
    [summary] = parse_test_res.main([d])
    assert summary.values == [85.0, 88.0]
    assert dict(summary.per_task) == {"Caltech101": [90.0, 92.0], "OxfordPets": [80.0, 84.0]}
    out = capsys.readouterr().out
    assert "* accuracy: 86.50% +- 1.50%" in out
    assert f"{d} [OxfordPets]" in out and "82.00 ± 2.00" in out


def test_softcpt_per_task_lines(tmp_path, capsys):
    def log(a: float, b: float) -> str:
        return ("Finished training\n=> result\n"
                f"* task: 0 (caltech101)\ttotal: 2,465\tmetric: {a:.2f}%\n"
                f"* task: 1 (oxford_pets)\ttotal: 3,669\tmetric: {b:.2f}%\n"
                f"* average: {(a + b) / 2:.2f}%\n* overall_metric: {(a + b) / 2:.2f}%\n")
    d = make_runs(tmp_path / "softcpt", {"seed1": log(90.0, 80.0), "seed2": log(94.0, 82.0)})
    [summary] = parse_test_res.main([d, "--keyword", "overall_metric"])
    assert summary.values == [85.0, 88.0]
    assert dict(summary.per_task) == {"caltech101": [90.0, 94.0], "oxford_pets": [80.0, 82.0]}
    assert "* overall_metric: 86.50% +- 1.50%" in capsys.readouterr().out


def test_multi_exp(tmp_path, capsys):
    make_runs(tmp_path / "all" / "exp-a", {"seed1": train_log(60.0), "seed2": train_log(62.0)})
    make_runs(tmp_path / "all" / "exp-b", {"seed1": train_log(70.0), "seed2": train_log(70.0)})
    summaries = parse_test_res.main([str(tmp_path / "all"), "--multi-exp"])
    assert [s.directory for s in summaries] == [str(tmp_path / "all" / "exp-a"), str(tmp_path / "all" / "exp-b")]
    out = capsys.readouterr().out.splitlines()
    i = out.index("Average performance")
    assert out[i + 1] == "* accuracy: 65.50%"
    assert out[i - 2] == "* accuracy: 70.00% +- 0.00%"


def test_folders_without_a_number_are_named_with_the_reason(tmp_path, capsys):
    d = make_runs(tmp_path / "exp", {
        "seed1": train_log(70.0),
        "seed3": "epoch [1/2] batch [1/1] loss 1.0\nEvaluate on the *val* set\n" + result_block(11.1),  # crashed
        "seed4": "Finished training\nFinish training\nElapsed: 0:00:05\n",  # NO_TEST run
    })
    (tmp_path / "exp" / "seed2").mkdir()
    (tmp_path / "exp" / "notes.txt").write_text("")
    (tmp_path / "exp" / ".hidden").mkdir()  # hidden entries are not runs
    [summary] = parse_test_res.main([d])
    assert summary.values == [70.0]
    why = {os.path.basename(folder): reason for folder, reason in summary.skipped}
    assert why == {
        "notes.txt": "not a run folder",
        "seed2": "no results.json and no log.txt",
        "seed3": "unfinished run: no 'Finish training' or 'Finished training' line in log.txt "
                 "(eval-only runs need --test-log)",
        "seed4": "no '* accuracy: <x>%' line after 'Finish training' in log.txt",
    }
    out = capsys.readouterr().out.splitlines()
    assert out[1:5] == [f"skipped {os.path.join(d, name)}: {why[name]}" for name in sorted(why)]
    assert out[5] == f"file: {os.path.join(d, 'seed1', 'log.txt')}. accuracy: 70.00%. "


def test_resumed_run_reads_its_newest_log(tmp_path, capsys):
    """A resumed run logs to log.txt-<time>: that log counts, ordered by the time in its name, not mtime."""
    d = make_runs(tmp_path / "exp", {"seed1": train_log(70.0), "seed2": train_log(72.0)})
    seed2 = tmp_path / "exp" / "seed2"
    (seed2 / "log.txt-2024-01-01-00-00-00-1").write_text(train_log(73.0))  # the same second, second rerun
    (seed2 / "log.txt-2024-01-01-00-00-00").write_text(train_log(99.0))
    (seed2 / "log.txt").write_text("epoch [1/2] batch [1/1] loss 1.0\n")  # the interrupted first run
    [summary] = parse_test_res.main([d])
    assert summary.values == [70.0, 73.0] and summary.skipped == []
    assert f"file: {seed2 / 'log.txt-2024-01-01-00-00-00-1'}. accuracy: 73.00%. " in capsys.readouterr().out


def test_an_interrupted_rerun_is_named(tmp_path, capsys):
    d = make_runs(tmp_path / "exp", {"seed1": train_log(70.0), "seed2": train_log(72.0)})
    (tmp_path / "exp" / "seed2" / "log.txt-2024-01-01-00-00-00").write_text("epoch [1/2] batch [1/1] loss 1.0\n")
    [summary] = parse_test_res.main([d, "--test-log"])
    assert summary.values == [70.0]
    assert summary.skipped == [(os.path.join(d, "seed2"),
                                "unfinished run: no '=> result' line in log.txt-2024-01-01-00-00-00")]


def results_cfg(seed: int) -> CN:
    return CN({"SEED": seed, "TRAINER": {"NAME": "CoOp"},
               "DATASET": {"NAME": "Caltech101,OxfordPets", "NUM_SHOTS": 16, "SUBSAMPLE_CLASSES": "all"},
               "MODEL": {"BACKBONE": {"NAME": "ViT-B/16"}}, "TEST": {"SPLIT": "test"}})


def multi_task_results(a: float, b: float) -> dict:
    """What the evaluator returns for two tasks, Caltech101 scored by mean per-class accuracy."""
    return {"overall_metric": (a - 1 + b) / 2, "accuracy": (a + b) / 2, "error_rate": 100 - (a + b) / 2,
            "Caltech101/accuracy": a, "Caltech101/mean_per_class": a - 1, "Caltech101/metric": a - 1,
            "OxfordPets/accuracy": b, "OxfordPets/metric": b}


def test_results_json_comes_first(tmp_path, capsys):
    d = make_runs(tmp_path / "exp", {"seed1": train_log(10.0), "seed2": train_log(20.0)})
    for seed, (a, b) in ((1, (91.25, 80.5)), (2, (93.0, 84.5))):
        write_results(os.path.join(d, f"seed{seed}"), multi_task_results(a, b), results_cfg(seed))
    [summary] = parse_test_res.main([d])
    assert summary.values == [85.875, 88.75]  # not the logs' 10 and 20, nor rounded to one decimal
    assert dict(summary.per_task) == {"Caltech101": [91.25, 93.0], "OxfordPets": [80.5, 84.5]}
    assert f"file: {os.path.join(d, 'seed1', 'results.json')}. accuracy: 85.88%. " in capsys.readouterr().out

    [summary] = parse_test_res.main([d, "--keyword", "error"])  # printed "* error", stored "error_rate"
    assert summary.values == [14.125, 11.25]
    [summary] = parse_test_res.main([d, "--keyword", "overall_metric"])  # each task by its own metric
    assert summary.values == [(90.25 + 80.5) / 2, (92.0 + 84.5) / 2]
    assert dict(summary.per_task) == {"Caltech101": [90.25, 92.0], "OxfordPets": [80.5, 84.5]}
    # A keyword results.json does not hold (here macro_f1) comes from the log.
    [summary] = parse_test_res.main([d, "--keyword", "macro_f1"])
    assert summary.values == [9.0, 19.0]


def test_rerun_results_json_wins_and_log_fallback(tmp_path, capsys):
    d = make_runs(tmp_path / "exp", {"seed2": train_log(20.0)})
    (tmp_path / "exp" / "seed1").mkdir()
    first = write_results(os.path.join(d, "seed1"), {"accuracy": 50.0}, results_cfg(1))
    second = write_results(os.path.join(d, "seed1"), {"accuracy": 60.0}, results_cfg(1))
    assert os.path.basename(first) == "results.json" and second != first
    os.utime(first)  # a newer modification time does not make the first run's file the newest
    [summary] = parse_test_res.main([d])
    assert summary.files == [second, os.path.join(d, "seed2", "log.txt")] and summary.values == [60.0, 20.0]
    capsys.readouterr()
    [summary] = parse_test_res.main([d, "--keyword", "macro_f1"])
    assert summary.values == [19.0]
    assert f"skipped {os.path.join(d, 'seed1')}: {os.path.basename(second)} has no 'macro_f1' and no log.txt" \
        in capsys.readouterr().out


def test_runs_as_a_script(tmp_path):
    d = make_runs(tmp_path / "exp", {"seed1": train_log(70.0), "seed2": train_log(71.0)})
    proc = subprocess.run([sys.executable, os.path.join(REPO, "parse_test_res.py"), d, "--ci95"],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "* accuracy: 70.50% +- 0.69%" in proc.stdout.splitlines()


def test_summarize_matches_numpy():
    values = [70.1, 72.3, 74.0, 69.95]
    mean, std, ci = summarize(values)
    assert mean == pytest.approx(np.mean(values), abs=1e-12)
    assert std == pytest.approx(np.std(values), abs=1e-12)
    assert ci == pytest.approx(1.96 * np.std(values) / np.sqrt(4), abs=1e-12)
    assert summarize([5.0]) == (5.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        summarize([])


def test_write_results_json(tmp_path):
    cfg = CN({"SEED": 2, "INPUT": {"SIZE": (224, 224)}, "TRAINER": {"NAME": "CoOp"},
              "DATASET": {"NAME": "Caltech101,OxfordPets", "NUM_SHOTS": 16, "SUBSAMPLE_CLASSES": "all"},
              "MODEL": {"BACKBONE": {"NAME": "ViT-B/16"}}, "TEST": {"SPLIT": "test"}})
    results = {"accuracy": 86.5, "error_rate": 13.5, "Caltech101/accuracy": 92.0, "OxfordPets/accuracy": 81.0}
    path = write_results(str(tmp_path), results, cfg, {"split": "test", "elapsed": "0:01:00"})
    assert path == str(tmp_path / "results.json")
    record = json.loads(open(path).read())
    assert record["method"] == "CoOp" and record["datasets"] == ["Caltech101", "OxfordPets"]
    assert (record["seed"], record["shots"], record["subsample"], record["backbone"]) == (2, 16, "all", "ViT-B/16")
    assert record["split"] == "test" and record["elapsed"] == "0:01:00"
    assert record["metrics"] == {"accuracy": 86.5, "error_rate": 13.5}
    assert record["per_task"] == {"Caltech101": {"accuracy": 92.0}, "OxfordPets": {"accuracy": 81.0}}
    assert record["config"]["INPUT"]["SIZE"] == [224, 224] and record["config"]["DATASET"]["NUM_SHOTS"] == 16
    assert "timestamp" in record and "git_commit" in record
    # A second run into the same folder keeps the first file.
    second = write_results(str(tmp_path), {"accuracy": 1.0}, cfg, {})
    assert second != path and json.loads(open(path).read())["metrics"]["accuracy"] == 86.5
    assert json.loads(open(second).read())["metrics"] == {"accuracy": 1.0}
