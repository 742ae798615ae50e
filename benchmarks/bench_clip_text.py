"""Text-encoder cost of CoOp-style class prompts: full 77 tokens, truncation, shared prefix, checkpointing.

Runs CLIP's text transformer at ViT-B/16 size (width 512, 12 layers, 8 heads, embedding 512)
with random weights on 100 prompts "<start> X*16 <class name>. <end>" (16 context tokens,
class names of 2-4 words) and reports, in one run:

* inference (no gradients): full 77-token context vs truncation at the last end token;
* a training step (forward + backward to a learned context, frozen CLIP): full 77 tokens,
  truncated, shared prefix (start token + context run once, truncated) and shared prefix with
  activation checkpointing. Each gives wall and CPU time (the latter is steadier on a shared
  machine) with their ratios to the full and truncated paths, the activations kept for
  backward (bytes of non-parameter tensors autograd saves, on any device), on CUDA the
  allocator's peak, and the largest relative difference of features and context gradient to
  the full path.

fp32 on CPU, OpenAI's fp16 storage on CUDA. On 2 CPU cores the default run needs about
2 minutes of CPU time (the 77-token training step dominates), ``--quick`` about a third of that;
on a machine loaded by other work, ``--threads 1`` keeps the ratios from drifting.

    python benchmarks/bench_clip_text.py [--prompts 100] [--repeats 2] [--warmup 1] [--threads N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clip import tokenize  # noqa: E402
from clip.model import CLIP, convert_weights  # noqa: E402

VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
               transformer_layers=12)
N_CTX = 16

WORDS = ["red", "wing", "black", "tailed", "sea", "golden", "retriever", "maple", "leaf", "tree", "frog", "small",
         "car", "sports", "coupe", "jet", "airliner", "pizza", "garden", "snake", "river", "desert", "rose",
         "mountain", "lake", "bird", "house", "striped", "cat", "long", "haired", "terrier", "dog", "bridge", "bay",
         "forest", "road", "white", "flower", "pine", "iris", "boat", "field", "highway", "crop", "pasture"]


def class_prompts(count: int, seed: int) -> List[str]:
    """CoOp's generic-context prompts with random 2-4 word class names."""
    rng = random.Random(seed)
    names = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) for _ in range(count)]
    return [" ".join(["X"] * N_CTX) + f" {name}." for name in names]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Tensor], warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed_once(fn, device).wall for _ in range(repeats))


class Timing(NamedTuple):
    wall: float
    cpu: float  # this process's CPU time: on a shared, loaded machine less noisy than wall time
    result: Tensor


def timed_once(fn: Callable[[], Tensor], device: torch.device) -> Timing:
    """Wall and CPU seconds of one call of ``fn``, and its result."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu, result)


def saved_activation_bytes(model: CLIP, fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps from ``fn``'s forward for backward."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: Dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """CUDA allocator peak during ``fn`` above what was allocated before (None on the CPU)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


class Variant(NamedTuple):
    name: str
    truncate: bool
    shared_prefix: bool
    checkpointing: bool


VARIANTS = [
    Variant("full 77 tokens", truncate=False, shared_prefix=False, checkpointing=False),
    Variant("truncated", truncate=True, shared_prefix=False, checkpointing=False),
    Variant("shared prefix", truncate=True, shared_prefix=True, checkpointing=False),
    Variant("shared prefix + checkpointing", truncate=True, shared_prefix=True, checkpointing=True),
]


def inference_line(model: CLIP, text: Tensor, args: argparse.Namespace, device: torch.device) -> str:
    """No-gradient encoding of token ids: full context vs truncation at the last end token."""
    def encode(truncate: bool) -> Tensor:
        model.truncate_text = truncate
        with torch.no_grad():
            return model.encode_text(text)

    full_s = timed(lambda: encode(False), args.warmup, args.repeats, device)
    short_s = timed(lambda: encode(True), args.warmup, args.repeats, device)
    diff = (encode(False).float() - encode(True).float()).abs().max().item()
    longest = int(text.argmax(-1).max()) + 1
    return (f"inference, {len(text)} prompts: full {model.context_length} tokens {full_s:.3f} s, truncated to "
            f"{longest} tokens {short_s:.3f} s, speedup {full_s / short_s:.2f}x, max |diff| {diff:.1e}")


