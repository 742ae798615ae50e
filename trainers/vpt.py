"""VPT as the MaPLe repository's baseline (``--trainer VPT``, ``TRAINER.VPT.*``): visual prompts only,
the fixed text prompt "a photo of a {class}.", CE loss.

Its defaults are that repository's (2 tokens, depth 1 = shallow; its YAMLs use 8 tokens at
depth 12), and so is its variant of VPT: first-layer prompts enter before ``ln_pre``, init
N(0, 0.02^2), no dropout. Three keys of ours switch to MVLPT's variant: ``PROMPTS_BEFORE_LN_PRE``
False, ``INIT`` "uniform", ``DROPOUT`` (0.1 is VPT's deep setting). Differences from the
original, each small:

* prompts sit right after the class token instead of after the patches (the class token's output
  is the same: blocks are permutation-equivariant and prompts carry no positional embedding);
* the original always runs CLIP in fp32 (its loader casts it) whatever PREC says; here PREC
  decides, as for every trainer; prompts are stored in fp32 and cast to the activations' dtype;
* ``CTX_INIT`` is read by nothing, as in the original (the text prompt is fixed);
* checkpoints hold ``vpt_embeddings`` [1, n, W] and ``vpt_embeddings_deep`` [depth - 1, n, W]
  (MVLPT's names). Original files (the whole CustomCLIP: ``image_encoder.VPT`` and
  ``image_encoder.transformer.resblocks.<i>.VPT_shallow``) load; their frozen CLIP is skipped.
"""
from __future__ import annotations

import re
from typing import Dict, Tuple

import torch
import torch.nn as nn

from trainers.base import PromptedCLIP, PromptTrainer
from trainers.coop import check_input_size
from trainers.engine.config import CN
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.mvlpt import MVLPT, UnifiedPromptedCLIP
from trainers.prompts.unified import MultitaskVLPromptLearner
from trainers.prompts.vision import VPT_INITS, VisualPromptLearner

ORIGINAL_FIRST_KEY = "image_encoder.VPT"
ORIGINAL_DEEP_KEY = re.compile(r"^image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$")


@config_hook
def add_vpt_config(cfg) -> None:
    cfg.TRAINER.VPT = CN()
    cfg.TRAINER.VPT.N_CTX_VISION = 2  # prompt tokens per layer
    cfg.TRAINER.VPT.CTX_INIT = "a photo of a"
    cfg.TRAINER.VPT.PREC = "fp16"
    cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 1  # prompted layers, counting the first; 1 = shallow
    cfg.TRAINER.VPT.PROMPTS_BEFORE_LN_PRE = True  # False: MVLPT's placement
    cfg.TRAINER.VPT.INIT = "normal"  # "uniform": MVLPT's / VPT's +-sqrt(6 / (3 p^2 + d))
    cfg.TRAINER.VPT.DROPOUT = 0.0


@TRAINER_REGISTRY.register()
class VPT(MVLPT):
    """Visual prompt tuning with a fixed text prompt (the MaPLe repository's ``VPT`` trainer)."""

    config_node = "VPT"

    @classmethod
    def context_lengths(cls, cfg) -> Tuple[int, int]:
        return 0, cfg.TRAINER.VPT.N_CTX_VISION

    def check_cfg(self, cfg) -> None:
        opts = cfg.TRAINER.VPT
        if opts.PREC not in ("fp16", "fp32", "amp"):
            raise ValueError(f"TRAINER.VPT.PREC must be fp16, fp32 or amp, got {opts.PREC!r}")
        if opts.N_CTX_VISION < 1 or opts.PROMPT_DEPTH_VISION < 1:
            raise ValueError(f"VPT needs TRAINER.VPT.N_CTX_VISION >= 1 and PROMPT_DEPTH_VISION >= 1, got "
                             f"{opts.N_CTX_VISION} and {opts.PROMPT_DEPTH_VISION}")
        if opts.INIT not in VPT_INITS:
            raise ValueError(f"TRAINER.VPT.INIT must be one of {VPT_INITS}, got {opts.INIT!r}")

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        opts = self.cfg.TRAINER.VPT
        check_input_size(self.cfg, clip_model)
        vision = VisualPromptLearner(clip_model, opts.N_CTX_VISION, depth=opts.PROMPT_DEPTH_VISION, init=opts.INIT,
                                     dropout=opts.DROPOUT, before_ln_pre=opts.PROMPTS_BEFORE_LN_PRE,
                                     dtype=torch.float32)
        return UnifiedPromptedCLIP(clip_model, MultitaskVLPromptLearner(clip_model, self.classnames, 0, vision))

    #: each sample's loss over its own task's classes, as every trainer but MVLPT's
    classification_loss = PromptTrainer.classification_loss

    def learned_settings(self) -> str:
        opts = self.cfg.TRAINER.VPT
        return (f"this run has TRAINER.VPT.N_CTX_VISION {opts.N_CTX_VISION}, "
                f"PROMPT_DEPTH_VISION {opts.PROMPT_DEPTH_VISION}")

    def adapt_loaded_state_dict(self, name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """An original file's per-layer prompts -> ``vpt_embeddings(_deep)``; its frozen CLIP is skipped."""
        if ORIGINAL_FIRST_KEY not in state_dict:
            return state_dict
        deep = sorted((int(m.group(1)), v) for k, v in state_dict.items() if (m := ORIGINAL_DEEP_KEY.match(k)))
        if [i for i, _ in deep] != list(range(1, len(deep) + 1)):
            raise ValueError(f"the original VPT checkpoint has deep prompts at blocks {[i for i, _ in deep]}; "
                             "expected 1, 2, ... without gaps")
        print(f"Reading the original VPT layout: image_encoder.VPT and {len(deep)} deep prompts; "
              "skipping its frozen CLIP entries")
        converted = {"vpt_embeddings": state_dict[ORIGINAL_FIRST_KEY].unsqueeze(0)}
        if deep:
            converted["vpt_embeddings_deep"] = torch.stack([v for _, v in deep])
        return converted
