"""Average the seeds' best source checkpoints into one source prompt (MVLPT's ``scripts/avg_ckpt.py``).

    python -m trainers.analysis.avg_ckpt SOURCE_DIR [--seeds 1 2 3] [--output DIR] [--name prompt_learner]

reads ``SOURCE_DIR/seed<s>/<name>/model-best.pth.tar`` for every seed, averages every tensor of
the state dicts element-wise (the original also averages the class-dependent token buffers, which
a target run drops anyway), the epoch (rounded down) and the validation result, and writes
``<output>/<name>/model.pth.tar-<epoch>`` and ``model-best.pth.tar`` without optimizer or scheduler
state. ``--output`` defaults to SOURCE_DIR itself: the seedless folder that a target run passes as
``--model-dir`` (the original hard-codes its folder and leaves the move to the user).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch

from trainers.engine.checkpoint import BEST_NAME, load_checkpoint, save_checkpoint


def average_checkpoints(paths: Sequence[str]) -> Dict[str, object]:
    """One checkpoint whose tensors, epoch and val_result are the means over ``paths`` (same keys and shapes)."""
    if not paths:
        raise ValueError("nothing to average: no checkpoint paths given")
    checkpoints = [load_checkpoint(p) for p in paths]
    keys = list(checkpoints[0]["state_dict"])
    for path, ckpt in zip(paths[1:], checkpoints[1:]):
        if list(ckpt["state_dict"]) != keys:
            raise ValueError(f"{path} holds other tensors than {paths[0]}: the seeds come from different settings")
    state_dict = {}
    for key in keys:
        tensors = [c["state_dict"][key] for c in checkpoints]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"{key} has different shapes across the checkpoints: {sorted(shapes)}")
        state_dict[key] = torch.stack([t.float() for t in tensors]).mean(dim=0).to(tensors[0].dtype)
    results = [c.get("val_result") for c in checkpoints]
    return {"state_dict": state_dict, "epoch": int(sum(c["epoch"] for c in checkpoints) / len(checkpoints)),
            "val_result": sum(results) / len(results) if None not in results else None}


def seed_checkpoints(source_dir: str, seeds: Sequence[int], name: str) -> List[str]:
    paths = [os.path.join(source_dir, f"seed{s}", name, BEST_NAME) for s in seeds]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"missing source checkpoints: {', '.join(missing)} (did every seed's run finish "
                                "with TEST.FINAL_MODEL best_val?)")
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source_dir", help="the source runs' folder holding seed<s>/ sub-folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--output", default="", help="folder that receives <name>/ (default: source_dir)")
    parser.add_argument("--name", default="prompt_learner", help="checkpoint folder of the learned module")
    args = parser.parse_args(argv)
    try:
        paths = seed_checkpoints(args.source_dir, args.seeds, args.name)
        averaged = average_checkpoints(paths)
    except (FileNotFoundError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    out = os.path.join(args.output or args.source_dir, args.name)
    save_checkpoint(averaged, out, is_best=True)
    print(f"Averaged {len(paths)} seeds into {out} (epoch {averaged['epoch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
