"""Write outputs so that nothing half-written is ever left behind, and never over an input.

Every writer in SegCore goes through `atomic_file` (one file) or `atomic_dir` (a folder such as a DICOM series):
the content is written to a hidden temporary name beside the target, then renamed over it in one step.

Both check the target with `check_output` first, the one guard that keeps inputs safe: inside a
`guard_outputs(inputs)` scope (each CLI command runs in one), an output may not be an input, and an output
folder may not hold or contain one, however either path is spelled (relative, `..`, symbolic links). Readers add
the files they read to the scope (`add_inputs`), so the guard also knows inputs found inside folders (the files of
a DICOM series, the cases of a dataset). Missing parent folders of an output are created and recorded, so the
command can report them.

Temporary names carry the writer's process id (`.NAME.segcore-PID.XXXX.tmp`). A writer interrupted by an
exception, Ctrl-C or SIGTERM (the CLI turns SIGTERM into an exception) removes its temporaries; where no clean-up
could run (SIGKILL, power loss), the next write of the same output removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from SegCore.errors import SegCoreError
from SegCore.failures import os_error

# Suffixes that must survive in the temporary name because writers choose the format from them.
_DOUBLE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".tar.gz")
_TEMP_TAG = "segcore-"


def file_suffix(path: str | os.PathLike) -> str:
    """The format suffix of a path, lower case: '.nii.gz', '.seg.nrrd', or the last suffix ('.nrrd')."""
    name = Path(path).name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def file_stem(path: str | os.PathLike) -> str:
    """The file name without its format suffix: 'BRATS_001.nii.gz' -> 'BRATS_001', 'x.seg.nrrd' -> 'x'."""
    name = Path(path).name
    return name[: len(name) - len(file_suffix(name))]


def resolved(path: str | os.PathLike) -> Path:
    """The absolute path with links and `..` resolved; a symbolic-link loop is a SegCoreError naming the path."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as error:  # Python < 3.13 raises RuntimeError for loops, later ones OSError
        if isinstance(error, OSError) and error.errno not in (errno.ELOOP, None):
            raise
        raise SegCoreError("the path runs into a loop of symbolic links", path=path,
                           fix="repair or remove the looping link") from None


@dataclass
class OutputScope:
    """What one command has read (`inputs`, resolved) and which missing output folders it created."""

    inputs: set[Path] = field(default_factory=set)
    created_folders: list[Path] = field(default_factory=list)
    staging: set[Path] = field(default_factory=set)  # temporary folders of atomic_dir writers now open
    lock: threading.Lock = field(default_factory=threading.Lock)  # reader and writer threads share a scope

    def input_list(self) -> list[Path]:
        """A copy of `inputs`, safe while another thread adds to them."""
        with self.lock:
            return list(self.inputs)


_scope: contextvars.ContextVar[OutputScope | None] = contextvars.ContextVar("segcore_output_scope", default=None)


@contextlib.contextmanager
def guard_outputs(inputs: Iterable[str | os.PathLike] = ()) -> Iterator[OutputScope]:
    """A scope in which every output is checked against `inputs` and against every file read meanwhile."""
    scope = OutputScope()
    token = _scope.set(scope)
    try:
        add_inputs(inputs)
        yield scope
    finally:
        _scope.reset(token)


def add_inputs(paths: Iterable[str | os.PathLike]) -> None:
    """Record files or folders as inputs of the current `guard_outputs` scope (no effect outside one)."""
    scope = _scope.get()
    if scope is not None:
        new = [resolved(p) for p in paths]
        with scope.lock:
            scope.inputs.update(new)


def refuse_overwriting_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *,
                              inputs_resolved: bool = False) -> None:
    """Raise if `output` is one of `inputs`, or is a folder that holds or contains one (links resolved).
    inputs_resolved: the inputs are resolved paths already (a scope's), so a batch of N cases costs N checks per
    output, not N path resolutions."""
    out = resolved(output)
    for item in inputs:
        source = item if inputs_resolved else resolved(item)
        if source == out:
            what = "replace an input folder" if source.is_dir() else "overwrite an input"
            raise SegCoreError(f"the output would {what}", path=output, fix="choose another output path")
        if out in source.parents:
            raise SegCoreError(f"the output would replace a folder that holds an input ({source})", path=output,
                               fix="choose an output outside the input's folders")


