"""Abdominal muscle CT layout (the 'sarco' dataset): each scan's DICOM next to a NIfTI label of the same name.

A scan is one DICOM slice <scan>.dcm (as the study trained on) or a <scan>/ folder holding a series; its label
is <scan>.nii.gz beside it. Suffixes, the binary label rule (the study's ToBinary: non-zero -> 1) and the labels
are the muscle study's (`SegCore.studies.muscle`).
"""

from __future__ import annotations

from pathlib import Path

from SegCore.datasets._common import check_root, list_names, visible
from SegCore.datasets.case import Case, Dataset, ImageSource, LabelRule
from SegCore.errors import SegCoreError
from SegCore.studies.muscle import LAYOUT, STUDY

NAME = LAYOUT.name
SCAN_SUFFIX = LAYOUT.scan_suffix
LABEL_SUFFIX = LAYOUT.label_suffix
DESCRIPTION = f"muscle CT: <scan>{SCAN_SUFFIX} or <scan>/ (DICOM series) + <scan>{LABEL_SUFFIX} label, side by side"
LABEL_RULE = LabelRule(LAYOUT.label_mapping, LAYOUT.unmapped)


def _scans(root: Path) -> dict[str, Path]:
    """DICOM scans directly under `root`: single .dcm files and folders holding .dcm files, by name."""
    scans: dict[str, Path] = {}
    for entry in visible(root.iterdir()):
        if entry.is_file() and entry.suffix.lower() == SCAN_SUFFIX:
            scans[entry.stem] = entry
        elif entry.is_dir() and any(p.suffix.lower() == SCAN_SUFFIX for p in entry.iterdir()):
            scans[entry.name] = entry
    return scans


def _labels(root: Path) -> dict[str, Path]:
    return {p.name[: -len(LABEL_SUFFIX)]: p for p in visible(root.glob(f"*{LABEL_SUFFIX}")) if p.is_file()}


def _series_of_files(root: Path) -> dict[str, str]:
    """File name -> SeriesInstanceUID of the .dcm files directly in `root`; each must be its own series.

    One scan of the folder's headers when the dataset is opened: it finds unreadable files and a multi-slice
    series left flat in the root (which must be a <scan>/ folder), before any case is loaded."""
    from SegCore.io import list_dicom_series

    by_file = {}
    for series in list_dicom_series(root):
        if len(series.files) > 1:
            raise SegCoreError(f"{len(series.files)} .dcm files belong to one series ({series.series_uid}): "
                               f"{list_names(f.name for f in series.files)}", path=root,
                               fix=f"put a multi-slice series in its own folder <scan>/ next to <scan>{LABEL_SUFFIX}")
        by_file[series.files[0].name] = series.series_uid
    return by_file


def looks_like(root: Path) -> bool:
    return bool(set(_scans(root)) & set(_labels(root)))


def read(root: str | Path, *, require_labels: bool = True) -> Dataset:
    """Pair every scan with its label by name. A label without a scan is an error; so is a scan without a
    label unless `require_labels` is False."""
    root = check_root(root)
    scans, labels = _scans(root), _labels(root)
    if not scans:
        raise SegCoreError(f"no DICOM scans (<scan>{SCAN_SUFFIX} files or <scan>/ folders of {SCAN_SUFFIX} files) "
                           "found", path=root,
                           fix=f"pass the folder that holds the scans and their {LABEL_SUFFIX} labels")
    orphans = sorted(set(labels) - set(scans))
    if orphans:
        raise SegCoreError(f"label(s) without a DICOM scan of the same name: "
                           f"{list_names(labels[n].name for n in orphans)}", path=root,
                           fix=f"add the scans (<name>{SCAN_SUFFIX} or <name>/) or remove those labels")
    unlabelled = sorted(set(scans) - set(labels))
    if unlabelled and require_labels:
        raise SegCoreError(f"scan(s) without a label <name>{LABEL_SUFFIX}: {list_names(unlabelled)}", path=root,
                           fix="add the labels or remove those scans")
    series = _series_of_files(root) if any(p.is_file() for p in scans.values()) else {}
    unreadable = [p.name for p in scans.values() if p.is_file() and p.name not in series]
    if unreadable:
        raise SegCoreError(f"not readable as DICOM images: {list_names(unreadable)}", path=root,
                           fix="re-export those scans, or remove them")
    cases = [Case(name, (ImageSource(path, STUDY.channel_names),), labels.get(name), LABEL_RULE, NAME,
                  metadata={"form": "series" if path.is_dir() else "slice"})
             for name, path in sorted(scans.items())]
    return Dataset(root.name, NAME, root, cases, STUDY.channel_names, STUDY.label_names(), STUDY.modality)
