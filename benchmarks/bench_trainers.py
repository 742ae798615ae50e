"""Training-step and evaluation cost of the trainers at ViT-B/16 size with random weights.

Each scenario runs its text-encoding modes in one run and prints the ratios:

* ``straightforward``: full 77-token text encoding, text features recomputed for every test batch
  (CoCoOp: the original's per-image loop);
* ``truncated``: sequences cut after the last end-of-text token, features once per evaluation;
* ``shared``: + the class-independent prompt prefix encoded once (``MODEL.BACKBONE.SHARED_PREFIX``);
* ``shared_ckpt``: + activation checkpointing of the text blocks (the 1000-class scenario).

Peak memory: CUDA's allocator peak on a GPU; on the CPU each mode runs in a fresh subprocess and
reports its peak resident set size growth over the model-building phase.

    python benchmarks/bench_trainers.py                 # all scenarios
    python benchmarks/bench_trainers.py --only coop     # one scenario

CoCoOp uses its own (small) batches, ``--cocoop-batch`` and 1: every image brings C prompts.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import string
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clip.model import CLIP  # noqa: E402
from trainers.cocoop import DEFAULT_TEXT_CHUNK, ConditionalPromptedCLIP  # noqa: E402
from trainers.coop import TextPromptedCLIP  # noqa: E402
from trainers.dept import DePTCLIP  # noqa: E402
from trainers.heads import CATHead  # noqa: E402
from trainers.kgcoop import hand_crafted_text_features, knowledge_guided_distance  # noqa: E402
from trainers.maple import MultiModalPromptedCLIP  # noqa: E402
from trainers.prompts.coupled import MultiModalPromptLearner  # noqa: E402
from trainers.prompts.conditional import ConditionalContextLearner  # noqa: E402
from trainers.prompts.text import TextContextLearner  # noqa: E402

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def vit_b16() -> CLIP:
    """OpenAI's ViT-B/16 shapes, random weights; fp16 on CUDA as released, fp32 on the CPU."""
    model = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                 transformer_layers=12).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(DEVICE).half() if DEVICE.type == "cuda" else model


def class_names(n: int, seed: int = 0) -> List[str]:
    rng = random.Random(seed)
    return [" ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
                     for _ in range(rng.randint(1, 3))) for _ in range(n)]


