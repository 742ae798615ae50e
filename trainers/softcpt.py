"""SoftCPT (Ding et al., "Multi-task prompt tuning with soft context sharing", Neurocomputing 2024)
and its hard-sharing CoOp baselines, under the original's trainer names and config keys.

``MTCoOp`` (``TRAINER.MTCOOP.*``): a meta network maps each task's name feature to that task's
class-prompt context (``trainers/prompts/meta.py``). The paper's variants are flag settings:

===========  ===  ===========================  =====================
variant      CSC  CLASS_N_CTX / CLASS_CSC      TASK_N_CTX / TASK_CSC
===========  ===  ===========================  =====================
NATA         F    0 / -                        4 / F
NATS         F    0 / -                        4 / T
CATA         T    4 / F                        4 / F
CSTA         T    4 / T                        4 / F
CATS         T    4 / F                        4 / T
CSTS         T    4 / T                        4 / T
===========  ===  ===========================  =====================

with N_CTX 16 and PG_TYPE lin. ``CLS_SAMPLE_RATE`` > 0 (CA/CS only; 0.1 on General-10) encodes,
per training step and task, the classes present in the batch plus that fraction of the others.

Choices on the spec's quirks (``/work/shared/specs/softcpt.md`` section 12), each with its switch:

1. Optimizer stepping: the original registers one SGD optimizer and scheduler under its k module
   folders (k = 3 for NA*, 4 with a trainable class context) and Dassl steps every name: k SGD
   steps per iteration with the same gradient, k scheduler steps per epoch (amp on CUDA: one
   optimizer step, still k scheduler steps). Default, as the paper's numbers were made so;
   ``SINGLE_STEP True``: one step per iteration and the plain cosine schedule.
2. Task-context length: M = 4 in the scripts (the README commands), ``TASK_N_CTX``; the table's
   counts (M = 8, "SoftCPT*") are not reproduced.
3. Task names: the original's ``task_name.txt`` when present, else ours in "<domain> image
   classification" style (``datasets/softcpt_mt.py``); a split file's meta wins.
4. Splits: made once as the original (CoOp procedures for General-10, 50/20/30 per class
   elsewhere, seeded by SEED); a ``split_dk_*.json`` (or the original's few-shot pickle) wins.
5. RS-8: unpublished, left out.
6. Per-task metric: the original's mixture (mean per-class accuracy on its ``mean_acc`` tasks);
   accuracy is printed and saved for every task too, ``results.py --accuracy`` tabulates it.
7. Linear probe: not built here.
8. Loss: the original's batch mean of each sample's own-task cross-entropy; ``TASK_MEAN_LOSS
   True`` averages per task first.
9. Sampler: the original's ``RandomSampler`` over the union with drop_last;
   ``DATALOADER.TRAIN_X.SAMPLER TaskBalancedSampler`` draws tasks equally often.
10. CoOp-CA/CS: one joint run (``MTCoOpHard TSC/CSC``) as the original; separate runs are the
    CoOp trainer per data set.
11. Evaluation: task-aware argmax, unweighted mean over tasks (no task-agnostic variant).
12. Precision: ``PREC fp16`` by default (the original's), ``fp32`` / ``amp``.
13. Class sampling: as the original, optional (``CLS_SAMPLE_RATE``, 0.1 in the General-10 CA/CS
    scripts, 0 elsewhere); unselected classes get the original's constant 1e-6 feature and are
    masked out of the loss.
14. Meta-network input: raw EOT features, no bias, class feature first (``PG_TYPE``).
15. Loading drops every class-name token buffer (also the per-task ``<i>.token_prefix`` /
    ``token_suffix`` the original keeps by mistake), so a checkpoint evaluates on other classes
    and task names; always on (the original's base-to-new numbers may differ).
16. Few-shot: sampled per task with SEED, cached per (task, K, seed, split file); the original's
    per-set pickles are read as they are.
17. Validation set: built (min(K, 4) per class), unused (``TEST.FINAL_MODEL last_step``).
18. Fashion-20: one data set per task (``Fashion20_t<i>``, so ``task<i>`` works), per-class
    stratified splits, descriptions rebuilt.
19. Evaluation encodes the class prompts once per evaluation; training encodes only the tasks
    present in a batch (same loss and gradients; ``benchmarks/bench_softcpt.py``).
20. Log lines kept exactly ("* overall_metric", "* task: i (name)", "* average", "Finished
    training"); output folders cleaned (no "_loss" suffix, no "outputd").

``MTCoOpHard`` (``TRAINER.MTCOOPH.*``): CoOp-MT (one context for all classes of all tasks),
CoOp-CA (``TSC True``: one context per task, trained jointly) and CoOp-CS (``CSC True``: one per
class), with one optimizer step per iteration as in the original.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip.errors import InvalidInputError
from trainers.base import PromptedCLIP, PromptTrainer
from trainers.coop import TextPromptedCLIP, check_input_size
from trainers.engine.config import CN
from trainers.engine.optim import build_lr_scheduler, build_optimizer
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.engine.trainer import Batch, StepOutput
from trainers.maple import check_maple_backbone
from trainers.prompts.meta import ClassPromptEncoder, GeneratedContextPrompts, MetaPromptLearner, TaskCoupledPrompts
from trainers.prompts.text import SharedPrefix, TextContextLearner

#: the original's module folders, in its registration order
SOFTCPT_FOLDERS = ("prompt_learner", "class_prompt_learner", "task_prompt_learner", "prompt_gen")


@config_hook
def add_softcpt_config(cfg) -> None:
    cfg.TRAINER.MTCOOP = CN()
    opts = cfg.TRAINER.MTCOOP
    opts.PREC = "fp16"
    opts.CLASS_N_CTX = 16
    opts.CLASS_CSC = False
    opts.CLASS_CTX_INIT = ""
    opts.CLASS_TOKEN_POSITION = "end"
    opts.TASK_N_CTX = 16
    opts.TASK_CTX_INIT = ""
    opts.TASK_CSC = False
    opts.TASK_TOKEN_POSITION = "end"
    opts.N_CTX = 16
    opts.CTX_INIT = ""
    opts.CSC = False
    opts.TOKEN_POSITION = "end"
    opts.PG_TYPE = ""
    opts.PG_RATIO = 1  # read by the original, used by nothing
    opts.CLS_SAMPLE_RATE = 0.0
    opts.FREEZE_CLS_PROMPT = 0
    opts.SINGLE_STEP = False  # ours: one optimizer step per iteration instead of the original's k
    opts.TASK_MEAN_LOSS = False  # ours: mean over the batch's tasks of each task's mean CE (original: batch mean)

    cfg.TRAINER.MTCOOPH = CN()
    hard = cfg.TRAINER.MTCOOPH
    hard.PREC = "fp16"
    hard.N_CTX = 16
    hard.CSC = False
    hard.CTX_INIT = ""
    hard.TOKEN_POSITION = "end"
    hard.TSC = False

    # SoftCPT's YAMLs set it; its evaluator prints per-task lines (the engine's evaluator always does).
    if "PER_TASK_RESULT" not in cfg.TEST:
        cfg.TEST.PER_TASK_RESULT = False


def default_task_name(name: str) -> str:
    """A data set name as task-name text: ``FGVCAircraft`` -> "fgvc aircraft image classification"."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name).replace("_", " ")
    return f"{' '.join(words.lower().split())} image classification"


