"""NIH Pancreas-CT layout (TCIA): DICOM series per patient plus one NIfTI label per patient.

The folder and file names (PANCREAS_00XX case folders, label00XX.nii.gz under TCIA_pancreas_labels-*) and the
labels are the pancreas study's (`SegCore.studies.pancreas`, whose docstring draws the tree). A case goes with
the label of the same number.
"""

from __future__ import annotations

import re
from pathlib import Path

from SegCore.datasets._common import check_root, list_names, subfolders, visible
from SegCore.datasets.case import Case, Dataset, ImageSource, LabelRule
from SegCore.errors import SegCoreError
from SegCore.studies.pancreas import LAYOUT, STUDY

NAME = LAYOUT.name
CASES = f"{LAYOUT.case_prefix}XXXX"  # how messages name a case folder
DESCRIPTION = (f"NIH Pancreas-CT: {LAYOUT.case_prefix}00XX/<study>/<series>/*.dcm + "
               f"{LAYOUT.label_folder_prefix}-*/{LAYOUT.label_prefix}00XX{LAYOUT.label_suffix}")
CASE_PATTERN = re.compile(rf"^{re.escape(LAYOUT.case_prefix)}(\d+)$")
LABEL_PATTERN = re.compile(rf"^{re.escape(LAYOUT.label_prefix)}(\d+)\.nii(\.gz)?$")  # uncompressed accepted too
LABEL_RULE = LabelRule(LAYOUT.label_mapping, LAYOUT.unmapped)


def _case_folders(root: Path) -> dict[int, Path]:
    """Case folders directly under `root` or one wrapper folder down, by case number."""
    found: dict[int, Path] = {}
    candidates = subfolders(root) + [f for w in subfolders(root) if not CASE_PATTERN.match(w.name)
                                     for f in subfolders(w)]
    for folder in candidates:
        match = CASE_PATTERN.match(folder.name)
        if match:
            number = int(match.group(1))
            if number in found:
                raise SegCoreError(f"case {folder.name} occurs twice: {found[number]} and {folder}", path=root,
                                   fix="keep one copy of each case")
            found[number] = folder
    return found


def _label_files(root: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for folder in subfolders(root):
        if folder.name.startswith(LAYOUT.label_folder_prefix):
            for path in visible(folder.iterdir()):
                match = LABEL_PATTERN.match(path.name)
                if match:
                    found[int(match.group(1))] = path
    return found


def _series_folder(case_folder: Path) -> Path:
    """The one folder under `case_folder` that holds .dcm files (TCIA: <study>/<series>/)."""
    series = sorted({p.parent for p in case_folder.rglob("*.dcm") if not p.name.startswith(".")})
    if not series:
        raise SegCoreError("no DICOM (.dcm) files in this case folder", path=case_folder,
                           fix="restore the case's DICOM series (TCIA: <study>/<series>/*.dcm)")
    if len(series) > 1:
        raise SegCoreError(f"{len(series)} folders with DICOM files: "
                           f"{list_names(s.relative_to(case_folder) for s in series)}", path=case_folder,
                           fix=f"keep only the CT series of the case (one series folder per {CASES})")
    return series[0]


def looks_like(root: Path) -> bool:
    return bool(_case_folders(root)) or any(f.name.startswith(LAYOUT.label_folder_prefix) for f in subfolders(root))


def read(root: str | Path, *, require_labels: bool = True) -> Dataset:
    """Read an NIH Pancreas-CT download. Every label must have its DICOM case; every case needs a label
    unless `require_labels` is False."""
    root = check_root(root)
    case_folders = _case_folders(root)
    labels = _label_files(root)
    orphans = sorted(set(labels) - set(case_folders))
    if orphans:
        raise SegCoreError(f"label file(s) without a DICOM case: "
                           f"{list_names(labels[n].relative_to(root) for n in orphans)}", path=root,
                           fix=f"add the matching {CASES} DICOM folders ({LAYOUT.case_folder(orphans[0])} etc.) "
                               f"or remove those labels")
    if not case_folders:
        raise SegCoreError(f"no {CASES} case folders found (looked in the folder and one level down)",
                           path=root, fix=f"pass the folder that holds {LAYOUT.images_folder}/ (or the case folders)")
    unlabelled = sorted(set(case_folders) - set(labels))
    if unlabelled and require_labels:
        raise SegCoreError(f"case(s) without a label file: {list_names(case_folders[n].name for n in unlabelled)}",
                           path=root, fix=f"add {LAYOUT.label_folder_prefix}-*/{LAYOUT.label_file(unlabelled[0])} "
                                          "etc., or remove those cases")
    cases = [Case(folder.name, (ImageSource(_series_folder(folder), STUDY.channel_names),), labels.get(number),
                  LABEL_RULE, NAME, metadata={"case_number": number})
             for number, folder in sorted(case_folders.items())]
    return Dataset(root.name, NAME, root, cases, STUDY.channel_names, STUDY.label_names(), STUDY.modality)
