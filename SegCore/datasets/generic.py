"""Generic layout: an images folder and a labels folder, matched by file name.

    my_dataset/
      images/case01.nii.gz  case02.nrrd  case03/ (a DICOM series folder)  ...
      labels/case01.nii.gz  case02.seg.nrrd  case03.nii.gz ...

Any format SegCore reads; image and label are paired by name without the format suffix. Channels in separate
files follow nnU-Net's naming: images/case01_0000.nii.gz, case01_0001.nii.gz with labels/case01.nii.gz.
('imagesTr'/'labelsTr' are accepted as folder names too.) Label values are used as stored.
"""

from __future__ import annotations

import re
from pathlib import Path

from SegCore.atomic import file_stem
from SegCore.datasets._common import IMAGE_SUFFIXES, LABEL_SUFFIXES, check_root, list_names, visible
from SegCore.datasets.case import Case, Dataset, ImageSource, LabelRule
from SegCore.errors import SegCoreError
from SegCore.studies.decathlon import LAYOUT as MSD_LAYOUT

NAME = "generic"
# The Decathlon's folder names too (nnU-Net's raw datasets use them).
IMAGE_FOLDERS = ("images", MSD_LAYOUT.training_images)
LABEL_FOLDERS = ("labels", MSD_LAYOUT.training_labels)
DESCRIPTION = (f"generic: images/ (or {IMAGE_FOLDERS[1]}/) and labels/ (or {LABEL_FOLDERS[1]}/) matched by "
               "file name")
CHANNEL_SUFFIX = re.compile(r"^(.*)_(\d{4})$")


def _first_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _entries(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Image files (by known suffix) and DICOM folders in `folder`, by name without suffix."""
    entries: dict[str, Path] = {}
    for path in visible(folder.iterdir()):
        if path.is_dir() or any(path.name.lower().endswith(s) for s in suffixes):
            name = path.name if path.is_dir() else file_stem(path)
            if name in entries:
                raise SegCoreError(f"two files are named {name!r}: {entries[name].name} and {path.name}",
                                   path=folder, fix="keep one file per case")
            entries[name] = path
    return entries


def looks_like(root: Path) -> bool:
    return _first_folder(root, IMAGE_FOLDERS) is not None


def read(root: str | Path) -> Dataset:
    """Pair images and labels by name. When a labels folder exists every image needs a label (and every
    label an image); without one the cases are unlabelled."""
    root = check_root(root)
    image_folder = _first_folder(root, IMAGE_FOLDERS)
    if image_folder is None:
        raise SegCoreError(f"no images folder ({' or '.join(IMAGE_FOLDERS)})", path=root,
                           fix="put the images in <dataset>/images/ and the labels in <dataset>/labels/")
    label_folder = _first_folder(root, LABEL_FOLDERS)
    images = _entries(image_folder, IMAGE_SUFFIXES)
    labels = _entries(label_folder, LABEL_SUFFIXES) if label_folder else {}
    if not images:
        raise SegCoreError("the images folder holds no image files", path=image_folder,
                           fix=f"add images ({', '.join(IMAGE_SUFFIXES)} or DICOM folders)")

    # Group nnU-Net channel files (case_0000, case_0001) when the label is named after the case.
    grouped: dict[str, list[tuple[str, Path]]] = {}
    for name, path in images.items():
        match = CHANNEL_SUFFIX.match(name)
        if match and match.group(1) not in images and (not labels or match.group(1) in labels):
            grouped.setdefault(match.group(1), []).append((match.group(2), path))
        else:
            grouped.setdefault(name, []).append(("", path))

    if label_folder is not None:
        unlabelled = sorted(set(grouped) - set(labels))
        if unlabelled:
            raise SegCoreError(f"image(s) without a label of the same name in {label_folder.name}/: "
                               f"{list_names(unlabelled)}", path=image_folder,
                               fix="add the labels, or move the unlabelled images to another folder")
        orphans = sorted(set(labels) - set(grouped))
        if orphans:
            raise SegCoreError(f"label(s) without an image of the same name: {list_names(orphans)}",
                               path=label_folder, fix="add the images or remove those labels")

    cases = []
    for name, parts in sorted(grouped.items()):
        parts.sort()
        sources = tuple(ImageSource(path, (channel,) if channel else ()) for channel, path in parts)
        cases.append(Case(name, sources, labels.get(name), LabelRule(), NAME))
    channel_names = cases[0].channel_names or ("image",)
    return Dataset(root.name, NAME, root, cases, channel_names, {0: "background"}, "unknown")
