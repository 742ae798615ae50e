"""Shared-prefix text encoding and text activation checkpointing equal the straightforward path.

Every case builds the full rows ``[prefix[group_index]; suffix]`` and compares
``CLIP.encode_text_shared_prefix`` with ``CLIP.encode_text_embeddings`` on them: features and
the gradients w.r.t. prefix, suffix, deep and K/V prompts, on a random 12-layer text transformer.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import pytest
import torch
from torch import Tensor

from clip.model import CLIP, convert_weights, split_shared_prefix

WIDTH = 64
#: max |shared - full| / max |full| allowed for fp32 features and gradients
RELATIVE_TOLERANCE = 1e-5


def _clip(heads: int = 4, seed: int = 0) -> CLIP:
    """A small random CLIP with a 12-layer text transformer; norms and biases perturbed so no
    parameter sits at a value (0 or 1) that could hide a wrong position or a skipped term."""
    torch.manual_seed(seed)
    model = CLIP(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=100, transformer_width=WIDTH, transformer_heads=heads,
                 transformer_layers=12).float()
    with torch.no_grad():
        for name, param in model.transformer.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def model() -> CLIP:
    return _clip()


def _leaf(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def _eot_positions(prefix_len: int, name_lengths: Sequence[int], tail: int = 2) -> Tensor:
    """End-token positions of rows "<prefix> <name> <tail - 1 tokens> <EOT>"."""
    return torch.tensor([prefix_len + n + tail - 1 for n in name_lengths])


def _per_row(prompt: Optional[Tensor], group_index: Optional[Tensor]) -> Optional[Tensor]:
    """A per-group prompt [G, n, D] as the full path takes it, one row per sequence."""
    if prompt is None or prompt.dim() == 2 or group_index is None:
        return prompt
    return prompt[group_index]


def _relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _assert_same(actual: Tensor, expected: Tensor, tolerance: float = RELATIVE_TOLERANCE) -> None:
    assert actual.shape == expected.shape
    assert _relative_error(actual.float(), expected.float()) <= tolerance


def _check_equivalence(model: CLIP, prefix: Tensor, suffix: Tensor, eot: Tensor,
                       group_index: Optional[Tensor] = None, deep: Optional[List[Optional[Tensor]]] = None,
                       kv: Optional[List[Optional[Tensor]]] = None) -> None:
    """Features and gradients of both paths agree for every leaf tensor given."""
    index = group_index if group_index is not None else torch.zeros(suffix.shape[0], dtype=torch.long)
    full_rows = torch.cat([prefix[index], suffix], dim=1)
    leaves = [prefix, suffix] + [p for p in (deep or []) + (kv or []) if p is not None]
    weights = torch.randn(suffix.shape[0], model.text_projection.shape[1],
                          generator=torch.Generator().manual_seed(9))

    expected = model.encode_text_embeddings(
        full_rows, eot,
        deep_prompts=None if deep is None else [_per_row(p, group_index) for p in deep],
        kv_prompts=None if kv is None else [_per_row(p, group_index) for p in kv])
    expected_grads = torch.autograd.grad((expected * weights).sum(), leaves)
    shared = model.encode_text_shared_prefix(prefix, suffix, eot, group_index, deep_prompts=deep, kv_prompts=kv)
    shared_grads = torch.autograd.grad((shared * weights).sum(), leaves)

    _assert_same(shared, expected)
    for got, want in zip(shared_grads, expected_grads):
        _assert_same(got, want)


@pytest.fixture(params=[(True, False), (False, False), (True, True), (False, True)],
                ids=["truncated", "full-length", "truncated-checkpointed", "full-length-checkpointed"])
def settings(request, model):
    """Run a test under each truncation and checkpointing setting, restoring the defaults after."""
    model.truncate_text, model.text_checkpointing = request.param
    yield
    model.truncate_text, model.text_checkpointing = True, False


def test_coop_end_one_prefix_for_all_classes(model, settings):
    """Start token + 16 context vectors shared; class name, ".", EOT, padding per class."""
    names = [1, 3, 2, 4, 2]
    prefix, suffix = _leaf(1, 17, WIDTH, seed=1), _leaf(len(names), 60, WIDTH, seed=2)
    _check_equivalence(model, prefix, suffix, _eot_positions(17, names))


def test_one_prefix_with_explicit_group_index(model, settings):
    names = [2, 1, 3]
    prefix, suffix = _leaf(1, 5, WIDTH, seed=1), _leaf(len(names), 10, WIDTH, seed=2)
    _check_equivalence(model, prefix, suffix, _eot_positions(5, names), group_index=torch.zeros(3, dtype=torch.long))


def test_cocoop_one_prefix_per_image(model, settings):
    """G images x C classes: each image's context is a prefix, each (image, class) row a suffix."""
    images, names = 3, [1, 4, 2, 3]
    prefix = _leaf(images, 5, WIDTH, seed=3)
    class_suffix = _leaf(len(names), 8, WIDTH, seed=4)
    suffix = class_suffix.repeat(images, 1, 1)
    group_index = torch.arange(images).repeat_interleave(len(names))
    _check_equivalence(model, prefix, suffix, _eot_positions(5, names * images), group_index)


