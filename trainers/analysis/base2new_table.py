"""The papers' base-to-new table (base, new, harmonic mean per data set and their average) from run logs.

    python -m trainers.analysis.base2new_table output/base2new [--csv results/]

``<root>`` holds ``train_base/`` (base accuracy: the end-of-training test) and ``test_new/``
(new accuracy: the eval-only run), in either layout:

    DePT:            <root>/train_base/<trainer>/<dataset>/shots<K>/<cfg>/seed<S>/log.txt
    CoOp/CoCoOp/...: <root>/train_base/<dataset>/shots_<K>[_<W>]/<trainer>/<cfg>/seed<S>/log.txt

An accuracy is the last ``accuracy: <x>%`` of the run's newest log holding one (DePT's parser
reads ``log.txt`` only; a rerun here writes ``log.txt-<time>`` beside it). Per data set, base and
new are averaged over the seeds that have both, and H is the harmonic mean of those averages; the
average row averages base and new over data sets and takes H of the two averages, as the papers
(and DePT's parser) do. ``--csv`` also writes DePT's ``b2n-<trainer>-<cfg>.csv`` (per-seed columns).
"""
from __future__ import annotations

import argparse
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from tabulate import tabulate

from datasets.io import atomic_write_text

#: DePT's row order (``utils/result_parser.py``); other data sets follow alphabetically
DATASET_ORDER = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                 "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
_ACCURACY = re.compile(r"accuracy: (\d+\.\d*)%")
_SEED = re.compile(r"seed(\d+)")
_DEPT_SHOTS = re.compile(r"shots\d+")
_COOP_SHOTS = re.compile(r"shots_\d+.*")


def harmonic_mean(base: float, new: float) -> float:
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def read_accuracy(run_dir: str) -> Optional[float]:
    """The last ``accuracy: x%`` of the newest log in ``run_dir`` that has one (None if none)."""
    if not os.path.isdir(run_dir):
        return None
    logs = sorted((f for f in os.listdir(run_dir) if f.startswith("log.txt")), key=lambda f: (f != "log.txt", f))
    for name in reversed(logs):
        with open(os.path.join(run_dir, name), encoding="utf-8", errors="replace") as f:
            found = _ACCURACY.findall(f.read())
        if found:
            return float(found[-1])
    return None


@dataclass(frozen=True)
class Setting:
    """One table: a trainer with one config and shot count."""

    trainer: str
    cfg: str
    shots: str


@dataclass
class SettingRuns:
    #: dataset -> seed -> (base accuracy, new accuracy); None where a run or its accuracy is missing
    accuracies: Dict[str, Dict[int, Tuple[Optional[float], Optional[float]]]] = field(default_factory=dict)


def _parse_layout(parts: Sequence[str]) -> Optional[Tuple[Setting, str]]:
    """(setting, dataset) of a run folder's path below ``train_base`` (without the seed)."""
    if len(parts) != 4:
        return None
    if _DEPT_SHOTS.fullmatch(parts[2]):
        trainer, dataset, shots, cfg = parts
    elif _COOP_SHOTS.fullmatch(parts[1]):
        dataset, shots, trainer, cfg = parts
    else:
        return None
    return Setting(trainer, cfg, shots), dataset


def collect(root: str) -> "OrderedDict[Setting, SettingRuns]":
    """Every (setting, data set, seed) under ``<root>/train_base`` with its base and new accuracy."""
    base_root, new_root = os.path.join(root, "train_base"), os.path.join(root, "test_new")
    if not os.path.isdir(base_root):
        raise FileNotFoundError(f"No train_base folder in {root} (expected <root>/train_base and <root>/test_new)")
    found: Dict[Setting, SettingRuns] = {}
    for folder, subdirs, _ in os.walk(base_root):
        seeds = [d for d in subdirs if _SEED.fullmatch(d)]
        subdirs[:] = [d for d in subdirs if d not in seeds]
        if not seeds:
            continue
        relative = os.path.relpath(folder, base_root)
        parsed = _parse_layout(relative.split(os.sep))
        if parsed is None:
            print(f"Skipping {folder}: neither DePT's nor CoOp's base-to-new layout")
            continue
        setting, dataset = parsed
        runs = found.setdefault(setting, SettingRuns()).accuracies.setdefault(dataset, {})
        for seed_dir in seeds:
            runs[int(_SEED.fullmatch(seed_dir).group(1))] = (
                read_accuracy(os.path.join(folder, seed_dir)),
                read_accuracy(os.path.join(new_root, relative, seed_dir)))
    order = {name: i for i, name in enumerate(DATASET_ORDER)}
    for runs in found.values():
        runs.accuracies = OrderedDict(sorted(runs.accuracies.items(), key=lambda kv: (order.get(kv[0], len(order)),
                                                                                         kv[0])))
    return OrderedDict(sorted(found.items(), key=lambda kv: (kv[0].trainer, kv[0].cfg, kv[0].shots)))


