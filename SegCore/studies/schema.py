"""What a study file declares: a `Study` with its `Label`s, `Channel`s, dataset `Layout` and, for the Decathlon,
its `MsdTask`s.

Plain frozen dataclasses of strings, numbers and tuples, standard library only: `segcore --help` reads its
choices from here without loading numpy, and `to_dict()` gives the JSON a checkpoint or a Slicer module can carry.
`Study.preset` holds the study's published settings as a partial plan (the keys of plan.json: preprocessing,
network, loss, sampler, training and inference); `Study.protocol` lists the `Stage`s `segcore run` runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from SegCore.errors import SegCoreError


@dataclass(frozen=True)
class Code:
    """One coded concept as DICOM code sequences and Slicer's terminologies hold it,
    e.g. Code("SCT", "15776009", "Pancreas")."""

    scheme: str
    value: str
    meaning: str


# The terminology lists 3D Slicer ships (Modules/Loadable/Terminologies/Resources), by the context name a segment's
# TerminologyEntry tag gives: SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json (Slicer's default) and
# SegmentationCategoryTypeModifier-DICOM-Master.json (DICOM PS3.16 CID 7150/7151 and their groups).
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
# The anatomic region context Slicer writes after the type, also when no region is chosen.
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Terminology:
    """A segment's DICOM terminology (category, type, optional modifier such as left / right).

    context: the Slicer terminology list whose entry it is (GENERAL_ANATOMY or DICOM_MASTER). source: where the
    codes were read and, when no exact concept exists, why this one is the nearest (provenance, not compared).

        left = Terminology(Code("SCT", "123037004", "Anatomical Structure"), Code("SCT", "119406000", "Thalamus"),
                           Code("SCT", "7771000", "Left"))
        left.to_slicer_entry()   # 'Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^
                                 #  Anatomical Structure~SCT^119406000^Thalamus~SCT^7771000^Left~Anatomic codes -
                                 #  DICOM master list~^^~^^'
    """

    category: Code
    type: Code
    modifier: Code | None = None
    context: str = GENERAL_ANATOMY
    source: str = field(default="", compare=False)

    def to_slicer_entry(self) -> str:
        """Slicer's TerminologyEntry tag value, as vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry
        writes it: 'context~category~type~modifier~anatomic context~region~region modifier', each code
        'SCHEME^VALUE^MEANING' ('^^' when absent); no anatomic region is given."""
        codes = [self.category, self.type, self.modifier]
        texts = [self.context, *(text for code in codes if code for text in (code.scheme, code.value, code.meaning))]
        # The format has no escapes: these marks separate its fields, its codes and the segment's tags.
        for text in texts:
            if any(mark in text for mark in "~^|\n"):
                raise SegCoreError(f"terminology text {text!r} holds one of ~ ^ | or a line break, which the "
                                   "TerminologyEntry format cannot carry", fix="write the code without them")
        parts = [f"{code.scheme}^{code.value}^{code.meaning}" if code else "^^" for code in codes]
        return "~".join([self.context, *parts, ANATOMIC_CONTEXT, "^^", "^^"])

    @classmethod
    def from_slicer_entry(cls, text: str) -> Terminology:
        """The Terminology of a TerminologyEntry tag value (the inverse of `to_slicer_entry`; an anatomic region,
        which SegStudies does not use, is dropped). SegCoreError when it is not one."""
        parts = text.split("~")
        codes = [part.split("^") for part in parts[1:4]]
        if len(parts) != 7 or any(len(code) != 3 for code in codes) or "" in codes[0] + codes[1]:
            raise SegCoreError(f"not a Slicer TerminologyEntry: {text!r}",
                               fix="give 'context~S^V^M~S^V^M~S^V^M~anatomic context~S^V^M~S^V^M'")
        category, type_, modifier = (Code(*code) if any(code) else None for code in codes)
        return cls(category, type_, modifier, parts[0])


@dataclass(frozen=True)
class Label:
    """One label value of a study, after the layout's label rule (0 is background).

    colour_rgb: 0..255 per component; colour_source says where the colour comes from (a Slicer colour table entry
    or a SegStudies choice). terminology: the segment's DICOM terminology (SNOMED CT codes as Slicer's terminology
    lists hold them, SegCore.studies.terminology); None for the background.
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


STAGE_KINDS = ("train", "test")


@dataclass(frozen=True)
class Stage:
    """One step of a study's published protocol, as `segcore run` runs it (docs/studies.md, "Protocols").

    name: the stage's folder under the run ('axial', 'locator', 'fold0-X-S', 'test-fold0'). kind: 'train' (a
    training run: RUN/<name>/ is a `segcore train` run folder) or 'test' (predict the held-out cases with the
    models of `models`, then evaluate: RUN/<name>/predictions, RUN/<name>/evaluation).
    plan: train: a partial plan merged over the study's preset (the keys of plan.json); test: keys of the
    plan's "inference" section merged over the first model's. A string "@<stage>" anywhere in it stands for
    that earlier train stage's best.pt (e.g. {"training": {"init": "@fold0-X-S"}}).
    models: test: the train stages whose best.pt are the Predictor's members (an ensemble, or the planes of
    coarse-to-fine). fold: the cross-validation fold a stage belongs to (`segcore run --fold K` keeps those).
    loss_target: train: the average training loss the original asks a stage to reach before the next one (the
    pancreas README's 0.3 / 0.2 / 0.15 for modes S / I / J); `segcore run` says when the last epoch's is above it,
    and the report lists each against it.
    """

    name: str
    kind: str
    plan: dict = field(default_factory=dict)
    models: tuple[str, ...] = ()
    fold: int | None = None
    loss_target: float | None = None


@dataclass(frozen=True)
class Study:
    """One study SegStudies reproduces, as data.

    name: the key ('atrium') the CLI and the registry use. module: its Slicer module. modality: 'CT' or 'MRI'
    ('per task' for the Decathlon). channels: the input channels in model order. labels: every label value with
    its name and colour, background first. label_sets: alternative label sets by name (thalamus 'left_right').
    tasks: the MSD tasks (Decathlon only). source: the original repository (docs/studies.md summarises it).
    preset: the published settings as a partial plan (SegCore.training.config merges it over the defaults).
    protocol: the stages of the published protocol, in order (`segcore run`). demo: how `segcore demo --study`
    runs it on a phantom: {"cases", "size", "fold", "overrides"} (phantom cases and size, the fold to run, --set
    lines over --tiny that make the short training learn).
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
    preset: dict = field(default_factory=dict)
    protocol: tuple[Stage, ...] = ()
    demo: dict = field(default_factory=dict)

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
