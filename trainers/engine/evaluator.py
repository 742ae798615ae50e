"""Evaluators chosen by ``TEST.EVALUATOR``, and the per-task metrics a data set can name.

Single-task runs print Dassl's ``Classification`` block line for line, because result parsers
read it (``* accuracy: x%`` after ``Finish training`` / ``=> result``). Multi-task runs print one
block per task, headed by ``=> task: <name>`` and holding that task's own counts, then a final
``=> result`` block with the unweighted mean over tasks, so every parser that keeps the last
``* accuracy`` line gets the mean. That block ends with SoftCPT's lines (``* overall_metric``; with
``TEST.PER_TASK_RESULT`` also ``* task: i (name)`` per task and ``* average``), which its
``parse_test_res.py --keyword overall_metric`` reads.

Each task is scored by the metric its data set names (``Task.metric``, a ``METRIC_REGISTRY`` entry);
the unweighted mean of those scores is ``overall_metric``, the value model selection uses unless
``DATASET.MULTITASK_EVALKEY`` (MVLPT) names one task.
"""
from __future__ import annotations

import csv
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from datasets.io import atomic_open, atomic_save
from datasets.registry import Registry
from trainers.engine import distributed, elevater_metrics

if TYPE_CHECKING:
    from datasets.manager import Task

__all__ = ["Classification", "ClassificationMT", "EVALUATOR_REGISTRY", "METRIC_REGISTRY", "Metric",
           "accuracy", "build_evaluator", "macro_f1_score", "mean_per_class_accuracy"]

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


def accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose highest score is the target class."""
    return float((scores.argmax(dim=1) == targets).double().mean())


def mean_per_class_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Recall averaged over the classes present in ``targets`` (scikit-learn's balanced accuracy).

    Classes without test rows are left out, where SoftCPT's ``mean_acc`` would give NaN.
    """
    preds = scores.argmax(dim=1)
    hits = torch.bincount(targets[preds == targets], minlength=scores.shape[1]).double()
    counts = torch.bincount(targets, minlength=scores.shape[1]).double()
    present = counts > 0
    return float((hits[present] / counts[present]).mean())


@dataclass(frozen=True)
class Metric:
    """A per-task metric ``fn(scores [N, C], targets [N]) -> fraction in [0, 1]``.

    An ``argmax_only`` metric is given one-hot predictions as scores, so the evaluator need not
    keep the logits of its tasks (an ImageNet test set would be 50,000 x 1,000 floats).
    """

    fn: Callable[[torch.Tensor, torch.Tensor], float]
    argmax_only: bool = False


METRIC_REGISTRY = Registry("metric")
# The aliases are the names SoftCPT's (overall_acc, mean_acc) and ELEVATER's data sets use.
METRIC_REGISTRY.register(Metric(accuracy, argmax_only=True), name="accuracy", aliases=("overall_acc",))
METRIC_REGISTRY.register(Metric(mean_per_class_accuracy, argmax_only=True), name="mean_per_class",
                         aliases=("mean_acc", "mean-per-class"))
# ELEVATER's own definitions (its mean per-class accuracy drops classes without test rows before the argmax).
METRIC_REGISTRY.register(Metric(elevater_metrics.mean_per_class_accuracy), name="mean_per_class_accuracy")
METRIC_REGISTRY.register(Metric(elevater_metrics.eleven_point_map), name="11point_mAP")
METRIC_REGISTRY.register(Metric(elevater_metrics.roc_auc), name="roc_auc")

EVALUATOR_REGISTRY = Registry("evaluator")