@dataclass
class Row:
    dataset: str
    base: float
    new: float
    seeds: List[int]

    @property
    def h(self) -> float:
        return harmonic_mean(self.base, self.new)


def table_rows(runs: SettingRuns) -> Tuple[List[Row], Optional[Row], List[str]]:
    """Per-data-set rows (seed means), the average row, and notes on incomplete seeds."""
    rows, notes = [], []
    for dataset, seeds in runs.accuracies.items():
        complete = sorted(s for s, (b, n) in seeds.items() if b is not None and n is not None)
        incomplete = sorted(set(seeds) - set(complete))
        if incomplete:
            notes.append(f"{dataset}: seed(s) {', '.join(map(str, incomplete))} lack a base or new accuracy")
        if complete:
            rows.append(Row(dataset, sum(seeds[s][0] for s in complete) / len(complete),
                            sum(seeds[s][1] for s in complete) / len(complete), complete))
    if not rows:
        return rows, None, notes
    average = Row("average", sum(r.base for r in rows) / len(rows), sum(r.new for r in rows) / len(rows), [])
    return rows, average, notes


def format_table(setting: Setting, rows: Sequence[Row], average: Optional[Row]) -> str:
    body = [[r.dataset, f"{r.base:.2f}", f"{r.new:.2f}", f"{r.h:.2f}", ",".join(map(str, r.seeds))] for r in rows]
    if average is not None:
        body.append([average.dataset, f"{average.base:.2f}", f"{average.new:.2f}", f"{average.h:.2f}", ""])
    title = f"{setting.trainer} / {setting.cfg} / {setting.shots}"
    return title + "\n" + tabulate(body, headers=["dataset", "base", "new", "H", "seeds"], disable_numparse=True)


def dept_csv(runs: SettingRuns, rows: Sequence[Row], average: Row) -> str:
    """DePT's b2n CSV: per-seed base/new/H columns, seed means, an average row, H of the means."""
    seeds = sorted({s for r in rows for s in r.seeds})
    header = ["dataset"] + [f"{k}_seed{s}" for s in seeds for k in ("base_acc", "new_acc", "H")]
    header += ["base_acc", "new_acc", "H"]
    lines, columns = [",".join(header)], []
    for row in rows:
        values: List[Optional[float]] = []
        for seed in seeds:
            base, new = runs.accuracies[row.dataset].get(seed, (None, None)) if seed in row.seeds else (None, None)
            values += [base, new, harmonic_mean(base, new) if base is not None and new is not None else None]
        values += [row.base, row.new]
        columns.append(values)
        lines.append(",".join([row.dataset] + _cells(values + [row.h])))
    means = []
    for i in range(len(header) - 2):
        present = [c[i] for c in columns if c[i] is not None]
        means.append(sum(present) / len(present) if present else None)
    lines.append(",".join([average.dataset] + _cells(means + [average.h])))
    return "\n".join(lines) + "\n"


def _cells(values: Sequence[Optional[float]]) -> List[str]:
    return ["" if v is None else f"{round(v, 2):g}" for v in values]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Base-to-new table (base, new, H) from train_base/test_new logs")
    parser.add_argument("root", help="folder holding train_base/ and test_new/ (e.g. output/base2new)")
    parser.add_argument("--csv", metavar="DIR", default="", help="also write DePT's b2n-<trainer>-<cfg>.csv here")
    args = parser.parse_args(argv)
    settings = collect(args.root)
    if not settings:
        print(f"No seed<S> run folders under {os.path.join(args.root, 'train_base')}")
        return 1
    for setting, runs in settings.items():
        rows, average, notes = table_rows(runs)
        print(format_table(setting, rows, average))
        for note in notes:
            print(f"Note: {note}")
        if args.csv and average is not None:
            path = os.path.join(args.csv, f"b2n-{setting.trainer}-{setting.cfg}.csv")
            existed = os.path.exists(path)
            os.makedirs(args.csv, exist_ok=True)
            atomic_write_text(path, dept_csv(runs, rows, average))
            print(f"{'Replaced' if existed else 'Wrote'} {path}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
