"""Learnable text context (CoOp's prompt learner), reused by CoCoOp, KgCoOp and MaPLe.

Class prompts are "<ctx_1> ... <ctx_M> <classname>." tokenised once; the frozen token
embeddings around the context are kept as buffers (``token_prefix`` = SOS,
``token_suffix`` = name, period, EOT, padding) under CoOp's checkpoint key names.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import clip
from clip.tokenizer import get_tokenizer

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


class SharedPrefix(NamedTuple):
    """Class prompts split for ``CLIP.encode_text_shared_prefix``: ``prefix`` [G, P, D] (the leading
    embeddings a group of rows shares), ``suffix`` [N, S, D] (each row's rest) and, for G > 1,
    ``group_index`` [N] (the prefix each row continues)."""

    prefix: torch.Tensor
    suffix: torch.Tensor
    group_index: Optional[torch.Tensor] = None


def clean_classname(name: str) -> str:
    return name.replace("_", " ")


def embed_tokens(clip_model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """Frozen token embeddings in CLIP's dtype (no autograd: they are constants)."""
    with torch.no_grad():
        return clip_model.token_embedding(token_ids).type(clip_model.dtype)


def init_context(clip_model: nn.Module, n_ctx: int, ctx_init: str = "", n_cls: Optional[int] = None,
                 std: float = 0.02) -> "tuple[torch.Tensor, str]":
    """Initial context vectors and the placeholder text they stand in for.

    With ``ctx_init`` the vectors are the embeddings of its words (one token per word assumed,
    as CoOp does); otherwise normal(0, std) in CLIP's dtype, class-specific when ``n_cls`` is given.
    """
    ctx_dim = clip_model.ln_final.weight.shape[0]
    if ctx_init:
        ctx_init = ctx_init.replace("_", " ")
        n_words = len(ctx_init.split(" "))
        embedding = embed_tokens(clip_model, clip.tokenize(ctx_init))
        return embedding[0, 1:1 + n_words, :].clone(), ctx_init
    if n_cls is not None:
        print("Initializing class-specific contexts")
        vectors = torch.empty(n_cls, n_ctx, ctx_dim, dtype=clip_model.dtype)
    else:
        print("Initializing a generic context")
        vectors = torch.empty(n_ctx, ctx_dim, dtype=clip_model.dtype)
    nn.init.normal_(vectors, std=std)
    return vectors, " ".join(["X"] * n_ctx)


class TextContextLearner(nn.Module):
    """CoOp's PromptLearner: ``ctx`` [M, D] or [C, M, D] placed around the class tokens."""

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str = "",
                 class_specific: bool = False, class_token_position: str = "end",
                 context: Optional[Tuple[torch.Tensor, str]] = None) -> None:
        """``context`` = (initial vectors, prompt prefix text) overrides ``init_context``: MaPLe learns
        only the first words of its init phrase yet keeps the whole phrase in the prompt text."""
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"CLASS_TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}, "
                             f"got {class_token_position!r}")
        classnames = [clean_classname(c) for c in classnames]
        ctx_vectors, prompt_prefix = context if context is not None else init_context(
            clip_model, n_ctx, ctx_init, n_cls=len(classnames) if class_specific and not ctx_init else None)
        self.n_ctx = ctx_vectors.shape[-2]
        print(f'Initial context: "{prompt_prefix}"')
        print(f"Number of context words (tokens): {self.n_ctx}")
        self.ctx = nn.Parameter(ctx_vectors)

        tokenizer = get_tokenizer()
        self.name_lens: List[int] = [len(tokenizer.encode(name)) for name in classnames]
        prompts = [f"{prompt_prefix} {name}." for name in classnames]
        self.prompt_texts = prompts
        tokenized = clip.tokenize(prompts)
        embedding = embed_tokens(clip_model, tokenized)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + self.n_ctx:, :])
        # Token ids only locate EOT; kept out of the state dict like CoOp's plain attribute.
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)
        self.n_cls = len(classnames)
        self.class_token_position = class_token_position
        self.common_suffix_len = self._count_common_suffix_tokens()

    def _count_common_suffix_tokens(self) -> int:
        """Leading positions after the context that hold the same token for every class (MaPLe
        learns only the first words of its phrase: "of a" follow as fixed text), short of any EOT."""
        room = int(self.eot_positions.min()) - 1 - self.n_ctx
        same = (self.token_suffix == self.token_suffix[:1]).all(dim=2).all(dim=0)
        count = 0
        while count < room and bool(same[count]):
            count += 1
        return count

    @property
    def eot_positions(self) -> torch.Tensor:
        return self.tokenized_prompts.argmax(dim=-1)

    def expanded_context(self, ctx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-class context [C, M, D] from ``ctx`` (default: the learned one), generic or per class."""
        ctx = self.ctx if ctx is None else ctx
        return ctx.unsqueeze(0).expand(self.n_cls, -1, -1) if ctx.dim() == 2 else ctx

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Full prompt embeddings [C, L, D] from per-class context [C, M, D]."""
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
            ctx_i = ctx[i:i + 1]
            if self.class_token_position == "middle":
                rows.append(torch.cat([prefix[i:i + 1], ctx_i[:, :half], name, ctx_i[:, half:], rest], dim=1))
            else:
                rows.append(torch.cat([prefix[i:i + 1], name, ctx_i, rest], dim=1))
        return torch.cat(rows, dim=0)

    def forward(self, ctx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class prompt embeddings [C, L, D] around ``ctx`` (default: the learned context; UPT
        passes its projected one)."""
        return self.assemble(self.expanded_context(ctx))

    def shared_prefix(self, ctx: Optional[torch.Tensor] = None,
                      fixed_words: Optional[int] = None) -> Optional[SharedPrefix]:
        """The class prompts around ``ctx`` (default: the learned context) split where their first P
        tokens are the same for every class: start token + generic context + the fixed words
        every class shares (at most ``fixed_words`` of them; class at the end), or + the context's
        first half (class in the middle). None for class-specific context or the class in front."""
        ctx = self.ctx if ctx is None else ctx
        if ctx.dim() != 2 or self.class_token_position == "front":
            return None
        start = self.token_prefix[:1]
        if self.class_token_position == "end":
            common = self.common_suffix_len if fixed_words is None else min(fixed_words, self.common_suffix_len)
            prefix = torch.cat([start, ctx.unsqueeze(0), self.token_suffix[:1, :common]], dim=1)
            return SharedPrefix(prefix, self.token_suffix[:, common:])
        half = self.n_ctx // 2
        if half == 0:
            return None
        tail = ctx[half:].unsqueeze(0)
        suffixes = [torch.cat([self.token_suffix[i:i + 1, :n], tail, self.token_suffix[i:i + 1, n:]], dim=1)
                    for i, n in enumerate(self.name_lens)]
        return SharedPrefix(torch.cat([start, ctx[:half].unsqueeze(0)], dim=1), torch.cat(suffixes))
