"""One run per output folder: a lock file that names its holder (PID, host, start time).

Two jobs writing into one folder (a resubmitted SLURM array task, a bash loop started twice)
would interleave logs and overwrite each other's checkpoints. A second run exits at once,
touching nothing; a lock whose process is gone (killed, node rebooted) is taken over.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from typing import Iterator

from clip.errors import InvalidInputError

LOCK_NAME = ".vlprompt.lock"


class OutputDirLockedError(InvalidInputError):
    """Another live run holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take(path: str) -> bool:
    """Create the lock file atomically; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": datetime.datetime.now().isoformat(timespec="seconds")}, f)
    return True


@contextlib.contextmanager
def output_dir_lock(output_dir: str) -> Iterator[None]:
    """Hold ``<output_dir>/.vlprompt.lock`` for the block; a live holder is an error naming it."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise InvalidInputError(f"--output-dir {output_dir} is a file; expected a folder (or a new path)")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_NAME)
    while not _take(path):
        try:
            with open(path) as f:
                holder = json.load(f)
        except (OSError, ValueError):
            holder = {}
        same_host = holder.get("host") == socket.gethostname()
        if holder and (not same_host or _alive(int(holder["pid"]))):
            raise OutputDirLockedError(
                f"{output_dir} is in use by another run (PID {holder['pid']} on {holder['host']}, started "
                f"{holder['started']}); wait for it, stop it, or choose another --output-dir. If that run is "
                f"gone, delete {path}")
        print(f"Note: taking over the lock of a run that is gone ({holder or 'unreadable lock file'})")
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
