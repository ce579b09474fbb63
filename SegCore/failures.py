"""Turn any failure into one line for people, and keep its traceback in a log file.

`SegCoreError`s are already written for people. Everything else (an OSError from deep inside a library, running
out of GPU memory, a bug) is described here in one line that says what failed and where, with a fix where one is
known; the traceback goes to a log file that the line names. The CLI and the Trainer both use this.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from SegCore.errors import SegCoreError

LOG_DIR_VARIABLE = "SEGCORE_LOG_DIR"

_PERMISSION = (errno.EACCES, errno.EPERM)
_OS_PROBLEMS = {  # errno -> (problem, fix), for both reading and writing
    errno.EROFS: ("the file system is read-only", "write the output somewhere else"),
    errno.ENOSPC: ("no space left on the device", "free some space or write the output elsewhere"),
    errno.ELOOP: ("the path runs into a loop of symbolic links", "repair or remove the looping link"),
    errno.ENOTDIR: ("a file is in the way where a folder is expected", "check each folder in the path"),
    errno.EISDIR: ("a folder is in the way where a file is expected", "pass a file path"),
    errno.ENOENT: ("not found", "check the path (and the working directory)"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer workers"),
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _OS_PROBLEMS[errno.EDQUOT] = ("the disk quota is exceeded", "free some space or write the output elsewhere")


def os_error(error: OSError, path: str | os.PathLike | None = None, *, writing: bool = False,
             what: str = "file") -> SegCoreError:
    """The one translation of an OSError into a SegCoreError naming `path` (else the error's own file name).

    writing: the failure came from creating an output in the folder `path` (permission then means that folder).
    what: what `path` is, for the message ('file', 'folder', 'dataset folder').
    """
    where = path if path is not None else error.filename
    if error.errno in _PERMISSION:
        if writing:
            return SegCoreError("permission denied: this user may not write in this folder", path=where,
                                fix="choose an output folder you can write to, or change its permissions")
        return SegCoreError(f"permission denied: this user may not read the {what} (or a folder above it)",
                            path=where, fix="make it readable for this user (chmod / chown), or run as one who may")
    if error.errno in _OS_PROBLEMS:
        problem, fix = _OS_PROBLEMS[error.errno]
        return SegCoreError(problem, path=where, fix=fix)
    verb = "write in" if writing else "open"
    return SegCoreError(f"cannot {verb} the {what}: {error.strerror or error}", path=where,
                        fix="check the path and the disk")


@dataclass(frozen=True)
class Failure:
    """A failure described for people. kind: 'input' (a SegCoreError), 'system' (OS, memory), 'internal' (a bug)."""

    message: str
    kind: str

    def as_event(self, log: Path | None = None) -> dict:
        """The JSON `error` event of `--progress json`."""
        event = {"event": "error", "message": self.message, "kind": self.kind}
        if log is not None:
            event["log"] = str(log)
        return event


def _where(error: BaseException) -> str:
    """'file.py:123 in function' of the innermost frame, for a bug report."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def _is_cuda_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)


def describe(error: BaseException) -> Failure:
    """One line for any exception: what failed, where (file, argument or code position), and a fix."""
    if isinstance(error, SegCoreError):
        return Failure(str(error), "input")
    if _is_cuda_out_of_memory(error):
        first = str(error).split(".")[0]
        return Failure(f"out of GPU memory ({first}). Fix: lower the batch size or the patch size, or use "
                       "--device cpu.", "system")
    if isinstance(error, MemoryError):
        return Failure("out of memory (RAM). Fix: use smaller inputs or batches, or a machine with more memory.",
                       "system")
    if isinstance(error, OSError):
        return Failure(str(os_error(error, error.filename if error.filename is not None else _where(error))),
                       "system")
    text = " ".join(str(error).split()) or "no message"
    return Failure(f"internal error {type(error).__name__} at {_where(error)}: {text}. This is a bug in SegCore. "
                   "Fix: report it with the log file named here.", "internal")


def log_folder() -> Path:
    """Where tracebacks go: $SEGCORE_LOG_DIR, else $XDG_STATE_HOME/segcore/logs (~/.local/state/segcore/logs)."""
    if os.environ.get(LOG_DIR_VARIABLE):
        return Path(os.environ[LOG_DIR_VARIABLE])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "segcore" / "logs"


def write_traceback(error: BaseException, what: str) -> Path | None:
    """Write the traceback of `error` to a new log file named after `what`; None if no folder is writable."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    name = f"segcore-{what}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (log_folder(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            # A log is never an input and a half-written one is still useful, so it is written directly.
            path.write_text(f"segcore {what}: {' '.join(sys.argv[1:])}\n\n{text}", encoding="utf-8")
            return path
        except OSError:
            continue
    return None
