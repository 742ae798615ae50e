"""Evaluators: Dassl's printed block, macro-F1, per-class lines, per-task metrics, multi-task means,
SoftCPT's lines, model selection, evaluator names, files."""
from __future__ import annotations

import csv

import pytest
import torch

import parse_test_res
from datasets.manager import Task
from datasets.registry import Registry
from trainers.engine import evaluator as evaluation
from trainers.engine.config import get_cfg_default
from trainers.engine.evaluator import (Classification, ClassificationMT, Metric, build_evaluator, macro_f1_score,
                                       mean_per_class_accuracy)

NAMES = {0: "cat", 1: "dog", 2: "bird", 3: "fish"}
# Class 2 is never predicted; class 3 is predicted once but never true (so it is not averaged).
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 3, 1, 0, 1]
# F1: class 0 = 2*2/(2*2+1+1) = 2/3, class 1 = 2*1/(2+1+1) = 1/2, class 2 = 0 -> mean 7/18 = 38.9%
MACRO_F1 = 100 * (2 / 3 + 1 / 2 + 0) / 3


def one_hot_logits(preds, num_classes):
    logits = torch.randn(len(preds), num_classes) * 0.1
    logits[torch.arange(len(preds)), torch.tensor(preds)] = 5.0
    return logits


def test_macro_f1_by_hand():
    assert macro_f1_score(torch.tensor(Y_TRUE), torch.tensor(Y_PRED)) == pytest.approx(MACRO_F1 / 100)
    # Zero division (class 1 never predicted) counts as 0, as scikit-learn's default does.
    assert macro_f1_score(torch.tensor([0, 1]), torch.tensor([0, 0])) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1_score(torch.tensor([2, 2]), torch.tensor([2, 2])) == 1.0


def test_result_block_is_dassls(capsys):
    evaluator = Classification("OxfordPets", NAMES)
    logits = one_hot_logits(Y_PRED, 4)
    evaluator.process(logits[:4], torch.tensor(Y_TRUE[:4]))  # two batches
    evaluator.process(logits[4:], torch.tensor(Y_TRUE[4:]))
    results = evaluator.evaluate()
    assert capsys.readouterr().out == (
        "=> result\n* total: 6\n* correct: 3\n* accuracy: 50.0%\n* error: 50.0%\n* macro_f1: 38.9%\n")
    assert list(results) == ["accuracy", "error_rate", "macro_f1"]
    assert results["accuracy"] == 50.0 and results["error_rate"] == 50.0
    assert results["macro_f1"] == pytest.approx(MACRO_F1)
    assert all(type(v) is float for v in results.values())


def test_thousands_separators_and_reset(capsys):
    evaluator = Classification("ImageNet", {0: "a", 1: "b"})
    evaluator.process(torch.zeros(5, 2), torch.ones(5, dtype=torch.long))
    evaluator.reset()
    labels = torch.zeros(1234, dtype=torch.long)
    preds = [0] * 1000 + [1] * 234
    evaluator.process(one_hot_logits(preds, 2), labels)
    results = evaluator.evaluate()
    out = capsys.readouterr().out.splitlines()
    assert out[1:5] == ["* total: 1,234", "* correct: 1,000", "* accuracy: 81.0%", "* error: 19.0%"]
    assert results["accuracy"] == pytest.approx(100 * 1000 / 1234)


def test_per_class_block(capsys):
    evaluator = Classification("Pets", NAMES, per_class=True)
    evaluator.process(one_hot_logits(Y_PRED, 4), torch.tensor(Y_TRUE))
    results = evaluator.evaluate()
    lines = capsys.readouterr().out.splitlines()
    assert lines[6:] == [
        "=> per-class result",
        "* class: 0 (cat)\ttotal: 3\tcorrect: 2\tacc: 66.7%",
        "* class: 1 (dog)\ttotal: 2\tcorrect: 1\tacc: 50.0%",
        "* class: 2 (bird)\ttotal: 1\tcorrect: 0\tacc: 0.0%",
        "* average: 38.9%",
    ]
    assert results["perclass_accuracy"] == pytest.approx((200 / 3 + 50 + 0) / 3)


