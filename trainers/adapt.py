"""Adapt (Huang et al., ICLR 2025 submission): deep key/value-only prompts in both CLIP encoders,
pruned during training to a total budget of T_target tokens (spec ``adapt-vpt.md``).

Per layer and branch up to ``MAX_CTX`` vectors join that block's keys and values (one vector per
token, shared by K and V, through the frozen ``ln_1``); text queries, SOS included, see every
kept prompt. The text input is a fixed template with the class name; nothing else learns.
After ``WARMUP_EPOCHS`` the per-token scores (``SCORE``) are summed over ``N_K`` minibatches,
then the ``R_P`` lowest of both branches are pruned (``trainers/prompts/kv.py``), until
``T_TARGET`` tokens are left. Spec decisions and their keys (``TRAINER.ADAPT``):

* init N(0, ``INIT_STD``²) (0.02), both branches (§12.1); prompts pass through ``ln_1`` (§12.2).
* pruned tokens are removed from the attention; their vectors and optimizer state are zeroed (§12.3, §3.4).
* Snip = sum_k |g_k p_k|, gradient norm = ||g||, l2 = ||p|| (§12.4); raw scores ranked jointly,
  ``SCORE_NORMALIZATION`` "width" divides by the branch width (§12.5); scores after backward,
  before the optimizer step (§12.6).
* the window counts minibatches from the first post-warmup step, across epochs (§12.8);
  ``PRUNE_DEADLINE_EPOCH`` (0 = off) prunes all that is left above the target at the end of
  that epoch, for data sets too small to get there (§3.5). Every run logs its final total.
* the last step prunes min(R_P, kept - T_TARGET) (§12.9); ties: image, then layer, then slot (§12.10).
* ``TEXT_TEMPLATE`` "a photo of a {}." (§12.14), or "dataset" for each data set's CoOp template.

``results.json`` gets an ``"adapt"`` section (``results_report``): kept tokens per layer, the
trainable parameter count (kept tokens x branch width) and its percentage of CLIP without the
token-embedding table (124,323,841 for ViT-B/16, as the paper), and analytic GMACs
(``inference_macs``). Masks after every epoch go to ``adapt_masks.json`` (the paper's Fig. 3;
``python -m trainers.analysis.adapt_masks``).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Sequence

import torch
import torch.nn as nn

import clip
from datasets.io import atomic_write_text
from trainers.base import PromptedCLIP, PromptTrainer
from trainers.coop import check_input_size
from trainers.engine import distributed
from trainers.engine.config import CN
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.prompts.kv import (SCORE_NORMALIZATIONS, SCORES, KVPromptBank, PruningSchedule, Slot,
                                 token_scores)
from trainers.prompts.text import clean_classname

#: TEXT_TEMPLATE value that selects each data set's own CoOp template
DATASET_TEMPLATE = "dataset"
MASKS_FILE = "adapt_masks.json"


@config_hook
def add_adapt_config(cfg) -> None:
    cfg.TRAINER.ADAPT = CN()
    cfg.TRAINER.ADAPT.T_TARGET = 128  # kept tokens over both branches at the end of pruning
    cfg.TRAINER.ADAPT.N_K = 80  # minibatches whose scores are summed before each pruning step
    cfg.TRAINER.ADAPT.R_P = 4  # tokens pruned per step
    cfg.TRAINER.ADAPT.WARMUP_EPOCHS = 5  # epochs without scoring or pruning
    cfg.TRAINER.ADAPT.SCORE = "snip"  # snip | grad_norm | l2
    cfg.TRAINER.ADAPT.SCORE_NORMALIZATION = "none"  # none | width
    cfg.TRAINER.ADAPT.PRUNE_DEADLINE_EPOCH = 0  # 0 = off
    cfg.TRAINER.ADAPT.MAX_CTX = 16  # xi: token slots per layer and branch
    cfg.TRAINER.ADAPT.INIT_STD = 0.02
    cfg.TRAINER.ADAPT.PREC = "fp32"  # fp16, fp32 or amp
    cfg.TRAINER.ADAPT.TEXT_TEMPLATE = "a photo of a {}."


class AdaptPromptLearner(nn.Module):
    """The two prompt banks (``image``, ``text``) and the fixed class prompts' token ids.

    The token ids are a non-persistent buffer: checkpoints hold only ``*.prompts`` and ``*.mask``,
    so a model loads for any class list.
    """

    def __init__(self, clip_model: nn.Module, prompt_texts: Sequence[str], max_tokens: int,
                 init_std: float = 0.02) -> None:
        super().__init__()
        visual, text = clip_model.visual.transformer, clip_model.transformer
        self.image = KVPromptBank(visual.layers, max_tokens, visual.width, init_std)
        self.text = KVPromptBank(text.layers, max_tokens, text.width, init_std)
        self.prompt_texts = list(prompt_texts)
        self.register_buffer("tokenized_prompts", clip.tokenize(self.prompt_texts), persistent=False)

    def banks(self) -> Dict[str, KVPromptBank]:
        """Branch name -> bank, image first (the tie-break order of pruning)."""
        return {"image": self.image, "text": self.text}

    def masks(self) -> Dict[str, torch.Tensor]:
        return {name: bank.mask for name, bank in self.banks().items()}


class AdaptCLIP(PromptedCLIP):
    """CLIP with the learner's kept K/V prompts in every block of both encoders."""

    def __init__(self, clip_model: nn.Module, prompt_learner: AdaptPromptLearner) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner

    def class_text_features(self) -> torch.Tensor:
        learner = self.prompt_learner
        # With MODEL.BACKBONE.SHARED_PREFIX, "[SOS] a photo of a" (and the class-independent
        # K/V prompts it sees) runs once for all classes.
        return self.clip.encode_text(learner.tokenized_prompts, kv_prompts=learner.text.layer_prompts())

    def image_prompt_kwargs(self) -> dict:
        return {"kv_prompts": self.prompt_learner.image.layer_prompts()}


