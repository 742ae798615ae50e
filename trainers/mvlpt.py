"""MVLPT (Shen et al., "Multitask Vision-Language Prompt Tuning"): CoOp, VPT or UPT prompts,
trained on one task or several at once, and moved from source tasks to target tasks.

One trainer, ``MVLPT`` (the original's registered name), picks the prompt type from two context
lengths exactly as the original: ``TRAINER.MVLPT.COOP.N_CTX`` > 0 learns a text context,
``TRAINER.MVLPT.VPT.N_CTX`` > 0 visual prompts, both a unified prompt (UPT). ``MCoOp``, ``MVPT``
and ``MUPT`` (alias ``UPT``) fix the prompt type and default a length left at 0 to the paper's
(16, 16, 4 + 4). Decisions where the original's behaviour is a quirk, each with its switch:

* Multi-task loss: softmax over all tasks' classes (the original). ``DATASET.MULTITASK_LABEL_PERTASK``
  (``--multi-task-label_pertask``) restricts each sample to its task's classes with -inf; the
  original multiplies the other logits by 0 (they still enter the softmax with weight exp(0))
  and crashes on CoOp data (``--dataset-coop``).
* Model selection: ``DATASET.MULTITASK_EVALKEY`` "average" (mean over tasks) or a task name.
  ``TRAINER.MVLPT.SAVE_BEST_PER_TASK`` also keeps each task's best epoch in the same run (the
  paper's "best checkpoint for each task") as ``<output>/best_per_task/<task>/prompt_learner/``.
* UPT attention: ``TRAINER.MVLPT.UPT_ATTENTION`` "per_token" (the code; the published numbers)
  or "across_tokens" (the paper's text), see ``trainers/prompts/unified.py``.
* ``TRAINER.CUT_CONTEXTLEN``: accepted; the text encoder already stops after the last
  end-of-text token (``MODEL.BACKBONE.TRUNCATE_TEXT``), which gives the same features without
  the original's in-place edit of CLIP's attention masks.
* ``TRAINER.ACT_CKPT`` k > 1: real activation checkpointing in both encoders through CLIP's
  switches (every block recomputes its activations in the backward pass, the least memory;
  the original's k segments would keep the last segment's); 1 gives none, as in the original,
  where ``checkpoint_sequential`` with one segment checkpoints nothing.
* Data: CoOp-layout tasks (and any task with ``--dataset-coop``) keep the command-line order and
  Dassl's loaders; a run of ELEVATER tasks only takes the toolkit's loaders (no augmentation,
  squash resize, its batch sizes and seeded-0 shuffle) and sorted task order, see
  ``datasets/elevater/loaders.py``. Multi-label rows (VOC) train on the original's soft-target
  cross-entropy (multi-hot targets scaled to sum 1; an image without labels adds 0 where the
  original's 0/0 gives NaN) and are scored by 11-point mAP on the raw logits.
* ELEVATER runs also print the original's result lines (``results {'accuracy': 0.2}``: fractions,
  MVLPT's metric names) after ours.
* Visual prompts run through every block (the original silently skips blocks when it has fewer
  deep prompts than layers). Visual-only runs encode the fixed text prompt once and reuse it.
* Checkpoints hold the learned tensors under the original keys (``ctx``, ``vpt_embeddings``,
  ``vpt_embeddings_deep``, ``vpt_proj.*``, ``mvlpt_proj.*``, ``mvlpt_proj_ctx_*``) without the
  class-dependent ``token_prefix``/``token_suffix``; original files (with them, or with the
  older ``upt_proj`` names) load, and every learned tensor must be in the file.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.base import PromptedCLIP, PromptTrainer
from trainers.coop import check_input_size
from trainers.engine.config import CN
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.engine.trainer import Batch
from trainers.prompts.unified import UPT_ATTENTION_MODES, MultitaskVLPromptLearner
from trainers.prompts.vision import VisualPromptLearner

PROJECT_METHODS = ("identity", "transformer")
BEST_PER_TASK_FOLDER = "best_per_task"


@config_hook
def add_mvlpt_config(cfg) -> None:
    """MVLPT's keys with the original's defaults, plus three of ours (UPT_ATTENTION, SAVE_BEST_PER_TASK)."""
    cfg.TRAINER.MVLPT = CN()
    cfg.TRAINER.MVLPT.PREC = "fp16"
    cfg.TRAINER.MVLPT.PROJECT_METHOD = "transformer"  # UPT's theta; "identity": independent prompts
    cfg.TRAINER.MVLPT.PROJECT_DIM = 128
    cfg.TRAINER.MVLPT.UPT_ATTENTION = "per_token"  # the original code; "across_tokens": the paper
    cfg.TRAINER.MVLPT.SAVE_BEST_PER_TASK = False
    cfg.TRAINER.MVLPT.VPT = CN()
    cfg.TRAINER.MVLPT.VPT.N_CTX = 0
    cfg.TRAINER.MVLPT.VPT.CSC = False  # read by nothing, as in the original
    cfg.TRAINER.MVLPT.VPT.CTX_INIT = ""  # must stay empty
    cfg.TRAINER.MVLPT.VPT.DROPOUT = 0.0
    cfg.TRAINER.MVLPT.VPT.PROJECT = -1
    cfg.TRAINER.MVLPT.VPT.DEEP = True
    cfg.TRAINER.MVLPT.COOP = CN()
    cfg.TRAINER.MVLPT.COOP.N_CTX = 0
    cfg.TRAINER.MVLPT.COOP.CSC = False
    cfg.TRAINER.MVLPT.COOP.CTX_INIT = ""
    cfg.TRAINER.MVLPT.COOP.CLASS_TOKEN_POSITION = "middle"
    cfg.TRAINER.MVLPT.COCOOP = CN()  # the original's CoCoOp branch is not part of this port (N_CTX must be 0)
    cfg.TRAINER.MVLPT.COCOOP.N_CTX = 0
    cfg.TRAINER.MVLPT.COCOOP.CTX_INIT = ""
    cfg.TRAINER.MVLPT.COCOOP.PREC = "fp16"
    cfg.TRAINER.CUT_CONTEXTLEN = False
    cfg.TRAINER.ACT_CKPT = 1
    data = cfg.DATASET
    data.NUM_SAMPLES_PER_CLASS = 20  # --shots sets it with NUM_SHOTS
    data.DATASET = ""  # --dataset sets it with NAME
    data.RANDOM_SEED_SAMPLING = 1  # --seed sets it with SEED
    data.VAL_SET = ""
    data.TRAIN_SET = "train"
    data.TEST_SET = "val"
    data.CENTER_CROP = False
    data.COOP = False
    data.MULTITASK = False
    data.MULTITASK_LABEL_PERTASK = False
    data.MULTITASK_EVALKEY = "average"


def apply_mvlpt_arguments(cfg, args) -> None:
    """MVLPT's ``train.py`` flags. ``--dataset`` lists the tasks in command-line order; the data
    manager sorts them by name when they are all ELEVATER tasks (MVLPT's multi-task manifest order)
    unless ``--dataset-coop`` is given."""
    if args.dataset:
        cfg.DATASET.DATASET = args.dataset
        cfg.DATASET.NAME = ",".join(n.strip() for n in args.dataset.split(",") if n.strip())
    if args.shots:
        cfg.DATASET.NUM_SAMPLES_PER_CLASS = args.shots
        cfg.DATASET.NUM_SHOTS = args.shots
    elif args.shots == 0:
        print("Note: --shots 0 is ignored as in MVLPT; pass the option DATASET.NUM_SHOTS -1 for all images")
    if args.seed:
        cfg.DATASET.RANDOM_SEED_SAMPLING = args.seed
    cfg.DATASET.COOP = cfg.DATASET.COOP or args.dataset_coop
    cfg.DATASET.MULTITASK = cfg.DATASET.MULTITASK or args.multi_task
    cfg.DATASET.MULTITASK_LABEL_PERTASK = cfg.DATASET.MULTITASK_LABEL_PERTASK or args.multi_task_label_pertask
    if args.multi_task_evalkey != "average":
        cfg.DATASET.MULTITASK_EVALKEY = args.multi_task_evalkey
    cfg.TRAINER.CUT_CONTEXTLEN = cfg.TRAINER.CUT_CONTEXTLEN or args.cut_contextlen
    if args.act_ckpt != 1:
        cfg.TRAINER.ACT_CKPT = args.act_ckpt


def set_activation_checkpointing(clip_model: nn.Module, segments: int) -> bool:
    """``TRAINER.ACT_CKPT``: above 1, CLIP's own switches recompute every text block and every
    ViT block in the backward pass (the original's 1 gives none: ``checkpoint_sequential`` with
    one segment checkpoints nothing). Returns whether it is on."""
    enabled = segments > 1
    clip_model.text_checkpointing = enabled
    if clip_model.is_vit:
        clip_model.visual.checkpointing = enabled
    return enabled


class UnifiedPromptedCLIP(PromptedCLIP):
    """CLIP fed by a ``MultitaskVLPromptLearner``: UPT's theta runs once per forward for both encoders."""

    def __init__(self, clip_model: nn.Module, prompt_learner: MultitaskVLPromptLearner) -> None:
        super().__init__(clip_model)
        self.prompt_learner = prompt_learner
        self.register_buffer("fixed_text_features", torch.empty(0), persistent=False)

    def encode(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        text_ctx, visual = self.prompt_learner.prompts()
        text = self._text_cache if self._text_cache is not None else self.text_features_from(text_ctx)
        return self.image_features_from(images, visual), text

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_features_from(images, self.prompt_learner.prompts()[1])

    def image_features_from(self, images: torch.Tensor, visual: Optional[torch.Tensor]) -> torch.Tensor:
        vision = self.prompt_learner.vision
        if vision is None:
            return super().image_features(images)
        kwargs = vision.encoder_prompts(images.shape[0], raw=visual)
        return self.clip.encode_image(images.type(self.dtype), **kwargs)

    def class_text_features(self) -> torch.Tensor:
        return self.text_features_from(self.prompt_learner.prompts()[0])

    def text_features_from(self, text_ctx: Optional[torch.Tensor]) -> torch.Tensor:
        learner = self.prompt_learner
        if learner.text is None:
            if self.fixed_text_features.numel() == 0:
                with torch.no_grad():
                    self.fixed_text_features = self.clip.encode_text(learner.fixed_text_tokens)
            return self.fixed_text_features
        # Shared prefix: start token + the (projected) context, once for all classes.
        return self.encode_prompts(learner.text, ctx=text_ctx)


@TRAINER_REGISTRY.register()
class MVLPT(PromptTrainer):
    """CoOp / VPT / UPT prompts chosen by TRAINER.MVLPT.{COOP,VPT}.N_CTX; single- or multi-task."""

    config_node = "MVLPT"
    #: (text, visual) context lengths of the readable names; None: read both from the config
    paper_lengths: Optional[Tuple[int, int]] = None

    def __init__(self, cfg) -> None:
        self.best_per_task: Dict[str, float] = {}  # task -> best validation score (SAVE_BEST_PER_TASK)
        super().__init__(cfg)

    @classmethod
    def context_lengths(cls, cfg) -> Tuple[int, int]:
        """(text, visual) context lengths; the readable trainers fill a 0 with the paper's value and
        refuse a prompt type they do not learn."""
        opts = cfg.TRAINER.MVLPT
        configured = (opts.COOP.N_CTX, opts.VPT.N_CTX)
        if cls.paper_lengths is None:
            return configured
        lengths = []
        for key, value, paper in zip(("COOP", "VPT"), configured, cls.paper_lengths):
            if paper == 0 and value != 0:
                raise ValueError(f"{cls.__name__} learns no {'text' if key == 'COOP' else 'visual'} prompt: "
                                 f"TRAINER.MVLPT.{key}.N_CTX must be 0, got {value} (use MVLPT or MUPT)")
            lengths.append(value or paper)
        return lengths[0], lengths[1]

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MVLPT
        text_n, visual_n = self.context_lengths(cfg)
        if text_n <= 0 and visual_n <= 0:
            raise ValueError("MVLPT needs TRAINER.MVLPT.COOP.N_CTX (CoOp), TRAINER.MVLPT.VPT.N_CTX (VPT) or both (UPT) "
                             "above 0; both are 0")
        if opts.COCOOP.N_CTX:
            raise ValueError("TRAINER.MVLPT.COCOOP is not part of this port; use the CoCoOp trainer")
        if opts.VPT.CTX_INIT:
            raise ValueError("TRAINER.MVLPT.VPT.CTX_INIT must be empty: visual prompts start at random (as in MVLPT)")
        if opts.PROJECT_METHOD not in PROJECT_METHODS:
            raise ValueError(f"TRAINER.MVLPT.PROJECT_METHOD must be one of {PROJECT_METHODS}, got "
                             f"{opts.PROJECT_METHOD!r} (the original's 'mlp' crashes)")
        if opts.UPT_ATTENTION not in UPT_ATTENTION_MODES:
            raise ValueError(f"TRAINER.MVLPT.UPT_ATTENTION must be one of {UPT_ATTENTION_MODES}, "
                             f"got {opts.UPT_ATTENTION!r}")

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        cfg, opts = self.cfg, self.cfg.TRAINER.MVLPT
        check_input_size(cfg, clip_model)
        text_n, visual_n = self.context_lengths(cfg)
        vision = None
        if visual_n > 0:
            depth = clip_model.visual.transformer.layers if opts.VPT.DEEP else 1
            vision = VisualPromptLearner(clip_model, visual_n, depth=depth, dropout=opts.VPT.DROPOUT,
                                         project_dim=opts.VPT.PROJECT)
        learner = MultitaskVLPromptLearner(
            clip_model, self.classnames, text_n, vision, class_token_position=opts.COOP.CLASS_TOKEN_POSITION,
            class_specific=opts.COOP.CSC, text_ctx_init=opts.COOP.CTX_INIT, project_method=opts.PROJECT_METHOD,
            project_dim=opts.PROJECT_DIM, attention=opts.UPT_ATTENTION)
        if set_activation_checkpointing(clip_model, cfg.TRAINER.ACT_CKPT):
            print(f"Activation checkpointing in both encoders (TRAINER.ACT_CKPT {cfg.TRAINER.ACT_CKPT})")
        return UnifiedPromptedCLIP(clip_model, learner)

    def trainable_modules(self) -> Dict[str, nn.Module]:
        return {self.checkpoint_name: self.model.prompt_learner.checkpoint_view()}

    def learned_settings(self) -> str:
        opts = self.cfg.TRAINER.MVLPT
        text_n, visual_n = self.context_lengths(self.cfg)
        return (f"this run has TRAINER.MVLPT.COOP.N_CTX {text_n}, COOP.CSC {opts.COOP.CSC}, VPT.N_CTX {visual_n}, "
                f"VPT.DEEP {opts.VPT.DEEP}, VPT.PROJECT {opts.VPT.PROJECT}, PROJECT_METHOD {opts.PROJECT_METHOD}, "
                f"PROJECT_DIM {opts.PROJECT_DIM}")

    def adapt_loaded_state_dict(self, name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Released UPT checkpoints call theta and its projections ``upt_proj*`` (MVLPT's issue 1)."""
        return {k.replace("upt_proj", "mvlpt_proj"): v for k, v in state_dict.items()}

    # ----- multi-task -------------------------------------------------------------------------
    def classification_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Softmax over every task's classes (the original); per task with MULTITASK_LABEL_PERTASK.

        With multi-hot ``batch.targets`` (a multi-label task in the run) the loss is the original's
        soft-target cross-entropy, each row's targets scaled to sum to 1 (an image without any
        label adds 0, where the original's 0/0 gives NaN)."""
        per_task = self.cfg.DATASET.MULTITASK_LABEL_PERTASK
        if batch.targets is None:
            return super().classification_loss(logits, batch) if per_task else F.cross_entropy(logits, batch.labels)
        if per_task:
            logits = self.mask_other_tasks(logits, batch.tasks)
        targets = batch.targets.float()
        targets = targets / targets.sum(dim=1, keepdim=True).clamp(min=1)
        log_probs = F.log_softmax(logits.float(), dim=1).masked_fill(targets == 0, 0.0)  # 0 * -inf outside a task
        return -(targets * log_probs).sum(dim=1).mean()

    @property
    def multi_task(self) -> bool:
        return len(self.dm.tasks) > 1

    def check_model_selection(self) -> None:
        super().check_model_selection()
        key = self.cfg.DATASET.MULTITASK_EVALKEY
        names = [t.name for t in self.dm.tasks]
        if self.multi_task and key != "average" and key not in names:
            raise ValueError(f"DATASET.MULTITASK_EVALKEY must be 'average' or one of the tasks {names}, got {key!r}")

    def selection_score(self, results: Mapping[str, Any]) -> float:
        """The score that picks the best epoch: the first metric overall (the mean over tasks), or
        that of the task named by DATASET.MULTITASK_EVALKEY."""
        key = self.cfg.DATASET.MULTITASK_EVALKEY
        if not self.multi_task or key == "average":
            return float(next(iter(results.values())))
        return task_score(results, key)

    def after_epoch(self) -> None:
        """The engine's epoch end, selecting by MULTITASK_EVALKEY and keeping per-task bests on request."""
        cfg = self.cfg
        if not cfg.TEST.NO_TEST and cfg.TEST.FINAL_MODEL == "best_val":
            self.test(split="val")
            if cfg.TRAINER.MVLPT.SAVE_BEST_PER_TASK and self.multi_task:
                self.save_best_per_task(self.last_results)
            score = self.selection_score(self.last_results)
            if score > self.best_result:
                self.best_result = score
                self.save_model(self.epoch, self.output_dir, val_result=score, model_name="model-best.pth.tar")
        freq = cfg.TRAIN.CHECKPOINT_FREQ
        if (freq > 0 and (self.epoch + 1) % freq == 0) or self.epoch + 1 == self.max_epoch:
            self.save_model(self.epoch, self.output_dir)

    def test(self, split: Optional[str] = None) -> float:
        """The engine's evaluation; ELEVATER runs then also print MVLPT's result lines."""
        score = super().test(split)
        if getattr(self.dm, "elevater", False):
            print_mvlpt_results(self.last_results, self.dm.tasks, self.cfg.DATASET.MULTITASK_EVALKEY)
        return score

    def save_best_per_task(self, results: Mapping[str, Any]) -> None:
        """``<output>/best_per_task/<task>/prompt_learner/model-best.pth.tar`` for every task whose
        validation score beats its best so far (strictly: ties keep the earlier epoch)."""
        for task in self.dm.tasks:
            score = task_score(results, task.name)
            if score > self.best_per_task.get(task.name, -float("inf")):
                self.best_per_task[task.name] = score
                print(f"Best {task.name} so far: {score:.4f}")
                self.save_model(self.epoch, os.path.join(self.output_dir, BEST_PER_TASK_FOLDER, task.name),
                                val_result=score, model_name="model-best.pth.tar")

    def state_dict(self) -> Dict[str, Any]:
        return {"best_per_task": dict(self.best_per_task)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_per_task.update(state.get("best_per_task", {}))


#: our per-task metric names -> MVLPT's (its class_map_metric)
MVLPT_METRIC_NAMES = {"mean_per_class_accuracy": "mean-per-class"}


def print_mvlpt_results(results: Mapping[str, Any], tasks: Sequence[Any], evalkey: str = "average") -> Dict[str, float]:
    """MVLPT's lines after an ELEVATER evaluation, values as fractions: per task (several tasks)
    ``evaluate on the *<task>* !`` and ``results {'<metric>': v}``, then ``Overall evaluation !``
    and ``results {...}`` (the mean as ``average``, the evalkey task, or the one task's metric).
    Returns the overall dict."""
    per_task: Dict[str, Tuple[str, float]] = {}
    for task in tasks:
        key = task.metric if len(tasks) == 1 else f"{task.name}/{task.metric}"
        if key not in results:
            continue
        per_task[task.name] = (MVLPT_METRIC_NAMES.get(task.metric, task.metric), float(results[key]) / 100.0)
    if len(tasks) > 1:
        for name, (metric, value) in per_task.items():
            print(f"evaluate on the *{name}* !")
            print("results", {metric: value})
    print("Overall evaluation !")
    if len(tasks) == 1:
        overall = dict(per_task.values())
    elif evalkey == "average":
        overall = {"average": sum(v for _, v in per_task.values()) / len(per_task)}
    else:
        print(f"select {evalkey} as the evaluation key")
        overall = {evalkey: per_task[evalkey][1]}
    print("results", overall)
    return overall


def task_score(results: Mapping[str, Any], task: str) -> float:
    """A task's first reported metric in a multi-task result (keys ``<task>/<metric>``)."""
    for key, value in results.items():
        if key.startswith(task + "/"):
            return float(value)
    raise KeyError(f"No result for task {task!r} in {list(results)}")


@TRAINER_REGISTRY.register()
class MCoOp(MVLPT):
    """MVLPT's CoOp: a text context only (16 tokens unless TRAINER.MVLPT.COOP.N_CTX says otherwise)."""

    paper_lengths = (16, 0)


@TRAINER_REGISTRY.register()
class MVPT(MVLPT):
    """MVLPT's deep VPT: visual prompts only (16 per layer unless TRAINER.MVLPT.VPT.N_CTX says otherwise)."""

    paper_lengths = (0, 16)


@TRAINER_REGISTRY.register(aliases=("UPT",))
class MUPT(MVLPT):
    """MVLPT's UPT: text context and visual prompts through theta (4 + 4 unless the N_CTX keys say otherwise)."""

    paper_lengths = (4, 4)
