"""Training-step and evaluation cost of the trainers at ViT-B/16 size with random weights.

Each scenario runs "ours" (text sequences cut after the last end-of-text token, class text
features encoded once per evaluation) and "straightforward" (full 77-token text encoding,
text features recomputed for every test batch) in one run and prints the ratios.
Peak memory: CUDA's allocator peak on a GPU; on the CPU each variant runs in a fresh
subprocess and reports its peak resident set size growth over the model-building phase.

    python benchmarks/bench_trainers.py                 # all scenarios
    python benchmarks/bench_trainers.py --only coop     # one scenario

CoCoOp's "straightforward" is the original: one full-length text-encoder call per image;
"ours" encodes TEXT_CHUNK images' prompts per call, cut after the last end-of-text token.
It uses its own (small) batch, ``--cocoop-batch``: every image brings C prompts.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import string
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clip.model import CLIP  # noqa: E402
from trainers.cocoop import DEFAULT_TEXT_CHUNK, ConditionalPromptedCLIP  # noqa: E402
from trainers.coop import TextPromptedCLIP  # noqa: E402
from trainers.prompts.conditional import ConditionalContextLearner  # noqa: E402
from trainers.prompts.text import TextContextLearner  # noqa: E402

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


def build_coop(args, straightforward: bool) -> TextPromptedCLIP:
    torch.manual_seed(0)
    clip_model = vit_b16()
    clip_model.truncate_text = not straightforward
    learner = TextContextLearner(clip_model, class_names(args.classes), n_ctx=16).to(DEVICE)
    return TextPromptedCLIP(clip_model, learner)


def train_step_cost(model, images: torch.Tensor, labels: torch.Tensor, args) -> "tuple[float, float]":
    """(seconds per SGD step on the prompt learner, peak memory of those steps in bytes)."""
    optim = torch.optim.SGD(model.prompt_learner.parameters(), lr=0.002, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optim.zero_grad()
        loss.backward()
        optim.step()

    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = peak_bytes_since_reset()
    step_time = timed(step, args.repeats, args.warmup)
    return step_time, peak_bytes_since_reset() - (0 if DEVICE.type == "cuda" else base)


def coop_variant(args, straightforward: bool) -> Dict[str, float]:
    """One CoOp training-step time and peak memory, and one evaluation time."""
    model = build_coop(args, straightforward)
    images = torch.randn(args.batch, 3, 224, 224, device=DEVICE)
    labels = torch.randint(0, args.classes, (args.batch,), device=DEVICE)
    step_time, peak = train_step_cost(model, images, labels, args)

    @torch.no_grad()
    def evaluate() -> None:
        if straightforward:
            for _ in range(args.eval_batches):
                model(images)
        else:
            with model.cached_text_features():
                for _ in range(args.eval_batches):
                    model(images)

    eval_time = timed(evaluate, max(1, args.repeats // 2), 0)
    return {"step_s": step_time, "peak_mb": peak / 2 ** 20, "eval_s": eval_time}


def cocoop_variant(args, straightforward: bool) -> Dict[str, float]:
    """CoCoOp (4 ctx from "a photo of a", as its base-to-new config): step, peak memory, evaluation."""
    torch.manual_seed(0)
    clip_model = vit_b16()
    clip_model.truncate_text = not straightforward
    learner = ConditionalContextLearner(clip_model, class_names(args.classes), ctx_init="a photo of a").to(DEVICE)
    chunk = 1 if straightforward else DEFAULT_TEXT_CHUNK
    model = ConditionalPromptedCLIP(clip_model, learner, images_per_text_call=chunk)
    images = torch.randn(args.cocoop_batch, 3, 224, 224, device=DEVICE)
    labels = torch.randint(0, args.classes, (args.cocoop_batch,), device=DEVICE)
    step_time, peak = train_step_cost(model, images, labels, args)

    @torch.no_grad()
    def evaluate() -> None:
        for _ in range(args.eval_batches):
            model(images)

    eval_time = timed(evaluate, max(1, args.repeats // 2), 0)
    return {"step_s": step_time, "peak_mb": peak / 2 ** 20, "eval_s": eval_time}


SCENARIOS = {"coop": coop_variant, "cocoop": cocoop_variant}


def run_variant_in_subprocess(name: str, straightforward: bool, argv: List[str]) -> Dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", name,
           "--straightforward" if straightforward else "--ours"] + argv
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(name: str, ours: Dict[str, float], plain: Dict[str, float], args) -> None:
    batch = args.cocoop_batch if name == "cocoop" else args.batch
    print(f"{name} (ViT-B/16 random weights, {DEVICE.type}, batch {batch}, {args.classes} classes):")
    print(f"  train step: straightforward {plain['step_s']:.3f} s, ours {ours['step_s']:.3f} s, "
          f"speedup {plain['step_s'] / ours['step_s']:.2f}x")
    print(f"  peak memory: straightforward {plain['peak_mb']:.0f} MiB, ours {ours['peak_mb']:.0f} MiB, "
          f"ratio {plain['peak_mb'] / max(ours['peak_mb'], 1e-9):.2f}x")
    print(f"  evaluation ({args.eval_batches} batches of {batch}): straightforward {plain['eval_s']:.3f} s, "
          f"ours {ours['eval_s']:.3f} s, speedup {plain['eval_s'] / ours['eval_s']:.2f}x")


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
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--straightforward", action="store_true", help=argparse.SUPPRESS)
    group.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    if args.variant:
        print(json.dumps(SCENARIOS[args.variant](args, args.straightforward)))
        return
    argv = [f"--batch={args.batch}", f"--cocoop-batch={args.cocoop_batch}", f"--classes={args.classes}",
            f"--repeats={args.repeats}",
            f"--warmup={args.warmup}", f"--eval-batches={args.eval_batches}"]
    for name in ([args.only] if args.only else sorted(SCENARIOS)):
        plain = run_variant_in_subprocess(name, True, argv)
        ours = run_variant_in_subprocess(name, False, argv)
        report(name, ours, plain, args)


if __name__ == "__main__":
    main()
