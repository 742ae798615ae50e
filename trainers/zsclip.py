"""Zero-shot CLIP baselines: one hand-written template per data set, or a template ensemble."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn

import clip
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
    """CLIP with hand-written class prompts; text features averaged over templates.

    Like CoOp's zero-shot code, each template's features are normalised before averaging
    (and the mean renormalised when there are several); the head normalises again, which
    leaves unit vectors unchanged up to rounding.
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str]) -> None:
        super().__init__(clip_model)
        names = [clean_classname(c) for c in classnames]
        self.prompts: List[List[str]] = [[t.format(n) for n in names] for t in templates]
        self.register_buffer("tokenized", torch.stack([clip.tokenize(p) for p in self.prompts]), persistent=False)
        self.register_buffer("fixed_text_features", torch.empty(0), persistent=False)

    @torch.no_grad()
    def class_text_features(self) -> torch.Tensor:
        if self.fixed_text_features.numel() == 0:
            per_template = [normalize(self.clip.encode_text(ids)) for ids in self.tokenized]
            mean = torch.stack(per_template).mean(dim=0)
            self.fixed_text_features = normalize(mean) if len(per_template) > 1 else mean
        return self.fixed_text_features


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    """CLIP with CoOp's per-data-set template (``TRAINER.COOP.PREC`` picks the precision)."""

    config_node = "COOP"

    def templates(self) -> List[str]:
        return [self.dm.dataset.template]

    def build_model(self) -> None:
        clip_model = load_clip_to_cpu(self.cfg)
        if self.precision in ("fp32", "amp"):
            clip_model.float()
        for param in clip_model.parameters():
            param.requires_grad_(False)
        self.model = FixedPromptCLIP(clip_model, self.dm.dataset.classnames, self.templates())
        self.model.to(self.device)
        if len(self.model.prompts) == 1:
            print(f"Prompts: {self.model.prompts[0]}")
        else:
            print(f"Prompt ensembling (n={len(self.model.prompts)})")
        self.model.class_text_features()
        self.scaler = None

    def train(self) -> None:
        raise RuntimeError(f"{type(self).__name__} has nothing to train: run it with --eval-only")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Prompt ensembling over CLIP's 7 selected templates (+ the data set's own, except ImageNet)."""

    def templates(self) -> List[str]:
        templates = list(ENSEMBLE_TEMPLATES)
        if self.cfg.DATASET.NAME != "ImageNet":
            templates.append(self.dm.dataset.template)
        return templates
