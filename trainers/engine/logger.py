"""``log.txt`` and tensorboard, as Dassl sets them up.

Everything printed goes to the console and to ``<output>/log.txt`` (the file that
``parse_test_res.py`` reads). An existing log is never overwritten: a rerun into the same
folder writes ``log.txt-<YYYY-MM-DD-HH-MM-SS>`` instead, like Dassl.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Optional, Tuple

__all__ = ["setup_logger", "close_logger", "make_writer", "write_scalar"]


class _Tee:
    """A stdout replacement that writes to the console and to the log file."""

    def __init__(self, console: IO[str], file: IO[str], path: str) -> None:
        self.console, self.file, self.path = console, file, path

    def write(self, message: str) -> int:
        self.console.write(message)
        if not self.file.closed:
            self.file.write(message)
        return len(message)

    def flush(self) -> None:
        """Flush both; fsync the file so a crashed run still leaves its full log on disk."""
        self.console.flush()
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def __getattr__(self, name: str) -> Any:
        # encoding, isatty, fileno, ... behave like the console's.
        console = self.__dict__.get("console")
        if console is None:
            raise AttributeError(name)
        return getattr(console, name)


_active: Optional[_Tee] = None


def _log_path(output: str) -> str:
    return output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")


def _open_new(path: str) -> Tuple[IO[str], str]:
    """Create the log file; if the name is taken, add Dassl's time suffix (and a counter if needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    candidates = [path]
    if os.path.exists(path):
        stamped = path + time.strftime("-%Y-%m-%d-%H-%M-%S")
        candidates = [stamped] + [f"{stamped}-{i}" for i in range(1, 1000)]
    for candidate in candidates:
        try:
            # Line-buffered, so `tail -f log.txt` shows every line as it is printed.
            return open(candidate, "x", buffering=1, encoding="utf-8"), candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not find a free log file name next to {path}")


def setup_logger(output: str) -> str:
    """Tee stdout into ``<output>/log.txt`` (or ``output`` itself when it ends in .txt/.log); returns the path.

    Calling it again switches to the new file instead of stacking a second tee.
    """
    global _active
    console = _active.console if _active is not None and sys.stdout is _active else sys.stdout
    close_logger()
    file, path = _open_new(_log_path(output))
    _active = sys.stdout = _Tee(console, file, path)
    return path


def report_error(message: str) -> None:
    """Print an error to stderr and, when a log file is open, as the log's last line."""
    if _active is not None and sys.stdout is _active:
        _active.file.write(message + "\n")
        _active.file.flush()
    print(message, file=sys.stderr, flush=True)


def close_logger() -> None:
    """Restore the console as stdout and close the log file (no-op when no logger is active)."""
    global _active
    tee, _active = _active, None
    if tee is None:
        return
    if sys.stdout is tee:
        sys.stdout = tee.console
    tee.flush()
    tee.close()


# ----- tensorboard -------------------------------------------------------------------------------------

_writer_unavailable_reported = False


def make_writer(log_dir: str) -> Optional[Any]:
    """A ``SummaryWriter`` logging to ``log_dir``, or None when tensorboard is not installed (said once)."""
    global _writer_unavailable_reported
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        if not _writer_unavailable_reported:
            print(f"Tensorboard logging is off ({exc}); install tensorboard to get event files")
            _writer_unavailable_reported = True
        return None
    os.makedirs(log_dir, exist_ok=True)
    return SummaryWriter(log_dir=log_dir)


def write_scalar(writer: Optional[Any], tag: str, value: float, step: int) -> None:
    """``writer.add_scalar`` that does nothing without a writer (eval-only runs, no tensorboard)."""
    if writer is not None:
        writer.add_scalar(tag, value, step)
