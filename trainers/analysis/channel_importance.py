"""Channel importance of a trained model's features on base and new classes (DePT paper, Eq. 3).

    python -m trainers.analysis.channel_importance --root DATA --trainer ExtrasLinearProbeCoOp \\
        --dataset-config-file configs/datasets/eurosat.yaml \\
        --config-file configs/trainers/ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35.yaml \\
        --model-dir output/base2new/train_base/ExtrasLinearProbeCoOp/eurosat/shots16/vit_b16_ep10_bs4_lr35/seed1 \\
        --load-epoch -1 [--output-dir DIR] [--window 1] [--space itm|cat] [KEY VALUE ...]

The model is rebuilt from the usual ``train.py`` arguments, loaded from ``--model-dir`` and run
over the test split of **all** classes (SUBSAMPLE_CLASSES is forced to all; DePT models use
their new-class head, so no classifier is needed). The classes split into DePT's halves (base =
the first ceil(n/2) labels, new = the rest, each re-indexed), and for channel r

    CI_r = mean_j  ReLU(e*_r f_j,r) / ((1/M) sum_i ReLU(e_i,r f_j,r) + 1e-12)

with L2-normalised image features f_j, class text features e_i of the half's M classes and e*
the ground-truth class's (each image's own text features for CoCoOp-style models). ``--window W``
sums the products over W cyclically consecutive channels before the ReLU, as DePT's analysis
script does with W = 64; W = 1 (default) is the paper's per-channel formula. ``--space cat``
measures the CAT head's cwT-transformed features of a DePT model instead of the ITM features.

Writes ``channel_importance.csv`` (channel, base, new, base/new) and ``.json`` (values and
settings) into ``--output-dir`` (default ``<model-dir>/channel_importance``), and a plot
``channel_importance.png`` when matplotlib is installed (``pip install -e .[analysis]``).
"""
from __future__ import annotations

import math
import os
import sys
from typing import Dict, Optional, Sequence, Tuple

import torch

import train
from datasets.io import atomic_save, atomic_write_text, write_json
from trainers.base import normalize
from trainers.engine.registry import build_trainer

EPS = 1e-12
SPACES = ("itm", "cat")
OUTPUT_NAMES = ("channel_importance.csv", "channel_importance.json", "channel_importance.png")


def window_sums(products: torch.Tensor, window: int) -> torch.Tensor:
    """Sum the last dimension over ``window`` cyclically consecutive entries starting at each index."""
    if window == 1:
        return products
    size = products.shape[-1]
    if not 1 <= window <= size:
        raise ValueError(f"--window must lie in 1..{size} (the feature width), got {window}")
    extended = torch.cat([products, products[..., :window - 1]], dim=-1)
    cumulative = torch.nn.functional.pad(extended.cumsum(dim=-1), (1, 0))
    return cumulative[..., window:window + size] - cumulative[..., :size]


def importance_terms(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                     classes: Tuple[int, int], window: int = 1) -> Tuple[torch.Tensor, int]:
    """Sum over the batch's images of one half (classes [lo, hi)) of the per-channel ratio, and their count.

    ``image_features`` [B, D] and ``text_features`` [C, D] or [B, C, D] must be L2-normalised.
    """
    lo, hi = classes
    inside = (labels >= lo) & (labels < hi)
    count = int(inside.sum())
    if count == 0:
        return torch.zeros(image_features.shape[-1], device=image_features.device), 0
    images = image_features[inside]
    texts = text_features[inside, lo:hi] if text_features.dim() == 3 else text_features[lo:hi].unsqueeze(0)
    activations = window_sums(texts * images.unsqueeze(1), window).clamp(min=0)  # [N, M, D]
    own = activations[torch.arange(count, device=labels.device), labels[inside] - lo]
    return (own / (activations.mean(dim=1) + EPS)).sum(dim=0), count


def class_halves(num_classes: int) -> Dict[str, Tuple[int, int]]:
    """DePT's (and CoOp's) base/new split of sorted labels: base = the first ceil(n/2)."""
    middle = math.ceil(num_classes / 2)
    return {"base": (0, middle), "new": (middle, num_classes)}


