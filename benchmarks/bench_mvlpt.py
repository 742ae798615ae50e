"""MVLPT's multi-task step against its tasks trained one after another, and TRAINER.ACT_CKPT's memory.

From one run, with random CLIP weights (ViT-B/16 shapes on a GPU, the tiny CLIP on the CPU unless
``--size``) and three tasks of 100, 47 and 37 classes (Caltech101, DTD, OxfordPets sizes):

* step time of one multi-task step (a batch mixing the three tasks, logits over the union of
  their classes, MVLPT's loss) against one single-task step of each task run one after another
  (each batch from one task, its own classes), per step and per image;
* peak memory of the multi-task step without and with activation checkpointing (ACT_CKPT 2:
  CLIP's switches in both encoders). CUDA: the allocator's peak; CPU: the bytes autograd saves
  for backward (the activations checkpointing removes), since the CPU has no allocator peak.

    python benchmarks/bench_mvlpt.py [--method UPT|CoOp|VPT] [--batch 32] [--size vit_b16|tiny]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import clip  # noqa: E402
from bench_trainers import DEVICE, class_names, sync, timed, vit_b16  # noqa: E402
from trainers.mvlpt import UnifiedPromptedCLIP, set_activation_checkpointing  # noqa: E402
from trainers.prompts.unified import MultitaskVLPromptLearner  # noqa: E402
from trainers.prompts.vision import VisualPromptLearner  # noqa: E402

TASK_SIZES = (100, 47, 37)
LENGTHS = {"CoOp": (16, 0), "VPT": (0, 16), "UPT": (4, 4)}  # the paper's context lengths


def backbone(size: str) -> torch.nn.Module:
    if size == "vit_b16":
        return vit_b16()
    model, _ = clip.load("tiny-ViT-B/16", device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(DEVICE)


def prompted(model: torch.nn.Module, names: Sequence[str], method: str) -> UnifiedPromptedCLIP:
    text_n, visual_n = LENGTHS[method]
    torch.manual_seed(0)
    vision = VisualPromptLearner(model, visual_n) if visual_n else None
    return UnifiedPromptedCLIP(model, MultitaskVLPromptLearner(model, names, text_n, vision)).to(DEVICE)


def step_fn(net: UnifiedPromptedCLIP, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    params = [p for p in net.prompt_learner.parameters() if p.requires_grad]
    optim = torch.optim.SGD(params, lr=1e-6, momentum=0.9)

    def step() -> None:
        optim.zero_grad()
        loss = F.cross_entropy(net(images).float(), labels)
        loss.backward()
        optim.step()

    return step


def activation_bytes(step: Callable[[], None]) -> int:
    """Peak CUDA memory of one step, or on the CPU the bytes autograd saves for backward."""
    if DEVICE.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        step()
        sync()
        return torch.cuda.max_memory_allocated()
    saved: List[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(saved)


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(LENGTHS), default="UPT")
    parser.add_argument("--batch", type=int, default=32 if DEVICE.type == "cuda" else 8)
    parser.add_argument("--size", choices=("vit_b16", "tiny"), default="vit_b16" if DEVICE.type == "cuda" else "tiny")
    parser.add_argument("--repeats", type=int, default=10 if DEVICE.type == "cuda" else 3)
    args = parser.parse_args(argv)
    model = backbone(args.size)
    tasks = [class_names(n, seed=i) for i, n in enumerate(TASK_SIZES)]
    union = [name for names in tasks for name in names]
    offsets = [sum(TASK_SIZES[:i]) for i in range(len(TASK_SIZES))]
    g = torch.Generator().manual_seed(0)
    dtype = model.visual.conv1.weight.dtype

    def batch(n_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(args.batch, 3, 224, 224, generator=g).to(DEVICE, dtype)
        return images, torch.randint(0, n_classes, (args.batch,), generator=g).to(DEVICE)

    images, _ = batch(1)
    task_of = torch.arange(args.batch) % len(TASK_SIZES)
    mixed = torch.tensor([offsets[t] + int(torch.randint(0, TASK_SIZES[t], (1,), generator=g)) for t in task_of])
    multi = step_fn(prompted(model, union, args.method), images, mixed.to(DEVICE))
    singles = [step_fn(prompted(model, names, args.method), *batch(len(names))) for names in tasks]

    warmup = 1
    t_multi = timed(multi, args.repeats, warmup)
    t_single = [timed(s, args.repeats, warmup) for s in singles]
    memory: Dict[str, int] = {}
    for label, on in (("off", False), ("on", True)):
        set_activation_checkpointing(model, 2 if on else 1)
        memory[label] = activation_bytes(multi)
    set_activation_checkpointing(model, 1)

    where = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "CPU"
    print(f"MVLPT {args.method} on {where}, {args.size} CLIP ({dtype}), batch {args.batch}, "
          f"tasks of {'/'.join(map(str, TASK_SIZES))} classes ({len(union)} in the union)")
    print(f"multi-task step (3 tasks, one batch): {1000 * t_multi:.1f} ms; the 3 single-task steps one after "
          f"another: {1000 * sum(t_single):.1f} ms ({', '.join(f'{1000 * t:.1f}' for t in t_single)})")
    print(f"ratio multi-task step / three single-task steps: {t_multi / sum(t_single):.3f} "
          f"(per image: {3 * t_multi / sum(t_single):.3f})")
    what = "peak CUDA memory" if DEVICE.type == "cuda" else "activations saved for backward"
    print(f"{what} of the multi-task step: ACT_CKPT 1 (none) {memory['off'] / 2**20:.1f} MiB, "
          f"ACT_CKPT 2 (checkpointing) {memory['on'] / 2**20:.1f} MiB")
    print(f"ratio with / without activation checkpointing: {memory['on'] / memory['off']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
