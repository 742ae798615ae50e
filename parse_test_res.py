"""Summarise test results over seeds (CoOp's ``parse_test_res.py``, same options and output).

Layout::

    <directory>/seed1/{results.json,log.txt}  <directory>/seed2/...  ...

    python parse_test_res.py <directory>               # training runs (after "Finish training")
                                                       # ("Finished training" of older Dassl also counts)
    python parse_test_res.py <directory> --test-log    # eval-only runs (after "=> result")
    python parse_test_res.py <directory> --ci95        # 95% confidence interval instead of std
    python parse_test_res.py <parent> --multi-exp      # <parent>/<experiment>/<seed>/...
    python parse_test_res.py <directory> --keyword macro_f1

Every non-hidden entry of ``<directory>`` is a run folder. A run's number comes from its newest
``results.json`` (written when a run finishes; a rerun writes ``results-<time>.json``) when that
holds the keyword, else from its newest log (``log.txt``, or ``log.txt-<time>`` of a resumed or
repeated run), where the last ``* <keyword>: <x>%`` line after the end signal counts. "Newest"
follows the time stamp in the name, which survives copying, unlike modification times. A folder
that yields no number is named with the reason, instead of dropping out of the summary silently.
std is the population std. After CoOp's output a table lists each setting (and each task of
multi-task runs) with n, mean ± std and the 95% CI half-width.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from tabulate import tabulate

from trainers.engine.results import summarize

__all__ = ["LogResult", "Summary", "parse_log", "parse_results_json", "parse_run", "parse_function", "main"]

# Dassl >= 0.6.1 prints "Finish training", older Dassl "Finished training"; our logs print both.
TRAIN_END_SIGNALS = ("Finish training", "Finished training")
TEST_END_SIGNALS = ("=> result",)
_TASK_HEADER = "=> task: "
# Per-task lines of SoftCPT's evaluator: "* task: <i> (<name>)<TAB>total: <n><TAB>metric: <x>%".
_SOFTCPT_TASK = re.compile(r"\* task: \d+ \((.*)\)\ttotal: [\d,]+\tmetric: ([\.\deE+-]+)%")
# The logger's and write_results' names for a second run into a folder: <name>-<time>[-<counter>].
_STAMP = r"(?:-(\d{4}(?:-\d\d){5})(?:-(\d+))?)?"
_LOG_NAME = re.compile(r"log\.txt" + _STAMP)
_RESULTS_NAME = re.compile(r"results" + _STAMP + r"\.json")
# Printed keyword -> key in results.json where they differ; per task, overall_metric is each task's "metric".
_JSON_KEYS = {"error": "error_rate"}
_JSON_TASK_KEYS = {"overall_metric": "metric"}


@dataclass
class LogResult:
    value: Optional[float]               # the last keyword match after the end signal
    per_task: "OrderedDict[str, float]"  # task name -> keyword value of its last block in the file
    ended: bool = True                   # whether an end signal was seen (False: an unfinished run)


@dataclass
class Summary:
    directory: str
    files: List[str]
    values: List[float]
    per_task: "OrderedDict[str, List[float]]" = field(default_factory=OrderedDict)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (run folder, why it gave no number)

    @property
    def stats(self) -> Tuple[float, float, float]:
        return summarize(self.values)


def _listdir_nohidden(path: str) -> List[str]:
    return sorted(name for name in os.listdir(path) if not name.startswith("."))


def parse_log(path: str, keyword: str = "accuracy", end_signals: Sequence[str] = TRAIN_END_SIGNALS) -> LogResult:
    """Read one log as CoOp's parser does (the keyword is a regular expression, as in CoOp).

    SoftCPT's per-task lines give the tasks' values for its keyword, ``overall_metric``.
    """
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
            softcpt = _SOFTCPT_TASK.match(line) if keyword == "overall_metric" else None
            if softcpt:
                per_task[softcpt.group(1)] = float(softcpt.group(2))
    return LogResult(value, per_task, armed)


def parse_results_json(path: str, keyword: str = "accuracy") -> Optional[LogResult]:
    """The keyword's value in a ``results.json`` (``trainers/engine/results.py``), or None if it has no such key."""
    with open(path, "r", encoding="utf-8") as f:
        record = json.load(f)
    key = _JSON_KEYS.get(keyword, keyword)
    value = record.get("metrics", {}).get(key)
    if not isinstance(value, (int, float)):
        return None
    task_key = _JSON_TASK_KEYS.get(keyword, key)
    per_task = OrderedDict((task, float(metrics[task_key])) for task, metrics in record.get("per_task", {}).items()
                           if isinstance(metrics.get(task_key), (int, float)))
    return LogResult(float(value), per_task)


def _newest(folder: str, name_pattern: "re.Pattern[str]") -> Optional[str]:
    """The newest file of a run folder whose name fits ``name_pattern``, by the time stamp in the name
    (the unstamped file is the first run's)."""
    stamps = {}
    for name in os.listdir(folder):
        match = name_pattern.fullmatch(name)
        if match and os.path.isfile(os.path.join(folder, name)):
            stamps[name] = (match.group(1) or "", int(match.group(2) or 0))
    return os.path.join(folder, max(stamps, key=stamps.get)) if stamps else None


def parse_run(folder: str, keyword: str = "accuracy",
              end_signals: Sequence[str] = TRAIN_END_SIGNALS) -> Tuple[Optional[str], Optional[LogResult], str]:
    """(file read, its result, why there is no value) for one run folder: results.json, else the newest log."""
    if not os.path.isdir(folder):
        return None, None, "not a run folder"
    results_path = _newest(folder, _RESULTS_NAME)
    if results_path is not None:
        result = parse_results_json(results_path, keyword)
        if result is not None:
            return results_path, result, ""
    log_path = _newest(folder, _LOG_NAME)
    if log_path is None:
        reason = f"{os.path.basename(results_path)} has no {keyword!r}" if results_path else "no results.json"
        return None, None, reason + " and no log.txt"
    result = parse_log(log_path, keyword, end_signals)
    name = os.path.basename(log_path)
    if not result.ended:
        hint = "" if set(end_signals) & set(TEST_END_SIGNALS) else " (eval-only runs need --test-log)"
        return log_path, result, f"unfinished run: no {' or '.join(map(repr, end_signals))} line in {name}{hint}"
    if result.value is None:
        return log_path, result, f"no '* {keyword}: <x>%' line after {end_signals[0]!r} in {name}"
    return log_path, result, ""


def parse_function(directory: str, keyword: str = "accuracy", end_signals: Sequence[str] = TRAIN_END_SIGNALS,
                   ci95: bool = False) -> Summary:
    """Parse every run folder of ``directory`` and print CoOp's per-file lines and summary (and what was skipped)."""
    print(f"Parsing files in {directory}")
    summary = Summary(directory, [], [])
    for entry in _listdir_nohidden(directory):
        folder = os.path.join(directory, entry)
        path, result, reason = parse_run(folder, keyword, end_signals)
        if reason:
            print(f"skipped {folder}: {reason}")
            summary.skipped.append((folder, reason))
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
    parser.add_argument("--ci95", action="store_true", help="compute 95%% confidence interval")
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
