"""Small helpers the layout readers share: file names, listing folders, and error messages that list files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from SegCore.errors import SegCoreError
from SegCore.failures import os_error
from SegCore.io.checks import IMAGE_READ_SUFFIXES, SEGMENTATION_SUFFIX, stat_input

# Image formats a layout may hold (read through SegCore.io); '.seg.nrrd' only as labels.
IMAGE_SUFFIXES = IMAGE_READ_SUFFIXES
LABEL_SUFFIXES = IMAGE_READ_SUFFIXES + (SEGMENTATION_SUFFIX,)


def visible(paths: Iterable[Path]) -> list[Path]:
    """Sorted paths without hidden entries (dot files, macOS '._' copies as found in MSD archives)."""
    return sorted(p for p in paths if not p.name.startswith("."))


def subfolders(folder: Path) -> list[Path]:
    return visible(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def list_names(paths: Iterable[Path | str], limit: int = 8) -> str:
    """'a, b, c and 4 more' for an error message."""
    names = [str(p) for p in paths]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_root(root: str | Path) -> Path:
    """`root` as an existing folder, or a SegCoreError."""
    root = Path(root)
    if not stat.S_ISDIR(stat_input(root, "dataset folder").st_mode):
        raise SegCoreError("expected a dataset folder, got a file", path=root, fix="pass the dataset's top folder")
    try:
        os.scandir(root).close()
    except OSError as error:
        raise os_error(error, root, what="dataset folder") from error
    return root


def check_unique_ids(ids: Iterable[str], root: Path) -> None:
    seen: set[str] = set()
    duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
    if duplicates:
        raise SegCoreError(f"case ids occur more than once: {list_names(duplicates)}", path=root,
                           fix="keep one copy of each case")
