"""Summarise test results over seeds from ``log.txt`` files (CoOp's ``parse_test_res.py``, same options and output).

Layout::

    <directory>/seed1/log.txt  <directory>/seed2/log.txt  ...

    python parse_test_res.py <directory>               # training runs (after "Finish training")
                                                       # ("Finished training" of older Dassl also counts)
    python parse_test_res.py <directory> --test-log    # eval-only runs (after "=> result")
    python parse_test_res.py <directory> --ci95        # 95% confidence interval instead of std
    python parse_test_res.py <parent> --multi-exp      # <parent>/<experiment>/<seed>/log.txt
    python parse_test_res.py <directory> --keyword macro_f1

Every non-hidden entry of ``<directory>`` must hold a ``log.txt``. In each file the last
``* <keyword>: <x>%`` line after the end signal counts; std is the population std.
After CoOp's output a table lists each setting (and each task of multi-task runs, taken from
the last ``=> task: <name>`` blocks) with n, mean ± std and the 95% CI half-width.
"""
from __future__ import annotations

import argparse
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from tabulate import tabulate

from trainers.engine.results import summarize

__all__ = ["LogResult", "Summary", "parse_log", "parse_function", "main"]

# Dassl >= 0.6.1 prints "Finish training", older Dassl "Finished training"; our logs print both.
TRAIN_END_SIGNALS = ("Finish training", "Finished training")
TEST_END_SIGNALS = ("=> result",)
_TASK_HEADER = "=> task: "
# Per-task lines of SoftCPT's evaluator: "* task: <i> (<name>)<TAB>total: <n><TAB>metric: <x>%".
_SOFTCPT_TASK = re.compile(r"\* task: \d+ \((.*)\)\ttotal: [\d,]+\tmetric: ([\.\deE+-]+)%")


@dataclass
class LogResult:
    value: Optional[float]               # the last keyword match after the end signal
    per_task: "OrderedDict[str, float]"  # task name -> keyword value of its last block in the file


@dataclass
class Summary:
    directory: str
    files: List[str]
    values: List[float]
    per_task: "OrderedDict[str, List[float]]" = field(default_factory=OrderedDict)

    @property
    def stats(self) -> Tuple[float, float, float]:
        return summarize(self.values)


def _listdir_nohidden(path: str) -> List[str]:
    return sorted(name for name in os.listdir(path) if not name.startswith("."))


def parse_log(path: str, keyword: str = "accuracy", end_signals: Sequence[str] = TRAIN_END_SIGNALS) -> LogResult:
    """Read one log as CoOp's parser does (the keyword is a regular expression, as in CoOp)."""
    regex = re.compile(rf"\* {keyword}: ([\.\deE+-]+)%")
    value: Optional[float] = None
    armed = False
    task: Optional[str] = None
    per_task: "OrderedDict[str, float]" = OrderedDict()
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line in end_signals:
                armed = True
            if line.startswith(_TASK_HEADER):
                task = line[len(_TASK_HEADER):]
            elif line.startswith("=> "):
                task = None
            match = regex.search(line)
            if match:
                if armed:
                    value = float(match.group(1))
                if task is not None:
                    per_task[task] = float(match.group(1))
                    task = None
            softcpt = _SOFTCPT_TASK.match(line)
            if softcpt:
                per_task[softcpt.group(1)] = float(softcpt.group(2))
    return LogResult(value, per_task)


def parse_function(directory: str, keyword: str = "accuracy", end_signals: Sequence[str] = TRAIN_END_SIGNALS,
                   ci95: bool = False) -> Summary:
    """Parse ``<directory>/<entry>/log.txt`` for every entry and print CoOp's per-file lines and summary."""
    print(f"Parsing files in {directory}")
    summary = Summary(directory, [], [])
    for entry in _listdir_nohidden(directory):
        path = os.path.join(directory, entry, "log.txt")
        if not os.path.isfile(path):
            raise AssertionError(f"No log.txt at {path} (every non-hidden entry of {directory} must be a run folder)")
        result = parse_log(path, keyword, end_signals)
        if result.value is None:
            continue
        summary.files.append(path)
        summary.values.append(result.value)
        for task, value in result.per_task.items():
            summary.per_task.setdefault(task, []).append(value)
    if not summary.values:
        raise AssertionError(f"Nothing found in {directory}")
    for path, value in zip(summary.files, summary.values):
        print(f"file: {path}. {keyword}: {value:.2f}%. ")
    mean, std, ci = summary.stats
    print("===")
    print(f"Summary of directory: {directory}")
    print(f"* {keyword}: {mean:.2f}% +- {ci if ci95 else std:.2f}%")
    print("===")
    return summary


def _table(summaries: Sequence[Summary], keyword: str) -> str:
    rows = []
    for summary in summaries:
        settings = [(summary.directory, summary.values)]
        settings += [(f"{summary.directory} [{task}]", values) for task, values in summary.per_task.items()]
        for setting, values in settings:
            mean, std, ci = summarize(values)
            rows.append([setting, len(values), f"{mean:.2f} ± {std:.2f}", f"± {ci:.2f}"])
    return tabulate(rows, headers=["setting", "n", f"{keyword} mean ± std", "95% CI"])


def main(argv: Optional[Sequence[str]] = None) -> List[Summary]:
    parser = argparse.ArgumentParser(description="Mean and std of test results over seeds (CoOp's parser)")
    parser.add_argument("directory", type=str, help="path to directory")
    parser.add_argument("--ci95", action="store_true", help=r"compute 95\% confidence interval")
    parser.add_argument("--test-log", action="store_true", help="parse test-only logs")
    parser.add_argument("--multi-exp", action="store_true", help="parse multiple experiments")
    parser.add_argument("--keyword", default="accuracy", type=str, help="which keyword to extract")
    args = parser.parse_args(argv)
    end_signals = TEST_END_SIGNALS if args.test_log else TRAIN_END_SIGNALS

    if args.multi_exp:
        summaries = [parse_function(os.path.join(args.directory, name), args.keyword, end_signals, args.ci95)
                     for name in _listdir_nohidden(args.directory)]
        print("Average performance")
        means = [s.stats[0] for s in summaries]
        if means:
            print(f"* {args.keyword}: {sum(means) / len(means):.2f}%")
    else:
        summaries = [parse_function(args.directory, args.keyword, end_signals, args.ci95)]
    print()
    print(_table(summaries, args.keyword))
    return summaries


if __name__ == "__main__":
    main()