# ----- report: parameters and analytic MACs ---------------------------------------------------

def clip_parameters_without_token_embedding(clip_model: nn.Module) -> int:
    """The paper's percentage denominator: all CLIP parameters but the token-embedding table."""
    total = sum(p.numel() for p in clip_model.parameters())
    return total - clip_model.token_embedding.weight.numel()


def prompt_parameters(widths: Mapping[str, int], kept: Mapping[str, Sequence[int]]) -> int:
    """Learned parameters that matter: kept tokens x width per branch (768 n_img + 512 n_txt at ViT-B/16)."""
    return sum(widths[branch] * sum(counts) for branch, counts in kept.items())


def _block_macs(tokens: int, width: int) -> int:
    """One pre-LN block: Q/K/V and output projections 4 N W², QK^T and AV 2 N² W, MLP (4x) 8 N W²."""
    return 12 * tokens * width ** 2 + 2 * tokens ** 2 * width


def _kv_prompt_macs(tokens: int, width: int) -> int:
    """One K/V prompt in one block: its K and V projections 2 W², one more key and value for each
    of the N queries 2 N W (spec §6.3: 1,482,240 for an image token of ViT-B/16)."""
    return 2 * width ** 2 + 2 * tokens * width


def inference_macs(clip_model: nn.Module, kept: Mapping[str, Sequence[int]]) -> Dict[str, int]:
    """Analytic multiply-accumulates (norms, softmax and additions not counted), spec §6.3.

    image: patch embedding grid² · 3p²W + Σ_blocks [12 N W² + 2 N² W] + W·E with N = grid² + 1,
    plus Σ_l n_img,l (2 W² + 2 N W) for the kept image prompts. text (per class, the full context
    N = 77): Σ_blocks [12 N W² + 2 N² W] + W·E, plus Σ_l n_txt,l (2 W² + 2 N W). An image costs
    ``image_frozen + image_prompts``; class text features are encoded once and cached.
    """
    visual = clip_model.visual
    width, patch = visual.transformer.width, visual.conv1.kernel_size[0]
    grid = visual.input_resolution // patch
    n_img = grid ** 2 + 1
    image_frozen = (grid ** 2 * 3 * patch ** 2 * width + visual.transformer.layers * _block_macs(n_img, width)
                    + width * visual.output_dim)
    text_width, n_txt = clip_model.transformer.width, clip_model.context_length
    text_frozen = (clip_model.transformer.layers * _block_macs(n_txt, text_width)
                   + text_width * clip_model.text_projection.shape[1])
    return {
        "image_frozen": image_frozen,
        "image_prompts": sum(kept["image"]) * _kv_prompt_macs(n_img, width),
        "text_frozen_per_class": text_frozen,
        "text_prompts_per_class": sum(kept["text"]) * _kv_prompt_macs(n_txt, text_width),
    }


