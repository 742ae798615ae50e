"""A machine-readable ``results.json`` beside ``log.txt``, and the mean/std/CI summary of several runs.

The log stays the source of truth for CoOp-style parsing; the JSON file lets scripts compare
a run with expected numbers without parsing text, and records what produced them.
"""
from __future__ import annotations

import datetime
import math
import os
import subprocess
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from datasets.io import write_json

__all__ = ["write_results", "summarize", "git_commit"]


def summarize(values: Sequence[float]) -> Tuple[float, float, float]:
    """(mean, population std as NumPy's ``np.std``, 95% CI half-width ``1.96 * std / sqrt(n)`` as CoOp's --ci95)."""
    if len(values) == 0:
        raise ValueError("summarize() needs at least one value")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return mean, std, 1.96 * std / math.sqrt(n)


def git_commit(path: Optional[str] = None) -> Optional[str]:
    """The commit of the repository holding ``path`` (this file by default), or None outside git."""
    folder = os.path.dirname(os.path.abspath(path or __file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _jsonable(value: Any) -> Any:
    """Config values and metrics as JSON types (tuples become lists, tensors and NumPy scalars numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _split_metrics(results: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """``{"accuracy": .., "Task/accuracy": ..}`` -> overall metrics and ``{"Task": {"accuracy": ..}}``."""
    metrics: Dict[str, Any] = {}
    per_task: Dict[str, Dict[str, Any]] = {}
    for key, value in results.items():
        if "/" in key:
            task, name = key.rsplit("/", 1)
            per_task.setdefault(task, {})[name] = _jsonable(value)
        else:
            metrics[key] = _jsonable(value)
    return metrics, per_task


def _free_path(path: str) -> str:
    """``path``, or a time-stamped sibling if a previous run already wrote it (as the logger does)."""
    if not os.path.exists(path):
        return path
    stem, ext = os.path.splitext(path)
    stamped = stem + time.strftime("-%Y-%m-%d-%H-%M-%S") + ext
    candidate, i = stamped, 1
    while os.path.exists(candidate):
        candidate, i = f"{os.path.splitext(stamped)[0]}-{i}{ext}", i + 1
    return candidate


def write_results(output_dir: str, results: Mapping[str, Any], cfg: Any,
                  extra: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``<output_dir>/results.json``; returns its path.

    An existing file (from an earlier run into the same folder) is kept, and the new one gets
    a time suffix, matching ``log.txt`` and what ``parse_test_res.py`` reads.
    ``extra`` entries (e.g. ``split``, ``elapsed``) are added at the top level and win over defaults.
    """
    metrics, per_task = _split_metrics(results)
    dataset = cfg.DATASET
    record: Dict[str, Any] = {
        "method": cfg.TRAINER.NAME,
        "datasets": [name.strip() for name in str(dataset.NAME).split(",") if name.strip()],
        "seed": cfg.SEED,
        "shots": dataset.NUM_SHOTS,
        "subsample": dataset.SUBSAMPLE_CLASSES,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "split": cfg.TEST.SPLIT,
        "metrics": metrics,
        "per_task": per_task,
        "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
    record.update(_jsonable(dict(extra or {})))
    record["config"] = _jsonable(cfg)
    path = _free_path(os.path.join(output_dir, "results.json"))
    write_json(record, path)
    return path
