"""Visual prompt tuning (VPT) on CLIP's ViT: n learned tokens per layer, fed through ``encode_image``.

One learner serves both published CLIP adaptations; they differ only in where the first-layer
prompts enter and how they start:

* MVLPT (default): prompts join after ``ln_pre`` (no positional embedding, no LayerNorm),
  uniform init in +-sqrt(6 / (3 p^2 + d)) (VPT's "xavier" rule), optional linear projection
  from a smaller prompt space, dropout on the per-sample copies at every layer;
* MaPLe repository's VPT baseline: prompts join before ``ln_pre``, init N(0, 0.02^2).

Deep prompting replaces the previous block's prompt outputs before each block up to ``depth``;
later blocks carry the last prompts on (shallow VPT is depth 1). Every block always runs.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn as nn

VPT_INITS = ("uniform", "normal")


def vpt_uniform_bound(patch_size: int, prompt_dim: int) -> float:
    """VPT's init range: sqrt(6 / (3 p^2 + d)); 0.0625 for ViT-B/16 prompts of width 768."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + prompt_dim))


class VisualPromptLearner(nn.Module):
    """``vpt_embeddings`` [1, n, d] (first layer) and ``vpt_embeddings_deep`` [depth - 1, n, d].

    Names are MVLPT's checkpoint keys. ``project_dim`` > -1 learns d = project_dim dimensional
    prompts mapped to the ViT width by ``vpt_proj`` (kaiming-normal, fan_out); otherwise d is
    the width and ``vpt_proj`` is the identity. ``dtype`` None stores the prompts in CLIP's dtype.
    """

    def __init__(self, clip_model: nn.Module, n_ctx: int, depth: Optional[int] = None, init: str = "uniform",
                 dropout: float = 0.0, project_dim: int = -1, before_ln_pre: bool = False,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        if not clip_model.is_vit:
            raise ValueError("visual prompts need a ViT image encoder (e.g. ViT-B/16); this CLIP has a ResNet")
        layers = clip_model.visual.transformer.layers
        depth = layers if depth is None else depth
        if not 1 <= depth <= layers:
            raise ValueError(f"the visual prompt depth counts prompted layers and must lie in 1..{layers}, got {depth}")
        if n_ctx < 1:
            raise ValueError(f"VPT needs at least one prompt token, got {n_ctx}")
        if init not in VPT_INITS:
            raise ValueError(f"visual prompt init must be one of {VPT_INITS}, got {init!r}")
        width = clip_model.visual.transformer.width
        dtype = dtype or clip_model.dtype
        if project_dim > -1:
            prompt_dim = project_dim
            self.vpt_proj: nn.Module = nn.Linear(prompt_dim, width).to(clip_model.dtype)
            nn.init.kaiming_normal_(self.vpt_proj.weight, a=0, mode="fan_out")
        else:
            prompt_dim = width
            self.vpt_proj = nn.Identity()
        self.vpt_embeddings = nn.Parameter(torch.zeros(1, n_ctx, prompt_dim, dtype=dtype))
        self.vpt_embeddings_deep = (nn.Parameter(torch.zeros(depth - 1, n_ctx, prompt_dim, dtype=dtype))
                                    if depth > 1 else None)
        patch_size = clip_model.visual.conv1.weight.shape[-1]
        for prompts in (self.vpt_embeddings, self.vpt_embeddings_deep):
            if prompts is None:
                continue
            if init == "uniform":
                bound = vpt_uniform_bound(patch_size, prompt_dim)
                nn.init.uniform_(prompts, -bound, bound)
            else:
                nn.init.normal_(prompts, std=0.02)
        self.vpt_dropout = nn.Dropout(dropout)
        self.n_ctx = n_ctx
        self.depth = depth
        self.before_ln_pre = before_ln_pre

    def raw_prompts(self) -> torch.Tensor:
        """Every prompted layer's tokens before projection, layer-major [depth, n, d]."""
        if self.vpt_embeddings_deep is None:
            return self.vpt_embeddings
        return torch.cat([self.vpt_embeddings, self.vpt_embeddings_deep], dim=0)

    def encoder_prompts(self, batch_size: int, raw: Optional[torch.Tensor] = None) -> dict:
        """Keyword arguments of ``clip.encode_image`` for a batch (``raw``: replaces ``raw_prompts()``,
        as UPT does with its transformed prompts). Dropout draws one mask per sample and layer."""
        prompts = self.vpt_proj(self.raw_prompts() if raw is None else raw)
        if self.training and self.vpt_dropout.p > 0:
            prompts = self.vpt_dropout(prompts.unsqueeze(1).expand(-1, batch_size, -1, -1))
        deep: List[Optional[torch.Tensor]] = [None, *prompts[1:]]
        return {"prompts": prompts[0], "deep_prompts": deep, "prompts_before_ln_pre": self.before_ln_pre}
