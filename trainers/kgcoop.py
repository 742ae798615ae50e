"""KgCoOp (Yao et al., CVPR 2023): CoOp plus a pull of the learned class text features
towards frozen CLIP's hand-crafted ones ("knowledge-guided" term).

loss = CE(logits, y) + W * kg, with kg = 1 - mean_c cos(learned_c, anchor_c) (the released
code, default) or mean_c ||learned_c - anchor_c||^2 on L2-normalised features (the paper's
form, ``TRAINER.COOP.KG_DISTANCE l2``; twice the cosine form per class). The anchors are the
data set's template (KgCoOp's table) encoded once by the frozen CLIP and never checkpointed.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip.errors import InvalidInputError
from datasets import DATASET_REGISTRY
from trainers.base import PromptedCLIP, normalize
from trainers.coop import DEFAULT_CTX_INIT_PHRASE, CoOp, TextPromptedCLIP, check_input_size
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.engine.trainer import Batch, StepOutput
from trainers.prompts.text import TextContextLearner, clean_classname

KG_DISTANCES = ("cosine", "l2")

#: KgCoOp's templates where they differ from the data set's CoOp template (``Task.template``).
KGCOOP_TEMPLATE_OVERRIDES = {"DescribableTextures": "a photo of a {}, a type of texture."}

#: entries of original KgCoOp checkpoints that no module here has (never used in its forward)
UNUSED_ORIGINAL_KEYS = ("bias_vectors", "meta_net.")


@config_hook
def add_kgcoop_config(cfg) -> None:
    """KgCoOp's keys live in CoOp's node, as in its repository (DePT's YAML sets W 2.0, the scripts 8.0)."""
    cfg.TRAINER.COOP.W = 1.0
    cfg.TRAINER.COOP.ALPHA = 1.0  # declared by KgCoOp, read by nothing
    cfg.TRAINER.COOP.KG_DISTANCE = "cosine"
    # KgCoOp replaces any truthy CTX_INIT by "a photo of a"; True here uses a CTX_INIT string as written.
    cfg.TRAINER.COOP.KG_CTX_INIT_VERBATIM = False


def kgcoop_ctx_init(value, verbatim: bool = False) -> str:
    """The context phrase KgCoOp initialises from: "a photo of a" for any truthy CTX_INIT."""
    if not value:
        return ""
    if verbatim and isinstance(value, str):
        return value
    if isinstance(value, str) and value != DEFAULT_CTX_INIT_PHRASE:
        print(f'Note: KgCoOp initialises the context from "{DEFAULT_CTX_INIT_PHRASE}", not CTX_INIT "{value}" '
              "(set TRAINER.COOP.KG_CTX_INIT_VERBATIM True to use it)")
    return DEFAULT_CTX_INIT_PHRASE


def kgcoop_template(dataset_name: str, default: str) -> str:
    """KgCoOp's hand-crafted template for a data set (its table; the data set's own template otherwise)."""
    return KGCOOP_TEMPLATE_OVERRIDES.get(DATASET_REGISTRY.resolve(dataset_name), default)


@torch.no_grad()
def hand_crafted_text_features(clip_model: nn.Module, prompts: Sequence[str]) -> torch.Tensor:
    """L2-normalised frozen-CLIP text features [C, D] of one hand-crafted prompt per class."""
    print(f"Prompts: {list(prompts)}")
    device = clip_model.token_embedding.weight.device
    return normalize(clip_model.encode_text(clip.tokenize(prompts).to(device)))


def knowledge_guided_distance(text_features: torch.Tensor, anchors: torch.Tensor,
                              distance: str = "cosine") -> torch.Tensor:
    """Mean distance between learned class text features [C, D] (raw) and normalised anchors [C, D]."""
    text_features = normalize(text_features)
    anchors = anchors.type_as(text_features)
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(text_features, anchors, dim=-1, eps=1e-7).mean()
    if distance == "l2":
        return (text_features - anchors).pow(2).sum(dim=-1).mean()
    raise ValueError(f"distance must be one of {KG_DISTANCES}, got {distance!r}")


def draw_original_unused_inits(clip_model: nn.Module) -> None:
    """Draw (and discard) the random numbers KgCoOp's construction draws after the context init.

    The original builds modules it never uses (``bias_vectors``, a second CLIP for the anchors,
    ``meta_net``, ``adapter``); skipping their initialisation would shift the torch RNG and with it
    the data order of a seed. Drawing the same numbers gives the original's losses for a seed.
    """
    with torch.no_grad():
        torch.empty(1, 512, dtype=clip_model.dtype).normal_(std=0.02)  # bias_vectors
        clip.build_model(clip_model.state_dict())  # the anchors' second CLIP: its construction draws
        nn.Linear(512, 512)  # meta_net
        nn.Linear(512, 128, bias=False), nn.Linear(128, 512, bias=False)  # adapter


class KnowledgeGuidedCLIP(TextPromptedCLIP):
    """CoOp's CLIP plus the hand-crafted class text features as a non-persistent buffer."""

    def __init__(self, clip_model: nn.Module, prompt_learner: nn.Module, anchors: torch.Tensor) -> None:
        super().__init__(clip_model, prompt_learner)
        self.register_buffer("anchor_text_features", anchors, persistent=False)


@TRAINER_REGISTRY.register()
class KgCoOp(CoOp):
    """CoOp + W x knowledge-guided distance to frozen CLIP's template text features.

    Differences from the original trainer: the anchors come from the frozen CLIP already
    loaded (KgCoOp loads a second copy of the same weights; same dtype under PREC fp16, fp32
    instead of fp16 anchors under PREC fp32/amp); its unused ``bias_vectors``/``meta_net``/
    ``adapter`` are not built (their checkpoint entries are skipped on load), but their random
    initialisation is drawn and discarded, so a seed gives KgCoOp's data order and losses;
    ``CLASS_TOKEN_POSITION`` is honoured (KgCoOp always puts the class at the end); PREC amp
    works (KgCoOp's amp branch crashes on its tuple output).
    """

    config_node = "COOP"
    class_dependent_keys = ("token_prefix", "token_suffix", "token_midfix")

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        distance = cfg.TRAINER.COOP.KG_DISTANCE
        if distance not in KG_DISTANCES:
            raise InvalidInputError(f"TRAINER.COOP.KG_DISTANCE must be one of {KG_DISTANCES}, got {distance!r}")

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        opts = self.cfg.TRAINER.COOP
        check_input_size(self.cfg, clip_model)
        learner = TextContextLearner(clip_model, self.classnames, n_ctx=opts.N_CTX,
                                     ctx_init=kgcoop_ctx_init(opts.CTX_INIT, opts.KG_CTX_INIT_VERBATIM),
                                     class_specific=opts.CSC, class_token_position=opts.CLASS_TOKEN_POSITION)
        draw_original_unused_inits(clip_model)
        prompts = [kgcoop_template(task.name, task.template).format(clean_classname(name))
                   for task in self.dm.tasks for name in task.classnames]
        # Encoded on the run's device: fp16 CLIP on the CPU is slow (everything moves there next anyway).
        anchors = hand_crafted_text_features(clip_model.to(self.device), prompts)
        return KnowledgeGuidedCLIP(clip_model, learner, anchors)

    def knowledge_guided_loss(self, text_features: torch.Tensor) -> torch.Tensor:
        """The KG term of raw learned class text features [C, D] (DePT's KgCoOp wrapper reuses it)."""
        return knowledge_guided_distance(text_features, self.model.anchor_text_features,
                                         self.cfg.TRAINER.COOP.KG_DISTANCE)

    def loss_terms(self, batch: Batch) -> StepOutput:
        """CoOp's ``ce`` plus ``kg``: W x the knowledge-guided distance of the class text features."""
        output = super().loss_terms(batch)
        output.losses["kg"] = self.cfg.TRAINER.COOP.W * self.knowledge_guided_loss(output.text_features)
        return output

    def adapt_loaded_state_dict(self, name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        state_dict = super().adapt_loaded_state_dict(name, state_dict)
        unused = [k for k in state_dict if k.startswith(UNUSED_ORIGINAL_KEYS)]
        if unused:
            print(f"Ignoring entries of the original KgCoOp that no module here uses: {', '.join(unused)}")
        return {k: v for k, v in state_dict.items() if k not in unused}