def test_groups_in_any_order_and_unused_groups(model, settings):
    prefix, suffix = _leaf(4, 3, WIDTH, seed=5), _leaf(5, 6, WIDTH, seed=6)
    group_index = torch.tensor([2, 0, 2, 3, 0])
    _check_equivalence(model, prefix, suffix, _eot_positions(3, [1, 2, 3, 1, 2]), group_index)


def test_class_in_the_middle(model, settings):
    """Prefix = start token + first half of the context; suffix = class, second half, ".", EOT."""
    names = [2, 1, 3]
    prefix, suffix = _leaf(1, 9, WIDTH, seed=7), _leaf(len(names), 20, WIDTH, seed=8)
    _check_equivalence(model, prefix, suffix, _eot_positions(9, names, tail=10))


@pytest.mark.parametrize("per_group", [False, True], ids=["shared-deep", "per-group-deep"])
def test_maple_deep_prompts_at_layers_one_to_eight(model, settings, per_group):
    """MaPLe: "a photo of a" after the start token, 2 context slots replaced at layers 1..8."""
    images, names, n_ctx = 2, [1, 3, 2], 2
    prefix = _leaf(images, 5, WIDTH, seed=10)
    suffix = _leaf(len(names), 12, WIDTH, seed=11).repeat(images, 1, 1)
    group_index = torch.arange(images).repeat_interleave(len(names))
    shape = (images, n_ctx, WIDTH) if per_group else (n_ctx, WIDTH)
    deep: List[Optional[Tensor]] = [None] + [_leaf(*shape, seed=20 + layer) for layer in range(1, 9)]
    _check_equivalence(model, prefix, suffix, _eot_positions(5, names * images), group_index, deep=deep)


def test_deep_prompts_may_fill_the_prefix_up_to_its_last_position(model, settings):
    deep = [None, _leaf(4, WIDTH, seed=12), None, _leaf(4, WIDTH, seed=13)]
    _check_equivalence(model, _leaf(1, 5, WIDTH, seed=1), _leaf(2, 4, WIDTH, seed=2), _eot_positions(5, [1, 2]),
                       deep=deep)


def test_key_value_prompts(model, settings):
    """K/V-only tokens (Adapt's seam) reach prefix and suffix queries as in the full path."""
    images, names = 2, [2, 1]
    group_index = torch.arange(images).repeat_interleave(len(names))
    kv = [_leaf(3, WIDTH, seed=30), None, _leaf(images, 2, WIDTH, seed=31)]
    _check_equivalence(model, _leaf(images, 4, WIDTH, seed=1), _leaf(4, 5, WIDTH, seed=2),
                       _eot_positions(4, names * images), group_index, kv=kv)


def test_two_heads():
    _check_equivalence(_clip(heads=2, seed=1), _leaf(1, 6, WIDTH, seed=1), _leaf(3, 7, WIDTH, seed=2),
                       _eot_positions(6, [1, 2, 3]))


def test_suffix_features_depend_on_their_prefix(model):
    """Guards the equivalence tests against a path that ignores the prefix."""
    suffix = _leaf(1, 4, WIDTH, seed=2).detach()
    prefixes = _leaf(2, 5, WIDTH, seed=1).detach()
    eot = _eot_positions(5, [1, 1])
    features = model.encode_text_shared_prefix(prefixes, suffix.repeat(2, 1, 1), eot, torch.tensor([0, 1]))
    assert not torch.allclose(features[0], features[1], atol=1e-3)


def test_split_shared_prefix_gives_the_full_path_and_context_gradient(model):
    """A CoOp-style learner: one context expanded over the classes; gradients reach it exactly."""
    n_cls, n_ctx = 4, 6
    context = _leaf(n_ctx, WIDTH, seed=40)
    start, tails = torch.randn(1, 1, WIDTH), torch.randn(n_cls, 5, WIDTH)
    rows = torch.cat([start.expand(n_cls, -1, -1), context.expand(n_cls, -1, -1), tails], dim=1)
    eot = _eot_positions(1 + n_ctx, [1, 2, 3, 2])

    expected = model.encode_text_embeddings(rows, eot)
    (expected_grad,) = torch.autograd.grad(expected.sum(), context)
    prefix, suffix = split_shared_prefix(rows, 1 + n_ctx, check=True)
    assert prefix.shape == (1, 1 + n_ctx, WIDTH) and suffix.shape == (n_cls, 5, WIDTH)
    shared = model.encode_text_shared_prefix(prefix, suffix, eot)
    (shared_grad,) = torch.autograd.grad(shared.sum(), context)
    _assert_same(shared, expected)
    _assert_same(shared_grad, expected_grad)


