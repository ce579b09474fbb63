"""What a study file declares: a `Study` with its `Label`s, `Channel`s, dataset `Layout` and, for the Decathlon,
its `MsdTask`s.

Plain frozen dataclasses of strings, numbers and tuples, standard library only: `segcore --help` reads its
choices from here without loading numpy, and `to_dict()` gives the JSON a checkpoint or a Slicer module can carry.
A later issue adds preprocessing, network, loss, sampler, training and inference settings as further fields of
`Study`, and SNOMED CT codes in `Label.terminology`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from SegCore.errors import SegCoreError


@dataclass(frozen=True)
class Code:
    """One coded concept as DICOM code sequences and Slicer's terminologies hold it,
    e.g. Code("SCT", "15776009", "Pancreas")."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class Terminology:
    """A segment's DICOM terminology (category, type, optional modifier such as left / right)."""

    category: Code
    type: Code
    modifier: Code | None = None


@dataclass(frozen=True)
class Label:
    """One label value of a study, after the layout's label rule (0 is background).

    colour_rgb: 0..255 per component; colour_source says where the colour comes from (a Slicer colour table entry
    or a SegStudies choice). terminology: the segment's DICOM terminology, None until the codes are added.
    """

    value: int
    name: str
    colour_rgb: tuple[int, int, int]
    colour_source: str
    terminology: Terminology | None = None


@dataclass(frozen=True)
class Channel:
    """One input channel: its name (as the layout and the model see it) and, where the layout stores each channel
    in its own file, that file's path inside a case folder."""

    name: str
    file: str | None = None
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class Layout:
    """The dataset layout a study's data comes in: the name of its reader in SegCore.datasets, and how its label
    files store values (a `LabelRule` as plain data).

    label_mapping: pairs (stored value, label value). unmapped: what a stored value not in the mapping becomes:
    'keep', 'background', 'foreground' (non-zero -> 1) or 'error'. Each study file extends this with its own
    file-name facts.
    """

    name: str
    label_mapping: tuple[tuple[int, int], ...] = ()
    unmapped: str = "keep"


@dataclass(frozen=True)
class MsdTask:
    """One Medical Segmentation Decathlon task as its dataset.json describes it.

    channels: dataset.json 'modality' in key order; labels: dataset.json 'labels'; file_prefix / file_digits:
    the case file names ('BRATS_' and 3 give BRATS_001.nii.gz; 0 digits: no padding, spleen_2.nii.gz);
    num_training / num_test: dataset.json 'numTraining' / 'numTest'.
    """

    number: int
    name: str
    modality: str
    channels: tuple[str, ...]
    labels: tuple[Label, ...]
    file_prefix: str
    file_digits: int
    num_training: int
    num_test: int

    @property
    def folder(self) -> str:
        """'Task01_BrainTumour': the task's folder as distributed."""
        return f"Task{self.number:02d}_{self.name}"

    def file_name(self, number: int) -> str:
        """The image / label file name of case `number`, e.g. 'BRATS_001.nii.gz'."""
        return f"{self.file_prefix}{number:0{self.file_digits}d}.nii.gz"


@dataclass(frozen=True)
class Study:
    """One study SegStudies reproduces, as data.

    name: the key ('atrium') the CLI and the registry use. module: its Slicer module. modality: 'CT' or 'MRI'
    ('per task' for the Decathlon). channels: the input channels in model order. labels: every label value with
    its name and colour, background first. label_sets: alternative label sets by name (thalamus 'left_right').
    tasks: the MSD tasks (Decathlon only). source: the original repository (docs/studies.md summarises it).
    """

    name: str
    title: str
    module: str
    modality: str
    layout: Layout
    channels: tuple[Channel, ...]
    labels: tuple[Label, ...]
    label_sets: tuple[tuple[str, tuple[Label, ...]], ...] = ()
    tasks: tuple[MsdTask, ...] = ()
    source: str = ""

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(channel.name for channel in self.channels)

    def channel(self, name: str) -> Channel:
        """The channel called `name`; SegCoreError listing the study's channels otherwise."""
        return named(self.channels, name, f"{self.name} channel")

    def label_set(self, name: str | None = None) -> tuple[Label, ...]:
        """`labels` (name None) or the alternative set `name`; SegCoreError listing the sets otherwise."""
        if name is None:
            return self.labels
        sets = dict(self.label_sets)
        if name not in sets:
            raise SegCoreError(f"the {self.name} study has no label set {name!r}",
                               fix=f"use one of {', '.join(sets) or '(none)'}")
        return sets[name]

    def label_names(self, label_set: str | None = None) -> dict[int, str]:
        """Label value -> name (0: 'background'), as `Dataset.label_names` holds it."""
        return {label.value: label.name for label in self.label_set(label_set)}

    def task(self, name: str) -> MsdTask:
        """The MSD task called `name` ('BrainTumour', 'Task01_BrainTumour' or 'braintumour')."""
        for task in self.tasks:
            if name.lower() in (task.name.lower(), task.folder.lower()):
                return task
        raise SegCoreError(f"unknown Decathlon task {name!r}",
                           fix=f"use one of {', '.join(task.name for task in self.tasks) or '(none)'}")

    def to_dict(self) -> dict:
        """JSON-able: every field, nested dataclasses as dicts, tuples as lists."""
        return _jsonable(dataclasses.asdict(self))


def named(items: tuple, name: str, what: str):
    """The item of `items` whose `.name` is `name`; SegCoreError listing the names otherwise."""
    for item in items:
        if item.name == name:
            return item
    raise SegCoreError(f"unknown {what} {name!r}", fix=f"choose from {', '.join(i.name for i in items) or '(none)'}")


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
