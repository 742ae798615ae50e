"""What every CLIP prompt-tuning trainer shares: loading CLIP, precision, freezing, the loss.

A method subclasses ``PromptTrainer`` and supplies ``build_custom_clip`` (a ``PromptedCLIP``
composed of prompt learners and a head), optionally ``trainable_modules`` (what learns and is
saved, one checkpoint folder each) and ``loss_terms`` (named terms; default: the cross-entropy
``ce`` of the image-text logits within each sample's task). The engine owns the step.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip.errors import InvalidInputError
from clip.loading import load_state_dict as load_clip_state_dict
from trainers.engine.checkpoint import load_checkpoint
from trainers.engine.optim import build_lr_scheduler, build_optimizer
from trainers.engine.trainer import Batch, StepOutput, TrainerX

PRECISIONS = ("fp16", "fp32", "amp")


def load_clip_to_cpu(cfg) -> nn.Module:
    """CLIP as the original repos build it: OpenAI's fp16 layout, on the CPU, in eval mode."""
    name = cfg.MODEL.BACKBONE.NAME
    print(f"Loading CLIP (backbone: {name})")
    state_dict = load_clip_state_dict(cfg.MODEL.BACKBONE.PATH or name)
    model = clip.build_model(state_dict)
    model.truncate_text = cfg.MODEL.BACKBONE.TRUNCATE_TEXT
    model.text_checkpointing = cfg.MODEL.BACKBONE.TEXT_CHECKPOINTING
    model.shared_prefix = cfg.MODEL.BACKBONE.SHARED_PREFIX
    return model


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                  logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's head: exp(logit_scale) times the cosine similarity of L2-normalised features."""
    return logit_scale.exp() * image_features @ text_features.t()