def test_split_shared_prefix_check_rejects_rows_that_differ():
    rows = torch.zeros(3, 6, WIDTH)
    rows[2, 1] = 1.0
    assert split_shared_prefix(rows, 1, check=True)[1].shape == (3, 5, WIDTH)
    with pytest.raises(ValueError, match="first 2 positions differ"):
        split_shared_prefix(rows, 2, check=True)
    with pytest.raises(ValueError, match="prefix_len"):
        split_shared_prefix(rows, 6)


def test_checkpointing_full_path_equals_plain(model):
    """The switch on ``encode_text_embeddings``: same features and gradients, deep prompts included."""
    rows, deep = _leaf(3, 12, WIDTH, seed=50), [None, _leaf(2, WIDTH, seed=51), _leaf(2, WIDTH, seed=52)]
    eot = torch.tensor([7, 11, 9])
    results = []
    for checkpointed in (False, True):
        model.text_checkpointing = checkpointed
        features = model.encode_text_embeddings(rows, eot, deep_prompts=deep)
        results.append([features, *torch.autograd.grad(features.sum(), [rows, deep[1], deep[2]])])
    model.text_checkpointing = False
    for plain, checkpointed in zip(*results):
        _assert_same(checkpointed, plain)


def test_checkpointing_keeps_fewer_activations_for_backward(model):
    """What the switch is for: tensors saved between forward and backward shrink."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes() -> int:
        storages = {}

        def pack(tensor: Tensor) -> Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model.encode_text_shared_prefix(_leaf(1, 9, WIDTH, seed=1), _leaf(8, 10, WIDTH, seed=2),
                                            _eot_positions(9, [1] * 8, tail=9))
        return sum(storages.values())

    plain = saved_bytes()
    model.text_checkpointing = True
    checkpointed = saved_bytes()
    model.text_checkpointing = False
    assert checkpointed < plain / 4


def test_no_gradients_needed(model):
    model.text_checkpointing = True
    with torch.no_grad():
        features = model.encode_text_shared_prefix(torch.randn(1, 3, WIDTH), torch.randn(2, 4, WIDTH),
                                                   torch.tensor([4, 5]))
    model.text_checkpointing = False
    assert features.shape == (2, 32) and not features.requires_grad


def test_fp16_smoke():
    """OpenAI's fp16 storage (``convert_weights``) runs where this machine has the kernels."""
    half = _clip()
    convert_weights(half)
    prefix, suffix, eot = torch.randn(1, 5, WIDTH), torch.randn(3, 6, WIDTH), torch.tensor([6, 7, 8])
    try:
        shared = half.encode_text_shared_prefix(prefix, suffix, eot)
        full = half.encode_text_embeddings(torch.cat([prefix.expand(3, -1, -1), suffix], dim=1), eot)
    except RuntimeError as error:  # a CPU build without half kernels for some op
        pytest.skip(f"fp16 not supported here: {error}")
    assert shared.dtype == torch.float16
    _assert_same(shared, full, tolerance=1e-2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prefix=torch.zeros(2, 3, WIDTH)), "need a group_index"),
    (dict(group_index=torch.zeros(3, dtype=torch.long)), r"group_index must be \[2\]"),
    (dict(eot=torch.tensor([2, 4])), "must lie in the suffix"),
    (dict(eot=torch.tensor([3, 7])), "must lie in the suffix"),
    (dict(suffix=torch.zeros(2, 75, WIDTH)), "exceed the context length"),
    (dict(deep=[None, torch.zeros(3, WIDTH)]), "inside the shared prefix of 3 positions"),
    (dict(prefix=torch.zeros(3, WIDTH)), r"prefix must be \[G, P, D\]"),
])
def test_clear_errors(model, kwargs, message):
    args = dict(prefix=torch.zeros(1, 3, WIDTH), suffix=torch.zeros(2, 4, WIDTH), eot=torch.tensor([3, 4]),
                group_index=None, deep=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        model.encode_text_shared_prefix(args["prefix"], args["suffix"], args["eot"], args["group_index"],
                                        deep_prompts=args["deep"])
