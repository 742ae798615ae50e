"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompt learning with text-to-vision coupling.

Prompts reach CLIP through its hooks only (``trainers/prompts/coupled.py``). Differences from
the original, each kept small:

* The vision prompts sit right after the class token instead of after the patches. Blocks are
  permutation-equivariant and the prompts carry no positional embedding, so the class token's
  output is the same (tests compare with the original's append-at-the-end layout).
* Prompts are cast to the activations' dtype, not to fp16, and ``proj`` is stored in CLIP's dtype:
  PREC fp32 and amp work; PREC fp16 keeps the original's dtypes.
* Checkpoints hold only what is learned, under the original whole-model keys
  (``prompt_learner.ctx``, ``prompt_learner.proj.weight``, ...), in ``MultiModalPromptLearner/``.
  Original checkpoints (frozen CLIP included) load: their frozen weights are skipped.
* Loading checks that every learned tensor is in the file, so a PROMPT_DEPTH or N_CTX that
  differs from the training run fails loudly instead of leaving random prompts in place.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

from clip.errors import InvalidInputError
from trainers.base import PromptedCLIP, PromptTrainer
from trainers.coop import check_input_size
from trainers.engine.checkpoint import CheckpointMismatchError
from trainers.engine.config import CN
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.prompts.coupled import MultiModalPromptLearner

#: Key prefixes of the frozen CLIP inside an original MaPLe checkpoint (the whole CustomCLIP).
ORIGINAL_FROZEN_PREFIXES = ("image_encoder.", "text_encoder.", "logit_scale")


@config_hook
def add_maple_config(cfg) -> None:
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2  # context tokens per layer, both modalities
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PREC = "fp16"  # fp16, fp32 or amp
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9  # layers with prompts, counting the first; 1 = shallow MaPLe


class MultiModalPromptedCLIP(PromptedCLIP):
    """CLIP whose two encoders take coupled prompts (any learner with the interface of
    ``MultiModalPromptLearner``: ``forward``, ``eot_positions``, ``deep_text_prompts``,
    ``vision_prompts``, ``deep_vision_prompts``)."""

    def __init__(self, clip_model: nn.Module, prompt_learner: nn.Module) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner

    def class_text_features(self) -> torch.Tensor:
        return self.encode_prompts(self.prompt_learner, deep_prompts=self.prompt_learner.deep_text_prompts())

    def image_prompt_kwargs(self) -> dict:
        learner = self.prompt_learner
        return {"prompts": learner.vision_prompts(), "deep_prompts": learner.deep_vision_prompts(),
                "prompts_before_ln_pre": True}


def check_maple_backbone(cfg, clip_model: nn.Module) -> None:
    """MaPLe needs a ViT and at most as many prompted layers as the shallower transformer has."""
    name = cfg.MODEL.BACKBONE.NAME
    if not clip_model.is_vit:
        raise InvalidInputError(f"MaPLe puts prompts into the vision transformer and needs a ViT backbone "
                         f"(e.g. ViT-B/16); MODEL.BACKBONE.NAME {name!r} has a ResNet image encoder")
    depth = cfg.TRAINER.MAPLE.PROMPT_DEPTH
    layers = {"text": clip_model.transformer.layers, "vision": clip_model.visual.transformer.layers}
    if depth > min(layers.values()):
        raise InvalidInputError(f"TRAINER.MAPLE.PROMPT_DEPTH {depth} exceeds the layers of {name!r} "
                         f"(text {layers['text']}, vision {layers['vision']}); use at most {min(layers.values())}")


@TRAINER_REGISTRY.register()
class MaPLe(PromptTrainer):
    """Multi-modal prompts (text context + projected vision prompts, deep up to PROMPT_DEPTH), CE loss."""

    config_node = "MAPLE"
    checkpoint_name = "MultiModalPromptLearner"

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MAPLE
        if opts.PROMPT_DEPTH < 1:
            raise InvalidInputError(f"TRAINER.MAPLE.PROMPT_DEPTH must be >= 1 (1 = prompts at the first layer only), "
                             f"got {opts.PROMPT_DEPTH}")
        if opts.N_CTX < 0:
            raise InvalidInputError(f"TRAINER.MAPLE.N_CTX must be >= 0, got {opts.N_CTX}")

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        opts = self.cfg.TRAINER.MAPLE
        check_input_size(self.cfg, clip_model)
        check_maple_backbone(self.cfg, clip_model)
        learner = MultiModalPromptLearner(clip_model, self.classnames, n_ctx=opts.N_CTX,
                                          ctx_init=opts.CTX_INIT, depth=opts.PROMPT_DEPTH)
        return MultiModalPromptedCLIP(clip_model, learner)

    def trainable_modules(self) -> Dict[str, nn.Module]:
        """The prompt learner under the name ``prompt_learner``, so that checkpoint keys are the
        original's whole-model keys of the learned tensors (the frozen CLIP is not saved)."""
        return {self.checkpoint_name: nn.ModuleDict({"prompt_learner": self.model.prompt_learner})}

    def learned_settings(self) -> str:
        opts = self.cfg.TRAINER.MAPLE
        return f"this run has TRAINER.MAPLE.N_CTX {opts.N_CTX}, PROMPT_DEPTH {opts.PROMPT_DEPTH}"

    def adapt_loaded_state_dict(self, name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Drop an original file's frozen CLIP; refuse prompts this model does not have (a deeper
        file loaded into a shallower model would otherwise lose its deep prompts silently)."""
        frozen = [k for k in state_dict if k.startswith(ORIGINAL_FROZEN_PREFIXES)]
        if frozen:
            print(f"Skipping {len(frozen)} frozen CLIP entries of the checkpoint (image_encoder.*, text_encoder.*, "
                  "logit_scale): the CLIP weights come from MODEL.BACKBONE")
        kept = {k: v for k, v in state_dict.items() if not k.startswith(ORIGINAL_FROZEN_PREFIXES)}
        own = self._models[name].state_dict()
        foreign = [k for k in kept if k.startswith("prompt_learner.") and k not in own]
        if foreign:
            raise CheckpointMismatchError(
                f"The {name} checkpoint holds prompts this model does not learn ({self.learned_settings()}): "
                f"{', '.join(foreign[:6])}{' ...' if len(foreign) > 6 else ''}. Use the settings of the run that "
                "wrote it")
        return kept
