"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in front of (or around) class names."""
from __future__ import annotations

import torch
import torch.nn as nn

from clip.errors import InvalidInputError
from trainers.base import PromptedCLIP, PromptTrainer
from trainers.engine.config import CN, register_alternative_type
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.prompts.text import TextContextLearner

#: KgCoOp's YAMLs write ``CTX_INIT: True``; a boolean means "a photo of a" (True) or none (False).
DEFAULT_CTX_INIT_PHRASE = "a photo of a"


@config_hook
def add_coop_config(cfg) -> None:
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.CSC = False
    cfg.TRAINER.COOP.CTX_INIT = ""
    cfg.TRAINER.COOP.PREC = "fp16"
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"


register_alternative_type("TRAINER.COOP.CTX_INIT", str, bool)


def ctx_init_phrase(value) -> str:
    if isinstance(value, bool):
        return DEFAULT_CTX_INIT_PHRASE if value else ""
    return value


class TextPromptedCLIP(PromptedCLIP):
    """CLIP whose class prompts come from a text prompt learner (image side plain)."""

    def __init__(self, clip_model: nn.Module, prompt_learner: nn.Module) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner

    def class_text_features(self) -> torch.Tensor:
        return self.encode_prompts(self.prompt_learner)


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    """Context Optimization: one generic (or class-specific) learned context, CE loss."""

    config_node = "COOP"

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        opts = self.cfg.TRAINER.COOP
        check_input_size(self.cfg, clip_model)
        learner = TextContextLearner(clip_model, self.classnames, n_ctx=opts.N_CTX,
                                     ctx_init=ctx_init_phrase(opts.CTX_INIT), class_specific=opts.CSC,
                                     class_token_position=opts.CLASS_TOKEN_POSITION)
        return TextPromptedCLIP(clip_model, learner)


def check_input_size(cfg, clip_model: nn.Module) -> None:
    expected = clip_model.visual.input_resolution
    if cfg.INPUT.SIZE[0] != expected:
        raise InvalidInputError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the CLIP backbone "
                         f"{cfg.MODEL.BACKBONE.NAME}, which takes {expected}x{expected} images")