def check_output(path: str | os.PathLike) -> Path:
    """The guard every writer passes: refuse inputs (in a `guard_outputs` scope) and return the resolved path."""
    scope = _scope.get()
    if scope is not None:
        refuse_overwriting_inputs(path, scope.input_list(), inputs_resolved=True)
    return resolved(path)


def _make_parents(target: Path) -> None:
    """Create the missing parent folders of `target`, record them in the scope, and explain failures."""
    missing = [p for p in reversed(target.parents) if not p.exists()]
    for folder in missing:
        if folder.parent.exists() and not folder.parent.is_dir():
            raise SegCoreError("a file is in the way of the output's folder", path=folder.parent,
                               fix="choose an output path whose parent folders are folders")
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise SegCoreError("a file is in the way of the output's folder", path=folder,
                                   fix="choose an output path whose parent folders are folders") from None
            continue
        except OSError as error:
            raise os_error(error, folder.parent, writing=True) from None
        scope = _scope.get()
        if scope is not None and not any(s == folder or s in folder.parents for s in scope.staging):
            scope.created_folders.append(folder)
    if not target.parent.is_dir():
        raise SegCoreError("a file is in the way of the output's folder", path=target.parent,
                           fix="choose an output path whose parent folders are folders")


def process_alive(pid) -> bool:
    """Whether process `pid` runs (a positive int; anything else is not a process). A process of another user
    counts as running; a zombie (exited, not yet reaped) does not. Windows: OpenProcess."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if handle:
            ctypes.windll.kernel32.CloseHandle(handle)
        return bool(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # Linux: the state letter after the command name
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove temporaries of `target` left by SegCore writers whose process is gone; returns what was removed."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{_TEMP_TAG}(\d+)\.")
    removed = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            match = pattern.match(entry.name)
            if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _prepare(path: str | os.PathLike) -> Path:
    """Guard, create parents, clear stale temporaries: what both writers do before writing."""
    check_output(path)
    target = Path(os.path.abspath(path))
    _make_parents(target)
    remove_stale_temporaries(target)
    return target


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{_TEMP_TAG}{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _give_default_mode(path: Path, *, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the mode a plain open() would give."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the same format suffix; on success fsync it and rename it to `path`.

    On any exception (Ctrl-C and SIGTERM included) the temporary file is removed and `path` is untouched.
    """
    target = _prepare(path)
    if target.is_dir():
        raise SegCoreError("a folder is in the way of the output file", path=target, fix="choose a file path")
    try:
        handle, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=f".tmp{file_suffix(target)}",
                                            dir=target.parent)
    except OSError as error:
        raise os_error(error, target.parent, writing=True) from None
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _give_default_mode(tmp, directory=False)
        with open(tmp, "rb+") as written:  # on disk before the rename, so a crash never leaves an empty file
            os.fsync(written.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an existing folder is replaced)."""
    target = _prepare(path)
    if target.exists() and not target.is_dir():
        raise SegCoreError("a file is in the way of the output folder", path=target, fix="choose a folder path")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    except OSError as error:
        raise os_error(error, target.parent, writing=True) from None
    old = None
    scope = _scope.get()
    if scope is not None:
        scope.staging.add(tmp)
    try:
        yield tmp
        _give_default_mode(tmp, directory=True)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
        os.replace(tmp, target)
    except BaseException:
        if old is not None and (old / "x").exists() and not target.exists():
            os.replace(old / "x", target)  # interrupted between the two renames: put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if scope is not None:
            scope.staging.discard(tmp)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def save_figure(figure, path: str | os.PathLike, **savefig_options) -> Path:
    """Write a matplotlib figure as a PNG atomically (options go to `Figure.savefig`, e.g. dpi)."""
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", **savefig_options)
    return Path(path)
