"""Shared pytest fixtures."""
from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_clip_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Point the CLIP cache (VLPROMPT_CLIP_CACHE) at a per-session temporary folder.

    Tests load tiny CLIPs by name, which writes their checkpoint files into the
    cache; this keeps those files out of the user's ~/.cache/clip.
    """
    root = str(tmp_path_factory.mktemp("clip_cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPROMPT_CLIP_CACHE", root)
        yield root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One data root per session: the Synthetic data sets write themselves there once."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture
def run_train():
    """Run ``train.py`` in-process with the given arguments; returns (exit code, log text)."""
    import os

    import train
    from trainers.engine.logger import close_logger

    def run(*args: str, output_dir: str = None) -> "tuple[int, str]":
        argv = list(args)
        if output_dir is not None:
            argv = ["--output-dir", output_dir] + argv
        try:
            code = train.main(argv)
        finally:
            close_logger()
        out = output_dir or ""
        logs = sorted(f for f in os.listdir(out) if f.startswith("log.txt")) if out and os.path.isdir(out) else []
        text = open(os.path.join(out, logs[-1])).read() if logs else ""
        return code, text

    return run


@pytest.fixture(scope="module")
def tiny_clip():
    """The tiny random ViT-B/16 CLIP, frozen (one per test module)."""
    import clip

    model, _ = clip.load("tiny-ViT-B/16", device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model
