"""File helpers shared by data and engine code: atomic writes and JSON in the split-file style.

A write goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written split, cache, checkpoint or log pointer.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator, IO

from clip.errors import UserInputError


class OutputWriteError(UserInputError, OSError):
    """A file the run writes could not be written (no space, no permission)."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; on success it replaces ``path`` atomically.

    The file gets the permissions a plain ``open`` would (0666 less the umask), not the 0600 of a
    temporary file, so a lab's shared group can read checkpoints, results and caches.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, UserInputError):
            raise OutputWriteError(f"Cannot write {path}: {exc.strerror or exc} (the previous file, if any, is "
                                   "unchanged); free disk space or fix the permissions and run again") from exc
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_save(path: str, save_fn: Callable[[IO], None]) -> None:
    """Write a binary file through ``save_fn(file)`` (e.g. ``lambda f: torch.save(obj, f)``)."""
    with atomic_open(path, "wb") as f:
        save_fn(f)


def read_json(path: str) -> Any:
    with open(path, "r") as f:
        return json.load(f)


def write_json(obj: Any, path: str) -> None:
    """Write JSON as CoOp's split files are written: 4-space indent, ``,``/``: `` separators."""
    atomic_write_text(path, json.dumps(obj, indent=4, separators=(",", ": ")))
