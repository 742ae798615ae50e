"""Optimisers and learning-rate schedules built from the ``OPTIM`` config node, as Dassl does.

The per-epoch learning rates are Dassl's, warm-up quirks included (spec engine-coop §5.3).
Two things differ on purpose: the warm-up wrapper runs on current PyTorch (Dassl passes a
positional ``verbose`` that PyTorch no longer accepts), and its state dict is plain data that
``load_state_dict`` copies into the live successor. Dassl pickled the successor together with a
copy of the optimizer, so after a resume the successor drove that copy and the real learning
rate froze; the pickle also cannot be read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import difflib
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR
from yacs.config import CfgNode as CN

from clip.errors import InvalidInputError

__all__ = ["OPTIMIZER_NAMES", "SCHEDULER_NAMES", "WARMUP_TYPES", "WarmupScheduler",
           "build_optimizer", "build_lr_scheduler"]

SCHEDULER_NAMES = ("single_step", "multi_step", "cosine")
WARMUP_TYPES = ("constant", "linear")


def _check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    """Reject a value outside ``choices``, naming the key, the choices and the closest one."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value).lower(), choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise InvalidInputError(f"{key} must be one of {', '.join(choices)}; got {value!r}.{hint}")


def _betas(cfg: CN) -> tuple[float, float]:
    return (cfg.ADAM_BETA1, cfg.ADAM_BETA2)


def _radam(params: Any, cfg: CN) -> Optimizer:
    """PyTorch's RAdam with decoupled weight decay, standing in for the RAdam Dassl bundles.

    Dassl's copy (from the RAdam authors) shrinks the weights by ``lr * weight_decay`` outside
    the moment estimates and falls back to bias-corrected momentum SGD while the variance term
    is not tractable; ``torch.optim.RAdam(decoupled_weight_decay=True)`` follows the same
    update rule, so fp32 parameters take the same steps. What remains different: Dassl switches
    to the rectified step at rho_t >= 5 where PyTorch needs rho_t > 5 (rho_t is never exactly 5
    for usual betas); Dassl keeps moments in fp32 for fp16 parameters whereas PyTorch keeps them
    in the parameter's dtype; and Dassl's version needs deprecated tensor-op overloads.
    """
    return torch.optim.RAdam(params, lr=cfg.LR, weight_decay=cfg.WEIGHT_DECAY, betas=_betas(cfg),
                             decoupled_weight_decay=True)


_OPTIMIZERS: dict[str, Callable[[Any, CN], Optimizer]] = {
    "adam": lambda params, cfg: torch.optim.Adam(
        params, lr=cfg.LR, weight_decay=cfg.WEIGHT_DECAY, betas=_betas(cfg)),
    "amsgrad": lambda params, cfg: torch.optim.Adam(
        params, lr=cfg.LR, weight_decay=cfg.WEIGHT_DECAY, betas=_betas(cfg), amsgrad=True),
    "sgd": lambda params, cfg: torch.optim.SGD(
        params, lr=cfg.LR, momentum=cfg.MOMENTUM, weight_decay=cfg.WEIGHT_DECAY,
        dampening=cfg.SGD_DAMPNING, nesterov=cfg.SGD_NESTEROV),
    "rmsprop": lambda params, cfg: torch.optim.RMSprop(
        params, lr=cfg.LR, momentum=cfg.MOMENTUM, weight_decay=cfg.WEIGHT_DECAY,
        alpha=cfg.RMSPROP_ALPHA),
    "radam": _radam,
    "adamw": lambda params, cfg: torch.optim.AdamW(
        params, lr=cfg.LR, weight_decay=cfg.WEIGHT_DECAY, betas=_betas(cfg)),
}
OPTIMIZER_NAMES = tuple(_OPTIMIZERS)


