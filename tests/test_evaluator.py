"""The Classification evaluator: Dassl's printed block, macro-F1, per-class lines, multi-task means, files."""
from __future__ import annotations

import csv

import pytest
import torch

from trainers.engine.evaluator import Classification, macro_f1_score

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
        "=> result", "* total: 10", "* correct: 6", "* accuracy: 62.5%", "* error: 37.5%", "* macro_f1: 54.4%",
    ]
    assert list(results)[:3] == ["accuracy", "error_rate", "macro_f1"]
    assert results["accuracy"] == 62.5  # mean of task accuracies, not pooled 60%
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
