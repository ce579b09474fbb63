"""Find prediction and reference files and pair them by case name.

A case's name is its file name without the format suffix (`case01.nii.gz`, `case01.seg.nrrd` and `case01.mha`
are all case `case01`), so predictions and references may be in different formats. Hidden files and
files of unknown formats are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from SegCore.atomic import file_stem
from SegCore.errors import SegCoreError

MISSING_CHOICES = ("error", "empty", "skip")
_SHOWN = 8  # case names listed in an error message


@dataclass(frozen=True)
class CasePair:
    """One case: its name, the reference file, and the prediction file (None when missing)."""

    case_id: str
    ref: Path
    pred: Path | None


def _readable(path: Path) -> bool:
    from SegCore.io.checks import known_suffix

    return path.is_file() and not path.name.startswith(".") and known_suffix(path) is not None


def find_cases(path: str | os.PathLike, *, what: str = "reference") -> dict[str, Path]:
    """{case name: file} for a label file or a folder of label files (not recursive), sorted by name."""
    path = Path(path)
    if not path.exists():
        raise SegCoreError(f"{what} path not found", path=path, fix="check the path (and the working directory)")
    if path.is_file():
        if not _readable(path):
            raise SegCoreError(f"the {what} is not a label file SegCore reads", path=path,
                               fix="use .nii, .nii.gz, .nrrd, .seg.nrrd, .nhdr, .mha or .mhd")
        return {file_stem(path): path}
    cases: dict[str, Path] = {}
    for item in sorted(path.iterdir()):
        if not _readable(item):
            continue
        name = file_stem(item)
        if name in cases:
            raise SegCoreError(f"two {what} files are case {name!r}: {cases[name].name} and {item.name}",
                               path=path, fix="keep one file per case")
        cases[name] = item
    if not cases:
        raise SegCoreError(f"no {what} label files in the folder", path=path,
                           fix="pass a folder of .nii.gz / .nrrd / .seg.nrrd / .mha files, or one file")
    return cases


def listed(names: list[str]) -> str:
    """The first few names, comma-separated, and how many more there are."""
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def pair_cases(pred: str | os.PathLike, ref: str | os.PathLike, *, missing: str = "error"
               ) -> tuple[list[CasePair], list[str]]:
    """Pair each reference case with its prediction by name.

    pred, ref: a file or a folder each. Two single files are one case whatever their names.
    missing: what to do with a reference case that has no prediction: 'error' (raise, listing them),
    'empty' (keep it with pred=None: scored as an empty prediction) or 'skip' (leave it out).
    Returns (pairs in reference-name order, names of predictions that have no reference: not scored).
    """
    if missing not in MISSING_CHOICES:
        raise SegCoreError(f"unknown missing-case rule {missing!r}", fix=f"use one of {', '.join(MISSING_CHOICES)}")
    refs = find_cases(ref, what="reference")
    preds = find_cases(pred, what="prediction")
    if Path(pred).is_file() and Path(ref).is_file():
        (ref_name, ref_path), (pred_path,) = next(iter(refs.items())), preds.values()
        return [CasePair(ref_name, ref_path, pred_path)], []
    without_pred = [name for name in refs if name not in preds]
    extra = [name for name in preds if name not in refs]
    if len(without_pred) == len(refs):
        raise SegCoreError(f"no prediction matches a reference case by name (references: {listed(list(refs))}; "
                           f"predictions: {listed(list(preds))})", path=pred,
                           fix="name each prediction like its reference (case01.nii.gz <-> case01.seg.nrrd)")
    if without_pred and missing == "error":
        raise SegCoreError(f"{len(without_pred)} reference case(s) have no prediction: {listed(without_pred)}",
                           path=pred, fix="add the missing predictions, or pass --missing empty to score them as "
                                          "empty predictions, or --missing skip to leave them out")
    pairs = [CasePair(name, path, preds.get(name)) for name, path in refs.items()
             if name in preds or missing == "empty"]
    return pairs, extra
