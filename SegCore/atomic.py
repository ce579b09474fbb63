"""Write outputs so that nothing half-written is ever left behind, and never over an input.

Every writer in SegCore goes through `atomic_file` (one file) or `atomic_dir` (a folder such as a DICOM series):
the content is written to a hidden temporary name beside the target, then renamed over it in one step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from SegCore.errors import SegCoreError

# Suffixes that must survive in the temporary name because writers choose the format from them.
_DOUBLE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".tar.gz")


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _give_default_mode(path: Path, *, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the mode a plain open() would give."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def refuse_overwriting_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Raise if `output` is one of `inputs` (same file after resolving links)."""
    out = Path(output).resolve()
    for item in inputs:
        if Path(item).resolve() == out:
            raise SegCoreError(
                "the output would overwrite an input", path=output, fix="choose another output path"
            )


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the same format suffix; on success rename it to `path`.

    On any exception the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    if target.is_dir():
        raise SegCoreError("a folder is in the way of the output file", path=target, fix="choose a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{file_suffix(target)}",
                                        dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _give_default_mode(tmp, directory=False)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an existing folder is replaced)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise SegCoreError("a file is in the way of the output folder", path=target, fix="choose a folder path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _give_default_mode(tmp, directory=True)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_figure(figure, path: str | os.PathLike, **savefig_options) -> Path:
    """Write a matplotlib figure as a PNG atomically (options go to `Figure.savefig`, e.g. dpi)."""
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", **savefig_options)
    return Path(path)
