"""Recognise a dataset's layout from its folder and open it with the right reader."""

from __future__ import annotations

from pathlib import Path

from SegCore.datasets import atrium, decathlon, generic, muscle, pancreas, thalamus
from SegCore.datasets._common import check_root
from SegCore.datasets.case import Dataset
from SegCore.errors import SegCoreError

# In detection order: the specific layouts first, 'generic' (any images/ folder) last.
LAYOUTS = {module.NAME: module for module in (decathlon, atrium, pancreas, thalamus, muscle, generic)}


def detect_layout(root: str | Path) -> str:
    """The name of the layout of the dataset folder `root` ('decathlon', 'atrium', 'pancreas', 'thalamus',
    'muscle' or 'generic'); raises SegCoreError listing what was looked for when none matches."""
    root = check_root(root)
    for name, module in LAYOUTS.items():
        if module.looks_like(root):
            return name
    looked_for = "; ".join(module.DESCRIPTION for module in LAYOUTS.values())
    raise SegCoreError(f"not a dataset folder SegCore recognises. Looked for: {looked_for}", path=root,
                       fix="pass the dataset's top folder, or arrange the data as images/ + labels/ (generic)")


def open_dataset(root: str | Path, layout: str = "auto", **options) -> Dataset:
    """Read the dataset at `root` with its layout's reader (`layout='auto'` detects it).

    options: passed to the reader, e.g. channels=('FA', 'T1'), label_source='manual', left_right=True for
    thalamus; require_labels=False for atrium / pancreas / muscle / thalamus; include_test=False for decathlon.
    """
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise SegCoreError(f"unknown dataset layout {layout!r}", fix=f"use 'auto' or one of {list(LAYOUTS)}")
    try:
        return LAYOUTS[layout].read(root, **options)
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise SegCoreError(f"the {layout} layout does not take the option(s) {sorted(options)}",
                           fix="check the options for this layout (see docs/datasets.md)") from error
