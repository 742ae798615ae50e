"""DePT (Zhang et al., CVPR 2024): decoupled prompt tuning with a CAT head, around any prompt trainer.

``dept(Trainer)`` returns the DePT version of a registered ``PromptTrainer``: the trainer's own
``PromptedCLIP`` plus a Channel Adjusted Transfer head (``trainers/heads.py``). Every trainer
gets it by name, also ones registered later: ``ExtrasLinearProbe<Name>`` (DePT's class names,
e.g. ``ExtrasLinearProbeCoOp``) or ``DePT<Name>``. DePT only talks to the wrapped model through
the ``PromptedCLIP`` protocol (``encode``, ``itm_logits``, ``cached_text_features``) and the
wrapped trainer through the loss protocol (``loss_terms`` returns named terms and the features).

Training (base model): the wrapped trainer's loss terms with its ``ce`` (the ITM cross-entropy)
weighted by (1 - w), plus ``cat`` = w CE(CAT); other terms (KgCoOp's ``kg``) stay as they are.
In multi-task runs the CAT classifier spans all tasks' classes and each sample's CAT logits are
restricted to its task, like the ITM logits. Inference: fused ITM/CAT output on base models, ITM
alone on new ones. The training log's ``acc`` is that of the fused output (DePT logs the loss
only). Keys are DePT's (``TRAINER.LINEAR_PROBE.*``, ``TRAINER.FILM.*``,
``TRAINER.NAMES_TO_UPDATE``, ``OPTIM.LR_EXP``) plus three explicit choices the original hard-codes:

* ``TRAINER.LINEAR_PROBE.ROUTE`` "auto" | "base" | "new": which head a run uses. "auto" is DePT's
  guess: base iff SUBSAMPLE_CLASSES is base, or all with "ImageNet" in DATASET.NAME (so the
  ImageNet variants of domain generalisation are evaluated with the CAT head, other cross-data
  set targets without). Training needs a base route.
* ``TRAINER.LINEAR_PROBE.FUSION`` "logits" (DePT's code) | "probs" (paper Eq. 8).
* ``TRAINER.FILM.INIT`` "identity" (DePT's code: scale 1, shift 0) | "random" (the paper's
  wording; normal around the identity, std 0.02).

Trainable: what the wrapped trainer trains, plus every parameter whose DePT (whole-model) name
contains a ``TRAINER.NAMES_TO_UPDATE`` substring (default: the CAT head and ``prompt_learner``);
DePT uses the substrings alone, which would freeze a later trainer's differently named prompts.

Optimizer: two groups under one schedule, the prompts at OPTIM.LR and the CAT head at
OPTIM.LR x OPTIM.LR_EXP (6.5). DePT gets there by changing Dassl defaults globally (STAGED_LR
True, NEW_LAYERS [linear_probe, film], BASE_LR_MULT 1.0); here the DePT trainers build the two
groups themselves and do not read those keys, so other trainers keep Dassl's defaults. DePT's
CHECKPOINT_FREQ -1 needs no change: this engine saves only the last epoch for 0 as well.

Checkpoints hold what is learned, under DePT's whole-model keys (``prompt_learner.*``,
``film_lp_img.scale``, ``linear_probe_proj.weight`` [C_base, D], ...), in ``PromptLearner/``
(``MultiModalPromptLearner/`` around MaPLe). Original DePT files, which also hold the frozen CLIP
(``image_encoder.*``, ``text_encoder.*``), load: entries this model does not have are skipped
and listed. ``--load-epoch -1`` (DePT's launcher) loads the latest epoch, as for every trainer.
"""
from __future__ import annotations

import os
from typing import ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip.errors import InvalidInputError
from datasets.imagenet import read_classnames, sorted_subfolders
from trainers.base import PromptedCLIP, PromptTrainer
from trainers.engine.config import CN
from trainers.engine.registry import TRAINER_REGISTRY, config_hook
from trainers.engine.trainer import Batch, StepOutput
from trainers.heads import CAT_TYPES, CWT_INITS, FUSION_SPACES, CATHead, fuse

ROUTES = ("auto", "base", "new")
#: registry name prefixes that wrap a trainer: DePT's class names first, then the short form
WRAPPER_PREFIXES = ("ExtrasLinearProbe", "DePT")
#: DePT's registered module names where they differ from the wrapped trainer's
CHECKPOINT_NAMES = {"prompt_learner": "PromptLearner"}
CLASSIFIER_KEYS = ("linear_probe_proj.weight", "linear_probe_proj.bias")