def test_multi_task_blocks_and_mean(capsys):
    # Task A (3 classes): 3 of 6 right; task B (2 classes): 3 of 4 right. Rows of both tasks are mixed.
    a_true, a_pred = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 1]
    b_true, b_pred = [0, 0, 1, 1], [0, 1, 1, 1]
    a_rows, b_rows = list(one_hot_logits(a_pred, 3)), list(one_hot_logits(b_pred, 2))
    evaluator = Classification(["A", "B"], [{0: "x", 1: "y", 2: "z"}, {0: "u", 1: "v"}])
    order = [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("A", 3), ("B", 2), ("B", 3), ("A", 4), ("A", 5)]
    rows = [a_rows[i] if t == "A" else b_rows[i] for t, i in order]
    labels = [a_true[i] if t == "A" else b_true[i] for t, i in order]
    tasks = [0 if t == "A" else 1 for t, _ in order]
    evaluator.process(rows[:5], torch.tensor(labels[:5]), tasks=torch.tensor(tasks[:5]))
    evaluator.process(rows[5:], torch.tensor(labels[5:]), tasks=torch.tensor(tasks[5:]))
    results = evaluator.evaluate()
    f1_a = 100 * (2 / 3 + 0.4 + 0) / 3
    f1_b = 100 * (2 / 3 + 0.8) / 2
    assert capsys.readouterr().out.splitlines() == [
        "=> task: A", "* total: 6", "* correct: 3", "* accuracy: 50.0%", "* error: 50.0%", "* macro_f1: 35.6%",
        "=> task: B", "* total: 4", "* correct: 3", "* accuracy: 75.0%", "* error: 25.0%", "* macro_f1: 73.3%",
        # The mean block carries no summed counts: they would sit beside a mean they did not produce.
        "=> result", "* unweighted mean over 2 tasks", "* accuracy: 62.5%", "* error: 37.5%", "* macro_f1: 54.4%",
        "* overall_metric: 62.50%",
    ]
    assert list(results)[:4] == ["overall_metric", "accuracy", "error_rate", "macro_f1"]
    assert results["accuracy"] == 62.5  # mean of task accuracies, not pooled 60%
    assert results["overall_metric"] == 62.5  # both tasks are scored by accuracy
    assert results["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert results["A/accuracy"] == 50.0 and results["B/accuracy"] == 75.0
    assert results["B/macro_f1"] == pytest.approx(f1_b)


def test_rows_must_fit_their_task():
    evaluator = Classification(["A", "B"], [{0: "x", 1: "y", 2: "z"}, {0: "u", 1: "v"}])
    with pytest.raises(ValueError, match='Row 1 of the batch has 3 logits, but task "B" has 2 classes'):
        evaluator.process(torch.zeros(2, 3), torch.tensor([0, 1]), tasks=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='label 2, but task "B" has 2 classes'):
        evaluator.process([torch.zeros(2)], torch.tensor([2]), tasks=torch.tensor([1]))
    with pytest.raises(ValueError, match="needs the task"):
        evaluator.process(torch.zeros(1, 3), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="Nothing to evaluate"):
        evaluator.evaluate()


def test_confusion_matrix_file(tmp_path, capsys):
    evaluator = Classification("Pets", NAMES, compute_cmat=True, output_dir=str(tmp_path))
    evaluator.process(one_hot_logits(Y_PRED, 4), torch.tensor(Y_TRUE))
    evaluator.evaluate()
    assert f"Confusion matrix is saved to {tmp_path / 'cmat.pt'}" in capsys.readouterr().out
    cmat = torch.load(str(tmp_path / "cmat.pt"), weights_only=True)
    expected = torch.tensor([[2 / 3, 0, 0, 1 / 3], [1 / 2, 1 / 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
                            dtype=torch.float64)
    torch.testing.assert_close(cmat, expected)


def test_predictions_csv_single_task(tmp_path, capsys):
    evaluator = Classification("Pets", {0: "cat", 1: "dog"}, output_dir=str(tmp_path), save_predictions=True)
    logits = torch.tensor([[2.5, -1.0], [0.125, 3.0]])
    evaluator.process(logits, torch.tensor([0, 0]), impaths=["/d/a.jpg", "/d/b.jpg"])
    evaluator.evaluate()
    assert (tmp_path / "predictions.csv").read_text() == (
        "impath,label,prediction,logit_0,logit_1\n/d/a.jpg,0,0,2.5,-1\n/d/b.jpg,0,1,0.125,3\n")
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # written atomically, no leftovers


def test_predictions_csv_multi_task_pads_short_rows(tmp_path, capsys):
    evaluator = Classification(["A", "B"], [{0: "x", 1: "y", 2: "z"}, {0: "u", 1: "v"}],
                               output_dir=str(tmp_path), save_predictions=True)
    rows = [torch.tensor([0.5, 1.5, -2.0]), torch.tensor([4.0, 1.0])]
    evaluator.process(rows, torch.tensor([1, 1]), tasks=torch.tensor([0, 1]), impaths=["a.jpg", "b.jpg"])
    evaluator.evaluate()
    with open(tmp_path / "predictions.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [["impath", "task", "label", "prediction", "logit_0", "logit_1", "logit_2"],
                     ["a.jpg", "A", "1", "1", "0.5", "1.5", "-2"],
                     ["b.jpg", "B", "1", "0", "4", "1", ""]]


def test_files_need_an_output_dir():
    with pytest.raises(ValueError, match="output_dir"):
        Classification("Pets", NAMES, save_predictions=True)


# ----- per-task metrics ---------------------------------------------------------------------------

def test_mean_per_class_accuracy_by_hand():
    # Recall: class 0 = 2/3, class 1 = 1/2, class 2 = 0; class 3 has no rows, so it is not averaged.
    scores = one_hot_logits(Y_PRED, 4)
    assert mean_per_class_accuracy(scores, torch.tensor(Y_TRUE)) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # Unlike plain accuracy (3/5), a rare class weighs as much as a frequent one: (4/4 + 0/1) / 2.
    assert mean_per_class_accuracy(one_hot_logits([0, 0, 0, 0, 0], 2), torch.tensor([0, 0, 0, 0, 1])) == 0.5


def test_a_task_named_metric_is_printed_and_returned(capsys):
    evaluator = Classification("Caltech101", NAMES, metrics=["mean_acc"])  # SoftCPT's name for it
    evaluator.process(one_hot_logits(Y_PRED, 4), torch.tensor(Y_TRUE))
    results = evaluator.evaluate()
    lines = capsys.readouterr().out.splitlines()
    assert lines[:6] == ["=> result", "* total: 6", "* correct: 3", "* accuracy: 50.0%", "* error: 50.0%",
                         "* macro_f1: 38.9%"]
    assert lines[6:] == ["* mean_per_class: 38.9%"]
    assert list(results) == ["accuracy", "error_rate", "macro_f1", "mean_per_class"]  # single task: accuracy first
    assert results["mean_per_class"] == pytest.approx(100 * 7 / 18)


def test_score_based_metric_gets_its_tasks_logits(monkeypatch, capsys):
    """Metrics that rank scores (ELEVATER's mAP, ROC-AUC) get each task's own rows in loader order."""
    seen = []

    def top2(scores, targets):
        seen.append((scores.clone(), targets.clone()))
        return float((scores.topk(2, dim=1).indices == targets[:, None]).any(dim=1).double().mean())

    registry = Registry("metric")
    registry.register(evaluation.METRIC_REGISTRY.get("accuracy"), name="accuracy")
    registry.register(Metric(top2), name="top2")
    monkeypatch.setattr(evaluation, "METRIC_REGISTRY", registry)
    evaluator = Classification(["A", "B"], [{0: "x", 1: "y", 2: "z"}, {0: "u", 1: "v"}], metrics=["top2", "accuracy"])
    a_rows = [torch.tensor([3.0, 2.0, 1.0]), torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0])]
    evaluator.process([a_rows[0], torch.tensor([1.0, 0.0])], torch.tensor([2, 0]), tasks=torch.tensor([0, 1]))
    evaluator.process(a_rows[1:], torch.tensor([1, 0]), tasks=torch.tensor([0, 0]))
    results = evaluator.evaluate()
    [(scores, targets)] = seen
    torch.testing.assert_close(scores, torch.stack(a_rows))
    assert targets.tolist() == [2, 1, 0]
    assert results["A/top2"] == pytest.approx(100 / 3) and results["A/metric"] == pytest.approx(100 / 3)
    assert results["overall_metric"] == pytest.approx((100 / 3 + 100) / 2)
    assert "* top2: 33.3%" in capsys.readouterr().out


def test_unknown_metric_names_the_task():
    with pytest.raises(ValueError, match='Task "B": Unknown metric "11point_map".*Registered: .*accuracy, mean_per_class'):
        Classification(["A", "B"], [NAMES, NAMES], metrics=["accuracy", "11point_map"])


# ----- multi-task: SoftCPT's lines and model selection ----------------------------------------------

def two_tasks(**kwargs) -> Classification:
    """Task A (mean per-class accuracy): recalls 2/3, 1/2, 0 -> 38.9%; task B (accuracy): 3 of 4 -> 75%."""
    evaluator = Classification(["caltech101", "oxford_pets"], [NAMES, {0: "u", 1: "v"}],
                               metrics=["mean_per_class", "accuracy"], **kwargs)
    evaluator.process(list(one_hot_logits(Y_PRED, 4)) + list(one_hot_logits([0, 1, 1, 1], 2)),
                      torch.tensor(Y_TRUE + [0, 0, 1, 1]), tasks=torch.tensor([0] * 6 + [1] * 4))
    return evaluator


def test_softcpt_lines_read_by_its_parser(tmp_path, capsys):
    results = two_tasks(per_task_result=True).evaluate()
    out = capsys.readouterr().out
    mean = (100 * 7 / 18 + 75.0) / 2
    assert out.splitlines()[-9:] == [
        "=> result", "* unweighted mean over 2 tasks", "* accuracy: 62.5%", "* error: 37.5%", "* macro_f1: 56.1%",
        f"* overall_metric: {mean:.2f}%",
        "* task: 0 (caltech101)\ttotal: 6\tmetric: 38.89%",
        "* task: 1 (oxford_pets)\ttotal: 4\tmetric: 75.00%",
        f"* average: {mean:.2f}%",
    ]
    assert "=> task: caltech101" in out and "* mean_per_class: 38.9%" in out
    assert results["overall_metric"] == pytest.approx(mean) and list(results)[0] == "overall_metric"
    assert results["caltech101/metric"] == pytest.approx(100 * 7 / 18) and results["oxford_pets/metric"] == 75.0
    # SoftCPT's parser: "* overall_metric: x%" after its end signal, and its per-task lines.
    log = tmp_path / "log.txt"
    log.write_text("Finished training\nEvaluate on the *test* set\n" + out)
    parsed = parse_test_res.parse_log(str(log), keyword="overall_metric")
    assert parsed.value == round(mean, 2)
    assert dict(parsed.per_task) == {"caltech101": 38.89, "oxford_pets": 75.0}
    # Parsers that keep the last "* accuracy" line get the mean of the tasks' accuracies; per task, the
    # accuracy of each task's block (SoftCPT's per-task lines hold its metric, not the accuracy).
    by_accuracy = parse_test_res.parse_log(str(log))
    assert by_accuracy.value == 62.5 and dict(by_accuracy.per_task) == {"caltech101": 50.0, "oxford_pets": 75.0}


def test_per_task_lines_need_the_switch(capsys):
    two_tasks().evaluate()
    out = capsys.readouterr().out
    assert "* overall_metric: 56.94%" in out and "* task:" not in out and "* average" not in out


def test_selection_by_a_task_name(capsys):
    results = two_tasks(select_by="oxford_pets").evaluate()
    assert list(results)[0] == "oxford_pets/metric" and list(results.values())[0] == 75.0
    assert results["overall_metric"] == pytest.approx((100 * 7 / 18 + 75.0) / 2)  # still reported
    with pytest.raises(ValueError, match=r'"Pets" \(DATASET.MULTITASK_EVALKEY\).*\[\'caltech101\', \'oxford_pets\'\]'):
        two_tasks(select_by="Pets")


# ----- evaluators by name ---------------------------------------------------------------------------

def make_tasks(metrics):
    return [Task(index=i, name=f"T{i}", classnames=["a", "b"], lab2cname={0: "a", 1: "b"}, num_classes=2,
                 template="{}", class_offset=2 * i, metric=metric) for i, metric in enumerate(metrics)]


def test_build_evaluator_from_the_config(tmp_path, capsys):
    cfg = get_cfg_default()
    cfg.TEST.EVALUATOR = "ClassificationMT"
    cfg.TEST.PER_TASK_RESULT = True
    cfg.TEST.SAVE_PREDICTIONS = True
    cfg.DATASET.MULTITASK_EVALKEY = "T1"  # MVLPT's key, which its trainer adds to the config
    evaluator = build_evaluator(cfg, make_tasks(["accuracy", "mean_acc"]), str(tmp_path))
    assert type(evaluator) is ClassificationMT
    assert evaluator.metric_names == ["accuracy", "mean_per_class"] and evaluator.select_by == "T1"
    evaluator.process(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 1]),
                      tasks=torch.tensor([0, 1, 1]), impaths=["a.jpg", "b.jpg", "c.jpg"])
    results = evaluator.evaluate()
    assert list(results)[0] == "T1/metric" and results["T1/metric"] == 0.0
    assert "* task: 1 (T1)\ttotal: 2\tmetric: 0.00%" in capsys.readouterr().out
    assert (tmp_path / "predictions.csv").read_text().splitlines()[1:] == [
        "a.jpg,T0,0,0,1,0", "b.jpg,T1,0,1,0,1", "c.jpg,T1,1,0,1,0"]


