"""Text-encoder cost of CoOp-style class prompts: full 77-token context vs truncation at the last EOT.

Runs CLIP's text transformer at ViT-B/16 size (width 512, 12 layers, 8 heads,
embedding 512) with random weights on 100 prompts "X X ... X <class name>."
(16 context tokens, class names of 1-3 words) and reports both timings, the
speed-up and the largest feature difference. fp32 on CPU, fp16 on CUDA.

    python benchmarks/bench_clip_text.py [--prompts 100] [--repeats 5] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Callable, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clip import tokenize  # noqa: E402
from clip.model import CLIP  # noqa: E402

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
               transformer_layers=12)

WORDS = ["red", "wing", "black", "tailed", "sea", "golden", "retriever", "maple", "leaf", "tree", "frog", "small",
         "car", "sports", "coupe", "jet", "airliner", "pizza", "garden", "snake", "river", "desert", "rose",
         "mountain", "lake", "bird", "house", "striped", "cat", "long", "haired", "terrier", "dog", "bridge", "bay",
         "forest", "road", "white", "flower", "pine", "iris", "boat", "field", "highway", "crop", "pasture"]


def class_prompts(count: int, seed: int) -> List[str]:
    """CoOp's generic-context prompts with random 1-3 word class names."""
    rng = random.Random(seed)
    names = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(count)]
    return [" ".join(["X"] * 16) + f" {name}." for name in names]


def timed(fn: Callable[[], torch.Tensor], warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    model = CLIP(**VIT_B16).eval().to(device)
    model = model.half() if device.type == "cuda" else model.float()
    text = tokenize(class_prompts(args.prompts, args.seed)).to(device)
    longest = int(text.argmax(-1).max()) + 1

    def encode(truncate: bool) -> torch.Tensor:
        model.truncate_text = truncate
        with torch.no_grad():
            return model.encode_text(text)

    full_s = timed(lambda: encode(False), args.warmup, args.repeats, device)
    short_s = timed(lambda: encode(True), args.warmup, args.repeats, device)
    diff = (encode(False).float() - encode(True).float()).abs().max().item()
    precision = "fp16" if device.type == "cuda" else "fp32"
    print(f"device {device.type} ({precision}, {torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"text encoder, {args.prompts} prompts: full {model.context_length} tokens {full_s:.3f} s, "
          f"truncated to {longest} tokens {short_s:.3f} s, speedup {full_s / short_s:.2f}x, max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