@config_hook
def add_dept_config(cfg) -> None:
    cfg.TRAINER.LINEAR_PROBE = CN()
    cfg.TRAINER.LINEAR_PROBE.TYPE = "linear"  # "linear" (CAT) or "similarity" (paper variant v2)
    cfg.TRAINER.LINEAR_PROBE.WEIGHT = 0.7  # lambda: loss mix and test-time fusion
    cfg.TRAINER.LINEAR_PROBE.TEST_TIME_FUSION = True  # False: base models output the CAT logits alone
    cfg.TRAINER.LINEAR_PROBE.ROUTE = "auto"
    cfg.TRAINER.LINEAR_PROBE.FUSION = "logits"
    cfg.TRAINER.FILM = CN()
    cfg.TRAINER.FILM.LINEAR_PROBE = True  # build the two cwT layers
    cfg.TRAINER.FILM.INIT = "identity"
    cfg.TRAINER.NAMES_TO_UPDATE = ["prompt_learner", "linear_probe", "film"]
    cfg.OPTIM.LR_EXP = 6.5


def routes_to_base(cfg) -> bool:
    """Whether a run builds and uses the CAT classifier (see ``TRAINER.LINEAR_PROBE.ROUTE``)."""
    route = cfg.TRAINER.LINEAR_PROBE.ROUTE
    if route == "auto":
        subsample = cfg.DATASET.SUBSAMPLE_CLASSES
        return subsample == "base" or (subsample == "all" and "ImageNet" in cfg.DATASET.NAME)
    return route == "base"


