"""2018 Left Atrium Segmentation Challenge layout: one folder per case holding the LGE-MRI and its mask.

The file and folder names, the 0/255 mask values and the labels are the atrium study's
(`SegCore.studies.atrium`, whose docstring draws the tree). The mask's 255 becomes label 1.
"""

from __future__ import annotations

from pathlib import Path

from SegCore.datasets._common import check_root, check_unique_ids, list_names, subfolders
from SegCore.datasets.case import Case, Dataset, ImageSource, LabelRule
from SegCore.errors import SegCoreError
from SegCore.studies.atrium import LAYOUT, STUDY

NAME = LAYOUT.name
IMAGE_FILE = LAYOUT.image_file
LABEL_FILE = LAYOUT.label_file
DESCRIPTION = (f"LA 2018 challenge: <case>/{IMAGE_FILE} + <case>/{LABEL_FILE} "
               f"(optionally under '{LAYOUT.training_folder}/')")
LABEL_RULE = LabelRule(LAYOUT.label_mapping, LAYOUT.unmapped)


def _case_folders(root: Path) -> list[Path]:
    """Folders one or two levels below `root` that hold either of the two case files."""
    found = []
    for folder in subfolders(root):
        if (folder / IMAGE_FILE).exists() or (folder / LABEL_FILE).exists():
            found.append(folder)
        else:
            found.extend(f for f in subfolders(folder) if (f / IMAGE_FILE).exists() or (f / LABEL_FILE).exists())
    return found


def looks_like(root: Path) -> bool:
    return any(root.glob(f"*/{IMAGE_FILE}")) or any(root.glob(f"*/*/{IMAGE_FILE}"))


def read(root: str | Path, *, require_labels: bool = True) -> Dataset:
    """Read an LA 2018 dataset. A case folder with the image but no mask is an error unless `require_labels`
    is False (then the case has no label)."""
    root = check_root(root)
    folders = _case_folders(root)
    if not folders:
        raise SegCoreError(f"no case folders holding {IMAGE_FILE} found (looked one and two levels down)",
                           path=root, fix="pass the folder that holds the case folders")
    no_image = [f for f in folders if not (f / IMAGE_FILE).is_file()]
    if no_image:
        raise SegCoreError(f"{len(no_image)} case folder(s) have {LABEL_FILE} but no {IMAGE_FILE}: "
                           f"{list_names(f.relative_to(root) for f in no_image)}", path=root,
                           fix=f"restore {IMAGE_FILE} in those folders or remove them")
    no_label = [f for f in folders if not (f / LABEL_FILE).is_file()]
    if no_label and require_labels:
        raise SegCoreError(f"{len(no_label)} case folder(s) have no {LABEL_FILE}: "
                           f"{list_names(str(f.relative_to(root) / LABEL_FILE) for f in no_label)}", path=root,
                           fix=f"add the missing {LABEL_FILE} (0/{LAYOUT.mask_value} mask) or remove those folders")
    cases = []
    for folder in sorted(folders, key=lambda f: f.name):
        label = folder / LABEL_FILE
        subset = "test" if folder.parent != root and "test" in folder.parent.name.lower() else "training"
        cases.append(Case(folder.name, (ImageSource(folder / IMAGE_FILE, STUDY.channel_names),),
                          label if label.is_file() else None, LABEL_RULE, NAME, subset))
    check_unique_ids([c.case_id for c in cases], root)
    return Dataset(root.name, NAME, root, cases, STUDY.channel_names, STUDY.label_names(), STUDY.modality)
