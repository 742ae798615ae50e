"""Errors in what the user supplied (paths, data, configs, checkpoints, CLIP files).

Command-line tools print these as one short message and exit non-zero, without a traceback;
every other exception is a bug and keeps its traceback. Each type also derives from the
built-in type a caller would catch (``FileNotFoundError``, ``ValueError``, ...).
"""
from __future__ import annotations

__all__ = ["UserInputError", "MissingInputError", "InvalidInputError", "UnreadableInputError",
           "UnusableFileError"]


class UserInputError(Exception):
    """Something the user gave is wrong: the message says what, where, and what was expected."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A path the run needs does not exist."""


class InvalidInputError(UserInputError, ValueError):
    """A value, a file's content or a combination of settings that cannot work."""


class UnreadableInputError(UserInputError, OSError):
    """A file exists but cannot be read (a corrupt image, a permission)."""


class UnusableFileError(UserInputError, RuntimeError):
    """A model or checkpoint file that cannot be used (truncated, another format, another model)."""
