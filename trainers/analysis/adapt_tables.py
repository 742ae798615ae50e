"""The Adapt paper's Tables 1-3 (16 shots, mean of seeds, ViT-B/16) with our runs beside its numbers.

    python -m trainers.analysis.adapt_tables output/adapt [--table 1|2|3|all]

Reads ``<root>/<dataset>/shots_<K>/Adapt/<cfg>/T<T>_ctx<X>_<score>/seed<S>/results.json``, the
layout of ``scripts/adapt/``. Per data set our accuracy is the mean over the seeds found; the
parameter count, its percentage and GMACs are means over all runs of the row (per-run values come
from the ``"adapt"`` section: kept tokens x width, over CLIP without its token-embedding table,
analytic image-tower MACs). The average column needs all 11 data sets (else it averages those
present and is marked ``*``). Runs that ended above their T_target are counted under the table.
The paper's GFLOPS protocol is unknown (its ZS CLIP reads 12.08; the ViT-B/16 image tower is
about 17.6 GMACs), so only differences between rows are comparable.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from tabulate import tabulate

#: the paper's column order, as our data set config names
DATASETS = ("caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101", "oxford_flowers", "oxford_pets",
            "stanford_cars", "sun397", "ucf101", "imagenet")
COLUMNS = ("Cal", "DTD", "ESAT", "Air", "Food", "Flo", "Pets", "Cars", "SUN", "UCF", "IN")

#: the paper's rows: (label, params as printed, GFLOPS, 11 accuracies in DATASETS order)
PAPER_TABLE1 = (
    ("ZS CLIP", "0", 12.08, (87.20, 42.34, 37.57, 17.29, 77.30, 66.18, 85.79, 55.63, 58.55, 61.45, 58.20)),
    ("CoCoOp", "35,360 (0.028)", 13.23, (95.10, 63.63, 74.10, 33.67, 87.37, 89.97, 93.53, 72.30, 72.67, 76.97, 71.17)),
    ("VPT", "73,728 (0.059)", 12.48, (94.83, 67.30, 86.23, 33.90, 87.03, 88.10, 92.57, 69.60, 71.87, 79.00, 70.60)),
    ("PLOT", "32,768 (0.026)", 13.58, (93.70, 70.90, 84.03, 34.93, 78.13, 97.27, 88.20, 68.10, 69.40, 72.23, 72.17)),
    ("MaPLe", "3.56M (2.860)", 13.35, (95.10, 67.27, 86.40, 37.07, 87.43, 94.27, 93.63, 74.87, 74.73, 80.37, 72.03)),
    ("ProGrad", "8,192 (0.007)", 21.52, (95.63, 66.27, 82.03, 41.30, 86.70, 95.33, 93.10, 81.23, 75.13, 81.60, 72.27)),
    ("KgCoOp", "2,048 (0.002)", 17.05, (95.07, 67.00, 72.80, 34.17, 87.07, 90.00, 92.93, 73.33, 73.00, 80.63, 70.60)),
    ("LAMM", "51,200 (0.041)", 13.23, (95.67, 70.43, 84.43, 41.27, 87.10, 95.93, 93.53, 82.87, 73.27, 81.60, 72.03)),
    ("Adapt T=128", "82,227 (0.066)", 12.53,
        (95.63, 72.03, 92.53, 50.93, 83.47, 97.97, 91.07, 86.17, 73.67, 84.40, 70.83)),
    ("Adapt T=32", "18,781 (0.015)", 12.20,
        (96.10, 69.93, 90.13, 48.73, 84.30, 97.63, 90.83, 85.07, 74.53, 84.03, 71.93)),
    ("Adapt (adaptive T)", "-", None, (96.17, 72.17, 92.60, 52.07, 87.03, 98.40, 92.47, 86.70, 75.33, 84.40, 72.07)),
)
#: Table 2 (Snip), keyed by T_target
PAPER_TABLE2 = {
    512: ("0.36M (0.2889)", 12.98, (96.03, 72.07, 92.30, 52.03, 83.37, 98.40, 89.93, 86.43, 73.30, 84.23, 70.57)),
    256: ("0.17M (0.1380)", 12.73, (95.53, 72.60, 92.23, 51.37, 83.43, 98.13, 90.20, 86.03, 73.73, 84.10, 70.77)),
    128: ("82,227 (0.066)", 12.53, (95.63, 72.03, 92.53, 50.93, 83.47, 97.97, 91.07, 86.17, 73.67, 84.40, 70.83)),
    64: ("39,168 (0.032)", 12.32, (95.93, 70.60, 91.87, 49.17, 83.83, 98.10, 90.57, 85.13, 73.83, 83.30, 71.03)),
    32: ("18,781 (0.015)", 12.20, (96.10, 69.93, 90.13, 48.73, 84.30, 97.63, 90.83, 85.07, 74.53, 84.03, 71.93)),
    16: ("8,986 (0.007)", 12.11, (95.53, 67.17, 91.00, 40.77, 84.93, 97.57, 90.43, 83.30, 75.33, 84.07, 71.43)),
}
#: Table 3 (T_target 128), keyed by our SCORE names
PAPER_TABLE3 = {
    "snip": ("Snip", "82,227 (0.066)", 12.53,
             (95.63, 72.03, 92.53, 50.93, 83.47, 97.97, 91.07, 86.17, 73.67, 84.40, 70.83)),
    "grad_norm": ("Gradient norm", "84,044 (0.068)", 12.53,
                  (95.63, 72.07, 91.83, 50.93, 83.63, 98.20, 90.30, 86.07, 73.93, 84.40, 69.83)),
    "l2": ("l2-norm", "82,764 (0.067)", 12.53,
           (95.57, 70.97, 91.47, 51.17, 83.77, 98.17, 90.33, 85.83, 74.03, 84.37, 70.23)),
}

_VARIANT = re.compile(r"^T(\d+)_ctx(\d+)_(\w+)$")
_SEED = re.compile(r"^seed(\d+)$")

#: (T_target, max context, score) of a run folder
Variant = Tuple[int, int, str]


def read_runs(root: str, shots: int = 16) -> Dict[Variant, Dict[str, Dict[int, dict]]]:
    """``{(T, ctx, score): {dataset: {seed: results.json record}}}`` under ``root``."""
    runs: Dict[Variant, Dict[str, Dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    pattern = os.path.join(root, "*", f"shots_{shots}", "Adapt", "*", "*", "seed*", "results.json")
    for path in sorted(glob.glob(pattern)):
        seed_dir = os.path.dirname(path)
        variant_dir = os.path.dirname(seed_dir)
        dataset = os.path.relpath(path, root).split(os.sep)[0]
        variant, seed = _VARIANT.match(os.path.basename(variant_dir)), _SEED.match(os.path.basename(seed_dir))
        if variant is None or seed is None:
            continue
        with open(path) as f:
            runs[(int(variant[1]), int(variant[2]), variant[3])][dataset][int(seed[1])] = json.load(f)
    return runs


def accuracy(record: dict) -> float:
    return float(record["metrics"]["accuracy"])


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def our_row(label: str, per_dataset: Dict[str, Dict[int, dict]]) -> Tuple[List[object], int, int]:
    """A table row of our runs, and (runs that missed their T_target, runs in the row)."""
    records = [r for seeds in per_dataset.values() for r in seeds.values()]
    accs = [mean([accuracy(r) for r in per_dataset[d].values()]) if per_dataset.get(d) else None for d in DATASETS]
    present = [a for a in accs if a is not None]
    average = f"{mean(present):.2f}" + ("" if len(present) == len(DATASETS) else "*") if present else "-"
    reports = [r["adapt"] for r in records if "adapt" in r]
    if reports:
        count, percent = mean([r["trainable_params"] for r in reports]), mean([r["params_percent"] for r in reports])
        params = f"{count:,.0f} ({percent:.3f})"
        gmacs = f"{mean([r['gmacs'] for r in reports]):.2f}"
    else:
        params = gmacs = "-"
    missed = sum(1 for r in reports if not r["reached_target"])
    row = [label, params, gmacs] + [f"{a:.2f}" if a is not None else "-" for a in accs] + [average]
    return row, missed, len(reports)


def paper_row(label: str, params: str, gflops: Optional[float], accs: Sequence[float]) -> List[object]:
    return [label, params, f"{gflops:.2f}" if gflops is not None else "-"] + [f"{a:.2f}" for a in accs] + \
        [f"{mean(accs):.2f}"]


def render(title: str, rows: List[List[object]], missed: int, total: int) -> str:
    headers = ["Method", "Params (%)", "G(FL|MAC)s"] + list(COLUMNS) + ["Avg"]
    note = f"\n{missed} of {total} of our runs ended above their T_target (see each log's final kept tokens)" \
        if missed else ""
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    return f"{title}\n{table}{note}\n"


def table1(runs) -> str:
    rows, missed, total = [paper_row(f"paper: {label}", *rest) for label, *rest in PAPER_TABLE1], 0, 0
    for t in (128, 32):
        if (t, 16, "snip") in runs:
            row, m, n = our_row(f"ours: Adapt T={t}", runs[(t, 16, "snip")])
            rows.append(row)
            missed, total = missed + m, total + n
    return render("Table 1 (16 shots, ViT-B/16; ours: GMACs per image, analytic)", rows, missed, total)


def table2(runs) -> str:
    rows, missed, total = [], 0, 0
    for t, (params, gflops, accs) in PAPER_TABLE2.items():
        rows.append(paper_row(f"paper: T={t}", params, gflops, accs))
        for (rt, ctx, score), per_dataset in sorted(runs.items()):
            if rt == t and score == "snip":
                row, m, n = our_row(f"ours: T={t} (ctx {ctx})", per_dataset)
                rows.append(row)
                missed, total = missed + m, total + n
    return render("Table 2 (Snip; T_target sweep)", rows, missed, total)


def table3(runs) -> str:
    rows, missed, total = [], 0, 0
    for score, (label, params, gflops, accs) in PAPER_TABLE3.items():
        rows.append(paper_row(f"paper: {label}", params, gflops, accs))
        if (128, 16, score) in runs:
            row, m, n = our_row(f"ours: {label}", runs[(128, 16, score)])
            rows.append(row)
            missed, total = missed + m, total + n
    return render("Table 3 (T_target 128; score function)", rows, missed, total)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="output root of scripts/adapt (default layout: output/adapt)")
    parser.add_argument("--table", choices=("1", "2", "3", "all"), default="all")
    parser.add_argument("--shots", type=int, default=16)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    runs = read_runs(args.root, args.shots)
    tables = {"1": table1, "2": table2, "3": table3}
    for key in (tables if args.table == "all" else [args.table]):
        print(tables[key](runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
