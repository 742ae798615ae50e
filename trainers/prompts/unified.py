"""Unified prompts (UPT, MVLPT paper Sec. 3.1) and MVLPT's prompt learner for CoOp, VPT and UPT.

UPT learns one prompt U = [text context; every layer's visual prompts] and feeds it through a
small shared transformer theta (1 layer, 1 head, width 128) with linear projections into and
out of theta's width; the output is split back into the text context and the visual prompts.

``attention`` chooses how theta's attention sees U:

* "per_token" (default, MVLPT's code, which produced the published numbers): U reaches CLIP's
  sequence-first attention as (1, T, 128), i.e. T sequences of length 1, so each prompt token
  attends to itself only and theta acts as a per-token residual map;
* "across_tokens" (the paper's description): real self-attention over the T prompt tokens.

Both use CLIP's pre-LN residual block (x + attn(ln_1(x)), then x + mlp(ln_2(x))), as the code
does; checkpoints of one mode are not equivalent in the other.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import clip
from clip.model import Transformer
from trainers.prompts.text import TextContextLearner, clean_classname, init_context
from trainers.prompts.vision import VisualPromptLearner

UPT_ATTENTION_MODES = ("per_token", "across_tokens")
#: the fixed text prompt of visual-only runs (MVLPT and the MaPLe repository's VPT)
FIXED_TEXT_TEMPLATE = "a photo of a {}."


class UnifiedPromptProjection(nn.Module):
    """theta with its four projections; theta runs in fp32, the projections in CLIP's dtype."""

    def __init__(self, text_dim: int, vision_dim: int, width: int = 128, attention: str = "per_token",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if attention not in UPT_ATTENTION_MODES:
            raise ValueError(f"UPT attention must be one of {UPT_ATTENTION_MODES}, got {attention!r}")
        self.theta = Transformer(width=width, layers=1, heads=1)
        self.text_in, self.text_out = _projections(text_dim, width, dtype)
        self.vision_in, self.vision_out = _projections(vision_dim, width, dtype)
        self.attention = attention

    def forward(self, text_ctx: torch.Tensor, visual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(text context [.., n_t, D_t], visual prompts [layers, n_v, d]) -> the same shapes, through U."""
        text_tokens = self.text_in(text_ctx.reshape(-1, text_ctx.shape[-1]))
        visual_tokens = self.vision_in(visual.reshape(-1, visual.shape[-1]))
        unified = torch.cat([text_tokens, visual_tokens], dim=0).float()
        sequences = unified.unsqueeze(1) if self.attention == "per_token" else unified.unsqueeze(0)
        unified = self.theta(sequences).reshape(unified.shape).type(text_tokens.dtype)
        n_text = text_tokens.shape[0]
        return (self.text_out(unified[:n_text]).reshape(text_ctx.shape),
                self.vision_out(unified[n_text:]).reshape(visual.shape))


def _projections(dim: int, width: int, dtype: torch.dtype) -> Tuple[nn.Module, nn.Module]:
    if dim == width:
        return nn.Identity(), nn.Identity()
    return nn.Linear(dim, width).to(dtype), nn.Linear(width, dim).to(dtype)


class MultitaskVLPromptLearner(nn.Module):
    """MVLPT's prompt learner: a text context (CoOp), visual prompts (VPT), or both through theta (UPT).

    * ``text``: CoOp's ``TextContextLearner`` when ``text_n_ctx`` > 0, else None and the class
      prompts are the fixed "a photo of a {class}." (their token ids in ``fixed_text_tokens``);
    * ``vision``: the caller's ``VisualPromptLearner`` (MVLPT: after ``ln_pre``, uniform init), or None;
    * ``projection``: a ``UnifiedPromptProjection`` when both are on and ``project_method`` is
      "transformer" ("identity" leaves the two prompts independent).

    ``checkpoint_view()`` exposes the learned tensors under MVLPT's flat checkpoint keys.
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], text_n_ctx: int,
                 vision: Optional[VisualPromptLearner] = None, class_token_position: str = "middle",
                 class_specific: bool = False, text_ctx_init: str = "", project_method: str = "transformer",
                 project_dim: int = 128, attention: str = "per_token") -> None:
        super().__init__()
        if text_n_ctx <= 0 and vision is None:
            raise ValueError("MVLPT needs a text context, visual prompts or both: set TRAINER.MVLPT.COOP.N_CTX "
                             "and/or TRAINER.MVLPT.VPT.N_CTX above 0")
        self.text: Optional[TextContextLearner] = None
        if text_n_ctx > 0:
            n_cls = len(classnames) if class_specific and not text_ctx_init else None
            context = init_context(clip_model, text_n_ctx, text_ctx_init, n_cls=n_cls)
            self.text = TextContextLearner(clip_model, classnames, class_token_position=class_token_position,
                                           context=context)
        else:
            prompts = [FIXED_TEXT_TEMPLATE.format(clean_classname(c)) for c in classnames]
            print(f'Fixed text prompt: "{FIXED_TEXT_TEMPLATE}"')
            self.register_buffer("fixed_text_tokens", clip.tokenize(prompts), persistent=False)
        self.vision = vision
        self.projection: Optional[UnifiedPromptProjection] = None
        if self.text is not None and self.vision is not None and project_method != "identity":
            self.projection = UnifiedPromptProjection(self.text.ctx.shape[-1], self.vision.vpt_embeddings.shape[-1],
                                                      width=project_dim, attention=attention, dtype=clip_model.dtype)

    def prompts(self) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(text context, raw visual prompts [depth, n, d]) for this step, through theta under UPT."""
        text_ctx = self.text.ctx if self.text is not None else None
        visual = self.vision.raw_prompts() if self.vision is not None else None
        if self.projection is not None:
            text_ctx, visual = self.projection(text_ctx, visual)
        return text_ctx, visual

    def text_embeddings(self, text_ctx: torch.Tensor) -> torch.Tensor:
        """Class prompt embeddings [C, L, D] with ``text_ctx`` placed around the class names."""
        ctx = text_ctx.unsqueeze(0).expand(self.text.n_cls, -1, -1) if text_ctx.dim() == 2 else text_ctx
        return self.text.assemble(ctx)

    def checkpoint_view(self) -> nn.Module:
        """A module sharing this learner's parameters under MVLPT's keys: ``ctx``, ``vpt_embeddings``,
        ``vpt_embeddings_deep``, ``vpt_proj.*``, ``mvlpt_proj.*`` (theta) and
        ``mvlpt_proj_ctx_{coop,vpt}_{pre,post}.*``. The class-dependent token buffers are left out."""
        view = nn.Module()
        if self.text is not None:
            view.register_parameter("ctx", self.text.ctx)
        if self.vision is not None:
            view.register_parameter("vpt_embeddings", self.vision.vpt_embeddings)
            if self.vision.vpt_embeddings_deep is not None:
                view.register_parameter("vpt_embeddings_deep", self.vision.vpt_embeddings_deep)
            view.add_module("vpt_proj", self.vision.vpt_proj)
        if self.projection is not None:
            for key, module in self._original_projection_names().items():
                view.add_module(key, module)
        return view

    def _original_projection_names(self) -> Dict[str, nn.Module]:
        p = self.projection
        return {"mvlpt_proj": p.theta, "mvlpt_proj_ctx_coop_pre": p.text_in, "mvlpt_proj_ctx_coop_post": p.text_out,
                "mvlpt_proj_ctx_vpt_pre": p.vision_in, "mvlpt_proj_ctx_vpt_post": p.vision_out}