@EVALUATOR_REGISTRY.register
class Classification:
    """Accumulate predictions batch by batch and report accuracy, error, macro-F1 and each task's metric.

    ``task_names``/``lab2cnames``: one name and one ``{label: classname}`` map per task (a bare
    string and map for a single task). Labels are task-local. ``metrics``: one ``METRIC_REGISTRY``
    name per task (default: accuracy). ``select_by``: ``"average"`` or a task name, which multi-task
    score ``evaluate()`` returns first. ``per_task_result`` adds SoftCPT's per-task lines.
    ``compute_cmat`` and ``save_predictions`` write ``cmat.pt`` and ``predictions.csv`` into ``output_dir``.
    """

    #: whether a single-task run also prints SoftCPT's lines (multi-task runs always do)
    softcpt_lines_for_one_task = False

    def __init__(self, task_names: Union[str, Sequence[str]],
                 lab2cnames: Union[Mapping[int, str], Sequence[Mapping[int, str]]], per_class: bool = False,
                 compute_cmat: bool = False, output_dir: Optional[str] = None, save_predictions: bool = False,
                 metrics: Optional[Sequence[str]] = None, select_by: str = "average",
                 per_task_result: bool = False) -> None:
        if isinstance(task_names, str):
            task_names = [task_names]
        if isinstance(lab2cnames, Mapping):
            lab2cnames = [lab2cnames]
        if len(task_names) != len(lab2cnames) or not task_names:
            raise ValueError(f"Expected one label-to-classname map per task; got {len(task_names)} task names "
                             f"and {len(lab2cnames)} maps")
        metrics = list(metrics) if metrics is not None else ["accuracy"] * len(task_names)
        if len(metrics) != len(task_names):
            raise ValueError(f"Expected one metric name per task; got {len(metrics)} for {len(task_names)} tasks")
        if (compute_cmat or save_predictions) and not output_dir:
            raise ValueError("compute_cmat and save_predictions need an output_dir to write into")
        if select_by != "average" and select_by not in task_names:
            raise ValueError(f'Model selection by "{select_by}" (DATASET.MULTITASK_EVALKEY): expected "average" '
                             f"or a task name, one of {list(task_names)}")
        self.task_names = list(task_names)
        self.lab2cnames = [dict(m) for m in lab2cnames]
        self.num_classes = torch.tensor([len(m) for m in self.lab2cnames])
        self.metric_names = [self._resolve_metric(name, task) for name, task in zip(metrics, self.task_names)]
        self.metrics = [METRIC_REGISTRY.get(name) for name in self.metric_names]
        self.select_by = select_by
        self.per_task_result = per_task_result
        self.per_class = per_class
        self.compute_cmat = compute_cmat
        self.output_dir = output_dir
        self.save_predictions = save_predictions
        self.reset()

    @staticmethod
    def _resolve_metric(name: str, task: str) -> str:
        try:
            return METRIC_REGISTRY.resolve(name)
        except KeyError as exc:
            raise ValueError(f'Task "{task}": {exc.args[0]}') from None

    @property
    def multi_task(self) -> bool:
        return len(self.task_names) > 1

    def reset(self) -> None:
        self._tasks: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []
        self._preds: List[torch.Tensor] = []
        self._logits: List[torch.Tensor] = []
        self._impaths: List[str] = []
        self._task_scores: List[List[torch.Tensor]] = [[] for _ in self.task_names]
        self._task_targets: List[List[torch.Tensor]] = [[] for _ in self.task_names]

    def process(self, logits: Logits, labels: torch.Tensor, tasks: Optional[torch.Tensor] = None,
                impaths: Optional[Sequence[str]] = None, targets: Optional[Logits] = None) -> None:
        """Add one batch.

        ``logits``: a [B, C] tensor, or a sequence of B 1-D tensors when rows belong to tasks
        with different class counts; each row must have its task's class count.
        ``tasks``: task index per row (may be omitted for a single task).
        ``targets``: multi-hot rows shaped like ``logits`` (multi-label tasks); the score-based
        metrics (11-point mAP, ROC-AUC) then rank against every label, not only ``labels``.
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
            rows: Sequence[torch.Tensor] = logits.detach()
        else:
            rows = [torch.as_tensor(r).detach().view(-1) for r in logits]
            if len(rows) != n:
                raise ValueError(f"Got {len(rows)} logit rows for {n} labels")
            widths = torch.tensor([r.numel() for r in rows], dtype=torch.long)
            preds = torch.tensor([int(r.argmax()) for r in rows], dtype=torch.long)
        if tasks.numel() != n:
            raise ValueError(f"Got {tasks.numel()} task indices for {n} labels")
        self._check_rows(tasks, labels, widths)
        if impaths is not None and len(impaths) != n:
            raise ValueError(f"Got {len(impaths)} image paths for {n} labels")
        self._tasks.append(tasks)
        self._labels.append(labels)
        self._preds.append(preds)
        self._impaths.extend(impaths if impaths is not None else [""] * n)
        scored = [not self.metrics[t].argmax_only for t in tasks.tolist()]
        if self.save_predictions or any(scored):
            rows = [r.float().cpu() for r in rows]
            if self.save_predictions:
                self._logits.extend(rows)
            target_rows = [None] * n if targets is None else [torch.as_tensor(r).detach().view(-1).cpu()
                                                              for r in targets]
            for row, target, t, keep in zip(rows, target_rows, tasks.tolist(), scored):
                if keep:
                    self._task_scores[t].append(row)
                    if target is not None:
                        self._task_targets[t].append(target)

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
        """Print the result block(s) and return the metrics, the model-selection score first.

        One task: Dassl's keys (``accuracy`` first). Several: ``overall_metric`` (the mean of the
        tasks' own metrics) first, or ``<task>/metric`` when ``select_by`` names a task; then the
        means over tasks and ``<task>/<key>`` for every task. With several processes every rank
        calls it; the rows of all ranks are scored and rank 0 writes the files.
        """
        self.gather_ranks()
        if not self._labels:
            raise RuntimeError("Nothing to evaluate: process() was not called since reset()")
        tasks, labels, preds = (torch.cat(x) for x in (self._tasks, self._labels, self._preds))
        per_task: List[Tuple[int, Dict[str, float], int]] = []  # (task index, its metrics, its row count)
        for t, name in enumerate(self.task_names):
            mask = tasks == t
            if not mask.any():
                continue
            print(f"=> task: {name}" if self.multi_task else "=> result")
            per_task.append((t, self._task_block(t, labels[mask], preds[mask]), int(mask.sum())))
        if self.multi_task:
            results = self._multi_task_results(per_task)
        else:
            results = OrderedDict(per_task[0][1])
            results.pop("metric")
            if self.softcpt_lines_for_one_task:
                results["overall_metric"] = self._print_softcpt_lines(per_task)
        if self.compute_cmat and distributed.is_main():
            self._save_cmat(tasks, labels, preds)
        if self.save_predictions and distributed.is_main():
            self._save_predictions(tasks, labels, preds)
        return results

    def gather_ranks(self) -> None:
        """Several processes: replace this rank's rows by every rank's, in rank order, which is the
        loader's order because each rank evaluates one contiguous block of it."""
        if not distributed.is_distributed():
            return
        fields = ("_tasks", "_labels", "_preds", "_logits", "_impaths")
        parts = distributed.all_gather_object([getattr(self, name) for name in fields] + [self._task_scores])
        self.reset()
        for part in parts:
            for name, rows in zip(fields, part):
                getattr(self, name).extend(rows)
            for scores, rows in zip(self._task_scores, part[-1]):
                scores.extend(rows)

    def _multi_task_results(self, per_task: Sequence[Tuple[int, Dict[str, float], int]]) -> "OrderedDict[str, float]":
        """Print the block of means over tasks and SoftCPT's lines; order the results for model selection."""
        common = [key for key in per_task[0][1] if key != "metric" and all(key in m for _, m, _ in per_task)]
        means = OrderedDict((key, sum(m[key] for _, m, _ in per_task) / len(per_task)) for key in common)
        print("=> result")
        print(f"* unweighted mean over {len(per_task)} tasks")
        print(f"* accuracy: {means['accuracy']:.1f}%")
        print(f"* error: {means['error_rate']:.1f}%")
        print(f"* macro_f1: {means['macro_f1']:.1f}%")
        results: "OrderedDict[str, float]" = OrderedDict(overall_metric=self._print_softcpt_lines(per_task))
        results.update(means)
        for t, metrics, _ in per_task:
            results.update((f"{self.task_names[t]}/{key}", value) for key, value in metrics.items())
        if self.select_by != "average":
            selected = f"{self.select_by}/metric"
            if selected not in results:
                raise RuntimeError(f'Model selection by task "{self.select_by}" (DATASET.MULTITASK_EVALKEY), '
                                   "but none of its rows were evaluated")
            results.move_to_end(selected, last=False)
        return results

    def _print_softcpt_lines(self, per_task: Sequence[Tuple[int, Dict[str, float], int]]) -> float:
        """SoftCPT's lines, in its format (2 decimals); returns the unweighted mean of the tasks' metrics."""
        overall = sum(m["metric"] for _, m, _ in per_task) / len(per_task)
        print(f"* overall_metric: {overall:.2f}%")
        if self.per_task_result:
            for t, metrics, n in per_task:
                print(f"* task: {t} ({self.task_names[t]})\ttotal: {n:,}\tmetric: {metrics['metric']:.2f}%")
            print(f"* average: {overall:.2f}%")
        return overall

    def _task_block(self, t: int, labels: torch.Tensor, preds: torch.Tensor) -> Dict[str, float]:
        """Print one task's lines; return its metrics, ``metric`` being the value of the task's own metric."""
        hits = labels == preds
        total, correct = labels.numel(), int(hits.sum())
        percent_correct = 100.0 * correct / total
        metrics = {"accuracy": percent_correct, "error_rate": 100.0 - percent_correct,
                   "macro_f1": 100.0 * macro_f1_score(labels, preds)}
        print(f"* total: {total:,}")
        print(f"* correct: {correct:,}")
        print(f"* accuracy: {percent_correct:.1f}%")
        print(f"* error: {metrics['error_rate']:.1f}%")
        print(f"* macro_f1: {metrics['macro_f1']:.1f}%")
        name, metric = self.metric_names[t], self.metrics[t]
        if name != "accuracy":
            num_classes = int(self.num_classes[t])
            scores = (torch.nn.functional.one_hot(preds, num_classes).float() if metric.argmax_only
                      else torch.stack(self._task_scores[t]))
            targets = torch.stack(self._task_targets[t]) if self._task_targets[t] and not metric.argmax_only \
                else labels
            metrics[name] = 100.0 * metric.fn(scores, targets)
            print(f"* {name}: {metrics[name]:.1f}%")
        metrics["metric"] = metrics[name]
        if self.per_class:
            print("=> per-class result")
            accs = []
            lab2cname = self.lab2cnames[t]
            for label in torch.unique(labels).tolist():
                of_label = labels == label
                n, k = int(of_label.sum()), int(hits[of_label].sum())
                accs.append(100.0 * k / n)
                print(f"* class: {label} ({lab2cname.get(label, '')})\t"
                      f"total: {n:,}\tcorrect: {k:,}\tacc: {accs[-1]:.1f}%")
            metrics["perclass_accuracy"] = sum(accs) / len(accs)
            print(f"* average: {metrics['perclass_accuracy']:.1f}%")
        return metrics

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


