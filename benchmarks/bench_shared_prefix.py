"""Shared-prefix text encoding on and off, trained side by side in one run.

CoCoOp (batch 1, 4 context tokens from "a photo of a", as the original repository's
``vit_b16_c4_ep10_batch1_ctxv1``) and MaPLe (batch 4, 2 context tokens, deep prompts to layer 9)
at ViT-B/16 shapes with random weights and 100 classes. Both settings of
``MODEL.BACKBONE.SHARED_PREFIX`` start from the same weights and prompts and see the same batches;
their steps alternate, so machine load affects both alike. Printed: median step time per setting,
the speed-up, and the largest loss difference over the run (the losses must agree).

    python benchmarks/bench_shared_prefix.py [--steps 6] [--only cocoop|maple]
    python benchmarks/bench_shared_prefix.py --threads 1 --cpu-time   # on a busy machine
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_trainers import DEVICE, class_names, sync, vit_b16  # noqa: E402
from trainers.cocoop import DEFAULT_TEXT_CHUNK, ConditionalPromptedCLIP  # noqa: E402
from trainers.maple import MultiModalPromptedCLIP  # noqa: E402
from trainers.prompts.conditional import ConditionalContextLearner  # noqa: E402
from trainers.prompts.coupled import MultiModalPromptLearner  # noqa: E402


def cocoop(classes: int) -> Tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    clip_model = vit_b16()
    learner = ConditionalContextLearner(clip_model, class_names(classes), ctx_init="a photo of a")
    return ConditionalPromptedCLIP(clip_model, learner, images_per_text_call=DEFAULT_TEXT_CHUNK).to(DEVICE), 1


def maple(classes: int) -> Tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    clip_model = vit_b16()
    learner = MultiModalPromptLearner(clip_model, class_names(classes), n_ctx=2, depth=9)
    return MultiModalPromptedCLIP(clip_model, learner).to(DEVICE), 4


SCENARIOS: Dict[str, Callable[[int], Tuple[torch.nn.Module, int]]] = {"cocoop": cocoop, "maple": maple}


def side_by_side(build: Callable[[int], Tuple[torch.nn.Module, int]], classes: int, steps: int,
                 clock: Callable[[], float]) -> Dict[bool, Tuple[List[float], List[float]]]:
    """{shared: (step seconds, losses)} over ``steps`` alternating SGD steps (the first is warm-up)."""
    model, batch = build(classes)
    models = {False: model, True: copy.deepcopy(model)}
    for shared, m in models.items():
        m.clip.shared_prefix = shared
    optimizers = {shared: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
                  for shared, m in models.items()}
    generator = torch.Generator().manual_seed(1)
    record: Dict[bool, Tuple[List[float], List[float]]] = {False: ([], []), True: ([], [])}
    for step in range(steps + 1):
        images = torch.randn(batch, 3, 224, 224, generator=generator).to(DEVICE)
        labels = torch.randint(0, classes, (batch,), generator=generator).to(DEVICE)
        order = (False, True) if step % 2 == 0 else (True, False)
        for shared in order:
            sync()
            start = clock()
            loss = F.cross_entropy(models[shared](images), labels)
            optimizers[shared].zero_grad()
            loss.backward()
            optimizers[shared].step()
            sync()
            if step:
                record[shared][0].append(clock() - start)
                record[shared][1].append(loss.item())
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--only", choices=sorted(SCENARIOS))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time steps by this process's CPU time instead of the wall clock (a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    for name in [args.only] if args.only else sorted(SCENARIOS):
        record = side_by_side(SCENARIOS[name], args.classes, args.steps, clock)
        full, shared = (statistics.median(record[s][0]) for s in (False, True))
        diff = max(abs(a - b) for a, b in zip(record[False][1], record[True][1]))
        print(f"{name} (ViT-B/16 random weights, {DEVICE.type}, {args.classes} classes, {args.steps} steps): "
              f"{'CPU' if args.cpu_time else 'wall'} time, SHARED_PREFIX False {full:.3f} s/step, True {shared:.3f} s/step: {full / shared:.2f}x faster; "
              f"largest loss difference {diff:.2e}")


if __name__ == "__main__":
    main()
