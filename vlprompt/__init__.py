"""The installed face of vlprompt: console commands that find the project's modules in their own process only.

The project keeps CoOp's layout, whose top-level names ``clip``, ``datasets`` and ``trainers``
clash with OpenAI's ``clip`` and Hugging Face's ``datasets``. So an install puts only this package
on the path. The code itself lives beside it: in a source checkout (and an editable install, which
points here) it is the repository root; a regular install ships it inside as ``vlprompt/_src/``.
The console commands (``vlprompt.cli``) call :func:`use_project_modules` first, which puts that
folder at the front of ``sys.path`` of their own process, and then run ``train.py``'s and the other
tools' ``main``. Other programs of the environment never see the project's top-level names.
"""
from __future__ import annotations

import os
import sys

__all__ = ["code_root", "use_project_modules"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def code_root() -> str:
    """The folder holding ``train.py``, ``clip/``, ``datasets/`` and ``trainers/`` for this install."""
    shipped = os.path.join(_HERE, "_src")
    if os.path.isfile(os.path.join(shipped, "train.py")):
        return shipped
    checkout = os.path.dirname(_HERE)
    if os.path.isfile(os.path.join(checkout, "train.py")):
        return checkout
    raise ModuleNotFoundError(f"vlprompt's code is neither in {shipped} nor in {checkout}: reinstall the package")


def use_project_modules() -> str:
    """Make ``clip``, ``datasets``, ``trainers``, ``train`` importable in this process; returns their folder."""
    root = code_root()
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    return root
