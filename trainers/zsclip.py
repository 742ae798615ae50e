"""Zero-shot CLIP baselines: one hand-written template per data set, or a template ensemble."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

import clip
from clip.errors import InvalidInputError
from trainers.base import PromptedCLIP, PromptTrainer, load_clip_to_cpu, normalize
from trainers.engine.registry import TRAINER_REGISTRY
from trainers.prompts.text import clean_classname

#: The 7 "select" templates of CLIP's prompt-engineering notebook, as CoOp's ZeroshotCLIP2 uses.
ENSEMBLE_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


class FixedPromptCLIP(PromptedCLIP):
    """CLIP with hand-written class prompts; each class's features averaged over its templates.

    Like CoOp's zero-shot code, each prompt's features are normalised before averaging (and
    the mean renormalised when a class has several); the head normalises again, which leaves
    unit vectors unchanged up to rounding.
    """

    def __init__(self, clip_model: nn.Module, prompts_per_class: Sequence[Sequence[str]]) -> None:
        super().__init__(clip_model)
        self.prompts_per_class = [list(p) for p in prompts_per_class]
        flat = [p for prompts in self.prompts_per_class for p in prompts]
        self.register_buffer("tokenized", clip.tokenize(flat), persistent=False)
        self.register_buffer("fixed_text_features", torch.empty(0), persistent=False)

    @torch.no_grad()
    def class_text_features(self) -> torch.Tensor:
        if self.fixed_text_features.numel() == 0:
            features = normalize(self.clip.encode_text(self.tokenized))
            rows, start = [], 0
            for prompts in self.prompts_per_class:
                block = features[start:start + len(prompts)]
                rows.append(normalize(block.mean(dim=0)) if len(prompts) > 1 else block[0])
                start += len(prompts)
            self.fixed_text_features = torch.stack(rows)
        return self.fixed_text_features


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    """CLIP with CoOp's per-data-set template (``TRAINER.COOP.PREC`` picks the precision)."""

    config_node = "COOP"

    def templates(self, task) -> List[str]:
        return [task.template]

    def build_model(self) -> None:
        clip_model = load_clip_to_cpu(self.cfg)
        if self.precision in ("fp32", "amp"):
            clip_model.float()
        for param in clip_model.parameters():
            param.requires_grad_(False)
        prompts = [[t.format(clean_classname(name)) for t in self.templates(task)]
                   for task in self.dm.tasks for name in task.classnames]
        self.model = FixedPromptCLIP(clip_model, prompts)
        self.model.to(self.device)
        if all(len(p) == 1 for p in prompts):
            print(f"Prompts: {[p[0] for p in prompts]}")
        else:
            print(f"Prompt ensembling (n={max(len(p) for p in prompts)})")
        self.model.class_text_features()
        self.scaler = None

    def train(self) -> None:
        raise InvalidInputError(f"{type(self).__name__} has nothing to train: run it with --eval-only")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over CLIP's 7 selected templates (+ the data set's own, except ImageNet)."""

    def templates(self, task) -> List[str]:
        return list(ENSEMBLE_TEMPLATES) + ([task.template] if task.name != "ImageNet" else [])
