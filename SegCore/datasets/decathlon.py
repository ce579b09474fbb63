"""Medical Segmentation Decathlon layout: a task folder with dataset.json, imagesTr/, labelsTr/, imagesTs/.

dataset.json (as distributed): {"name": "BrainTumour", "modality": {"0": "FLAIR", ...},
"labels": {"0": "background", "1": "edema", ...}, "training": [{"image": "./imagesTr/BRATS_001.nii.gz",
"label": "./labelsTr/BRATS_001.nii.gz"}, ...], "test": ["./imagesTs/BRATS_485.nii.gz", ...]}.
Multi-modal images are 4D NIfTI (one file, channels in `modality` order). Labels are stored as their values.
"""

from __future__ import annotations

import json
from pathlib import Path

from SegCore.atomic import file_stem
from SegCore.datasets._common import check_root, check_unique_ids, list_names
from SegCore.datasets.case import Case, Dataset, ImageSource, LabelRule
from SegCore.errors import SegCoreError
from SegCore.failures import os_error
from SegCore.studies.decathlon import LAYOUT

NAME = LAYOUT.name
DESCRIPTION = "Medical Segmentation Decathlon: dataset.json + imagesTr/ labelsTr/ imagesTs/"
CT_MODALITIES = {"CT"}


def looks_like(root: Path) -> bool:
    """A dataset.json with a 'training' list (nnU-Net v2's dataset.json has none: that folder is generic).
    An unreadable dataset.json counts as MSD, so that reading it reports the problem."""
    path = root / LAYOUT.description_file
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True
    return not isinstance(data, dict) or "training" in data


def _load_json(path: Path) -> dict:
    """dataset.json, checked to hold the Decathlon's fields with the right JSON types."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SegCoreError(f"cannot read dataset.json: {error}", path=path,
                           fix="repair the file (it must be the task's JSON description)") from error
    except OSError as error:
        raise os_error(error, path) from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SegCoreError(f"cannot read dataset.json: {error}", path=path,
                           fix="repair the file (it must be the task's JSON description)") from error
    if not isinstance(data, dict):
        raise SegCoreError("dataset.json must hold a JSON object", path=path, fix="repair the file")
    missing = [key for key in ("modality", "labels", "training") if key not in data]
    if missing:
        raise SegCoreError(f"dataset.json lacks the keys {missing} of the Decathlon format", path=path,
                           fix="use the task's original dataset.json (nnU-Net v2 files are read as 'generic')")
    for key in ("modality", "labels"):
        if not isinstance(data[key], dict):
            raise _wrong_type(path, key, 'an object of numbers to names ({"0": "...", "1": "..."})', data[key])
    for key in ("training", "test"):
        if not isinstance(data.get(key, []), list):
            raise _wrong_type(path, key, "a list", data[key])
    if not isinstance(data.get("name", ""), str):
        raise _wrong_type(path, "name", "a string", data["name"])
    for index, item in enumerate(data["training"]):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise _wrong_type(path, f"training[{index}]", '{"image": "./imagesTr/...", "label": "./labelsTr/..."}',
                              item)
        for key in ("image", "label"):
            if not isinstance(item[key], str):
                raise _wrong_type(path, f"training[{index}].{key}", "a file path (a string)", item[key])
    for index, item in enumerate(data.get("test", [])):
        image = item.get("image") if isinstance(item, dict) else item
        if not isinstance(image, str):
            raise _wrong_type(path, f"test[{index}]", 'an image path ("./imagesTs/...")', item)
    return data


def _wrong_type(path: Path, field: str, expected: str, value) -> SegCoreError:
    kinds = {dict: "an object ", list: "a list ", str: "a string ", bool: "a boolean ", type(None): ""}
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return SegCoreError(f"dataset.json field '{field}' must be {expected}, got {kinds.get(type(value), 'a number ')}"
                        f"{shown}", path=path, fix="repair that field (the Decathlon format: see docs/datasets.md)")


def _numbered(mapping: dict, path: Path, what: str) -> list[tuple[int, str]]:
    try:
        return sorted((int(key), str(value)) for key, value in mapping.items())
    except (AttributeError, TypeError, ValueError) as error:
        raise SegCoreError(f"dataset.json field '{what}' must map numbers to names, got {mapping!r}", path=path,
                           fix='write it as {"0": "...", "1": "..."}') from error


def read(root: str | Path, *, include_test: bool = True) -> Dataset:
    """Read an MSD task folder. Training cases have labels; test cases (imagesTs) have none.

    Raises SegCoreError listing every file dataset.json names that does not exist.
    """
    root = check_root(root)
    json_path = root / LAYOUT.description_file
    data = _load_json(json_path)
    channels = tuple(name for _, name in _numbered(data["modality"], json_path, "modality"))
    labels = dict(_numbered(data["labels"], json_path, "labels"))
    if 0 not in labels:
        raise SegCoreError("dataset.json 'labels' has no entry \"0\" (background)", path=json_path,
                           fix='add "0": "background"')
    rule = LabelRule(tuple((value, value) for value in labels), unmapped="error")

    entries: list[tuple[str, Path, Path | None]] = [("training", root / item["image"], root / item["label"])
                                                    for item in data["training"]]
    if include_test:
        for item in data.get("test", []):
            entries.append(("test", root / (item.get("image") if isinstance(item, dict) else item), None))

    missing = [p for _, image, label in entries for p in (image, label) if p is not None and not p.is_file()]
    if missing:
        raise SegCoreError(f"dataset.json lists {len(missing)} file(s) that do not exist: "
                           f"{list_names(p.relative_to(root) for p in missing)}", path=json_path,
                           fix="restore the missing files, or remove their entries from dataset.json")

    cases = [Case(file_stem(image), (ImageSource(image, channels),), label, rule, NAME, subset)
             for subset, image, label in entries]
    check_unique_ids([c.case_id for c in cases], root)
    modality = "CT" if CT_MODALITIES & set(channels) else "MRI"
    metadata = {key: data[key] for key in ("description", "reference", "licence", "release", "tensorImageSize")
                if key in data}
    return Dataset(str(data.get("name", root.name)), NAME, root, cases, channels, labels, modality, metadata)
