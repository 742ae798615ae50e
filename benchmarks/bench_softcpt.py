"""SoftCPT's training step: the class prompts of all tasks encoded vs only the tasks in the batch.

The original encodes every class of every task at every step (General-10: 1191 class prompts,
plus 10 task prompts, all with backprop). A sample's loss only sees its own task's classes, so
encoding only the tasks present in the batch gives the same loss and gradients; this prints the
time of both from one run, checks that the losses are equal, and prints the ratio.

    python benchmarks/bench_softcpt.py                         # tiny CLIP (CPU-sized), General-10 classes
    python benchmarks/bench_softcpt.py --clip vit_b16 --steps 5  # ViT-B/16 shapes, random weights (GPU)

Batches are drawn as the original's sampler does (uniform over the union of the tasks' items,
so a task's share is its class count) and, as a second scenario, from a single task.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clip  # noqa: E402
from bench_trainers import DEVICE, vit_b16  # noqa: E402
from trainers.prompts.meta import MetaPromptLearner  # noqa: E402
from trainers.softcpt import SoftCPTCLIP  # noqa: E402

#: General-10's class counts in its task order (Caltech101 ... UCF101)
GENERAL10_CLASSES = (100, 47, 10, 100, 101, 102, 37, 196, 397, 101)


def build_model(kind: str, class_counts: Sequence[int]) -> SoftCPTCLIP:
    """SoftCPT-NATA (M = 4 task tokens, L = 16 generated) over tasks of the given class counts."""
    model = vit_b16() if kind == "vit_b16" else clip.load("tiny-ViT-B/16", device=DEVICE)[0].float()
    for p in model.parameters():
        p.requires_grad_(False)
    names = [f"task {t} image classification" for t in range(len(class_counts))]
    classes = [[f"class {t} {c}" for c in range(n)] for t, n in enumerate(class_counts)]
    meta = MetaPromptLearner(model, names, classes, meta_net_type="lin", n_ctx=16, task_n_ctx=4)
    return SoftCPTCLIP(model, meta).to(DEVICE)


def own_task_loss(model: SoftCPTCLIP, logits: torch.Tensor, tasks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The batch mean of each sample's cross-entropy over its own task's classes (SoftCPT's loss)."""
    meta = model.meta_prompts
    starts = torch.tensor([meta.task_slice(t).start for t in tasks.tolist()], device=logits.device)
    stops = torch.tensor([meta.task_slice(t).stop for t in tasks.tolist()], device=logits.device)
    columns = torch.arange(logits.shape[1], device=logits.device)[None]
    inside = (columns >= starts[:, None]) & (columns < stops[:, None])
    return F.cross_entropy(logits.masked_fill(~inside, float("-inf")), labels)


def step(model: SoftCPTCLIP, images: torch.Tensor, tasks: torch.Tensor, labels: torch.Tensor,
         only_present: bool) -> float:
    """One forward/backward; returns the loss."""
    text = model.text_features(tasks) if only_present else model.class_text_features()
    loss = own_task_loss(model, model.itm_logits(model.image_features(images), text), tasks, labels)
    loss.backward()
    for p in model.meta_prompts.parameters():
        p.grad = None
    return float(loss.detach())


def timed(fn: Callable[[], float], steps: int) -> "tuple[float, float]":
    """(seconds per step after one warm-up step, the last loss)."""
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, loss


def batch(class_counts: Sequence[int], size: int, single_task: bool, generator: torch.Generator,
          resolution: int) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """(images, tasks, global labels): items uniform over the union of classes (the original's
    sampler with equal shots per class), or all from one task."""
    offsets: List[int] = [sum(class_counts[:t]) for t in range(len(class_counts))]
    total = sum(class_counts)
    if single_task:
        task = int(torch.randint(len(class_counts), (1,), generator=generator))
        labels = offsets[task] + torch.randint(class_counts[task], (size,), generator=generator)
    else:
        labels = torch.randint(total, (size,), generator=generator)
    tasks = torch.tensor([max(t for t, o in enumerate(offsets) if o <= int(label)) for label in labels])
    images = torch.randn(size, 3, resolution, resolution, generator=generator)
    return images.to(DEVICE), tasks.to(DEVICE), labels.to(DEVICE)


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", choices=("tiny", "vit_b16"), default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    model = build_model(args.clip, GENERAL10_CLASSES)
    generator = torch.Generator().manual_seed(0)
    print(f"SoftCPT-NATA, {len(GENERAL10_CLASSES)} tasks / {sum(GENERAL10_CLASSES)} classes (General-10), "
          f"CLIP {args.clip}, batch {args.batch_size}, device {DEVICE.type}")
    for scenario, single in (("union-sampled batch", False), ("one-task batch", True)):
        images, tasks, labels = batch(GENERAL10_CLASSES, args.batch_size, single, generator,
                                      model.clip.input_resolution)
        present = sorted(set(tasks.tolist()))
        full_s, full_loss = timed(lambda: step(model, images, tasks, labels, only_present=False), args.steps)
        part_s, part_loss = timed(lambda: step(model, images, tasks, labels, only_present=True), args.steps)
        if abs(full_loss - part_loss) > 1e-3 * max(1.0, abs(full_loss)):
            raise SystemExit(f"losses differ: all tasks {full_loss} vs present tasks {part_loss}")
        encoded = sum(GENERAL10_CLASSES[t] for t in present)
        print(f"{scenario}: {len(present)} tasks present ({encoded} of {sum(GENERAL10_CLASSES)} class prompts)")
        print(f"  all tasks encoded:     {full_s * 1000:9.1f} ms/step  loss {full_loss:.6f}")
        print(f"  present tasks encoded: {part_s * 1000:9.1f} ms/step  loss {part_loss:.6f}")
        print(f"  ratio all/present: {full_s / part_s:.2f}x (losses equal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
