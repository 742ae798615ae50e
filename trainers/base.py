"""What every CLIP prompt-tuning trainer shares: loading CLIP, precision, freezing, the step.

A method subclasses ``PromptTrainer`` and supplies ``build_custom_clip`` (a ``PromptedCLIP``
composed of prompt learners and a head); the engine does the rest the way CoOp does.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip.loading import load_state_dict as load_clip_state_dict
from trainers.engine.checkpoint import load_pretrained_weights
from trainers.engine.optim import build_lr_scheduler, build_optimizer
from trainers.engine.trainer import TrainerX

PRECISIONS = ("fp16", "fp32", "amp")


def load_clip_to_cpu(cfg) -> nn.Module:
    """CLIP as the original repos build it: OpenAI's fp16 layout, on the CPU, in eval mode."""
    name = cfg.MODEL.BACKBONE.NAME
    print(f"Loading CLIP (backbone: {name})")
    state_dict = load_clip_state_dict(cfg.MODEL.BACKBONE.PATH or name)
    model = clip.build_model(state_dict)
    model.truncate_text = cfg.MODEL.BACKBONE.TRUNCATE_TEXT
    return model


def compute_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> List[torch.Tensor]:
    """Top-k accuracy in percent, one one-element tensor per k (Dassl's helper)."""
    maxk = max(topk)
    pred = output.topk(maxk, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True) * (100.0 / target.size(0)) for k in topk]


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                  logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's head: exp(logit_scale) times the cosine similarity of L2-normalised features."""
    return logit_scale.exp() * image_features @ text_features.t()


def normalize(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


class PromptedCLIP(nn.Module):
    """A frozen CLIP plus prompt learners; subclasses say how prompts reach the encoders.

    ``encode`` returns the raw (un-normalised) image features [B, D] and class text
    features ([C, D], or [B, C, D] when the text depends on the image, as in CoCoOp);
    ``itm_logits`` is CLIP's cosine head on them. Wrappers such as DePT's CAT head use
    the same two calls. When the text does not depend on the image, its features are
    computed once per evaluation via ``cached_text_features``.
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
        """Raw text features of every class [C, D] (image-independent methods)."""
        raise NotImplementedError

    def text_features(self) -> torch.Tensor:
        return self._text_cache if self._text_cache is not None else self.class_text_features()

    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(raw image features [B, D], raw class text features [C, D] or [B, C, D])."""
        return self.image_features(images), self.text_features()

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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.itm_logits(*self.encode(images))


def _flatten(values) -> Iterator:
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v


class PromptTrainer(TrainerX):
    """Build CLIP + prompts, freeze CLIP, train the registered module with CE (CoOp's recipe).

    Subclasses set ``config_node`` (the ``TRAINER.<NODE>`` holding ``PREC``), ``checkpoint_name``
    (the registered module's folder), and implement ``build_custom_clip``.
    """

    config_node = "COOP"
    checkpoint_name = "prompt_learner"
    #: task ids of the batch being trained on (None outside ``forward_backward``)
    batch_tasks: Optional[torch.Tensor] = None
    #: checkpoint entries that depend on the class list of the run that wrote them
    class_dependent_keys: Tuple[str, ...] = ("token_prefix", "token_suffix")

    @property
    def precision(self) -> str:
        return self.cfg.TRAINER[self.config_node].PREC

    def check_cfg(self, cfg) -> None:
        prec = cfg.TRAINER[self.config_node].PREC
        if prec not in PRECISIONS:
            raise ValueError(f"TRAINER.{self.config_node}.PREC must be one of {PRECISIONS}, got {prec!r}")

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        raise NotImplementedError

    def trainable_module(self) -> nn.Module:
        """The module that is optimised and checkpointed (CoOp: the prompt learner)."""
        return self.model.prompt_learner

    def is_trainable(self, parameter_name: str) -> bool:
        return "prompt_learner" in parameter_name

    def optimizer_param_groups(self) -> Optional[List[dict]]:
        """Hook: explicit optimizer parameter groups (None: every parameter of ``trainable_module``)."""
        return None

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
        print("Turning off gradients in both the image and the text encoder")
        for name, param in self.model.named_parameters():
            param.requires_grad_(self.is_trainable(name))
        trainable = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
        print(f"Parameters to be updated: {set(trainable)}")
        module = self.trainable_module()
        if cfg.MODEL.INIT_WEIGHTS:
            load_pretrained_weights(module, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        self.optim = build_optimizer(module, cfg.OPTIM, param_groups=self.optimizer_param_groups())
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.checkpoint_name, module, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "amp" and self.device.type == "cuda" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision for PREC amp: fp16 on CUDA, bf16 on the CPU; a no-op otherwise."""
        if self.precision != "amp":
            yield
            return
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=dtype):
            yield

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over each sample's own task's classes (all classes when there is one task).

        ``logits`` cover the concatenation of all tasks' classes (``self.classnames``) and
        ``labels`` index it; ``self.batch_tasks`` holds the current batch's task ids.
        """
        return F.cross_entropy(self.mask_other_tasks(logits, self.batch_tasks), labels)

    def compute_loss(self, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Hook: (loss, logits) for one batch; cross-entropy by default."""
        logits = self.model(images)
        return self.classification_loss(logits, labels), logits

    def loss_summary(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
        """Hook: the values logged for a training batch (CoOp: loss and top-1 accuracy)."""
        logits = self.mask_other_tasks(logits, self.batch_tasks)
        return {"loss": loss.item(), "acc": compute_accuracy(logits, labels)[0].item()}

    def forward_backward(self, batch: dict) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        tasks = batch.get("task")
        self.batch_tasks = tasks.to(self.device) if tasks is not None else None
        labels = self.labels_in_all_classes(labels, self.batch_tasks)
        with self.autocast():
            loss, logits = self.compute_loss(images, labels)
        if self.scaler is not None:
            self.optim.zero_grad()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            self.model_backward_and_update(loss)
        summary = self.loss_summary(loss, logits, labels)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(images)

    def begin_evaluation(self) -> None:
        self._evaluation_cache = self.model.cached_text_features()
        self._evaluation_cache.__enter__()

    def end_evaluation(self) -> None:
        self._evaluation_cache.__exit__(None, None, None)

    def adapt_loaded_state_dict(self, name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v for k, v in state_dict.items() if k.split(".")[-1] not in self.class_dependent_keys}
