"""Recognise a dataset's layout from its folder and open it with the right reader."""

from __future__ import annotations

import os
from pathlib import Path

from SegCore.atomic import add_inputs
from SegCore.datasets import atrium, decathlon, generic, muscle, pancreas, thalamus
from SegCore.datasets._common import check_root
from SegCore.datasets.case import Dataset
from SegCore.errors import SegCoreError

# In detection order: the specific layouts first, 'generic' (any images/ folder) last.
LAYOUTS = {module.NAME: module for module in (decathlon, atrium, pancreas, thalamus, muscle, generic)}
# How far above a folder `enclosing_dataset` looks (PANCREAS_0001/<study>/<series>/ is three levels down).
ENCLOSING_LEVELS = 3


def detect_layout(root: str | Path) -> str:
    """The name of the layout of the dataset folder `root` ('decathlon', 'atrium', 'pancreas', 'thalamus',
    'muscle' or 'generic'); raises SegCoreError listing what was looked for when none matches."""
    root = check_root(root)
    for name, module in LAYOUTS.items():
        if module.looks_like(root):
            return name
    enclosing = enclosing_dataset(root)
    if enclosing is not None:
        raise SegCoreError(f"not a dataset folder: {enclosing[1]}", path=root,
                           fix=f"pass the dataset's top folder (segcore inspect {enclosing[0]})")
    looked_for = "; ".join(module.DESCRIPTION for module in LAYOUTS.values())
    raise SegCoreError(f"not a dataset folder SegCore recognises. Looked for: {looked_for}", path=root,
                       fix="pass the dataset's top folder, or arrange the data as images/ + labels/ (generic)")


def open_dataset(root: str | Path, layout: str = "auto", **options) -> Dataset:
    """Read the dataset at `root` with its layout's reader (`layout='auto'` detects it).

    options: passed to the reader, e.g. channels=('FA', 'T1'), label_source='manual', left_right=True for
    thalamus; require_labels=False for atrium / pancreas / muscle / thalamus; include_test=False for decathlon.
    """
    add_inputs([root])
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise SegCoreError(f"unknown dataset layout {layout!r}", fix=f"use 'auto' or one of {list(LAYOUTS)}")
    try:
        return LAYOUTS[layout].read(root, **options)
    except SegCoreError as error:
        enclosing = enclosing_dataset(root)
        if enclosing is None:
            raise
        raise SegCoreError(error.problem, path=error.path,
                           fix=f"{enclosing[1]}: pass that folder (segcore inspect {enclosing[0]})"
                           ) from error
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise SegCoreError(f"the {layout} layout does not take the option(s) {sorted(options)}",
                           fix="check the options for this layout (see docs/datasets.md)") from error


def enclosing_dataset(root: str | Path) -> tuple[str, str] | None:
    """When `root` is a part of a dataset (a subset, case or image folder of it) rather than the whole one: the
    dataset's top folder (relative when `root` is) and a sentence saying so, e.g. ("data/pancreas", "this looks
    like the Pancreas-CT folder of the NIH Pancreas-CT dataset in data/pancreas"). None otherwise. Looks up to
    ENCLOSING_LEVELS folders above `root` and takes the highest that holds `root` as one of its parts."""
    root = Path(root)
    resolved = root.resolve()
    if not resolved.is_dir():
        return None
    found = None
    for top in resolved.parents[:ENCLOSING_LEVELS]:
        for module in LAYOUTS.values():
            try:
                if _is_part(module, top, resolved.relative_to(top)) and module.looks_like(top):
                    found = (top, module)
                    break
            except (OSError, SegCoreError):  # a folder above that this user may not list, or a broken dataset
                continue
    if found is None:
        return None
    top, module = found
    name = module.DESCRIPTION.split(":")[0]
    part, shown = resolved.relative_to(top).as_posix(), _shown(top, root)
    return shown, f"this looks like the {part} folder of the {name} dataset in {shown}"


def _is_part(module, top: Path, part: Path) -> bool:
    """Whether the folder `top / part` is a part of `top` read as `module`'s layout (names and files only)."""
    first = top / part.parts[0]
    ancestry = [top.joinpath(*part.parts[:n]) for n in range(1, len(part.parts) + 1)]
    if module is decathlon:
        return True  # anything inside a task folder (imagesTr/, labelsTr/, imagesTs/)
    if module is atrium:
        return any(word in first.name.lower() for word in ("train", "test")) or any(
            (f / atrium.IMAGE_FILE).is_file() or (f / atrium.LABEL_FILE).is_file() for f in ancestry)
    if module is pancreas:  # a part of a download that has its labels: the wrapper, a case or its series
        return bool(pancreas._label_files(top)) and not pancreas._label_files(top / part)
    if module is thalamus:
        return any(thalamus._is_subject(f) for f in ancestry)
    if module is muscle:
        return part.parts[0] in muscle._scans(top)
    return part.parts[0] in generic.IMAGE_FOLDERS + generic.LABEL_FOLDERS


def _shown(path: Path, given: Path) -> str:
    """`path` as the user would type it: relative to the working folder when they gave a relative path."""
    return str(path) if given.is_absolute() else os.path.relpath(path)