@EVALUATOR_REGISTRY.register
class ClassificationMT(Classification):
    """SoftCPT's evaluator name (its YAMLs set it): also prints SoftCPT's lines for a one-task run,
    which SoftCPT evaluates with this evaluator too (zero-shot CLIP per data set)."""

    softcpt_lines_for_one_task = True


def build_evaluator(cfg: Any, tasks: Sequence["Task"], output_dir: Optional[str]) -> Classification:
    """The ``TEST.EVALUATOR`` evaluator for ``tasks`` (``datasets.manager.Task``), set up from ``cfg.TEST``.

    ``DATASET.MULTITASK_EVALKEY`` (MVLPT's key; absent from configs without it) picks the selection score.
    """
    name = cfg.TEST.EVALUATOR
    try:
        evaluator_cls = EVALUATOR_REGISTRY.get(name)
    except KeyError as exc:
        raise ValueError(f"TEST.EVALUATOR: {exc.args[0]}") from None
    test = cfg.TEST
    return evaluator_cls([t.name for t in tasks], [t.lab2cname for t in tasks], per_class=test.PER_CLASS_RESULT,
                         compute_cmat=test.COMPUTE_CMAT, output_dir=output_dir,
                         save_predictions=test.SAVE_PREDICTIONS, metrics=[t.metric for t in tasks],
                         select_by=cfg.DATASET.get("MULTITASK_EVALKEY", "average"),
                         per_task_result=test.PER_TASK_RESULT)