def training_lines(model: CLIP, text: Tensor, args: argparse.Namespace, device: torch.device) -> List[str]:
    """Forward + backward to a learned CoOp context under each variant, with time ratios.

    The variants take turns within every repeat, so load from other processes spreads over all.
    """
    with torch.no_grad():
        embeddings = model.token_embedding(text).type_as(model.text_projection)
    start, suffix = embeddings[:1, :1], embeddings[:, 1 + N_CTX:]
    context = (0.02 * torch.randn(N_CTX, embeddings.shape[-1], device=device)).type_as(embeddings)
    context.requires_grad_()
    eot = text.argmax(-1)
    rows = len(text)

    def features(variant: Variant) -> Tensor:
        model.truncate_text, model.text_checkpointing = variant.truncate, variant.checkpointing
        prefix = torch.cat([start, context.unsqueeze(0)], dim=1)
        if variant.shared_prefix:
            return model.encode_text_shared_prefix(prefix, suffix, eot)
        return model.encode_text_embeddings(torch.cat([prefix.expand(rows, -1, -1), suffix], dim=1), eot)

    def step(variant: Variant) -> Tensor:
        """Features and context gradient of one training step, flattened to one fp32 vector."""
        out = features(variant)
        (gradient,) = torch.autograd.grad(out.float().square().sum(), context)
        return torch.cat([out.detach().flatten(), gradient.flatten()]).float()

    variants = VARIANTS[1:] if args.quick else VARIANTS
    timings: Dict[str, List[Timing]] = {v.name: [] for v in variants}
    for repeat in range(args.warmup + args.repeats):
        for variant in variants:
            timing = timed_once(lambda: step(variant), device)
            if repeat >= args.warmup:
                timings[variant.name].append(timing)

    def seconds(name: str, clock: str) -> float:
        return statistics.median(getattr(t, clock) for t in timings[name])

    reference = timings[variants[0].name][-1].result
    n_features = rows * model.text_projection.shape[1]
    baselines = [(v.name, label) for v, label in ((VARIANTS[0], "full"), (VARIANTS[1], "truncated")) if v in variants]
    lines = []
    for variant in variants:
        clocks = []
        for clock in ("wall", "cpu"):
            ratios = ", ".join(f"{seconds(name, clock) / seconds(variant.name, clock):.2f}x vs {label}"
                               for name, label in baselines)
            clocks.append(f"{clock} {seconds(variant.name, clock):6.2f} s ({ratios})")
        saved = saved_activation_bytes(model, lambda: features(variant))
        peak = cuda_peak_bytes(lambda: step(variant), device)
        result = timings[variant.name][-1].result
        difference = [_relative_difference(result[part], reference[part])
                      for part in (slice(0, n_features), slice(n_features, None))]
        lines.append(f"  {variant.name}: " + ", ".join(clocks)
                     + f"\n    saved activations {saved / 2 ** 20:.1f} MiB"
                     + ("" if peak is None else f", CUDA peak {peak / 2 ** 20:.1f} MiB")
                     + f"; rel. diff to {variants[0].name}: features {difference[0]:.1e}, "
                       f"context grad {difference[1]:.1e}")
    return lines


def _relative_difference(actual: Tensor, expected: Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="one timed call each, no warm-up, no inference section and no full 77-token "
                             "training step (differences are then to the truncated path)")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats = 0, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    model = CLIP(**VIT_B16).eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        convert_weights(model)
    text = tokenize(class_prompts(args.prompts, args.seed)).to(device)
    eot = text.argmax(-1)
    precision = "fp16" if device.type == "cuda" else "fp32"
    print(f"device {device.type} ({precision}, {torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"{args.prompts} prompts, {N_CTX} context tokens, end token at positions "
          f"{int(eot.min())}..{int(eot.max())}; median of {args.repeats} after {args.warmup} warm-up; "
          f"load average {os.getloadavg()[0]:.1f}")
    if not args.quick:
        print(inference_line(model, text, args, device))
    print(f"training step (forward + backward to the context), {args.prompts} prompts:")
    for line in training_lines(model, text, args, device):
        print(line)


if __name__ == "__main__":
    main()
