"""MVLPT's paper tables from our runs: per task the mean +- std over seeds, as the paper prints them.

Reads the ``results.json`` the MVLPT scripts leave (``scripts/mvlpt/*.sh``)::

    <ROOT>/<kind>/<task or group>/<METHOD>/<CFG>_<K>shots/nctx<N>/seed<S>/results.json

(``kind``: ``target`` for the cross-task setting, Table 1; ``few_shot`` for Table 2). A task's
score is its own metric (accuracy, mean per-class accuracy or 11-point mAP). A multi-task group
(``task1,task2,...``, few_shot.sh GROUP_SIZE/MULTI) scores its first task, the Table 5 target, in
a row ``<METHOD> M<size>``; ``<METHOD> best M`` takes per task the better of its groups (our
answer to the paper not saying whether "Best M" is the 2- or 3-task group). With
``--per-task-best`` the score of the target's own best epoch (``best_per_task/<task>``), when the
run kept it, is read from its evaluation instead. Values are percentages as the paper prints
them (``--fractions``: MVLPT's log values); the std is NumPy's population std, over seeds.

``--group METHOD TASK SIZE`` prints the Table 5 group of TASK for METHOD (CoOp, VPT or UPT) from
``scripts/mvlpt/table5_groups.json``: the task and its first ``SIZE - 1`` partners, comma-separated.

The paper's numbers (``scripts/mvlpt/paper_results.json``) are printed beside ours as ``paper:``
rows for the entries that file holds. ``--csv`` writes every row (ours and the paper's).

    python -m trainers.analysis.mvlpt_tables output/mvlpt --csv mvlpt_tables.csv
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import sys
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from datasets.elevater.tasks import TASKS
from datasets.io import atomic_open
from trainers.engine.results import summarize

__all__ = ["collect", "add_best_m", "table_rows", "table5_group", "read_score", "main", "PAPER_FILE"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_FILE = os.path.join(REPO, "scripts", "mvlpt", "paper_results.json")
GROUPS_FILE = os.path.join(REPO, "scripts", "mvlpt", "table5_groups.json")
RUN_PATH = re.compile(r"^(?P<kind>[^/]+)/(?P<tasks>[^/]+)/(?P<method>[^/]+)/(?P<setting>[^/]+_\d+shots)/"
                      r"(?P<nctx>nctx\d+)/seed(?P<seed>\d+)$")
#: (kind, method, "<CFG>_<K>shots/nctx<N>") -> task -> {seed: score in percent}
Scores = Dict[Tuple[str, str, str], Dict[str, Dict[int, float]]]


def task_metric(task: str) -> str:
    """The metric a task is scored by (ELEVATER's per task; accuracy otherwise)."""
    spec = TASKS.get(task)
    return spec.metric if spec is not None else "accuracy"


def latest_results(folder: str) -> Optional[str]:
    """The newest ``results*.json`` of a run folder (a rerun adds a time-stamped sibling)."""
    found = sorted(glob.glob(os.path.join(folder, "results*.json")), key=os.path.getmtime)
    return found[-1] if found else None


def read_score(path: str, task: str) -> float:
    """``task``'s own metric (percent) from a results.json of a one-task or multi-task run."""
    with open(path) as f:
        record = json.load(f)
    metric = task_metric(task)
    if task in record.get("per_task", {}):
        return float(record["per_task"][task][metric])
    if record.get("datasets") == [task]:
        return float(record["metrics"][metric])
    raise KeyError(f"{path} has no result for task {task!r} (datasets {record.get('datasets')})")


def collect(root: str, per_task_best: bool = False) -> Scores:
    """Every finished run under ``root``, by (kind, method, setting) and task."""
    scores: Scores = defaultdict(lambda: defaultdict(dict))
    for folder in sorted(glob.glob(os.path.join(root, "*", "*", "*", "*", "nctx*", "seed*"))):
        match = RUN_PATH.match(os.path.relpath(folder, root).replace(os.sep, "/"))
        results = latest_results(folder)
        if match is None or results is None:
            continue
        task = match["tasks"].split(",")[0]
        if per_task_best and "," in match["tasks"]:
            own = latest_results(os.path.join(folder, "best_per_task", task))
            results = own or results
        size = match["tasks"].count(",") + 1
        method = match["method"] if size == 1 else f"{match['method']} M{size}"
        key = (match["kind"], method, f"{match['setting']}/{match['nctx']}")
        scores[key][task][int(match["seed"])] = read_score(results, task)
    return scores


def add_best_m(scores: Scores) -> None:
    """``<METHOD> best M``: per task the ``M<size>`` group whose seed mean is highest."""
    variants: Dict[Tuple[str, str, str], List[str]] = defaultdict(list)
    for kind, method, setting in list(scores):
        if " M" in method:
            variants[(kind, method.split(" M")[0], setting)].append(method)
    for (kind, base, setting), methods in variants.items():
        best = scores[(kind, f"{base} best M", setting)]
        tasks = {t for m in methods for t in scores[(kind, m, setting)]}
        for task in tasks:
            runs = [scores[(kind, m, setting)][task] for m in sorted(methods) if scores[(kind, m, setting)].get(task)]
            best[task] = max(runs, key=lambda seeds: sum(seeds.values()) / len(seeds))


def table5_group(method: str, task: str, size: int, path: str = GROUPS_FILE) -> List[str]:
    """The task and its first ``size - 1`` Table 5 partners for prompt type ``method``."""
    with open(path) as f:
        partners = json.load(f)["partners"]
    if method not in partners or task not in partners[method] or not 2 <= size <= 3:
        raise KeyError(f"No Table 5 group of size {size} for {method!r} / {task!r}: methods {list(partners)}, "
                       "tasks: the 20 ELEVATER names, sizes 2 or 3")
    return [task] + partners[method][task][:size - 1]


def _cell(values: Sequence[float], fractions: bool) -> str:
    scale = 0.01 if fractions else 1.0
    mean, std, _ = summarize([v * scale for v in values])
    digits = 3 if fractions else 1
    return f"{mean:.{digits}f} +- {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def table_rows(scores: Scores, kind: str, setting: str, tasks: Sequence[str], fractions: bool = False
               ) -> List[List[str]]:
    """One row per method: its cell per task (mean +- std over seeds) and the mean over tasks of
    the seed means (only when every task has a result)."""
    rows = []
    for (k, method, s), by_task in sorted(scores.items()):
        if k != kind or s != setting:
            continue
        means = [sum(by_task[t].values()) / len(by_task[t]) for t in tasks if by_task.get(t)]
        cells = [_cell(list(by_task[t].values()), fractions) if by_task.get(t) else "" for t in tasks]
        overall = _cell([sum(means) / len(means)], fractions) if len(means) == len(tasks) else ""
        rows.append([method] + cells + [overall])
    return rows