def timed(fn: Callable[[], None], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def peak_bytes_since_reset() -> int:
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


MODES = ("straightforward", "truncated", "shared", "shared_ckpt")


def random_clip(mode: str) -> CLIP:
    torch.manual_seed(0)
    clip_model = vit_b16()
    clip_model.truncate_text = mode != "straightforward"
    clip_model.shared_prefix = mode.startswith("shared")
    clip_model.text_checkpointing = mode == "shared_ckpt"
    return clip_model


def batch_of(size: int, classes: int) -> "tuple[torch.Tensor, torch.Tensor]":
    return (torch.randn(size, 3, 224, 224, device=DEVICE), torch.randint(0, classes, (size,), device=DEVICE))


def cross_entropy_loss(model) -> LossFn:
    return lambda images, labels: F.cross_entropy(model(images), labels)


def measure(model, loss_fn: LossFn, batch_size: int, args, mode: str,
            repeats: int = None, warmup: int = None) -> Dict[str, float]:
    """Seconds per SGD step on the trainable parameters, peak memory of those steps, and the time of
    ``eval_batches`` test batches (ours: class text features once per evaluation)."""
    images, labels = batch_of(batch_size, args.classes)
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.002, momentum=0.9)

    def step() -> None:
        loss = loss_fn(images, labels)
        optim.zero_grad()
        loss.backward()
        optim.step()

    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = peak_bytes_since_reset()
    repeats = args.repeats if repeats is None else repeats
    step_time = timed(step, repeats, args.warmup if warmup is None else warmup)
    peak = peak_bytes_since_reset() - (0 if DEVICE.type == "cuda" else base)

    @torch.no_grad()
    def evaluate() -> None:
        cache = contextlib.nullcontext() if mode == "straightforward" else model.cached_text_features()
        with cache:
            for _ in range(args.eval_batches):
                model(images)

    eval_time = timed(evaluate, max(1, repeats // 2), 0)
    return {"step_s": step_time, "peak_mb": peak / 2 ** 20, "eval_s": eval_time, "batch": batch_size}


def coop_variant(args, mode: str) -> Dict[str, float]:
    clip_model = random_clip(mode)
    model = TextPromptedCLIP(clip_model, TextContextLearner(clip_model, class_names(args.classes), n_ctx=16))
    model.to(DEVICE)
    return measure(model, cross_entropy_loss(model), args.batch, args, mode)


def kgcoop_variant(args, mode: str) -> Dict[str, float]:
    """KgCoOp: CoOp's 4 ctx from "a photo of a" + W=8 x distance to template features."""
    clip_model = random_clip(mode)
    names = class_names(args.classes)
    model = TextPromptedCLIP(clip_model, TextContextLearner(clip_model, names, ctx_init="a photo of a"))
    model.to(DEVICE)
    anchors = hand_crafted_text_features(clip_model, [f"a photo of a {n}." for n in names])

    def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        image_features, text_features = model.encode(images)
        logits = model.itm_logits(image_features, text_features)
        return F.cross_entropy(logits, labels) + 8.0 * knowledge_guided_distance(text_features, anchors)

    return measure(model, loss_fn, args.batch, args, mode)


def maple_variant(args, mode: str) -> Dict[str, float]:
    """MaPLe: 2 coupled ctx, depth 9, batch 4 (its base-to-new recipe)."""
    clip_model = random_clip(mode)
    learner = MultiModalPromptLearner(clip_model, class_names(args.classes), n_ctx=2, depth=9)
    model = MultiModalPromptedCLIP(clip_model, learner).to(DEVICE)
    return measure(model, cross_entropy_loss(model), 4, args, mode)


def dept_coop_variant(args, mode: str) -> Dict[str, float]:
    """DePT around CoOp: CAT head, loss 0.3 CE(ITM) + 0.7 CE(CAT), fused logits at test."""
    clip_model = random_clip(mode)
    baseline = TextPromptedCLIP(clip_model, TextContextLearner(clip_model, class_names(args.classes), n_ctx=16))
    head = CATHead(512, args.classes, clip_model.dtype)
    model = DePTCLIP(baseline, head, base_route=True, weight=0.7).to(DEVICE)

    def loss_fn(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        image_features, text_features = model.encode(images)
        itm = model.itm_logits(image_features, text_features)
        cat_logits, cat_labels = head.training_logits(image_features, text_features, labels, model.itm_logits)
        return 0.3 * F.cross_entropy(itm, labels) + 0.7 * F.cross_entropy(cat_logits, cat_labels)

    return measure(model, loss_fn, args.batch, args, mode)


def cocoop_variant(args, mode: str, batch_size: int) -> Dict[str, float]:
    """CoCoOp (4 ctx from "a photo of a"): straightforward = the original's per-image loop over
    full-length sequences; ours = the batch in chunks of images, cut after the last EOT."""
    clip_model = random_clip(mode)
    learner = ConditionalContextLearner(clip_model, class_names(args.classes), ctx_init="a photo of a")
    chunk = 1 if mode == "straightforward" else DEFAULT_TEXT_CHUNK
    model = ConditionalPromptedCLIP(clip_model, learner, images_per_text_call=chunk).to(DEVICE)
    # CoCoOp steps cost batch x classes text sequences: one timed step keeps the run short.
    return measure(model, cross_entropy_loss(model), batch_size, args, mode, repeats=1, warmup=0)


def cocoop_loop_vs_batch(args, batched: bool) -> Dict[str, float]:
    """Per-image loop vs one batched text call, both truncated: what batching alone buys."""
    clip_model = random_clip("truncated")
    learner = ConditionalContextLearner(clip_model, class_names(args.classes), ctx_init="a photo of a")
    model = ConditionalPromptedCLIP(clip_model, learner, images_per_text_call=0 if batched else 1).to(DEVICE)
    return measure(model, cross_entropy_loss(model), args.cocoop_batch, args, "truncated", repeats=1, warmup=0)


def coop_batch4_variant(args, mode: str) -> Dict[str, float]:
    clip_model = random_clip(mode)
    model = TextPromptedCLIP(clip_model, TextContextLearner(clip_model, class_names(args.classes), n_ctx=16))
    model.to(DEVICE)
    return measure(model, cross_entropy_loss(model), 4, args, mode)


def coop_1000_variant(args, mode: str) -> Dict[str, float]:
    """CoOp over ImageNet's 1000 classes (batch 4): where the text pass decides whether a step fits."""
    clip_model = random_clip(mode)
    model = TextPromptedCLIP(clip_model, TextContextLearner(clip_model, class_names(1000), n_ctx=16))
    model.to(DEVICE)
    return measure(model, cross_entropy_loss(model), 4, args, mode, repeats=1, warmup=0)


#: scenario -> (function, its modes); the first mode is the reference of the ratios
SCENARIOS = {
    "coop": (coop_variant, MODES[:3]),
    "coop_b4": (coop_batch4_variant, MODES[:3]),
    "coop_1000": (coop_1000_variant, MODES),
    "kgcoop": (kgcoop_variant, MODES[:3]),
    "maple": (maple_variant, MODES[:3]),
    "dept_coop": (dept_coop_variant, MODES[:3]),
    "cocoop_b1": (lambda args, mode: cocoop_variant(args, mode, 1), MODES[:3]),
    "cocoop_b4": (lambda args, mode: cocoop_variant(args, mode, args.cocoop_batch), MODES[:3]),
    "cocoop_loop_vs_batched": (lambda args, mode: cocoop_loop_vs_batch(args, batched=mode == "batched"),
                               ("loop", "batched")),
}


def run_variant_in_subprocess(name: str, mode: str, argv: List[str]) -> Optional[Dict[str, float]]:
    """The mode's measurements, or None when its process died (killed for memory: it does not fit)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", name, "--mode", mode] + argv
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        reason = "killed, out of memory" if done.returncode in (-9, 137) else f"exit {done.returncode}"
        print(f"  {name} {mode}: did not run to the end ({reason}): {done.stderr.strip()[-300:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(name: str, measured: Dict[str, Optional[Dict[str, float]]], args) -> None:
    """One line per mode: step time, peak memory and evaluation time, with ratios to the first
    mode and (from the third on) to the second; modes that did not fit are named."""
    for mode, r in measured.items():
        if r is None:
            print(f"{name}: {mode} did not fit on this machine (see above)")
    results = {mode: r for mode, r in measured.items() if r is not None}
    if len(results) < 2:
        return
    modes = list(results)
    first = results[modes[0]]
    classes = 1000 if name == "coop_1000" else args.classes
    print(f"{name} (ViT-B/16 random weights, {DEVICE.type}, batch {int(first['batch'])}, {classes} classes):")
    for i, mode in enumerate(modes):
        r = results[mode]
        ratios = [f"step {first['step_s'] / r['step_s']:.2f}x, memory {first['peak_mb'] / max(r['peak_mb'], 1e-9):.2f}x "
                  f"less than {modes[0]}"]
        if i >= 2:
            second = results[modes[1]]
            ratios.append(f"step {second['step_s'] / r['step_s']:.2f}x, memory "
                          f"{second['peak_mb'] / max(r['peak_mb'], 1e-9):.2f}x less than {modes[1]}")
        print(f"  {mode:>15}: train step {r['step_s']:.3f} s, peak memory {r['peak_mb']:.0f} MiB, evaluation "
              f"{r['eval_s']:.3f} s" + ("" if i == 0 else "; " + "; ".join(ratios)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SCENARIOS), help="run one scenario")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cocoop-batch", type=int, default=4, help="images per CoCoOp batch (x classes sequences)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    if args.variant:
        print(json.dumps(SCENARIOS[args.variant][0](args, args.mode)))
        return
    argv = [f"--batch={args.batch}", f"--cocoop-batch={args.cocoop_batch}", f"--classes={args.classes}",
            f"--repeats={args.repeats}",
            f"--warmup={args.warmup}", f"--eval-batches={args.eval_batches}"]
    for name in ([args.only] if args.only else sorted(SCENARIOS)):
        report(name, {mode: run_variant_in_subprocess(name, mode, argv) for mode in SCENARIOS[name][1]}, args)


if __name__ == "__main__":
    main()
