"""Golden outputs: every tiny CLIP reproduces its stored features and logits (tests/golden/make.py).

Fails when CLIP's forward, the tiny initialisation, the loader or the tokenizer changes the
numbers; if the change is intended, regenerate with ``python -m tests.golden.make``.
"""
import os

import pytest
import torch

import clip
from golden.make import golden_outputs, golden_path, read_golden

# Same fp32 computation on another machine or thread count differs in the last bits only.
RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.parametrize("name", clip.tiny_models())
def test_tiny_clip_reproduces_its_golden_outputs(name):
    assert os.path.isfile(golden_path(name)), f"no golden file for {name}: run python -m tests.golden.make"
    expected = read_golden(name)
    actual = golden_outputs(name)
    assert set(actual) == set(expected)
    for key, value in actual.items():
        torch.testing.assert_close(value, expected[key], rtol=RTOL, atol=ATOL, msg=lambda m: f"{name} {key}: {m}")
