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
