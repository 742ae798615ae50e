"""Running averages for the training log line (Dassl's AverageMeter / MetricMeter format)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Union

import torch


class AverageMeter:
    """Last value, sum, count and mean of a scalar stream."""

    def __init__(self) -> None:
        self.val = self.sum = self.avg = 0.0
        self.count = 0

    def update(self, val: Union[float, torch.Tensor], n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class MetricMeter:
    """One AverageMeter per loss key; prints ``name val (avg)`` pairs in insertion order."""

    def __init__(self) -> None:
        self.meters: "OrderedDict[str, AverageMeter]" = OrderedDict()

    def update(self, values: Dict[str, Union[float, torch.Tensor]]) -> None:
        if values is None:
            return
        if not isinstance(values, dict):
            raise TypeError("forward_backward() must return a dict of loss values")
        for name, value in values.items():
            self.meters.setdefault(name, AverageMeter()).update(value)

    def __str__(self) -> str:
        return " ".join(f"{name} {m.val:.4f} ({m.avg:.4f})" for name, m in self.meters.items())
