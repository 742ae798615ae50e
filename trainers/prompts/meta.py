"""Soft context sharing (SoftCPT's prompt learner): a meta network turns task features into contexts.

Each task has a name ("fruits and vegetables image classification"). Its prompt
"[SOS] u_1..u_M <task name>. [EOS]" goes through CLIP's frozen text encoder; a linear map
without bias (the meta network, ``prompt_gen``) turns the task feature into L context vectors,
which then prefix that task's class names as in CoOp. The task context u is shared by all tasks
("TA") or per task ("TS"). In the class-aware variants ("CA"/"CS") every class also has a learned
class prompt "[SOS] v_1..v_K <class>. [EOS]" whose feature, concatenated before its task's
feature, gives the meta network a per-class input, hence per-class contexts.

The children keep the original's names and so its checkpoint keys: ``prompt_learner``
(one context-free prompt builder per task: ``<i>.token_prefix``/``<i>.token_suffix``),
``task_prompt_learner`` and ``class_prompt_learner`` (``ctx``, ``token_prefix``,
``token_suffix``) and ``prompt_gen`` (``proj`` [in_dim, L x width]).
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import clip
from clip.tokenizer import get_tokenizer
from trainers.prompts.coupled import MultiModalPromptLearner
from trainers.prompts.text import CLASS_TOKEN_POSITIONS, SharedPrefix, TextContextLearner, clean_classname, embed_tokens

#: the meta network's input: "lin" (all features), "linmean" (the mean of the class and task
#: halves), "lincls" (the class half only); the last two need class features (CSC)
META_NET_TYPES = ("lin", "linmean", "lincls")

#: ``encode(prompt embeddings [N, 77, W], EOT positions [N]) -> raw text features [N, D]``
TextEncoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``encode_class(task's prompt builder, context, task-local classes or None) -> raw text features``
ClassPromptEncoder = Callable[["GeneratedContextPrompts", torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def splice_context(prefix: torch.Tensor, ctx: torch.Tensor, suffix: torch.Tensor, name_lens: Sequence[int],
                   position: str) -> torch.Tensor:
    """[N, 77, W] prompt embeddings: SOS, the context [N, L, W] and the name, at ``position``
    ("end": context then name; "middle": the name between the two context halves; "front":
    name then context)."""
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1)
    half = ctx.shape[1] // 2
    rows = []
    for i, name_len in enumerate(name_lens):
        name, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
        ctx_i = ctx[i:i + 1]
        middle = [ctx_i[:, :half], name, ctx_i[:, half:]] if position == "middle" else [name, ctx_i]
        rows.append(torch.cat([prefix[i:i + 1], *middle, rest], dim=1))
    return torch.cat(rows, dim=0)


def named_context_learner(clip_model: nn.Module, names: Sequence[str], n_ctx: int, ctx_init: str = "",
                          per_name: bool = False, position: str = "end") -> TextContextLearner:
    """CoOp's learner over ``names`` (tasks or classes); with no context tokens its empty ``ctx``
    is a buffer, as in the original, so nothing without values is optimised."""
    learner = TextContextLearner(clip_model, names, n_ctx=n_ctx, ctx_init=ctx_init, class_specific=per_name,
                                 class_token_position=position)
    if learner.ctx.numel() == 0:
        empty = learner.ctx.data
        del learner.ctx
        learner.register_buffer("ctx", empty)
    return learner


class GeneratedContextPrompts(nn.Module):
    """One task's class prompts "X..X <class>." whose L context vectors come from outside.

    It owns only the frozen token embeddings around the context (``token_prefix``,
    ``token_suffix``), rebuilt from the current class names on every load.
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int, ctx_init: str = "",
                 position: str = "end") -> None:
        super().__init__()
        if position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}, got {position!r}")
        names = [clean_classname(c) for c in classnames]
        placeholder = ctx_init.replace("_", " ") if ctx_init else " ".join(["X"] * n_ctx)
        self.n_ctx = len(placeholder.split())
        if self.n_ctx != n_ctx:
            raise ValueError(f'CTX_INIT "{ctx_init}" has {self.n_ctx} words but the meta network generates '
                             f"N_CTX = {n_ctx} context vectors; make them equal (the original breaks here)")
        tokenizer = get_tokenizer()
        self.name_lens: List[int] = [len(tokenizer.encode(name)) for name in names]
        tokenized = clip.tokenize([f"{placeholder} {name}." for name in names])
        embedding = embed_tokens(clip_model, tokenized)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :])
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)
        self.position = position

    def eot_positions(self, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = self.tokenized_prompts if classes is None else self.tokenized_prompts[classes]
        return tokens.argmax(dim=-1)

    def forward(self, ctx: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prompts [n, 77, W] for all classes (or the task-local indices ``classes``) from a context
        shared by the task [L, W] or one per selected class [n, L, W]."""
        prefix, suffix, name_lens = self.token_prefix, self.token_suffix, self.name_lens
        if classes is not None:
            prefix, suffix = prefix[classes], suffix[classes]
            name_lens = [name_lens[int(i)] for i in classes]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(prefix.shape[0], -1, -1)
        return splice_context(prefix, ctx.type(prefix.dtype), suffix, name_lens, self.position)

    def shared_prefix(self, ctx: torch.Tensor, classes: Optional[torch.Tensor] = None) -> Optional[SharedPrefix]:
        """The prompts of ``forward`` split after start token + context, which all classes share
        when the context is the task's [L, W] and the class comes at the end; else None."""
        if ctx.dim() != 2 or self.position != "end":
            return None
        suffix = self.token_suffix if classes is None else self.token_suffix[classes]
        prefix = torch.cat([self.token_prefix[:1], ctx.type(self.token_prefix.dtype).unsqueeze(0)], dim=1)
        return SharedPrefix(prefix, suffix)


class MetaNet(nn.Module):
    """``prompt_gen``: features [N, in_dim] -> contexts [N, L, W] through ``proj`` (no bias, no
    activation, fp32, cast to the input's dtype), as the original's "PromptGen"."""

    def __init__(self, kind: str, feature_dim: int, class_aware: bool, n_ctx: int, ctx_dim: int) -> None:
        super().__init__()
        if kind not in META_NET_TYPES:
            raise ValueError(f"TRAINER.MTCOOP.PG_TYPE must be one of {META_NET_TYPES} (the original's scripts "
                             f"always pass lin), got {kind!r}")
        if kind != "lin" and not class_aware:
            raise ValueError(f"PG_TYPE {kind} combines class and task features, so it needs TRAINER.MTCOOP.CSC True")
        in_dim = 2 * feature_dim if kind == "lin" and class_aware else feature_dim
        self.proj = nn.Parameter(torch.zeros(in_dim, n_ctx * ctx_dim))
        nn.init.normal_(self.proj, std=0.02)
        self.kind, self.n_ctx, self.ctx_dim = kind, n_ctx, ctx_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "linmean":
            half = features.shape[-1] // 2
            features = (features[..., :half] + features[..., half:]) / 2.0
        elif self.kind == "lincls":
            features = features[..., :features.shape[-1] // 2]
        ctx = features @ self.proj.type(features.dtype)
        return ctx.reshape(features.shape[0], self.n_ctx, self.ctx_dim)


class MetaPromptLearner(nn.Module):
    """Task names (+ class prompts) -> frozen text encoder -> meta network -> per-task class prompts."""

    def __init__(self, clip_model: nn.Module, task_names: Sequence[str], classnames: Sequence[Sequence[str]], *,
                 meta_net_type: str, n_ctx: int = 16, ctx_init: str = "", token_position: str = "end",
                 task_n_ctx: int = 16, task_ctx_init: str = "", task_specific: bool = False,
                 task_token_position: str = "end", class_aware: bool = False, class_n_ctx: int = 16,
                 class_ctx_init: str = "", class_specific: bool = False, class_token_position: str = "end") -> None:
        super().__init__()
        if len(task_names) != len(classnames):
            raise ValueError(f"{len(task_names)} task names for {len(classnames)} tasks")
        # Built in the original's order, so a seeded run draws the same initial values.
        self.prompt_learner = nn.ModuleList([
            GeneratedContextPrompts(clip_model, names, n_ctx, ctx_init, token_position) for names in classnames])
        self.task_prompt_learner = named_context_learner(clip_model, task_names, task_n_ctx, task_ctx_init,
                                                         task_specific, task_token_position)
        self.class_aware = class_aware
        if class_aware:
            self.class_prompt_learner = named_context_learner(
                clip_model, [c for names in classnames for c in names], class_n_ctx, class_ctx_init,
                class_specific, class_token_position)
        ctx_dim = clip_model.ln_final.weight.shape[0]
        self.prompt_gen = MetaNet(meta_net_type, clip_model.text_projection.shape[1], class_aware, n_ctx, ctx_dim)
        self.num_classes = [len(names) for names in classnames]
        self.class_offsets = [sum(self.num_classes[:t]) for t in range(len(classnames))]
        self.dtype = clip_model.dtype

    @property
    def num_tasks(self) -> int:
        return len(self.num_classes)

    def task_slice(self, task: int) -> slice:
        return slice(self.class_offsets[task], self.class_offsets[task] + self.num_classes[task])

    def contexts(self, encode: TextEncoder, tasks: Sequence[int]) -> Dict[int, torch.Tensor]:
        """Generated context of each of ``tasks``: [L, W] for the task, or [C_t, L, W] per class (CSC)."""
        index = torch.as_tensor(list(tasks), device=self.task_prompt_learner.token_prefix.device)
        learner = self.task_prompt_learner
        task_features = encode(learner()[index], learner.eot_positions[index])
        if not self.class_aware:
            generated = self.prompt_gen(task_features.type(self.dtype))
            return {t: generated[i] for i, t in enumerate(tasks)}
        rows = torch.cat([torch.arange(self.task_slice(t).start, self.task_slice(t).stop) for t in tasks])
        rows = rows.to(index.device)
        class_learner = self.class_prompt_learner
        class_features = encode(class_learner()[rows], class_learner.eot_positions[rows])
        task_of_row = torch.cat([torch.full((self.num_classes[t],), i, dtype=torch.long) for i, t in enumerate(tasks)])
        inputs = torch.cat([class_features, task_features[task_of_row.to(index.device)]], dim=1)
        generated = torch.split(self.prompt_gen(inputs.type(self.dtype)), [self.num_classes[t] for t in tasks])
        return dict(zip(tasks, generated))

    def class_features(self, encode_class: ClassPromptEncoder, task: int, ctx: torch.Tensor,
                       classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw text features of task ``task``'s classes (or the task-local ``classes``) from its context."""
        if classes is not None and ctx.dim() == 3:
            ctx = ctx[classes]
        return encode_class(self.prompt_learner[task], ctx, classes)

    def all_class_features(self, encode: TextEncoder, class_encode: ClassPromptEncoder) -> torch.Tensor:
        """Raw text features of every class of every task [sum C_t, D], in task order (task and
        class-name prompts through ``encode``, the generated class prompts through ``class_encode``)."""
        contexts = self.contexts(encode, range(self.num_tasks))
        return torch.cat([self.class_features(class_encode, t, contexts[t]) for t in range(self.num_tasks)])

    def batch_class_features(self, encode: TextEncoder, tasks: Sequence[int],
                             selected: Optional[Dict[int, torch.Tensor]] = None,
                             filler: float = 1e-6, *, class_encode: ClassPromptEncoder) -> torch.Tensor:
        """[sum C_t, D] text features where only ``tasks`` (and, if given, only the ``selected``
        task-local classes of each) are encoded; every other row is the constant ``filler``, which
        the original also uses for unsampled classes (its logits are masked out of the loss)."""
        contexts = self.contexts(encode, tasks)
        pieces: List[Tuple[int, torch.Tensor, Optional[torch.Tensor]]] = []
        for t in tasks:
            classes = None if selected is None else selected[t]
            pieces.append((t, self.class_features(class_encode, t, contexts[t], classes), classes))
        dim, ref = pieces[0][1].shape[1], pieces[0][1]
        features = torch.full((sum(self.num_classes), dim), filler, dtype=ref.dtype, device=ref.device)
        for t, feats, classes in pieces:
            rows = torch.arange(self.task_slice(t).start, self.task_slice(t).stop, device=ref.device)
            features = features.index_copy(0, rows if classes is None else rows[classes], feats)
        return features


class TaskCoupledPrompts(nn.Module):
    """MaPLe's coupled deep prompts around a first-layer text context that comes from elsewhere
    (here SoftCPT's per-task generated context), so the meta network drives both encoders.

    ``proj`` maps a task's first-layer text context [L, D_t] to its first-layer vision prompts
    [L, W_v]; ``compound_prompts_text[k]`` [L, D_t] (shared by the tasks) fill the text slots at
    layer k + 1 and ``compound_prompt_projections[k]`` their vision slots, as in MaPLe (same
    attribute names, ``depth - 1`` compound prompts, one shared initial projection).
    """

    def __init__(self, clip_model: nn.Module, n_ctx: int, depth: int) -> None:
        super().__init__()
        text_width = clip_model.ln_final.weight.shape[0]
        vision_width = clip_model.visual.transformer.width
        self.proj = nn.Linear(text_width, vision_width).to(clip_model.dtype)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(n_ctx, text_width)) for _ in range(depth - 1)])
        for prompt in self.compound_prompts_text:
            nn.init.normal_(prompt, std=0.02)
        shared_init = nn.Linear(text_width, vision_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(shared_init) for _ in range(depth - 1)])

    # The deep lists are exactly MaPLe's (None at block 0, then the compound prompts).
    deep_text_prompts = MultiModalPromptLearner.deep_text_prompts
    deep_vision_prompts = MultiModalPromptLearner.deep_vision_prompts

    def vision_prompts(self, ctx: torch.Tensor) -> torch.Tensor:
        """First-layer vision prompts [..., L, W_v] of first-layer text contexts [..., L, D_t]."""
        return self.proj(ctx.type(self.proj.weight.dtype))