@torch.no_grad()
def channel_importance(trainer, window: int = 1, space: str = "itm") -> Dict[str, torch.Tensor]:
    """Per-channel importance [D] on the base and the new half of ``trainer``'s test split."""
    model = trainer.model
    if space == "cat" and not hasattr(model, "head"):
        raise ValueError(f"--space cat needs a DePT model (trainer {trainer.cfg.TRAINER.NAME} has no CAT head)")
    halves = class_halves(trainer.dm.num_classes)
    sums: Dict[str, torch.Tensor] = {}
    counts = {half: 0 for half in halves}
    trainer.set_model_mode("eval")
    with model.cached_text_features():
        for batch in trainer.test_loader:
            images, labels = trainer.parse_batch_test(batch)
            with trainer.autocast():
                image_features, text_features = model.encode(images)
                if space == "cat":
                    image_features = model.head.transform_image(image_features)
                    text_features = model.head.transform_text(text_features)
            image_features, text_features = normalize(image_features.float()), normalize(text_features.float())
            for half, classes in halves.items():
                total, count = importance_terms(image_features, text_features, labels, classes, window)
                sums[half] = sums.get(half, 0) + total
                counts[half] += count
    empty = [half for half, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"The test split has no images of the {' and '.join(empty)} classes")
    return {half: (sums[half] / counts[half]).cpu() for half in halves}


def to_csv(values: Dict[str, torch.Tensor]) -> str:
    lines = ["channel,base,new,base_over_new"]
    for r, (b, n) in enumerate(zip(values["base"].tolist(), values["new"].tolist())):
        lines.append(f"{r},{b:.6g},{n:.6g},{b / n if n else float('inf'):.6g}")
    return "\n".join(lines) + "\n"


def plot(values: Dict[str, torch.Tensor], path: str, title: str) -> bool:
    """Per-channel importance sorted by base importance, and the density of base/new; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    base, new = values["base"], values["new"]
    order = torch.argsort(base, descending=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.scatter(range(len(order)), base[order], s=4, label="base")
    left.scatter(range(len(order)), new[order], s=4, label="new")
    left.set(xlabel="channel (sorted by base importance)", ylabel="channel importance", title=title)
    left.legend()
    right.hist((base / new.clamp(min=EPS)).numpy(), bins=50, density=True)
    right.set(xlabel="CI base / CI new", ylabel="density")
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=150))
    plt.close(fig)
    return True


def build_parser():
    parser = train.build_parser()
    parser.description = __doc__
    parser.add_argument("--window", type=int, default=1, help="channels per cyclic window (1: paper Eq. 3; DePT's script: 64)")
    parser.add_argument("--space", choices=SPACES, default="itm", help="ITM features, or a DePT model's cwT-transformed ones")
    parser.add_argument("--force", action="store_true", help="replace existing result files")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.model_dir:
        print("Pass --model-dir: the output folder of the run to analyse", file=sys.stderr)
        return 2
    output_dir = args.output_dir or os.path.join(args.model_dir, "channel_importance")
    existing = [n for n in OUTPUT_NAMES if os.path.exists(os.path.join(output_dir, n))]
    if existing and not args.force:
        print(f"{', '.join(existing)} already in {output_dir}; pass --force to replace", file=sys.stderr)
        return 2
    args.output_dir = output_dir
    args.opts = list(args.opts or []) + ["DATASET.SUBSAMPLE_CLASSES", "all", "TRAINER.LINEAR_PROBE.ROUTE", "new"]
    cfg = train.setup_cfg(args)
    if cfg.SEED >= 0:
        train.set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.load_model(args.model_dir, epoch=args.load_epoch)
    values = channel_importance(trainer, args.window, args.space)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(os.path.join(output_dir, OUTPUT_NAMES[0]), to_csv(values))
    write_json({"trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME, "model_dir": args.model_dir,
                "load_epoch": args.load_epoch, "window": args.window, "space": args.space,
                "base": values["base"].tolist(), "new": values["new"].tolist()},
               os.path.join(output_dir, OUTPUT_NAMES[1]))
    print(f"Mean channel importance: base {values['base'].mean():.4f}, new {values['new'].mean():.4f}")
    print(f"Wrote {OUTPUT_NAMES[0]} and {OUTPUT_NAMES[1]} to {output_dir}")
    if plot(values, os.path.join(output_dir, OUTPUT_NAMES[2]), f"{cfg.TRAINER.NAME} on {cfg.DATASET.NAME}"):
        print(f"Wrote {OUTPUT_NAMES[2]}")
    else:
        print("No plot: matplotlib is not installed (pip install -e '.[analysis]' or pip install matplotlib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
