"""Coupled vision-language prompts (MaPLe): the text prompts are learned, the vision prompts are
linear projections of them, at the first layer and at every deep layer up to the prompt depth.

The learner hands out what CLIP's prompt hooks take, so a model wires it up in two calls:

* text: ``clip.encode_text_embeddings(learner(), learner.eot_positions,
  deep_prompts=learner.deep_text_prompts())``;
* vision: ``clip.encode_image(images, prompts=learner.vision_prompts(),
  deep_prompts=learner.deep_vision_prompts(), prompts_before_ln_pre=True)``.

Entry ``i`` of a deep list replaces the prompt slots at the input of block ``i``; entry 0 is
None because the first layer's prompts are part of the input sequence already.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import clip
from clip.tokenizer import get_tokenizer
from trainers.prompts.text import TextContextLearner, embed_tokens, init_context

#: MaPLe initialises the context from the init phrase only up to this many tokens (else at random).
MAX_WORD_INIT_CTX = 4


def coupled_context(clip_model: nn.Module, n_ctx: int, ctx_init: str) -> Tuple[torch.Tensor, str]:
    """MaPLe's first-layer text context and the prompt prefix text it stands in for.

    With an init phrase and ``n_ctx`` <= 4 the vectors are the embeddings of the phrase's first
    ``n_ctx`` tokens while the prefix is the *whole* phrase: the remaining words ("of a" in
    "a photo of a") stay in the prompt as frozen tokens. Otherwise normal(0, 0.02) vectors and
    the prefix "X X ..." (the phrase is then unused, as in the original).
    """
    if ctx_init and n_ctx <= MAX_WORD_INIT_CTX:
        phrase = ctx_init.replace("_", " ")
        n_tokens = len(get_tokenizer().encode(phrase))
        if n_tokens < n_ctx:
            raise ValueError(f"the context init phrase {phrase!r} has {n_tokens} tokens, fewer than the "
                             f"{n_ctx} context vectors it should initialise (the original would silently "
                             "learn end-of-text and padding embeddings and cut the class name)")
        embedding = embed_tokens(clip_model, clip.tokenize(phrase))
        return embedding[0, 1:1 + n_ctx, :].clone(), phrase
    if ctx_init:
        print(f"Note: {n_ctx} > {MAX_WORD_INIT_CTX} context vectors are initialised at random; "
              f"the init phrase {ctx_init!r} is not used")
    return init_context(clip_model, n_ctx)


class MultiModalPromptLearner(TextContextLearner):
    """MaPLe's prompt learner, with the original's attribute names (its checkpoint keys).

    * ``ctx`` [n, D_t]: first-layer text context at positions 1..n of "<init phrase> <class>.";
    * ``proj`` Linear(D_t -> W_v): first-layer vision prompts ``proj(ctx)``, stored in CLIP's dtype
      (fp16 under PREC fp16 as in the original, fp32 otherwise so that fp32 and amp runs work);
    * ``compound_prompts_text[k]`` [n, D_t] (fp32): the text slots at layer k + 1;
    * ``compound_prompt_projections[k]`` Linear(D_t -> W_v) (fp32): the vision slots at layer
      k + 1 are ``compound_prompt_projections[k](compound_prompts_text[k])``. All start as copies
      of one freshly initialised layer, as in the original.

    There are ``depth - 1`` compound prompts; depth 1 is shallow MaPLe. Parameters are created
    in the original's order so that a seeded run draws the same initial values.
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], n_ctx: int = 2,
                 ctx_init: str = "a photo of a", depth: int = 9) -> None:
        if depth < 1:
            raise ValueError(f"the prompt depth counts the first layer and must be >= 1, got {depth}")
        print("MaPLe design: Multi-modal Prompt Learning")
        super().__init__(clip_model, classnames, context=coupled_context(clip_model, n_ctx, ctx_init))
        text_width = clip_model.ln_final.weight.shape[0]
        vision_width = clip_model.visual.transformer.width
        self.proj = nn.Linear(text_width, vision_width).to(clip_model.dtype)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.empty(self.n_ctx, text_width)) for _ in range(depth - 1)])
        for prompt in self.compound_prompts_text:
            nn.init.normal_(prompt, std=0.02)
        shared_init = nn.Linear(text_width, vision_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(shared_init) for _ in range(depth - 1)])

    def deep_text_prompts(self) -> List[Optional[torch.Tensor]]:
        """Per text block: None at block 0, then ``compound_prompts_text[k]`` at block k + 1."""
        return [None, *self.compound_prompts_text]

    def vision_prompts(self) -> torch.Tensor:
        """First-layer vision prompts [n, W_v] (MaPLe inserts them before ``ln_pre``)."""
        return self.proj(self.ctx)

    def deep_vision_prompts(self) -> List[Optional[torch.Tensor]]:
        """Per vision block: None at block 0, then the projected compound prompt k at block k + 1."""
        return [None, *(layer(prompt) for layer, prompt in
                        zip(self.compound_prompt_projections, self.compound_prompts_text))]