def adapt_report(clip_model: nn.Module, learner: AdaptPromptLearner, target: int) -> dict:
    """The ``"adapt"`` section of ``results.json`` for the learner's current masks."""
    banks = learner.banks()
    kept = {name: bank.kept_per_layer() for name, bank in banks.items()}
    params = prompt_parameters({name: bank.width for name, bank in banks.items()}, kept)
    denominator = clip_parameters_without_token_embedding(clip_model)
    macs = inference_macs(clip_model, kept)
    total = sum(sum(c) for c in kept.values())
    return {
        "kept_tokens": kept,
        "kept_total": total,
        "t_target": target,
        "reached_target": total <= target,
        "trainable_params": params,
        "params_percent": 100.0 * params / denominator,
        "params_denominator": denominator,
        "gmacs": (macs["image_frozen"] + macs["image_prompts"]) / 1e9,
        "macs": macs,
    }


# ----- trainer ------------------------------------------------------------------------------------

@TRAINER_REGISTRY.register()
class Adapt(PromptTrainer):
    """K/V deep prompts in both encoders, pruned to ``T_TARGET`` tokens by ``SCORE``; CE loss."""

    config_node = "ADAPT"

    def __init__(self, cfg) -> None:
        opts = cfg.TRAINER.ADAPT
        self.schedule = PruningSchedule(opts.T_TARGET, opts.N_K, opts.R_P, opts.WARMUP_EPOCHS,
                                        opts.PRUNE_DEADLINE_EPOCH)
        #: masks at the end of every epoch (epoch 0: the initial ones), for the Fig. 3 plot
        self.mask_history: List[dict] = []
        super().__init__(cfg)

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        opts = cfg.TRAINER.ADAPT
        for key, value, choices in (("SCORE", opts.SCORE, SCORES),
                                    ("SCORE_NORMALIZATION", opts.SCORE_NORMALIZATION, SCORE_NORMALIZATIONS)):
            if value not in choices:
                raise ValueError(f"TRAINER.ADAPT.{key} must be one of {choices}, got {value!r}")
        if opts.MAX_CTX < 0:
            raise ValueError(f"TRAINER.ADAPT.MAX_CTX must be >= 0, got {opts.MAX_CTX}")
        template = opts.TEXT_TEMPLATE
        if template != DATASET_TEMPLATE and template.count("{}") != 1:
            raise ValueError(f'TRAINER.ADAPT.TEXT_TEMPLATE must hold one "{{}}" for the class name or be '
                             f'"{DATASET_TEMPLATE}", got {template!r}')

    def prompt_texts(self) -> List[str]:
        template = self.cfg.TRAINER.ADAPT.TEXT_TEMPLATE
        return [(task.template if template == DATASET_TEMPLATE else template).format(clean_classname(name))
                for task in self.dm.tasks for name in task.classnames]

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        opts = self.cfg.TRAINER.ADAPT
        check_input_size(self.cfg, clip_model)
        if not clip_model.is_vit:
            raise ValueError(f"Adapt puts K/V prompts into the vision transformer and needs a ViT backbone; "
                             f"MODEL.BACKBONE.NAME {self.cfg.MODEL.BACKBONE.NAME!r} has a ResNet image encoder")
        learner = AdaptPromptLearner(clip_model, self.prompt_texts(), opts.MAX_CTX, opts.INIT_STD)
        capacity = learner.image.mask.numel() + learner.text.mask.numel()
        more = " ..." if len(learner.prompt_texts) > 3 else ""
        print(f"Adapt: {capacity} prompt slots ({opts.MAX_CTX} per layer and branch), T_target {opts.T_TARGET}, "
              f"score {opts.SCORE}; text prompts: {learner.prompt_texts[:3]}{more}")
        if opts.T_TARGET >= capacity:
            print(f"Note: T_TARGET {opts.T_TARGET} >= the {capacity} slots: nothing will be pruned")
        return AdaptCLIP(clip_model, learner)

    def learned_settings(self) -> str:
        return f"this run has TRAINER.ADAPT.MAX_CTX {self.cfg.TRAINER.ADAPT.MAX_CTX}"

    @property
    def prompt_learner(self) -> AdaptPromptLearner:
        return self.model.prompt_learner

    # ----- scores and pruning -------------------------------------------------------------
    def after_backward(self) -> None:
        """Score the kept tokens of this minibatch (gradients final, parameters not yet stepped)."""
        masks = self.prompt_learner.masks()
        if not self.schedule.active(self.epoch, masks):
            return
        opts = self.cfg.TRAINER.ADAPT
        scores = {name: token_scores(bank, opts.SCORE, opts.SCORE_NORMALIZATION)
                  for name, bank in self.prompt_learner.banks().items()}
        self.schedule.observe(scores, masks)

    def after_step(self) -> None:
        end_of_epoch = self.batch_idx + 1 == self.num_batches
        slots = self.schedule.to_prune(self.prompt_learner.masks(), self.epoch, end_of_epoch)
        if slots:
            self.prune(slots)

    def prune(self, slots: Sequence[Slot]) -> None:
        """Remove the tokens, zero their vectors and every optimizer state row of them."""
        banks = self.prompt_learner.banks()
        for name, bank in banks.items():
            rows = [(layer, slot) for branch, layer, slot in slots if branch == name]
            if not rows:
                continue
            bank.prune(rows)
            layers, positions = (torch.tensor(v) for v in zip(*rows))
            for optim in self._distinct_optimizers():
                for value in optim.state.get(bank.prompts, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == bank.prompts.shape:
                        value[layers.to(value.device), positions.to(value.device)] = 0
        kept = {name: bank.kept_total() for name, bank in banks.items()}
        print(f"Adapt: pruned {len(slots)} tokens at epoch {self.epoch + 1} batch {self.batch_idx + 1}; kept "
              f"{sum(kept.values())} (image {kept['image']}, text {kept['text']}), "
              f"target {self.cfg.TRAINER.ADAPT.T_TARGET}")

    # ----- mask log, report, state ------------------------------------------------------------
    def record_masks(self, epoch: int) -> None:
        """Append the masks after ``epoch`` (1-based; 0 = before training) and rewrite the mask log."""
        entry = {"epoch": epoch}
        entry.update({name: mask.int().tolist() for name, mask in self.prompt_learner.masks().items()})
        self.mask_history.append(entry)
        if distributed.is_main():
            atomic_write_text(os.path.join(self.output_dir, MASKS_FILE),
                              json.dumps({"t_target": self.cfg.TRAINER.ADAPT.T_TARGET, "epochs": self.mask_history}))

    def before_train(self) -> None:
        super().before_train()
        if not self.mask_history:
            self.record_masks(0)

    def after_epoch(self) -> None:
        self.record_masks(self.epoch + 1)  # before the checkpoint, which saves the history
        super().after_epoch()

    def after_train(self) -> None:
        total, target = sum(b.kept_total() for b in self.prompt_learner.banks().values()), self.schedule.target
        if total > target:
            print(f"Adapt: final kept tokens {total} did NOT reach T_target {target} (raise the epochs, lower "
                  "TRAINER.ADAPT.N_K or set TRAINER.ADAPT.PRUNE_DEADLINE_EPOCH)")
        else:
            print(f"Adapt: final kept tokens {total} (T_target {target} reached)")
        super().after_train()

    def results_report(self) -> dict:
        """Extra sections of ``results.json``: ``{"adapt": ...}`` for the current masks."""
        report = adapt_report(self.model.clip, self.prompt_learner, self.schedule.target)
        report["score"] = self.cfg.TRAINER.ADAPT.SCORE
        return {"adapt": report}

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "mask_history": list(self.mask_history)}

    def load_state_dict(self, state: Mapping) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.mask_history = list(state["mask_history"])