def normalize(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


class PromptedCLIP(nn.Module):
    """A frozen CLIP plus prompt learners; subclasses say how prompts reach the encoders.

    ``encode(images, tasks)`` returns the raw (un-normalised) image features [B, D] and class
    text features ([C, D] over all tasks' classes, or [B, C, D] when the text depends on the
    image, as in CoCoOp); ``tasks`` (each image's task id, or None) lets per-task prompts in.
    ``itm_logits`` is CLIP's cosine head on them. Wrappers such as DePT's CAT head use the same
    two calls. When the text does not depend on the image, its features are computed once per
    evaluation via ``cached_text_features``.
    """

    text_depends_on_image = False

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.clip = clip_model
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype
        self._text_cache: Optional[torch.Tensor] = None

    def image_prompt_kwargs(self) -> dict:
        """Hook: prompt arguments for ``clip.encode_image`` (none for text-only methods)."""
        return {}

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features; no autograd through CLIP unless image prompts learn."""
        kwargs = self.image_prompt_kwargs()
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(v, torch.Tensor) and v.requires_grad for v in _flatten(kwargs.values()))
        with torch.set_grad_enabled(needs_grad):
            return self.clip.encode_image(images.type(self.dtype), **kwargs)

    def class_text_features(self) -> torch.Tensor:
        """Raw text features of every class of every task [C, D] (image-independent methods)."""
        raise NotImplementedError

    def encode_prompts(self, learner: nn.Module, deep_prompts=None, ctx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Text features of a prompt learner's class prompts (around ``ctx`` when given, else its
        own context): the tokens a group of classes shares (start token + context) run once when
        the learner offers them (``shared_prefix`` -> ``SharedPrefix`` or None) and
        ``MODEL.BACKBONE.SHARED_PREFIX`` is on; otherwise every class prompt runs in full."""
        offers = getattr(self.clip, "shared_prefix", False) and hasattr(learner, "shared_prefix")
        shared = learner.shared_prefix(ctx) if offers else None
        if shared is None:
            prompts = learner() if ctx is None else learner(ctx)
            return self.clip.encode_text_embeddings(prompts, learner.eot_positions, deep_prompts=deep_prompts)
        return self.clip.encode_text_shared_prefix(shared.prefix, shared.suffix, learner.eot_positions,
                                                   shared.group_index, deep_prompts=deep_prompts)

    def text_features(self, tasks: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._text_cache if self._text_cache is not None else self.class_text_features()

    def encode(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw image features [B, D], raw class text features [C, D] or [B, C, D])."""
        return self.image_features(images), self.text_features(tasks)

    def itm_logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Image-text matching logits: exp(logit_scale) x cosine similarity."""
        image_features, text_features = normalize(image_features), normalize(text_features)
        if text_features.dim() == 3:
            return self.logit_scale.exp() * torch.einsum("bd,bcd->bc", image_features, text_features)
        return cosine_logits(image_features, text_features, self.logit_scale)

    @contextlib.contextmanager
    def cached_text_features(self) -> Iterator[None]:
        """Encode the class prompts once for the duration of the block (an evaluation)."""
        if self.text_depends_on_image:
            yield
            return
        with torch.no_grad():
            self._text_cache = self.class_text_features()
        try:
            yield
        finally:
            self._text_cache = None

    def forward(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.itm_logits(*self.encode(images, tasks))


def _flatten(values) -> Iterator:
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v


class PromptTrainer(TrainerX):
    """Build CLIP + prompts, freeze CLIP, train the declared modules with CE (CoOp's recipe).

    Subclasses set ``config_node`` (the ``TRAINER.<NODE>`` holding ``PREC``) and
    ``checkpoint_name`` (the prompt learner's folder), and implement ``build_custom_clip``.
    """

    config_node = "COOP"
    checkpoint_name = "prompt_learner"
    class_dependent_keys: Tuple[str, ...] = ("token_prefix", "token_suffix")

    @property
    def precision(self) -> str:
        return self.cfg.TRAINER[self.config_node].PREC

    def check_cfg(self, cfg) -> None:
        prec = cfg.TRAINER[self.config_node].PREC
        if prec not in PRECISIONS:
            raise InvalidInputError(f"TRAINER.{self.config_node}.PREC must be one of {PRECISIONS}, got {prec!r}")

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        raise NotImplementedError

    def trainable_modules(self) -> Dict[str, nn.Module]:
        """``{checkpoint folder: module}``: exactly these parameters learn, each module is optimised
        and saved in its own folder (CoOp: the prompt learner in ``prompt_learner/``)."""
        return {self.checkpoint_name: self.model.prompt_learner}

    def optimizer_param_groups(self, name: str, module: nn.Module) -> Optional[List[dict]]:
        """Hook: explicit parameter groups for ``module``'s optimizer (None: all its parameters)."""
        return None

    def build_optimizers(self, modules: Mapping[str, nn.Module]) -> Dict[str, tuple]:
        """Hook: ``{folder: (optimizer, scheduler)}``; by default each module its own, from OPTIM."""
        built = {}
        for name, module in modules.items():
            optim = build_optimizer(module, self.cfg.OPTIM, param_groups=self.optimizer_param_groups(name, module))
            built[name] = (optim, build_lr_scheduler(optim, self.cfg.OPTIM))
        return built

    def build_model(self) -> None:
        cfg = self.cfg
        clip_model = load_clip_to_cpu(cfg)
        if self.precision in ("fp32", "amp"):
            clip_model.float()
        if self.precision == "fp16" and self.device.type == "cpu":
            print("Warning: PREC fp16 on the CPU is slow and may be unsupported by some ops; "
                  f"set TRAINER.{self.config_node}.PREC fp32 for CPU runs")
        print("Building custom CLIP")
        self.model = self.build_custom_clip(clip_model)
        modules = self.trainable_modules()
        print("Turning off gradients in both the image and the text encoder")
        learned = {id(p) for module in modules.values() for p in module.parameters()}
        for param in self.model.parameters():
            param.requires_grad_(id(param) in learned)
        trainable = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
        print(f"Parameters to be updated: {set(trainable)}")
        self.model.to(self.device)
        for name, (optim, sched) in self.build_optimizers(modules).items():
            self.register_model(name, modules[name], optim, sched)
        names = self.get_model_names()
        self.optim, self.sched = self._optims[names[0]], self._scheds[names[0]]
        if cfg.MODEL.INIT_WEIGHTS:
            self.load_init_weights(cfg.MODEL.INIT_WEIGHTS)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "amp" and self.device.type == "cuda" else None

    def load_init_weights(self, path: str) -> None:
        """``MODEL.INIT_WEIGHTS``: one checkpoint file for the (only) trainable module, by the loading rule."""
        names = self.get_model_names()
        if len(names) != 1:
            raise InvalidInputError(f"MODEL.INIT_WEIGHTS names one file, but {type(self).__name__} learns {len(names)} "
                             f"modules ({', '.join(names)}); pass their run folder with --model-dir instead")
        checkpoint = load_checkpoint(path)
        self.load_learned_weights(names[0], checkpoint.get("state_dict", checkpoint), path)
        print(f"Initialised {names[0]} from {path} (MODEL.INIT_WEIGHTS)")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision for PREC amp: fp16 on CUDA, bf16 on the CPU; a no-op otherwise."""
        if self.precision != "amp":
            yield
            return
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=dtype):
            yield

    def classification_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy over each sample's own task's classes (all classes when there is one task).

        ``logits`` cover the concatenation of all tasks' classes (``self.classnames``) and
        ``batch.labels`` index it.
        """
        return F.cross_entropy(self.mask_other_tasks(logits, batch.tasks), batch.labels)

    def loss_terms(self, batch: Batch) -> StepOutput:
        """CoOp's objective: ``ce``, the cross-entropy of the image-text logits."""
        image_features, text_features = self.model.encode(batch.images, batch.tasks)
        logits = self.model.itm_logits(image_features, text_features)
        return StepOutput(losses={"ce": self.classification_loss(logits, batch)}, logits=logits,
                          image_features=image_features, text_features=text_features)

    def begin_evaluation(self) -> None:
        """Fixed class text features once per evaluation, in the same precision as training."""
        self._evaluation_cache = self.model.cached_text_features()
        with self.autocast():
            self._evaluation_cache.__enter__()

    def end_evaluation(self) -> None:
        self._evaluation_cache.__exit__(None, None, None)
