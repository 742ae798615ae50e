"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted per image by a meta-net.

Every image has its own prompts for all C classes, so the text encoder sees B x C
sequences per batch. They are encoded in one call per chunk of ``TRAINER.COCOOP.TEXT_CHUNK``
images instead of CoCoOp's Python loop over images; ``TEXT_CHUNK 1`` is that loop.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from clip.errors import InvalidInputError
from trainers.base import PromptedCLIP, PromptTrainer, normalize
from trainers.coop import check_input_size, ctx_init_phrase
from trainers.engine.config import CN, register_alternative_type
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.engine.trainer import Batch, StepOutput
from trainers.prompts.conditional import ConditionalContextLearner


#: default TRAINER.COCOOP.TEXT_CHUNK: on the CPU, larger chunks get slower (memory-bound element-wise ops)
DEFAULT_TEXT_CHUNK = 8


@config_hook
def add_cocoop_config(cfg) -> None:
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.TRAINER.COCOOP.PREC = "fp16"
    # Images whose C prompts go through the text encoder in one call (0: the whole batch).
    # Bounds evaluation memory (test batch 100 x C sequences); results do not depend on it.
    cfg.TRAINER.COCOOP.TEXT_CHUNK = DEFAULT_TEXT_CHUNK


# KgCoOp's copies of the CoCoOp YAMLs write ``CTX_INIT: True``; read like TRAINER.COOP.CTX_INIT.
register_alternative_type("TRAINER.COCOOP.CTX_INIT", str, bool)


class ConditionalPromptedCLIP(PromptedCLIP):
    """CLIP whose class prompts depend on the image: text features are [B, C, D]."""

    text_depends_on_image = True

    def __init__(self, clip_model: nn.Module, prompt_learner: ConditionalContextLearner,
                 images_per_text_call: int = 0) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        #: images per text-encoder call; 0 = all at once, 1 = CoCoOp's per-image loop
        self.images_per_text_call = images_per_text_call

    def conditional_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Raw text features [B, C, D] of every class under each image's context.

        ``image_features`` [B, D] are raw; the meta-net sees them L2-normalised as in CoCoOp.
        """
        learner = self.prompt_learner
        ctx = learner.instance_context(normalize(image_features))
        n_img, n_cls = ctx.shape[0], learner.n_cls
        step = self.images_per_text_call or n_img
        eot = learner.eot_positions
        shared = getattr(self.clip, "shared_prefix", False)
        chunks = []
        for start in range(0, n_img, step):
            chunk = ctx[start:start + step]
            count = chunk.shape[0]
            if shared:  # each image's start token + context (+ fixed words) once, then its C class tails
                common = learner.common_suffix_len
                prefix = torch.cat([learner.token_prefix[:1].expand(count, -1, -1), chunk,
                                    learner.token_suffix[:1, :common].expand(count, -1, -1)], dim=1)
                suffix = learner.token_suffix[:, common:].repeat(count, 1, 1)
                groups = torch.arange(count, device=chunk.device).repeat_interleave(n_cls)
                features = self.clip.encode_text_shared_prefix(prefix, suffix, eot.repeat(count), groups)
            else:
                prompts = learner.assemble_instances(chunk)
                features = self.clip.encode_text_embeddings(prompts.flatten(0, 1), eot.repeat(count))
            chunks.append(features.view(count, n_cls, -1))
        return torch.cat(chunks)

    def encode(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        image_features = self.image_features(images)
        return image_features, self.conditional_text_features(image_features)


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    """Conditional Context Optimization: generic ctx + meta-net bias per image, CE loss.

    Differences from the original trainer: the NaN/Inf loss check of CoOp's fp16/fp32 path
    is kept (CoCoOp skips it; a non-finite loss would silently turn every weight into NaN),
    and the B x C prompts are encoded in chunks rather than one image at a time.
    """

    config_node = "COCOOP"

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        chunk = cfg.TRAINER.COCOOP.TEXT_CHUNK
        if not isinstance(chunk, int) or chunk < 0:
            raise InvalidInputError(f"TRAINER.COCOOP.TEXT_CHUNK must be an integer >= 0 (0 = whole batch), got {chunk!r}")

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        opts = self.cfg.TRAINER.COCOOP
        check_input_size(self.cfg, clip_model)
        learner = ConditionalContextLearner(clip_model, self.classnames, n_ctx=opts.N_CTX,
                                            ctx_init=ctx_init_phrase(opts.CTX_INIT))
        return ConditionalPromptedCLIP(clip_model, learner, images_per_text_call=opts.TEXT_CHUNK)

    def loss_summary(self, output: StepOutput, batch: Batch) -> Dict[str, float]:
        """Only the loss, as CoCoOp logs it (its model returns the loss, not logits, in training)."""
        return {"loss": output.loss.item()}
