"""ELEVATER's classification metrics as plain functions of (scores [N, C], targets) -> float in [0, 1].

ELEVATER's accuracy is the evaluator's ``accuracy`` (top-1 against the class id); the three
below are registered beside it in ``evaluator.METRIC_REGISTRY`` under the toolkit's names.

They follow the toolkit's definitions (vision_benchmark/evaluation/metric.py on top of
vision-evaluation and scikit-learn) without depending on either:

* ``mean_per_class_accuracy``: balanced accuracy; classes without any target are dropped
  from the scores before the argmax.
* ``11point_mAP``: per class with a positive, the precision-recall curve interpolated at
  recall 1.0, 0.9, ..., 0.0 (max precision at recall >= r, the curve ending in the point
  recall 0 / precision 1), averaged over the 11 points, then over classes.
* ``roc_auc``: ROC area (ties count half); two columns and class targets score column 1,
  multi-hot targets give the mean over columns.

``targets`` are class ids [N] or multi-hot rows [N, C]. Scores may be logits (MVLPT) or
probabilities (ELEVATER's zero-shot); ranking metrics can differ between the two. Sums are
taken in float64, so values equal the toolkit's up to float rounding (about 1e-15).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mean_per_class_accuracy", "eleven_point_map", "roc_auc"]


def _check(scores: Tensor, targets: Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, C], got shape {tuple(scores.shape)}")
    if targets.shape[0] != scores.shape[0] or targets.dim() not in (1, 2) or \
            (targets.dim() == 2 and targets.shape != scores.shape):
        raise ValueError(f"targets must be [N] class ids or [N, C] multi-hot for scores {tuple(scores.shape)}, "
                         f"got shape {tuple(targets.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no samples to score")


def _multi_hot(targets: Tensor, num_classes: int) -> Tensor:
    if targets.dim() == 2:
        return targets > 0
    return torch.nn.functional.one_hot(targets.long(), num_classes).bool()


def mean_per_class_accuracy(scores: Tensor, targets: Tensor) -> float:
    """Mean over the classes present in ``targets`` of the fraction predicted right.

    Predictions are the argmax over present classes only, as ELEVATER drops the score
    columns of classes without a target before predicting.
    """
    _check(scores, targets)
    hot = _multi_hot(targets.cpu(), scores.shape[1])
    present = hot.any(dim=0).nonzero().squeeze(1)
    truth = hot[:, present].long().argmax(dim=1)
    predicted = scores.cpu()[:, present].argmax(dim=1)
    correct = torch.zeros(len(present), dtype=torch.float64).index_add_(0, truth, (predicted == truth).double())
    counts = torch.bincount(truth, minlength=len(present)).double()
    return (correct / counts).mean().item()


def _curve_counts(column: Tensor, positive: Tensor) -> tuple:
    """Cumulative true/false positives at each distinct score, highest score first."""
    order = torch.argsort(column, descending=True, stable=True)
    column, positive = column[order], positive[order].double()
    last_of_value = torch.ones_like(column, dtype=torch.bool)
    last_of_value[:-1] = column[1:] != column[:-1]
    true_pos = positive.cumsum(0)[last_of_value]
    false_pos = (1 - positive).cumsum(0)[last_of_value]
    return true_pos, false_pos


# numpy.linspace(1, 0, 11): i * -0.1 + 1, the last point set to 0
_RECALL_LEVELS = [i * -0.1 + 1.0 for i in range(10)] + [0.0]


def eleven_point_map(scores: Tensor, targets: Tensor) -> float:
    """VOC-style 11-point interpolated AP per class with a positive, averaged over those classes."""
    _check(scores, targets)
    hot = _multi_hot(targets.cpu(), scores.shape[1])
    scores = scores.detach().cpu().double()
    per_class = []
    for c in hot.any(dim=0).nonzero().squeeze(1).tolist():
        true_pos, false_pos = _curve_counts(scores[:, c], hot[:, c])
        precision = torch.cat([true_pos / (true_pos + false_pos), torch.ones(1, dtype=torch.float64)])
        recall = torch.cat([true_pos / true_pos[-1], torch.zeros(1, dtype=torch.float64)])
        points = [precision[recall >= level].max().item() if (recall >= level).any() else 0.0
                  for level in _RECALL_LEVELS]
        per_class.append(sum(points) / len(points))
    return sum(per_class) / len(per_class)


def _binary_auc(column: Tensor, positive: Tensor) -> float:
    true_pos, false_pos = _curve_counts(column, positive)
    if true_pos[-1] == 0 or false_pos[-1] == 0:
        raise ValueError("ROC AUC needs both positive and negative targets in every scored column")
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), true_pos / true_pos[-1]])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), false_pos / false_pos[-1]])
    return torch.trapezoid(tpr, fpr).item()


def roc_auc(scores: Tensor, targets: Tensor) -> float:
    """ROC AUC: column 1 for two classes with class-id targets, else the mean over multi-hot columns.

    Class-id targets with more than two classes have no ELEVATER definition (scikit-learn
    refuses them) and raise.
    """
    _check(scores, targets)
    scores = scores.detach().cpu().double()
    if targets.dim() == 1:
        if scores.shape[1] != 2:
            raise ValueError(f"roc_auc with class-id targets needs 2 score columns, got {scores.shape[1]}; "
                             "pass multi-hot targets for a per-class (macro) AUC")
        return _binary_auc(scores[:, 1], targets.cpu() == 1)
    hot = targets.cpu() > 0
    return sum(_binary_auc(scores[:, c], hot[:, c]) for c in range(scores.shape[1])) / scores.shape[1]