class DePTCLIP(nn.Module):
    """A ``PromptedCLIP`` (``baseline``) beside a CAT head (``head``); same protocol, fused output.

    Parameter names are the baseline's under ``baseline.`` and the head's under ``head.``; no
    other parameter is added. Other attributes are the baseline's (``prompt_learner``, KgCoOp's
    anchors, ...), so the wrapped trainer's code reads its own model's members unchanged.
    """

    def __init__(self, baseline: PromptedCLIP, head: CATHead, base_route: bool, weight: float,
                 test_time_fusion: bool = True, fusion: str = "logits") -> None:
        super().__init__()
        self.baseline = baseline
        self.head = head
        self.base_route = base_route
        self.weight = weight
        self.test_time_fusion = test_time_fusion
        self.fusion = fusion

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("baseline"), name)

    def encode(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.baseline.encode(images, tasks)

    def itm_logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.baseline.itm_logits(image_features, text_features)

    def cached_text_features(self) -> ContextManager[None]:
        return self.baseline.cached_text_features()

    def deployed_logits(self, itm_logits: torch.Tensor, cat_logits: torch.Tensor) -> torch.Tensor:
        """What a base model outputs: fused ITM/CAT, or CAT alone without test-time fusion."""
        if not self.test_time_fusion:
            return cat_logits
        return fuse(itm_logits, cat_logits, self.weight, self.fusion)

    def forward(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> torch.Tensor:
        image_features, text_features = self.encode(images, tasks)
        itm_logits = self.itm_logits(image_features, text_features)
        if not self.base_route:
            return itm_logits
        cat_logits = self.head.inference_logits(image_features, text_features, self.itm_logits)
        return self.deployed_logits(itm_logits, cat_logits)


def imagenet_variant_rows(dataset, num_rows: int) -> Optional[List[int]]:
    """Rows of a ``num_rows``-class ImageNet classifier for each class of an ImageNet subset (A, R).

    The subset's labels follow its sorted wnid folders; ImageNet's follow the sorted wnids of
    ``classnames.txt``. DePT masks the rows in ``classnames.txt`` order, the same for the sorted
    file everyone uses. None when the data set is no such subset.
    """
    dataset_dir, image_dir = getattr(dataset, "dataset_dir", None), getattr(dataset, "image_dir", None)
    if not dataset_dir or not image_dir or not os.path.isfile(os.path.join(dataset_dir, "classnames.txt")):
        return None
    source = {wnid: i for i, wnid in enumerate(sorted(read_classnames(os.path.join(dataset_dir, "classnames.txt"))))}
    target = sorted_subfolders(image_dir)
    if len(source) != num_rows or not all(wnid in source for wnid in target):
        return None
    return [source[wnid] for wnid in target]


def _grouped(keys: Sequence[str]) -> str:
    """``image_encoder.* (152), logit_scale``: checkpoint keys summarised by their first component."""
    counts: Dict[str, int] = {}
    for key in keys:
        group = key.split(".")[0] + (".*" if "." in key else "")
        counts[group] = counts.get(group, 0) + 1
    return ", ".join(f"{name} ({n})" if n > 1 else name for name, n in counts.items())


class DePTTrainer(PromptTrainer):
    """DePT's training and inference on top of ``baseline_trainer`` (set by ``dept``)."""

    baseline_trainer: type = PromptTrainer

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        lp, film = cfg.TRAINER.LINEAR_PROBE, cfg.TRAINER.FILM
        for key, value, choices in (("LINEAR_PROBE.TYPE", lp.TYPE, CAT_TYPES), ("LINEAR_PROBE.ROUTE", lp.ROUTE, ROUTES),
                                    ("LINEAR_PROBE.FUSION", lp.FUSION, FUSION_SPACES),
                                    ("FILM.INIT", film.INIT, CWT_INITS)):
            if value not in choices:
                raise InvalidInputError(f"TRAINER.{key} must be one of {choices}, got {value!r}")
        if not 0.0 <= lp.WEIGHT <= 1.0:
            raise InvalidInputError(f"TRAINER.LINEAR_PROBE.WEIGHT must lie in [0, 1], got {lp.WEIGHT}")

    # ----- model --------------------------------------------------------------------------
    def build_custom_clip(self, clip_model: nn.Module) -> DePTCLIP:
        cfg = self.cfg
        baseline = super().build_custom_clip(clip_model)
        lp, film = cfg.TRAINER.LINEAR_PROBE, cfg.TRAINER.FILM
        base = routes_to_base(cfg)
        print(f"DePT head: {'base (ITM + CAT)' if base else 'new (ITM only)'} (TRAINER.LINEAR_PROBE.ROUTE {lp.ROUTE}, "
              f"SUBSAMPLE_CLASSES {cfg.DATASET.SUBSAMPLE_CLASSES}, DATASET.NAME {cfg.DATASET.NAME})")
        head = CATHead(clip_model.text_projection.shape[1], self.dm.num_classes if base else None, clip_model.dtype,
                       kind=lp.TYPE, use_cwt=film.LINEAR_PROBE, cwt_init=film.INIT)
        return DePTCLIP(baseline, head, base, lp.WEIGHT, lp.TEST_TIME_FUSION, lp.FUSION)

    def trainable_modules(self) -> Dict[str, nn.Module]:
        """One folder under DePT's whole-model names (``prompt_learner.ctx``, ``film_lp_img.scale``,
        ...): the baseline's children that the wrapped trainer trains, plus the CAT modules whose
        names contain a ``TRAINER.NAMES_TO_UPDATE`` substring (all of them by default)."""
        learned = {id(p) for module in super().trainable_modules().values() for p in module.parameters()}
        module = nn.Module()
        for name, child in self.model.baseline.named_children():
            if any(id(p) in learned for p in child.parameters()):
                module.add_module(name, child)
        for name, param in self.model.baseline.named_parameters(recurse=False):
            if id(param) in learned:
                module.register_parameter(name, param)
        for name, child in self.model.head.named_children():
            if any(part in name for part in self.cfg.TRAINER.NAMES_TO_UPDATE):
                module.add_module(name, child)
        return {self.checkpoint_name: module}

    def optimizer_param_groups(self, name: str, module: nn.Module) -> List[dict]:
        """Prompts at OPTIM.LR, the CAT head at OPTIM.LR x OPTIM.LR_EXP (one schedule for both)."""
        optim = self.cfg.OPTIM
        cat_ids = {id(p) for p in self.model.head.parameters()}
        cat = [p for p in module.parameters() if id(p) in cat_ids]
        prompts = [p for p in module.parameters() if id(p) not in cat_ids]
        groups = []
        if prompts:
            groups.append({"params": prompts})
        if cat:
            groups.append({"params": cat, "lr": optim.LR * optim.LR_EXP})
        if not groups:
            raise InvalidInputError("DePT found no trainable parameters (check TRAINER.NAMES_TO_UPDATE)")
        print(f"Learning rates: prompts {optim.LR:g} ({len(prompts)} tensors), "
              f"CAT head {optim.LR * optim.LR_EXP:g} ({len(cat)} tensors)")
        return groups

    # ----- training ---------------------------------------------------------------------------
    def loss_terms(self, batch: Batch) -> StepOutput:
        """The wrapped trainer's terms with ``ce`` x (1 - w), plus ``cat`` = w CE(CAT head).

        The CAT rows are [each sample's label text feature; its image feature] with the labels
        twice (``CATHead.training_logits``), each restricted to the sample's task.
        """
        model = self.model
        if not model.base_route:
            raise InvalidInputError(
                f"DePT trains the CAT classifier on base classes only, but this run routes to the new-class head "
                f"(TRAINER.LINEAR_PROBE.ROUTE {self.cfg.TRAINER.LINEAR_PROBE.ROUTE}, SUBSAMPLE_CLASSES "
                f"{self.cfg.DATASET.SUBSAMPLE_CLASSES}, DATASET.NAME {self.cfg.DATASET.NAME}); "
                "set TRAINER.LINEAR_PROBE.ROUTE base to train it")
        output = super().loss_terms(batch)
        cat_logits, cat_labels = model.head.training_logits(output.image_features, output.text_features,
                                                            batch.labels, model.itm_logits)
        cat_tasks = batch.tasks.repeat(cat_logits.shape[0] // batch.tasks.numel())
        output.losses["ce"] = (1 - model.weight) * output.losses["ce"]
        output.losses["cat"] = model.weight * F.cross_entropy(self.mask_other_tasks(cat_logits, cat_tasks),
                                                              cat_labels)
        output.logits = model.deployed_logits(output.logits, cat_logits[-batch.labels.numel():])
        return output

    # ----- checkpoints ----------------------------------------------------------------------
    def adapt_loaded_state_dict(self, name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The wrapped trainer's rules, then: skip what this model lacks (an original file's frozen
        CLIP, the classifier on new classes) and keep the classifier rows of an ImageNet subset."""
        state_dict = super().adapt_loaded_state_dict(name, state_dict)
        own = self._models[name].state_dict()
        skipped = [k for k in state_dict if k not in own]
        classifier = [k for k in skipped if k in CLASSIFIER_KEYS]
        if classifier:
            print("Skipping the base-class classifier of the checkpoint: this model routes to the new-class "
                  "head (ITM only)")
        others = [k for k in skipped if k not in CLASSIFIER_KEYS]
        if others:
            print(f"Skipping checkpoint entries this model does not have: {_grouped(others)} "
                  "(an original DePT file's frozen CLIP; the CLIP weights come from MODEL.BACKBONE)")
        state_dict = {k: v for k, v in state_dict.items() if k in own}
        weight_key, bias_key = CLASSIFIER_KEYS
        if weight_key in state_dict and state_dict[weight_key].shape[0] != own[weight_key].shape[0]:
            rows = imagenet_variant_rows(self.dm.dataset, state_dict[weight_key].shape[0])
            if rows is not None:
                print(f"Keeping the {len(rows)} of {state_dict[weight_key].shape[0]} classifier rows that are "
                      f"classes of {self.cfg.DATASET.NAME} (matched by wnid via classnames.txt)")
                for key in (weight_key, bias_key):
                    state_dict[key] = state_dict[key][rows]
        return state_dict


_WRAPPERS: Dict[type, type] = {}


def _unwrappable_reason(trainer: object) -> Optional[str]:
    if not (isinstance(trainer, type) and issubclass(trainer, PromptTrainer)):
        return "it is not a PromptTrainer"
    if issubclass(trainer, DePTTrainer):
        return "it already is a DePT trainer"
    if trainer.build_model is not PromptTrainer.build_model:
        return "it builds its model without PromptTrainer.build_model's hooks"
    return None


def dept(trainer: type) -> type:
    """The DePT trainer class around ``trainer`` (one class per wrapped trainer)."""
    if trainer not in _WRAPPERS:
        reason = _unwrappable_reason(trainer)
        if reason is not None:
            raise TypeError(f"DePT cannot wrap {getattr(trainer, '__name__', trainer)!r}: {reason}")
        name = WRAPPER_PREFIXES[0] + trainer.__name__
        _WRAPPERS[trainer] = type(name, (DePTTrainer, trainer), {
            "__module__": __name__, "__qualname__": name, "baseline_trainer": trainer,
            "checkpoint_name": CHECKPOINT_NAMES.get(trainer.checkpoint_name, trainer.checkpoint_name),
            "__doc__": f"DePT (CAT head, decoupled base/new inference) around {trainer.__name__}.",
        })
    return _WRAPPERS[trainer]


def _resolve(name: str) -> Optional[type]:
    """``ExtrasLinearProbe<Trainer>`` / ``DePT<Trainer>`` -> the DePT version of a registered trainer."""
    for prefix in WRAPPER_PREFIXES:
        inner = name[len(prefix):]
        if name.startswith(prefix) and inner and inner in TRAINER_REGISTRY:
            trainer = TRAINER_REGISTRY.get(inner)
            reason = _unwrappable_reason(trainer)
            if reason is not None:
                raise KeyError(f'Trainer "{name}" would be DePT around "{inner}", but {reason}')
            return dept(trainer)
    return None


def _wrapper_names() -> List[str]:
    return [prefix + name for name, trainer in TRAINER_REGISTRY.items() if _unwrappable_reason(trainer) is None
            for prefix in WRAPPER_PREFIXES]


TRAINER_REGISTRY.add_resolver(_resolve, _wrapper_names)
