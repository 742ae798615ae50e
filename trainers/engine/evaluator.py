"""Dassl's ``Classification`` evaluator, for one task or several tasks evaluated together.

The printed block is Dassl's, line for line, because result parsers read it (``* accuracy: x%``
after ``Finish training`` / ``=> result``). Multi-task runs print one block per task, headed by
``=> task: <name>``, and then a final ``=> result`` block holding the mean over tasks, so every
parser that keeps the last ``* accuracy`` line gets the mean.
"""
from __future__ import annotations

import csv
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from datasets.io import atomic_open, atomic_save

__all__ = ["Classification", "macro_f1_score"]

Logits = Union[torch.Tensor, Sequence[torch.Tensor]]


def macro_f1_score(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Unweighted mean F1 over the classes present in ``y_true`` (a fraction).

    Equals scikit-learn's ``f1_score(y_true, y_pred, average="macro", labels=sorted(set(y_true)))``;
    a class that is never predicted correctly scores 0 (scikit-learn's zero-division value).
    """
    y_true, y_pred = y_true.long().view(-1), y_pred.long().view(-1)
    size = int(max(y_true.max(), y_pred.max())) + 1
    tp = torch.bincount(y_true[y_true == y_pred], minlength=size).double()
    n_true = torch.bincount(y_true, minlength=size).double()
    n_pred = torch.bincount(y_pred, minlength=size).double()
    present = n_true > 0
    # F1 = 2TP / (2TP + FP + FN), and 2TP + FP + FN = n_true + n_pred > 0 for a present class.
    return float((2 * tp[present] / (n_true[present] + n_pred[present])).mean())


class Classification:
    """Accumulate predictions batch by batch and report accuracy, error and macro-F1.

    ``task_names``/``lab2cnames``: one name and one ``{label: classname}`` map per task (a bare
    string and map for a single task). Labels are task-local. ``compute_cmat`` and
    ``save_predictions`` write ``cmat.pt`` and ``predictions.csv`` into ``output_dir``.
    """

    def __init__(self, task_names: Union[str, Sequence[str]],
                 lab2cnames: Union[Mapping[int, str], Sequence[Mapping[int, str]]], per_class: bool = False,
                 compute_cmat: bool = False, output_dir: Optional[str] = None, save_predictions: bool = False) -> None:
        if isinstance(task_names, str):
            task_names = [task_names]
        if isinstance(lab2cnames, Mapping):
            lab2cnames = [lab2cnames]
        if len(task_names) != len(lab2cnames) or not task_names:
            raise ValueError(f"Expected one label-to-classname map per task; got {len(task_names)} task names "
                             f"and {len(lab2cnames)} maps")
        if (compute_cmat or save_predictions) and not output_dir:
            raise ValueError("compute_cmat and save_predictions need an output_dir to write into")
        self.task_names = list(task_names)
        self.lab2cnames = [dict(m) for m in lab2cnames]
        self.num_classes = torch.tensor([len(m) for m in self.lab2cnames])
        self.per_class = per_class
        self.compute_cmat = compute_cmat
        self.output_dir = output_dir
        self.save_predictions = save_predictions
        self.reset()

    @property
    def multi_task(self) -> bool:
        return len(self.task_names) > 1

    def reset(self) -> None:
        self._tasks: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []
        self._preds: List[torch.Tensor] = []
        self._logits: List[torch.Tensor] = []
        self._impaths: List[str] = []

    def process(self, logits: Logits, labels: torch.Tensor, tasks: Optional[torch.Tensor] = None,
                impaths: Optional[Sequence[str]] = None) -> None:
        """Add one batch.

        ``logits``: a [B, C] tensor, or a sequence of B 1-D tensors when rows belong to tasks
        with different class counts; each row must have its task's class count.
        ``tasks``: task index per row (may be omitted for a single task).
        """
        labels = torch.as_tensor(labels).detach().cpu().long().view(-1)
        n = labels.numel()
        if tasks is None:
            if self.multi_task:
                raise ValueError(f"process() needs the task of every row when evaluating {len(self.task_names)} tasks")
            tasks = torch.zeros(n, dtype=torch.long)
        tasks = torch.as_tensor(tasks).detach().cpu().long().view(-1)
        if isinstance(logits, torch.Tensor):
            if logits.dim() != 2 or logits.shape[0] != n:
                raise ValueError(f"Expected logits of shape [{n}, classes] for {n} labels; got {list(logits.shape)}")
            widths = torch.full((n,), logits.shape[1], dtype=torch.long)
            preds = logits.detach().argmax(dim=1).cpu()
            rows = list(logits.detach().float().cpu()) if self.save_predictions else []
        else:
            rows = [torch.as_tensor(r).detach().view(-1) for r in logits]
            if len(rows) != n:
                raise ValueError(f"Got {len(rows)} logit rows for {n} labels")
            widths = torch.tensor([r.numel() for r in rows], dtype=torch.long)
            preds = torch.tensor([int(r.argmax()) for r in rows], dtype=torch.long)
            rows = [r.float().cpu() for r in rows] if self.save_predictions else []
        if tasks.numel() != n:
            raise ValueError(f"Got {tasks.numel()} task indices for {n} labels")
        self._check_rows(tasks, labels, widths)
        if impaths is not None and len(impaths) != n:
            raise ValueError(f"Got {len(impaths)} image paths for {n} labels")
        self._tasks.append(tasks)
        self._labels.append(labels)
        self._preds.append(preds)
        self._logits.extend(rows)
        self._impaths.extend(impaths if impaths is not None else [""] * n)

    def _check_rows(self, tasks: torch.Tensor, labels: torch.Tensor, widths: torch.Tensor) -> None:
        bad_task = (tasks < 0) | (tasks >= len(self.task_names))
        if bad_task.any():
            raise ValueError(f"Task index {int(tasks[bad_task][0])} is out of range for tasks {self.task_names}")
        expected = self.num_classes[tasks]
        for what, bad in (("logits", widths != expected), ("label", (labels < 0) | (labels >= expected))):
            if bad.any():
                i = int(bad.nonzero()[0])
                name = self.task_names[int(tasks[i])]
                value = f"{int(widths[i])} logits" if what == "logits" else f"label {int(labels[i])}"
                raise ValueError(f'Row {i} of the batch has {value}, but task "{name}" has {int(expected[i])} classes')

    # ----- reporting -----------------------------------------------------------------------------

    def evaluate(self) -> "OrderedDict[str, float]":
        """Print the result block(s) and return the metrics (``accuracy`` first; task means when multi-task)."""
        if not self._labels:
            raise RuntimeError("Nothing to evaluate: process() was not called since reset()")
        tasks, labels, preds = (torch.cat(x) for x in (self._tasks, self._labels, self._preds))
        per_task: List[Tuple[str, Dict[str, float]]] = []
        total = correct = 0
        for t, name in enumerate(self.task_names):
            mask = tasks == t
            if not mask.any():
                continue
            print(f"=> task: {name}" if self.multi_task else "=> result")
            metrics, n, k = self._task_block(labels[mask], preds[mask], self.lab2cnames[t])
            per_task.append((name, metrics))
            total, correct = total + n, correct + k
        results: "OrderedDict[str, float]" = OrderedDict()
        if self.multi_task:
            for key in per_task[0][1]:
                results[key] = sum(m[key] for _, m in per_task) / len(per_task)
            print("=> result")
            self._print_counts(total, correct, results["accuracy"], results["macro_f1"])
            for name, metrics in per_task:
                for key, value in metrics.items():
                    results[f"{name}/{key}"] = value
        else:
            results.update(per_task[0][1])
        if self.compute_cmat:
            self._save_cmat(tasks, labels, preds)
        if self.save_predictions:
            self._save_predictions(tasks, labels, preds)
        return results

    @staticmethod
    def _print_counts(total: int, correct: int, accuracy: float, macro_f1: float) -> None:
        print(f"* total: {total:,}")
        print(f"* correct: {correct:,}")
        print(f"* accuracy: {accuracy:.1f}%")
        print(f"* error: {100.0 - accuracy:.1f}%")
        print(f"* macro_f1: {macro_f1:.1f}%")

    def _task_block(self, labels: torch.Tensor, preds: torch.Tensor,
                    lab2cname: Dict[int, str]) -> Tuple[Dict[str, float], int, int]:
        """Print one task's lines; return its metrics, total and correct count."""
        hits = labels == preds
        total, correct = labels.numel(), int(hits.sum())
        accuracy = 100.0 * correct / total
        metrics = {"accuracy": accuracy, "error_rate": 100.0 - accuracy,
                   "macro_f1": 100.0 * macro_f1_score(labels, preds)}
        self._print_counts(total, correct, accuracy, metrics["macro_f1"])
        if self.per_class:
            print("=> per-class result")
            accs = []
            for label in torch.unique(labels).tolist():
                of_label = labels == label
                n, k = int(of_label.sum()), int(hits[of_label].sum())
                accs.append(100.0 * k / n)
                print(f"* class: {label} ({lab2cname.get(label, '')})\t"
                      f"total: {n:,}\tcorrect: {k:,}\tacc: {accs[-1]:.1f}%")
            metrics["perclass_accuracy"] = sum(accs) / len(accs)
            print(f"* average: {metrics['perclass_accuracy']:.1f}%")
        return metrics, total, correct

    def _save_cmat(self, tasks: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor) -> None:
        """Row-normalised confusion matrix per task (C x C, row = true label; absent classes give zero rows).

        Stored as tensors (one, or a dict by task name) so it loads with ``weights_only=True``.
        """
        cmats = OrderedDict()
        for t, name in enumerate(self.task_names):
            mask = tasks == t
            if not mask.any():
                continue
            c = int(self.num_classes[t])
            counts = torch.bincount(labels[mask] * c + preds[mask], minlength=c * c).view(c, c).double()
            cmats[name] = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        path = os.path.join(self.output_dir, "cmat.pt")
        payload = cmats if self.multi_task else next(iter(cmats.values()))
        atomic_save(path, lambda f: torch.save(payload, f))
        print(f"Confusion matrix is saved to {path}")

    def _save_predictions(self, tasks: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor) -> None:
        """``predictions.csv``: one row per evaluated image in loader order, logits padded with empty cells."""
        width = max(r.numel() for r in self._logits)
        header = ["impath"] + (["task"] if self.multi_task else []) + ["label", "prediction"]
        header += [f"logit_{i}" for i in range(width)]
        path = os.path.join(self.output_dir, "predictions.csv")
        with atomic_open(path, "w") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            for i, row in enumerate(self._logits):
                cells = [self._impaths[i]] + ([self.task_names[int(tasks[i])]] if self.multi_task else [])
                cells += [int(labels[i]), int(preds[i])] + [f"{v:.9g}" for v in row.tolist()]
                writer.writerow(cells + [""] * (width - row.numel()))
        print(f"Predictions are saved to {path}")
