"""`Case` and `Dataset`: what a layout reader finds on disk, as plain data, and how to load it.

A reader only looks at names and folders (fast, no voxels read). `load_case_image` / `load_case_label` then
read the files through `SegCore.io` and apply the layout's `LabelRule`, so every later stage sees label 0 as
background and 1..N as the study's labels, whatever the dataset stored (LA 2018's 0/255, FreeSurfer's 10/49).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.volume import Grid, Volume

UNMAPPED_POLICIES = ("keep", "background", "foreground", "error")


@dataclass(frozen=True)
class LabelRule:
    """How the values stored in a layout's label files become SegCore label values (0 = background).

    mapping: pairs (stored value, label value), e.g. ((0, 0), (255, 1)) for LA 2018, ((10, 1), (49, 1)) for
        the FreeSurfer thalami.
    unmapped: what happens to a stored value not in `mapping`: 'keep' it, set it to 'background' (0), set it
        to 'foreground' (1; a binary mask stored with any non-zero value), or raise an 'error' naming the file.
    """

    mapping: tuple[tuple[int, int], ...] = ()
    unmapped: str = "keep"

    def __post_init__(self):
        if self.unmapped not in UNMAPPED_POLICIES:
            raise SegCoreError(f"unknown label rule policy {self.unmapped!r}", fix=f"use one of {UNMAPPED_POLICIES}")

    def to_dict(self) -> dict:
        return {"mapping": [[int(s), int(t)] for s, t in self.mapping], "unmapped": self.unmapped}

    @classmethod
    def from_dict(cls, data: dict) -> LabelRule:
        return cls(tuple((int(s), int(t)) for s, t in data.get("mapping", ())), data.get("unmapped", "keep"))

    def describe(self) -> str:
        """A short human description: '255 -> 1, others: error'."""
        pairs = ", ".join(f"{s} -> {t}" for s, t in self.mapping if s != t)
        kept = ", ".join(str(s) for s, t in self.mapping if s == t)
        parts = [p for p in (pairs, f"kept: {kept}" if kept else "") if p]
        return "; ".join(parts + [f"other values: {self.unmapped}"])


def apply_label_rule(array: np.ndarray, rule: LabelRule, *, path: str | Path | None = None) -> np.ndarray:
    """Map stored label values to SegCore label values.

    array: (Z, Y, X) integer label array as read. Returns an array of the same shape, uint8 when every value
    fits, else uint16. Raises SegCoreError naming `path` for values the rule forbids (policy 'error') or
    values that are negative / not integers.
    """
    values = np.unique(array)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.round(values) == values):
        raise SegCoreError(f"label values must be whole numbers, found {values[values != np.round(values)][:5]}",
                           path=path, fix="save the label map with integer values (nearest-neighbour resampling)")
    lookup = {int(s): int(t) for s, t in rule.mapping}
    targets = {}
    bad = []
    for value in values.astype(np.int64).tolist():
        if value in lookup:
            targets[value] = lookup[value]
        elif rule.unmapped == "keep":
            targets[value] = value
        elif rule.unmapped == "background":
            targets[value] = 0
        elif rule.unmapped == "foreground":
            targets[value] = 0 if value == 0 else 1
        else:
            bad.append(value)
    if bad:
        expected = ", ".join(str(s) for s in sorted(lookup))
        raise SegCoreError(f"label values {bad[:10]} are not allowed here (expected {expected})", path=path,
                           fix="check that this is the right label file for this dataset layout")
    if min(targets.values(), default=0) < 0:
        raise SegCoreError(f"negative label values {[v for v in targets.values() if v < 0][:5]}", path=path,
                           fix="label values must be 0 (background) or positive")
    dtype = np.uint8 if max(targets.values(), default=0) < 256 else np.uint16
    if all(s == t for s, t in targets.items()):
        return array.astype(dtype, copy=False)
    # Map through the sorted unique values: one searchsorted, no per-value passes over the volume.
    sorted_values = np.array(sorted(targets), dtype=np.int64)
    mapped = np.array([targets[v] for v in sorted_values.tolist()], dtype=dtype)
    return mapped[np.searchsorted(sorted_values, array.astype(np.int64, copy=False))]


@dataclass(frozen=True)
class ImageSource:
    """One image entry of a case: a file (3D, or 4D with several channels) or a DICOM series folder.

    channels: the names of the channels this entry holds, in order (one name for a 3D file or a DICOM
    series; 'FLAIR', 'T1w', ... for an MSD 4D file). Empty when the layout cannot know (generic 4D files).
    """

    path: Path
    channels: tuple[str, ...]

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir() or self.path.suffix.lower() == ".dcm"

    def read(self) -> Volume:
        """The entry as a Volume through SegCore.io (a .dcm file is one slice)."""
        from SegCore.io import read_image

        return read_image(self.path)


@dataclass(frozen=True)
class Case:
    """One case of a dataset: its images (one entry per file/series), its label file, and how to read it.

    subset: 'training' or 'test' as the layout files it (MSD imagesTs, LA 'Testing Set', thalamus lists).
    metadata: JSON-able extras from the layout (case number, subject lists, ...).
    """

    case_id: str
    images: tuple[ImageSource, ...]
    label_path: Path | None
    label_rule: LabelRule
    layout: str
    subset: str = "training"
    metadata: dict = field(default_factory=dict, compare=False)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(name for source in self.images for name in source.channels)

    @property
    def image_paths(self) -> tuple[Path, ...]:
        return tuple(source.path for source in self.images)

    @property
    def has_label(self) -> bool:
        return self.label_path is not None

    def to_dict(self) -> dict:
        """JSON-able description (paths as strings)."""
        return {
            "case_id": self.case_id,
            "images": [{"path": str(s.path), "channels": list(s.channels)} for s in self.images],
            "label": None if self.label_path is None else str(self.label_path),
            "label_rule": self.label_rule.to_dict(),
            "layout": self.layout,
            "subset": self.subset,
            "metadata": self.metadata,
        }


@dataclass
class Dataset:
    """A dataset found on disk: its cases (sorted by id) and what its channels and labels mean.

    label_names: SegCore label value -> name after the label rule (0 is 'background').
    modality: 'CT' or 'MRI' (decides HU-aware normalisation later).
    """

    name: str
    layout: str
    root: Path
    cases: list[Case]
    channel_names: tuple[str, ...]
    label_names: dict[int, str]
    modality: str
    metadata: dict = field(default_factory=dict)

    def labelled_cases(self) -> list[Case]:
        """The cases that have a label file (the ones training, splits and evaluation use)."""
        return [case for case in self.cases if case.label_path is not None]

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise SegCoreError(f"no case {case_id!r} in dataset {self.name!r}", path=self.root,
                           fix=f"use one of: {', '.join(c.case_id for c in self.cases[:10])}")

    def to_dict(self) -> dict:
        return {
            "name": self.name, "layout": self.layout, "root": str(self.root),
            "channel_names": list(self.channel_names),
            "label_names": {str(k): v for k, v in sorted(self.label_names.items())},
            "modality": self.modality, "metadata": self.metadata,
            "cases": [case.to_dict() for case in self.cases],
        }


def load_case_image(case: Case) -> Volume:
    """All channels of a case on one grid.

    Returns a (C, Z, Y, X) float32 volume, channels in `case.channel_names` order (CT stays in HU).
    Raises SegCoreError naming the file when an entry has another number of channels than the layout says,
    or when two entries lie on different grids (size, spacing, origin or direction).
    """
    arrays: list[np.ndarray] = []
    first: tuple[Path, Grid] | None = None
    for source in case.images:
        volume = source.read()
        array = volume.array if volume.array.ndim == 4 else volume.array[None]
        if source.channels and array.shape[0] != len(source.channels):
            raise SegCoreError(
                f"holds {array.shape[0]} channel(s), the {case.layout} layout expects {len(source.channels)} "
                f"({', '.join(source.channels)})", path=source.path,
                fix="check the file belongs to this dataset, or fix the channel list (e.g. dataset.json modality)")
        if first is None:
            first = (source.path, volume.grid)
        elif (problem := first[1].mismatch(volume.grid)) is not None:
            raise SegCoreError(f"is not on the grid of {first[0]}: {problem}", path=source.path,
                               fix="resample all channels of a case onto one grid before using the dataset")
        arrays.append(array.astype(np.float32, copy=False))
    if first is None:
        raise SegCoreError(f"case {case.case_id} has no image files", fix="check the dataset layout")
    return Volume(np.concatenate(arrays, axis=0), first[1])


def load_case_label(case: Case, *, reference: Grid | None = None) -> Volume:
    """The case's label map with the layout's label rule applied.

    reference: when given (the image grid), the label must lie on it; io raises a SegCoreError otherwise.
    Returns a (Z, Y, X) uint8 (uint16 past 255) volume, 0 = background.
    """
    from SegCore.io import read_label

    if case.label_path is None:
        raise SegCoreError(f"case {case.case_id} has no label file", fix="pick a labelled case (training subset)")
    volume = read_label(case.label_path, reference=reference)
    return volume.with_array(apply_label_rule(volume.array, case.label_rule, path=case.label_path))


def load_case(case: Case) -> tuple[Volume, Volume | None]:
    """(image (C, Z, Y, X) float32, label (Z, Y, X) or None): the label checked against the image grid."""
    image = load_case_image(case)
    label = load_case_label(case, reference=image.grid) if case.label_path is not None else None
    return image, label
