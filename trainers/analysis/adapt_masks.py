"""Kept K/V prompt tokens per branch and layer over training (the Adapt paper's Fig. 3) from a run's mask log.

    python -m trainers.analysis.adapt_masks RUN_DIR [--output-dir DIR]

Reads ``RUN_DIR/adapt_masks.json`` (written by the Adapt trainer after every epoch; epoch 0 is
the initial all-kept mask) and writes ``adapt_masks.csv`` (epoch, branch, layer, kept, slots)
and, when matplotlib is installed (``pip install -e .[analysis]``), ``adapt_masks.png``: per
branch a layer x epoch map of the kept tokens. Without matplotlib it says so and writes the CSV only.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from trainers.adapt import MASKS_FILE

BRANCHES = ("image", "text")


def kept_rows(log: dict) -> List[Dict[str, int]]:
    """One row per (epoch, branch, layer): the kept tokens and the slots of that layer."""
    rows = []
    for entry in log["epochs"]:
        for branch in BRANCHES:
            for layer, slots in enumerate(entry[branch]):
                rows.append({"epoch": entry["epoch"], "branch": branch, "layer": layer + 1,
                             "kept": sum(slots), "slots": len(slots)})
    return rows


def write_csv(rows: List[Dict[str, int]], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "branch", "layer", "kept", "slots"])
        writer.writeheader()
        writer.writerows(rows)


def plot(log: dict, path: str) -> bool:
    """Layer x epoch maps of kept tokens, one per branch; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [entry["epoch"] for entry in log["epochs"]]
    fig, axes = plt.subplots(1, len(BRANCHES), figsize=(6 * len(BRANCHES), 4), squeeze=False)
    for ax, branch in zip(axes[0], BRANCHES):
        kept = [[sum(slots) for slots in entry[branch]] for entry in log["epochs"]]  # [epoch][layer]
        layers, slots = len(kept[0]), len(log["epochs"][0][branch][0])
        image = ax.imshow([list(col) for col in zip(*kept)], aspect="auto", origin="lower", vmin=0, vmax=slots,
                          extent=(epochs[0] - 0.5, epochs[-1] + 0.5, 0.5, layers + 0.5), cmap="viridis")
        ax.set_title(f"{branch} branch: kept tokens per layer")
        ax.set_xlabel("epoch")
        ax.set_ylabel("layer")
        fig.colorbar(image, ax=ax)
    fig.suptitle(f"Adapt masks over training (T_target {log.get('t_target')})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="output folder of an Adapt run (holds adapt_masks.json)")
    parser.add_argument("--output-dir", default="", help="where to write the CSV and plot (default: RUN_DIR)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    source = os.path.join(args.run_dir, MASKS_FILE)
    if not os.path.isfile(source):
        print(f"No {MASKS_FILE} in {args.run_dir}: is it the output folder of an Adapt run?", file=sys.stderr)
        return 2
    with open(source) as f:
        log = json.load(f)
    out = args.output_dir or args.run_dir
    os.makedirs(out, exist_ok=True)
    write_csv(kept_rows(log), os.path.join(out, "adapt_masks.csv"))
    print(f"Wrote {os.path.join(out, 'adapt_masks.csv')}")
    if plot(log, os.path.join(out, "adapt_masks.png")):
        print(f"Wrote {os.path.join(out, 'adapt_masks.png')}")
    else:
        print("No plot: matplotlib is not installed (pip install -e '.[analysis]' or pip install matplotlib); "
              "the CSV holds the same numbers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
