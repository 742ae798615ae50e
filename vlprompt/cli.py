"""Console commands of an installed vlprompt (``vlprompt-train``, ``vlprompt-sweep``, ``vlprompt-parse``).

Each runs the same ``main`` as the repository's command (``python train.py``, ``python -m
trainers.sweep``, ``python parse_test_res.py``), after putting the project's modules on this
process's path (see ``vlprompt/__init__.py``).
"""
from __future__ import annotations

import importlib
from typing import NoReturn

from vlprompt import use_project_modules


def _run(module: str) -> NoReturn:
    use_project_modules()
    status = importlib.import_module(module).main()
    raise SystemExit(status if isinstance(status, int) else 0)


def train() -> NoReturn:
    """``vlprompt-train``: ``python train.py`` from anywhere."""
    _run("train")


def sweep() -> NoReturn:
    """``vlprompt-sweep``: ``python -m trainers.sweep`` from anywhere."""
    _run("trainers.sweep")


def parse() -> NoReturn:
    """``vlprompt-parse``: ``python parse_test_res.py`` from anywhere."""
    _run("parse_test_res")