def _staged_param_groups(model: Any, cfg: CN) -> list[dict[str, Any]]:
    """STAGED_LR: children named in NEW_LAYERS train at LR, everything else at LR * BASE_LR_MULT.

    Names must equal direct child names (Dassl's rule), so a dotted name such as "head.fc"
    matches nothing; such names are reported with a warning rather than silently ignored.
    Parameters registered on the model itself belong to no child; Dassl leaves them out of the
    optimizer (they would never train), here they join the base group.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("OPTIM.STAGED_LR needs an nn.Module passed to build_optimizer() to split "
                        f"into layers; got {type(model).__name__}")
    new_layers = [cfg.NEW_LAYERS] if isinstance(cfg.NEW_LAYERS, str) else list(cfg.NEW_LAYERS)
    children = dict(model.named_children())
    unmatched = [name for name in new_layers if name not in children]
    if not new_layers:
        warnings.warn("OPTIM.STAGED_LR is set but OPTIM.NEW_LAYERS is empty: every layer trains "
                      "at OPTIM.LR * OPTIM.BASE_LR_MULT", stacklevel=3)
    elif unmatched:
        warnings.warn(f"OPTIM.NEW_LAYERS {unmatched} match no direct child of "
                      f"{type(model).__name__} (children: {', '.join(children)}); only exact "
                      "child names select layers trained at the full OPTIM.LR", stacklevel=3)
    base = list(model.parameters(recurse=False))
    new = []
    for name, child in children.items():
        (new if name in new_layers else base).extend(child.parameters())
    return [{"params": base, "lr": cfg.LR * cfg.BASE_LR_MULT}, {"params": new}]


def build_optimizer(model_or_params: nn.Module | Iterable[Any], optim_cfg: CN,
                    param_groups: Iterable[dict[str, Any]] | None = None) -> Optimizer:
    """Build the optimizer named by OPTIM.NAME with Dassl's choice of parameters.

    Explicit ``param_groups`` win (STAGED_LR is then ignored with a warning); else STAGED_LR
    splits a module's direct children into two groups; else every parameter of the module
    (frozen ones included, they are skipped at step time) or the given iterable is used.
    "radam" is PyTorch's RAdam, see ``_radam`` for how it relates to Dassl's.
    """
    _check_choice("OPTIM.NAME", optim_cfg.NAME, OPTIMIZER_NAMES)
    if param_groups is not None:
        if optim_cfg.STAGED_LR:
            warnings.warn("OPTIM.STAGED_LR is ignored because build_optimizer() got explicit "
                          "param_groups; set staged learning rates in those groups", stacklevel=2)
        params: Any = param_groups
    elif optim_cfg.STAGED_LR:
        params = _staged_param_groups(model_or_params, optim_cfg)
    elif isinstance(model_or_params, nn.Module):
        params = model_or_params.parameters()
    else:
        params = model_or_params
    return _OPTIMIZERS[optim_cfg.NAME](params, optim_cfg)


class WarmupScheduler(LRScheduler):
    """Dassl's warm-up in front of another scheduler (the successor) on the same optimizer.

    While ``last_epoch < warmup_epoch`` each step advances ``last_epoch`` and sets every group's
    lr to ``warmup_lr`` ("constant"), or to ``warmup_lr`` at 0 and ``base_lr * c / W`` after
    ("linear"). The step that reaches ``warmup_epoch`` restores the successor's last lrs, which
    are the base lrs; from then on ``last_epoch`` stays put and every step is the successor's,
    whose recursive PyTorch formulas continue from those base lrs.
    """

    _STATE_KEYS = ("warmup_epoch", "warmup_type", "warmup_lr", "base_lrs", "last_epoch",
                   "_step_count", "_last_lr")

    def __init__(self, optimizer: Optimizer, successor: LRScheduler, warmup_epoch: int,
                 warmup_type: str, warmup_lr: float) -> None:
        _check_choice("warmup_type", warmup_type, WARMUP_TYPES)
        if successor.optimizer is not optimizer:
            raise ValueError("the successor scheduler must drive the same optimizer as the warm-up")
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.warmup_type = warmup_type
        self.warmup_lr = warmup_lr
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.warmup_epoch:
            return list(self.successor.get_last_lr())
        if self.warmup_type == "constant" or self.last_epoch == 0:
            return [self.warmup_lr] * len(self.base_lrs)
        return [base_lr * self.last_epoch / self.warmup_epoch for base_lr in self.base_lrs]

    def step(self) -> None:  # type: ignore[override]  # no deprecated ``epoch`` argument
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = list(self.successor.get_last_lr())
        else:
            super().step()

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, strings and lists only, so ``torch.load(weights_only=True)`` reads it."""
        state = {key: getattr(self, key) for key in self._STATE_KEYS}
        state["successor"] = {key: dict(value) if isinstance(value, Counter) else value
                              for key, value in self.successor.state_dict().items()}
        return copy.deepcopy(state)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state from ``state_dict()`` or a Dassl checkpoint into the live schedulers.

        Dassl's state holds the successor as a pickled scheduler; it may arrive as that object
        or as a plain dict of its attributes, possibly with a stripped ``optimizer`` entry. Only
        the successor's values are taken, so it keeps driving the live optimizer. The groups'
        lrs are set to the restored ones because the successor's next step scales them.
        """
        if "successor" not in state_dict:
            raise KeyError("scheduler state has no 'successor' entry: it was saved without "
                           f"warm-up (keys {sorted(state_dict)}), but OPTIM.WARMUP_EPOCH > 0 now")
        state = dict(state_dict)
        successor = state.pop("successor")
        if not isinstance(successor, Mapping):
            successor = vars(successor)
        if "cons_lr" in state:  # Dassl named the warm-up lr after its two wrapper classes
            state["warmup_type"], state["warmup_lr"] = "constant", state["cons_lr"]
        elif "min_lr" in state:
            state["warmup_type"], state["warmup_lr"] = "linear", state["min_lr"]
        for key in self._STATE_KEYS:
            if key in state:
                setattr(self, key, copy.deepcopy(state[key]))
        live = vars(self.successor)
        values = {key: copy.deepcopy(value) for key, value in successor.items()
                  if key in live and key != "optimizer"}
        if "milestones" in values:
            values["milestones"] = Counter(values["milestones"])
        self.successor.load_state_dict(values)
        if len(self._last_lr) != len(self.optimizer.param_groups):
            raise ValueError(f"scheduler state has {len(self._last_lr)} learning rates but the "
                             f"optimizer has {len(self.optimizer.param_groups)} param groups")
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def _build_successor(optimizer: Optimizer, cfg: CN) -> LRScheduler:
    stepsize = cfg.STEPSIZE
    if cfg.LR_SCHEDULER == "single_step":
        if isinstance(stepsize, (list, tuple)):
            if not stepsize:
                raise InvalidInputError("OPTIM.STEPSIZE is empty; single_step needs a step size")
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int) or isinstance(stepsize, bool):
            raise TypeError("OPTIM.STEPSIZE for single_step must be an int (or a list ending in "
                            f"one); got {stepsize!r}")
        return StepLR(optimizer, step_size=stepsize if stepsize > 0 else cfg.MAX_EPOCH,
                      gamma=cfg.GAMMA)
    if cfg.LR_SCHEDULER == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError("OPTIM.STEPSIZE for multi_step must be a list of epochs; "
                            f"got {stepsize!r}")
        return MultiStepLR(optimizer, milestones=list(stepsize), gamma=cfg.GAMMA)
    return CosineAnnealingLR(optimizer, T_max=float(cfg.MAX_EPOCH), eta_min=0.0)


def build_lr_scheduler(optimizer: Optimizer, optim_cfg: CN) -> LRScheduler:
    """Build OPTIM.LR_SCHEDULER, wrapped in a warm-up when OPTIM.WARMUP_EPOCH > 0.

    The trainer steps it once per epoch. With WARMUP_RECOUNT False the successor starts counting
    at WARMUP_EPOCH, which rescales the recursive cosine rather than shifting it (Dassl's rule).
    Names are checked before the optimizer is touched.
    """
    _check_choice("OPTIM.LR_SCHEDULER", optim_cfg.LR_SCHEDULER, SCHEDULER_NAMES)
    warmup_epoch = optim_cfg.WARMUP_EPOCH
    if warmup_epoch > 0:
        _check_choice("OPTIM.WARMUP_TYPE", optim_cfg.WARMUP_TYPE, WARMUP_TYPES)
    scheduler = _build_successor(optimizer, optim_cfg)
    if warmup_epoch <= 0:
        return scheduler
    if not optim_cfg.WARMUP_RECOUNT:
        scheduler.last_epoch = warmup_epoch
    warmup_lr = (optim_cfg.WARMUP_CONS_LR if optim_cfg.WARMUP_TYPE == "constant"
                 else optim_cfg.WARMUP_MIN_LR)
    return WarmupScheduler(optimizer, scheduler, warmup_epoch, optim_cfg.WARMUP_TYPE, warmup_lr)
