"""MVLPT's transferability map (paper Fig. 4): each task's prompt evaluated on every task.

``scripts/mvlpt/transferability.sh`` trains one single-task prompt per source task and evaluates
it (``--eval-only --model-dir``) on every target, leaving::

    <ROOT>/<source>/<target>/seed<S>/results.json

Entry (source, target) is the target's own metric (percent), averaged over seeds; each target
column is then divided by its best source (the paper's normalisation per target), so the best
transfer into a target reads 1. Writes ``transfer_raw.csv`` and ``transfer_normalised.csv``
(rows: sources, columns: targets) and, with matplotlib (``pip install -e '.[analysis]'``),
``transfer_map.png``, the heatmap.

    python -m trainers.analysis.mvlpt_transfer output/mvlpt/transfer/UPT/vit_b16_20shots/nctx4
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from datasets.io import atomic_open
from trainers.analysis.mvlpt_tables import latest_results, read_score

__all__ = ["collect_matrix", "normalise_per_target", "write_matrix", "plot", "main"]

Matrix = Dict[str, Dict[str, float]]  # source -> target -> score


def collect_matrix(root: str) -> Tuple[List[str], Matrix]:
    """(task names in sorted order, scores[source][target] averaged over seeds)."""
    runs: Dict[Tuple[str, str], List[float]] = {}
    for folder in sorted(glob.glob(os.path.join(root, "*", "*", "seed*"))):
        results = latest_results(folder)
        if results is None:
            continue
        target_dir = os.path.dirname(folder)
        source, target = os.path.basename(os.path.dirname(target_dir)), os.path.basename(target_dir)
        runs.setdefault((source, target), []).append(read_score(results, target))
    matrix: Matrix = {}
    for (source, target), values in runs.items():
        matrix.setdefault(source, {})[target] = sum(values) / len(values)
    tasks = sorted({t for pair in runs for t in pair})
    return tasks, matrix


def normalise_per_target(tasks: Sequence[str], matrix: Matrix) -> Matrix:
    """Each target's column divided by its best source's score (missing entries stay missing)."""
    best = {t: max((row[t] for row in matrix.values() if t in row), default=0.0) for t in tasks}
    return {s: {t: (v / best[t] if best[t] > 0 else 0.0) for t, v in row.items()} for s, row in matrix.items()}


def write_matrix(tasks: Sequence[str], matrix: Matrix, path: str, digits: int) -> None:
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["source \\ target"] + list(tasks))
        for source in tasks:
            row = matrix.get(source, {})
            writer.writerow([source] + [f"{row[t]:.{digits}f}" if t in row else "" for t in tasks])


def plot(tasks: Sequence[str], normalised: Matrix, path: str, title: str) -> bool:
    """The heatmap of the normalised map; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    nan = float("nan")
    grid = [[normalised.get(s, {}).get(t, nan) for t in tasks] for s in tasks]
    size = 2 + 0.45 * len(tasks)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(grid, cmap="viridis", vmin=min(0.0, *(v for row in grid for v in row if v == v)), vmax=1.0)
    ax.set_xticks(range(len(tasks)), labels=tasks, rotation=90)
    ax.set_yticks(range(len(tasks)), labels=tasks)
    ax.set_xlabel("target task")
    ax.set_ylabel("source task (prompt)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="score / best score on the target")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the transfer folder of one method and setting (<source>/<target>/seed<S>)")
    parser.add_argument("--output-dir", default="", help="where to write the CSVs and the picture (default: ROOT)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    tasks, matrix = collect_matrix(args.root)
    if not matrix:
        print(f"No finished evaluations (<source>/<target>/seed*/results.json) under {args.root}", file=sys.stderr)
        return 1
    normalised = normalise_per_target(tasks, matrix)
    out = args.output_dir or args.root
    os.makedirs(out, exist_ok=True)
    write_matrix(tasks, matrix, os.path.join(out, "transfer_raw.csv"), digits=2)
    write_matrix(tasks, normalised, os.path.join(out, "transfer_normalised.csv"), digits=4)
    missing = sum(t not in matrix.get(s, {}) for s in tasks for t in tasks)
    print(f"Wrote transfer_raw.csv and transfer_normalised.csv ({len(tasks)} x {len(tasks)}, {missing} missing) "
          f"to {out}")
    title = f"Transferability ({os.path.normpath(args.root)})"
    if plot(tasks, normalised, os.path.join(out, "transfer_map.png"), title):
        print(f"Wrote {os.path.join(out, 'transfer_map.png')}")
    else:
        print("No picture: matplotlib is not installed (pip install -e '.[analysis]' or pip install matplotlib); "
              "the CSVs hold the same numbers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
