"""Instance-conditioned text context (CoCoOp's prompt learner).

CoOp's generic "end" context plus a small meta-net that turns each image's normalised
feature into a bias added to every context vector, so each image gets its own prompts
for all classes. The state dict keeps CoCoOp's names (``ctx``, ``token_prefix``,
``token_suffix``, ``meta_net.linear1.*``, ``meta_net.linear2.*``, in that order), so the
original checkpoints load.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

from trainers.prompts.text import TextContextLearner


class ConditionalContextLearner(TextContextLearner):
    """``ctx`` [M, D_t] shifted per image by ``meta_net(image feature)`` [D_t]."""

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str = "") -> None:
        super().__init__(clip_model, classnames, n_ctx=n_ctx, ctx_init=ctx_init)
        vis_dim = clip_model.visual.output_dim
        ctx_dim = self.ctx.shape[-1]
        # Built after ctx so the torch RNG is consumed in CoCoOp's order (ctx init, then meta-net init).
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
        ]))
        # fp16 exactly when CLIP is (PREC fp16), like CoCoOp's ``meta_net.half()``.
        self.meta_net.to(clip_model.dtype)

    def instance_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image context [B, M, D_t] from L2-normalised image features [B, D]."""
        bias = self.meta_net(image_features)
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def assemble_instances(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [B, C, L, D_t] for every (image, class) pair from per-image context [B, M, D_t]."""
        n_img, n_cls = ctx.shape[0], self.n_cls
        prefix = self.token_prefix.unsqueeze(0).expand(n_img, -1, -1, -1)
        suffix = self.token_suffix.unsqueeze(0).expand(n_img, -1, -1, -1)
        ctx = ctx.unsqueeze(1).expand(-1, n_cls, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=2)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.assemble_instances(self.instance_context(image_features))