def test_build_evaluator_defaults_without_mvlpt_key():
    cfg = get_cfg_default()
    assert "MULTITASK_EVALKEY" not in cfg.DATASET
    evaluator = build_evaluator(cfg, make_tasks(["accuracy"]), None)
    assert type(evaluator) is Classification and evaluator.select_by == "average"


def test_one_task_with_softcpts_evaluator_adds_its_lines(capsys):
    evaluator = ClassificationMT("Caltech101", NAMES, metrics=["mean_per_class"], per_task_result=True)
    evaluator.process(one_hot_logits(Y_PRED, 4), torch.tensor(Y_TRUE))
    results = evaluator.evaluate()
    assert capsys.readouterr().out.splitlines() == [
        "=> result", "* total: 6", "* correct: 3", "* accuracy: 50.0%", "* error: 50.0%", "* macro_f1: 38.9%",
        "* mean_per_class: 38.9%", "* overall_metric: 38.89%",
        "* task: 0 (Caltech101)\ttotal: 6\tmetric: 38.89%", "* average: 38.89%"]
    assert list(results)[0] == "accuracy" and results["overall_metric"] == pytest.approx(100 * 7 / 18)


def test_unknown_evaluator_names_the_key_and_the_known_ones():
    cfg = get_cfg_default()
    cfg.TEST.EVALUATOR = "ClassificationMTL"
    with pytest.raises(ValueError, match=r'TEST.EVALUATOR: Unknown evaluator "ClassificationMTL".*'
                                         r"Registered: Classification, ClassificationMT"):
        build_evaluator(cfg, make_tasks(["accuracy"]), None)
