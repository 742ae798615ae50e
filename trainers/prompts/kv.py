"""Key/value-only deep prompts with binary keep-masks, their importance scores, and the pruning
schedule that shrinks them to a token budget (Adapt, spec ``adapt-vpt.md`` §2-§3).

A ``KVPromptBank`` holds up to ``max_tokens`` vectors per layer of one encoder. The kept vectors
of layer l go to CLIP's ``kv_prompts[l]`` hook, which passes them through the block's frozen
``ln_1`` and K/V projections; a pruned vector is *removed* (gathered out), never zeroed, so it
adds no key and no value, and a layer with nothing kept is the frozen block exactly.

``PruningSchedule`` is the controller of Algorithm 1 with the spec's defaults filled in: no
scoring during the warmup epochs, scores summed over ``window`` minibatches, then the ``rate``
lowest-scored kept tokens over *all* branches are pruned (never below ``target``), ties broken
by branch order, layer, slot.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

#: per-token importance criteria (spec §3.1): Snip = sum_k |g_k p_k|, ||g||_2, ||p||_2
SCORES = ("snip", "grad_norm", "l2")
#: cross-branch comparability of scores: raw (literal Alg. 1) or divided by the branch width
SCORE_NORMALIZATIONS = ("none", "width")

#: (branch, layer, slot) of one prompt token
Slot = Tuple[str, int, int]


class KVPromptBank(nn.Module):
    """``prompts`` [layers, max_tokens, width] (learned) and ``mask`` [layers, max_tokens] (kept
    tokens; a buffer, so it is checkpointed with the prompts and restored for evaluation)."""

    def __init__(self, layers: int, max_tokens: int, width: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(layers, max_tokens, width))
        nn.init.normal_(self.prompts, std=init_std)
        self.register_buffer("mask", torch.ones(layers, max_tokens, dtype=torch.bool))

    @property
    def width(self) -> int:
        return self.prompts.shape[-1]

    def layer_prompts(self) -> List[Optional[torch.Tensor]]:
        """Per layer the kept vectors [n_l, width] (autograd reaches only those rows), None if n_l = 0."""
        kept = self.kept_per_layer()
        return [self.prompts[layer][self.mask[layer]] if n else None for layer, n in enumerate(kept)]

    def kept_per_layer(self) -> List[int]:
        return [int(n) for n in self.mask.sum(dim=1).tolist()]

    def kept_total(self) -> int:
        return int(self.mask.sum())

    @torch.no_grad()
    def prune(self, slots: List[Tuple[int, int]]) -> None:
        """Drop (layer, slot) tokens for good and zero their vectors, so saved weights are clean."""
        for layer, slot in slots:
            self.mask[layer, slot] = False
            self.prompts[layer, slot] = 0.0


def token_scores(bank: KVPromptBank, criterion: str, normalization: str = "none") -> torch.Tensor:
    """Importance of every token of ``bank`` [layers, max_tokens] from the current gradient
    (before the optimizer steps, so ``p`` is the value the forward pass used); 0 where pruned."""
    if criterion not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {criterion!r}")
    if normalization not in SCORE_NORMALIZATIONS:
        raise ValueError(f"score normalization must be one of {SCORE_NORMALIZATIONS}, got {normalization!r}")
    p = bank.prompts.detach().float()
    g = bank.prompts.grad.detach().float() if bank.prompts.grad is not None else torch.zeros_like(p)
    if criterion == "snip":
        scores = (g * p).abs().sum(dim=-1)
    elif criterion == "grad_norm":
        scores = g.norm(dim=-1)
    else:
        scores = p.norm(dim=-1)
    if normalization == "width":
        scores = scores / bank.width
    return scores * bank.mask


def kept_total(masks: Mapping[str, torch.Tensor]) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


class PruningSchedule:
    """When and which tokens to prune (Algorithm 1; spec §3.2 and §12 items 6-11).

    The trainer calls ``observe`` after every backward pass while ``active`` (past the warmup
    and above the target), then ``to_prune`` after the optimizer step. Branch order in the
    masks' mapping is the tie-break order (image first in Adapt).
    """

    def __init__(self, target: int, window: int, rate: int, warmup_epochs: int, deadline_epoch: int = 0) -> None:
        if target < 0 or window < 1 or rate < 1 or warmup_epochs < 0:
            raise ValueError(f"pruning needs T_target >= 0, N_K >= 1, R_P >= 1, WARMUP_EPOCHS >= 0; got "
                             f"{target}, {window}, {rate}, {warmup_epochs}")
        if deadline_epoch and deadline_epoch <= warmup_epochs:
            raise ValueError(f"the prune deadline epoch {deadline_epoch} must come after the {warmup_epochs} "
                             "warmup epochs (scores are only collected after them), or be 0 (off)")
        self.target, self.window, self.rate = target, window, rate
        self.warmup_epochs, self.deadline_epoch = warmup_epochs, deadline_epoch
        self.accumulated: Dict[str, torch.Tensor] = {}
        self.count = 0

    def active(self, epoch: int, masks: Mapping[str, torch.Tensor]) -> bool:
        """Whether this step's scores count: ``epoch`` (0-based) is past the warmup, target not reached."""
        return epoch >= self.warmup_epochs and kept_total(masks) > self.target

    def observe(self, scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
        """Add one minibatch's scores of the kept tokens (float64, so sums do not depend on batching)."""
        for branch, mask in masks.items():
            step = scores[branch].detach().double().cpu() * mask.cpu()
            total = self.accumulated.get(branch)
            self.accumulated[branch] = step if total is None else total + step
        self.count += 1

    def to_prune(self, masks: Mapping[str, torch.Tensor], epoch: int, end_of_epoch: bool) -> List[Slot]:
        """The tokens to prune now (empty most steps); resets the window when it returns any.

        Every ``window`` observed minibatches: min(rate, kept - target) tokens. At the end of the
        deadline epoch (1-based; 0 = off): every token above the target, by the window so far.
        """
        if self.count == 0:
            return []
        excess = kept_total(masks) - self.target
        at_deadline = bool(self.deadline_epoch) and end_of_epoch and epoch + 1 >= self.deadline_epoch
        if excess <= 0:
            self.reset()
            return []
        if at_deadline:
            k = excess
        elif self.count >= self.window:
            k = min(self.rate, excess)
        else:
            return []
        chosen = self.lowest(masks, k)
        self.reset()
        return chosen

    def lowest(self, masks: Mapping[str, torch.Tensor], k: int) -> List[Slot]:
        """The ``k`` kept tokens with the smallest accumulated scores; stable order on ties."""
        candidates: List[Slot] = []
        values: List[torch.Tensor] = []
        for branch, mask in masks.items():
            kept = mask.cpu().nonzero().tolist()
            candidates += [(branch, layer, slot) for layer, slot in kept]
            scores = self.accumulated.get(branch, torch.zeros(mask.shape, dtype=torch.float64))
            values.append(scores[mask.cpu()])
        order = torch.sort(torch.cat(values), stable=True).indices[:k].tolist()
        return [candidates[i] for i in order]

    def reset(self) -> None:
        self.accumulated = {}
        self.count = 0

    def state_dict(self) -> dict:
        return {"accumulated": {b: s.clone() for b, s in self.accumulated.items()}, "count": self.count}

    def load_state_dict(self, state: Mapping) -> None:
        self.accumulated = {b: s.clone().double() for b, s in state["accumulated"].items()}
        self.count = int(state["count"])