def paper_rows(paper: Mapping[str, Any], kind: str, shots: str, tasks: Sequence[str], fractions: bool
               ) -> List[List[str]]:
    """``paper:`` rows for the methods whose numbers the paper file holds for this table and shots."""
    rows = []
    for method, values in paper.get(kind, {}).get(shots, {}).items():
        if not any(values.get(t) is not None for t in tasks):
            continue
        scale = 0.01 if fractions else 1.0
        cells = [f"{values[t] * scale:.{3 if fractions else 1}f}" if values.get(t) is not None else "" for t in tasks]
        mean = values.get("mean")
        rows.append([f"paper: {method}"] + cells + [f"{mean * scale:.{3 if fractions else 1}f}" if mean else ""])
    return rows


def load_paper(path: str = PAPER_FILE) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", help="the MVLPT scripts' OUTPUT folder (the scripts' default: output/mvlpt)")
    parser.add_argument("--group", nargs=3, metavar=("METHOD", "TASK", "SIZE"),
                        help="print the Table 5 group of TASK for METHOD (CoOp, VPT, UPT) and exit")
    parser.add_argument("--csv", default="", help="also write every table row to this CSV file")
    parser.add_argument("--fractions", action="store_true", help="values as fractions (MVLPT's logs), not percent")
    parser.add_argument("--per-task-best", action="store_true",
                        help="multi-task groups: the target's own best epoch (TRAINER.MVLPT.SAVE_BEST_PER_TASK runs)")
    parser.add_argument("--paper", default=PAPER_FILE, help="the paper's numbers (JSON)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tabulate import tabulate

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.group:
        method, task, size = args.group
        print(",".join(table5_group(method, task, int(size))))
        return 0
    if not args.root:
        parser.error("give the OUTPUT folder of the MVLPT scripts")
    scores = collect(args.root, args.per_task_best)
    add_best_m(scores)
    if not scores:
        print(f"No finished MVLPT runs (seed*/results.json) under {args.root}", file=sys.stderr)
        return 1
    paper = load_paper(args.paper)
    csv_rows: List[List[str]] = []
    for kind, setting in sorted({(k, s) for k, _, s in scores}):
        tasks = sorted({t for (k, _, s), by_task in scores.items() if (k, s) == (kind, setting) for t in by_task})
        shots = setting.split("_")[-1].split("shots")[0]
        rows = table_rows(scores, kind, setting, tasks, args.fractions)
        rows += paper_rows(paper, kind, shots, tasks, args.fractions)
        header = ["method"] + tasks + ["mean"]
        print(f"\n== {kind} {setting} ({'fractions' if args.fractions else 'percent'}, mean +- std over seeds)")
        print(tabulate(rows, headers=header))
        csv_rows += [[kind, setting] + row for row in [header] + rows]
    if args.csv:
        with atomic_open(args.csv, "w") as f:
            csv.writer(f, lineterminator="\n").writerows(csv_rows)
        print(f"Wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
