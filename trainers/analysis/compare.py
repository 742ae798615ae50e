"""One table comparing methods from their runs' ``results.json`` files (seeds averaged).

    python -m trainers.analysis.compare "CoOp=output/synthetic/CoOp/..." "Zero-shot CLIP=output/ZeroshotCLIP/..."

Each ``LABEL=FOLDER`` row averages every ``results.json`` found under FOLDER (one per seed).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import List, Optional, Sequence

from tabulate import tabulate

from datasets.io import read_json
from trainers.engine.results import summarize


def comparison_rows(labelled_folders: Sequence[str], metric: str = "accuracy") -> List[List[str]]:
    """``[label, runs, "mean ± std"]`` per ``LABEL=FOLDER``; a folder without results says so."""
    rows = []
    for item in labelled_folders:
        label, _, folder = item.partition("=")
        if not folder:
            raise SystemExit(f"Expected LABEL=FOLDER, got {item!r}")
        files = sorted(glob.glob(os.path.join(folder, "**", "results.json"), recursive=True))
        values = [read_json(f)["metrics"][metric] for f in files]
        values = [v for v in values if v is not None]
        if not values:
            rows.append([label, "0", f"no results.json under {folder}"])
            continue
        mean, std, _ = summarize(values)
        rows.append([label, str(len(values)), f"{mean:.2f} ± {std:.2f}"])
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=FOLDER")
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args(argv)
    print(tabulate(comparison_rows(args.runs, args.metric), headers=["method", "runs", f"{args.metric} (%)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