class SoftCPTCLIP(PromptedCLIP):
    """CLIP whose class prompts come from a ``MetaPromptLearner`` (image side plain)."""

    def __init__(self, clip_model: nn.Module, meta_prompts: MetaPromptLearner) -> None:
        super().__init__(clip_model)
        self.meta_prompts = meta_prompts

    def encode_name_prompts(self, embeddings: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """The meta network's inputs: task-name (and class-name) prompts, encoded in full."""
        return self.clip.encode_text_embeddings(embeddings, eot_positions)

    def encode_class_prompts(self, builder: GeneratedContextPrompts, ctx: torch.Tensor,
                             classes: Optional[torch.Tensor] = None, deep_prompts=None) -> torch.Tensor:
        """A task's class prompts around its generated context; with ``MODEL.BACKBONE.SHARED_PREFIX``
        the start token + the task's context run once for all its classes (task-level contexts)."""
        shared = builder.shared_prefix(ctx, classes) if self.clip.shared_prefix else None
        eot = builder.eot_positions(classes)
        if shared is None:
            return self.clip.encode_text_embeddings(builder(ctx, classes), eot, deep_prompts=deep_prompts)
        return self.clip.encode_text_shared_prefix(shared.prefix, shared.suffix, eot, deep_prompts=deep_prompts)

    def class_encoder(self) -> ClassPromptEncoder:
        """Hook: how the generated class prompts are encoded (MTCoOpMaPLe adds deep prompts)."""
        return self.encode_class_prompts

    def class_text_features(self) -> torch.Tensor:
        return self.meta_prompts.all_class_features(self.encode_name_prompts, self.class_encoder())

    def text_features(self, tasks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All classes' features; with ``tasks``, only the tasks present are encoded (other rows
        are a constant filler whose logits the task mask removes)."""
        if self._text_cache is not None:
            return self._text_cache
        if tasks is None:
            return self.class_text_features()
        return self.meta_prompts.batch_class_features(self.encode_name_prompts, sorted(set(tasks.tolist())),
                                                      class_encode=self.class_encoder())

    def sampled_text_features(self, tasks: torch.Tensor, labels: torch.Tensor,
                              rate: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """(features [C, D], selected columns [C] bool): per present task, its classes labelled in
        the batch plus ceil(rate x the rest) drawn at random (``torch.randperm``, as the original)."""
        meta = self.meta_prompts
        present = sorted(set(tasks.tolist()))
        chosen: Dict[int, torch.Tensor] = {}
        selected = torch.zeros(sum(meta.num_classes), dtype=torch.bool, device=labels.device)
        for t in present:
            span = meta.task_slice(t)
            positive = torch.zeros(meta.num_classes[t], dtype=torch.bool)
            positive[(labels[tasks == t] - span.start).cpu()] = True
            negatives = torch.where(~positive)[0]
            negatives = negatives[torch.randperm(len(negatives))[:math.ceil(len(negatives) * rate)]]
            chosen[t] = torch.cat([torch.where(positive)[0], negatives]).to(labels.device)
            selected[span.start + chosen[t]] = True
        return meta.batch_class_features(self.encode_name_prompts, present, chosen, class_encode=self.class_encoder()), selected


@TRAINER_REGISTRY.register()
class MTCoOp(PromptTrainer):
    """SoftCPT: soft context sharing across tasks through a task-name-conditioned meta network."""

    config_node = "MTCOOP"
    checkpoint_name = "prompt_learner"
    original_stepping = True  # the original's k optimizer steps per iteration unless SINGLE_STEP

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        opts = cfg.TRAINER.MTCOOP
        if opts.CLS_SAMPLE_RATE > 0 and not opts.CSC:
            raise InvalidInputError("TRAINER.MTCOOP.CLS_SAMPLE_RATE samples per-class contexts, so it needs "
                             "TRAINER.MTCOOP.CSC True (the class-aware variants)")
        if not 0.0 <= opts.CLS_SAMPLE_RATE <= 1.0:
            raise InvalidInputError(f"TRAINER.MTCOOP.CLS_SAMPLE_RATE must lie in [0, 1], got {opts.CLS_SAMPLE_RATE}")

    def task_names(self) -> List[str]:
        """Each task's name text: the data set's ``task_name`` if it has one, else ``default_task_name``."""
        return [getattr(dataset, "task_name", "") or default_task_name(task.name)
                for task, dataset in zip(self.dm.tasks, self.dm.datasets)]

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        opts = self.cfg.TRAINER.MTCOOP
        check_input_size(self.cfg, clip_model)
        names = self.task_names()
        print(f"Task names: {names}")
        meta = MetaPromptLearner(
            clip_model, names, [task.classnames for task in self.dm.tasks], meta_net_type=opts.PG_TYPE,
            n_ctx=opts.N_CTX, ctx_init=opts.CTX_INIT, token_position=opts.TOKEN_POSITION,
            task_n_ctx=opts.TASK_N_CTX, task_ctx_init=opts.TASK_CTX_INIT, task_specific=opts.TASK_CSC,
            task_token_position=opts.TASK_TOKEN_POSITION, class_aware=opts.CSC, class_n_ctx=opts.CLASS_N_CTX,
            class_ctx_init=opts.CLASS_CTX_INIT, class_specific=opts.CLASS_CSC,
            class_token_position=opts.CLASS_TOKEN_POSITION)
        return SoftCPTCLIP(clip_model, meta)

    def trainable_modules(self) -> Dict[str, nn.Module]:
        """The original's folders in its order; the class context only in CA/CS runs and unless
        FREEZE_CLS_PROMPT. ``prompt_learner`` holds only frozen buffers, saved as the original does."""
        meta = self.model.meta_prompts
        modules = {}
        for folder in SOFTCPT_FOLDERS:
            if folder == "class_prompt_learner" and (not meta.class_aware or self.cfg.TRAINER.MTCOOP.FREEZE_CLS_PROMPT):
                continue
            modules[folder] = getattr(meta, folder)
        return modules

    def build_optimizers(self, modules: Mapping[str, nn.Module]) -> Dict[str, tuple]:
        """One optimizer and scheduler over every learned tensor, registered under each folder (the
        original: k steps per iteration and k scheduler steps per epoch), or under the first folder
        only with ``SINGLE_STEP``."""
        joint = nn.ModuleDict(dict(modules))
        groups = self.optimizer_param_groups("+".join(modules), joint)
        optim = build_optimizer([p for p in joint.parameters() if p.requires_grad], self.cfg.OPTIM,
                                param_groups=groups)
        sched = build_lr_scheduler(optim, self.cfg.OPTIM)
        names = list(modules)
        if self.cfg.TRAINER.MTCOOP.SINGLE_STEP or not self.original_stepping:
            return {name: (optim, sched) if i == 0 else (None, None) for i, name in enumerate(names)}
        if len(names) > 1:
            print(f"One optimizer registered under {len(names)} names ({', '.join(names)}): {len(names)} steps "
                  "per iteration, as the original (TRAINER.MTCOOP.SINGLE_STEP True for one)")
        return {name: (optim, sched) for name in names}

    def classification_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The original's batch mean of each sample's own-task cross-entropy (tasks weighted by their
        share of the batch), or with ``TASK_MEAN_LOSS`` the mean over the batch's tasks of each
        task's mean (every task present weighs the same)."""
        if not self.cfg.TRAINER.MTCOOP.TASK_MEAN_LOSS:
            return super().classification_loss(logits, batch)
        per_sample = F.cross_entropy(self.mask_other_tasks(logits, batch.tasks), batch.labels, reduction="none")
        present, which = torch.unique(batch.tasks, return_inverse=True)
        sums = torch.zeros(len(present), dtype=per_sample.dtype, device=per_sample.device).index_add(0, which, per_sample)
        return (sums / torch.bincount(which, minlength=len(present))).mean()

    def loss_terms(self, batch: Batch) -> StepOutput:
        """``ce`` over each sample's task; with class sampling, over its task's sampled classes."""
        rate = self.cfg.TRAINER.MTCOOP.CLS_SAMPLE_RATE
        if rate <= 0:
            return super().loss_terms(batch)
        image_features = self.model.image_features(batch.images)
        text_features, selected = self.model.sampled_text_features(batch.tasks, batch.labels, rate)
        logits = self.model.itm_logits(image_features, text_features).masked_fill(~selected, float("-inf"))
        return StepOutput(losses={"ce": self.classification_loss(logits, batch)}, logits=logits,
                          image_features=image_features, text_features=text_features)

    def learned_settings(self) -> str:
        opts = self.cfg.TRAINER.MTCOOP
        return (f"TRAINER.MTCOOP.N_CTX {opts.N_CTX}, CSC {opts.CSC}, CLASS_N_CTX {opts.CLASS_N_CTX}, "
                f"CLASS_CSC {opts.CLASS_CSC}, TASK_N_CTX {opts.TASK_N_CTX}, TASK_CSC {opts.TASK_CSC}, "
                f"PG_TYPE {opts.PG_TYPE}")


class SoftCPTCoupledCLIP(SoftCPTCLIP):
    """SoftCPT's generated task context as the first layer of MaPLe-style coupled prompts: the
    class prompts of task t start with its context and carry the deep text prompts; an image of
    task t gets ``proj`` of that context as first-layer vision prompts, then the deep ones."""

    def __init__(self, clip_model: nn.Module, meta_prompts: MetaPromptLearner, coupled: TaskCoupledPrompts) -> None:
        super().__init__(clip_model, meta_prompts)
        self.coupled_prompts = coupled

    def class_encoder(self) -> ClassPromptEncoder:
        return functools.partial(self.encode_class_prompts, deep_prompts=self.coupled_prompts.deep_text_prompts())

    def image_features(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image features with the vision prompts of each image's task (task 0 when not given)."""
        meta = self.meta_prompts
        contexts = meta.contexts(self.encode_name_prompts, range(meta.num_tasks))
        first = self.coupled_prompts.vision_prompts(torch.stack([contexts[t] for t in range(meta.num_tasks)]))
        rows = torch.zeros(len(images), dtype=torch.long, device=first.device) if tasks is None else tasks
        return self.clip.encode_image(images.type(self.dtype), prompts=first[rows],
                                      deep_prompts=self.coupled_prompts.deep_vision_prompts(),
                                      prompts_before_ln_pre=True)

    def encode(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.image_features(images, tasks), self.text_features(tasks)


@TRAINER_REGISTRY.register()
class MTCoOpMaPLe(MTCoOp):
    """Beyond the paper: SoftCPT's meta network driving MaPLe-style deep prompts in both encoders.

    ``TRAINER.MTCOOP.*`` configure the meta network (the task-level variants NATA/NATS: the class-
    aware ones give per-class contexts, which cannot prompt an image), ``N_CTX`` is the prompt
    length of every layer and ``TRAINER.MAPLE.PROMPT_DEPTH`` the prompted layers (ViT only).
    Checkpoints: SoftCPT's folders plus ``coupled_prompts/``; one optimizer step per iteration.
    """

    original_stepping = False

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        if cfg.TRAINER.MTCOOP.CSC:
            raise InvalidInputError("MTCoOpMaPLe prompts each image with its task's generated context, so it needs "
                                    "TRAINER.MTCOOP.CSC False (NATA/NATS); the class-aware variants make one per class")
        if cfg.TRAINER.MAPLE.PROMPT_DEPTH < 1:
            raise InvalidInputError(f"TRAINER.MAPLE.PROMPT_DEPTH must be >= 1, got {cfg.TRAINER.MAPLE.PROMPT_DEPTH}")

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        check_maple_backbone(self.cfg, clip_model)
        softcpt = super().build_custom_clip(clip_model)
        coupled = TaskCoupledPrompts(clip_model, self.cfg.TRAINER.MTCOOP.N_CTX, self.cfg.TRAINER.MAPLE.PROMPT_DEPTH)
        return SoftCPTCoupledCLIP(clip_model, softcpt.meta_prompts, coupled)

    def trainable_modules(self) -> Dict[str, nn.Module]:
        return {**super().trainable_modules(), "coupled_prompts": self.model.coupled_prompts}

    def learned_settings(self) -> str:
        return f"{super().learned_settings()}, TRAINER.MAPLE.PROMPT_DEPTH {self.cfg.TRAINER.MAPLE.PROMPT_DEPTH}"


class PerTaskContextLearner(nn.Module):
    """CoOp-CA's prompt learner: one CoOp learner per task (``learners.<i>.ctx``, the original's keys)."""

    def __init__(self, learners: List[TextContextLearner]) -> None:
        super().__init__()
        self.learners = nn.ModuleList(learners)

    @property
    def eot_positions(self) -> torch.Tensor:
        return torch.cat([learner.eot_positions for learner in self.learners])

    def forward(self) -> torch.Tensor:
        return torch.cat([learner() for learner in self.learners])

    def shared_prefix(self, ctx: None = None) -> Optional[SharedPrefix]:
        """One prefix per task (start token + its context), each task's classes continuing theirs;
        None when a task's prompts share nothing (class-specific context, class in front)."""
        fixed_words = min(learner.common_suffix_len for learner in self.learners)
        splits = [learner.shared_prefix(fixed_words=fixed_words) for learner in self.learners]
        if any(split is None for split in splits) or len({split.prefix.shape[1] for split in splits}) > 1:
            return None
        sizes = torch.tensor([split.suffix.shape[0] for split in splits], device=splits[0].prefix.device)
        return SharedPrefix(torch.cat([split.prefix for split in splits]), torch.cat([split.suffix for split in splits]),
                            torch.arange(len(splits), device=sizes.device).repeat_interleave(sizes))


@TRAINER_REGISTRY.register()
class MTCoOpHard(PromptTrainer):
    """Hard-sharing baselines: CoOp-MT (default), CoOp-CA (``TSC``), CoOp-CS (``CSC``), one joint run."""

    config_node = "MTCOOPH"
    checkpoint_name = "prompt_learner"

    def build_custom_clip(self, clip_model: nn.Module) -> PromptedCLIP:
        opts = self.cfg.TRAINER.MTCOOPH
        check_input_size(self.cfg, clip_model)

        def learner(classnames: List[str]) -> TextContextLearner:
            return TextContextLearner(clip_model, classnames, n_ctx=opts.N_CTX, ctx_init=opts.CTX_INIT,
                                      class_specific=opts.CSC, class_token_position=opts.TOKEN_POSITION)

        if opts.TSC:
            return TextPromptedCLIP(clip_model, PerTaskContextLearner([learner(t.classnames) for t in self.dm.tasks]))
        return TextPromptedCLIP(clip_model, learner(self.classnames))

    def learned_settings(self) -> str:
        opts = self.cfg.TRAINER.MTCOOPH
        return f"TRAINER.MTCOOPH.N_CTX {opts.N_CTX}, CSC {opts.CSC}, TSC {opts.TSC}"
