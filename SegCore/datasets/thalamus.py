"""Thalamus benchmark layout (HCP-processed data): one folder per subject with diffusion maps, T1 and masks.

The channel files, the label sources with their stored thalamus values (FreeSurfer 10 / 49, QuickNAT 7 / 25),
the subject lists and the labels are the thalamus study's (`SegCore.studies.thalamus`, whose docstring draws
the tree). The input channels are any combination of the study's channels; each is one file.

    dataset = read(root, channels=("FA", "T1"), label_source="manual", subjects_file="fine_tuning_subjects.txt")
    [case.case_id for case in dataset.labelled_cases()]     # the listed subjects that have manual/manual.nii.gz

A label source every subject has (FreeSurfer, STAPLE, FSL, QuickNAT) is required of each subject; the manual
labels exist for some subjects only, and the others are read as unlabelled.
"""

from __future__ import annotations

from pathlib import Path

from SegCore.datasets._common import check_root, list_names, subfolders, visible
from SegCore.datasets.case import Case, Dataset, ImageSource, LabelRule
from SegCore.datasets.splits import read_case_list
from SegCore.errors import SegCoreError
from SegCore.studies.thalamus import LAYOUT, STUDY

NAME = LAYOUT.name
CHANNEL_FILES = {channel.name: channel.file for channel in STUDY.channels}
DEFAULT_CHANNELS = STUDY.channel_names
DESCRIPTION = "thalamus (HCP): <subject>/" + ", ".join(CHANNEL_FILES.values())
# What makes a folder a subject: a channel folder (diffusion/) or a channel file directly in it (the T1).
CHANNEL_FOLDERS = tuple(sorted({Path(f).parent.as_posix() for f in CHANNEL_FILES.values()} - {"."}))
TOP_LEVEL_FILES = tuple(f for f in CHANNEL_FILES.values() if Path(f).parent == Path("."))
SUBJECT_MARKS = " or ".join([f"{folder}/" for folder in CHANNEL_FOLDERS] + list(TOP_LEVEL_FILES))


def label_rule(source: str = LAYOUT.default_label_source, *, left_right: bool = False) -> LabelRule:
    """Both thalami -> 1 (the study's single label), or left -> 1 and right -> 2; every other value -> 0."""
    stored = LAYOUT.label_source(source)
    return LabelRule(((stored.left, 1), (stored.right, 2 if left_right else 1)), unmapped=LAYOUT.unmapped)


def _is_subject(folder: Path) -> bool:
    return any((folder / f).is_dir() for f in CHANNEL_FOLDERS) or any((folder / f).is_file() for f in TOP_LEVEL_FILES)


def looks_like(root: Path) -> bool:
    return any(_is_subject(f) for f in subfolders(root))


def _list_path(root: Path, subjects_file: str | Path) -> Path:
    """A relative `subjects_file` names a list in the dataset folder when one is there ('training_subjects.txt'),
    else a path from the working folder; an absolute one is itself."""
    path = Path(subjects_file)
    if not path.is_absolute() and (root / path).is_file():
        return root / path
    if not path.is_file():
        raise SegCoreError(f"no subject list {path}", path=path if path.is_absolute() else root / path,
                           fix="write the list (one subject id per line), or read every subject "
                               "(--set data.options.subjects_file=null)")
    return path


def read(root: str | Path, *, channels: tuple[str, ...] | list[str] = DEFAULT_CHANNELS,
         label_source: str = LAYOUT.default_label_source,
         left_right: bool = False, subjects_file: str | Path | None = None, require_labels: bool = True) -> Dataset:
    """Read the subjects under `root` (or those listed in `subjects_file`) with the given input channels.

    channels: any of the study's five, in the order given (the model's channel order). label_source: one of
    LAYOUT.label_sources. subjects_file: a list of subject ids (see `_list_path`).
    Raises SegCoreError naming the first missing channel file, a listed subject that has no folder, or a
    missing label file of a source every subject has (unless `require_labels` is False). The manual labels
    (a source only some subjects have) leave the others unlabelled; none at all is an error.
    """
    root = check_root(root)
    channels = tuple(channels)
    unknown = [c for c in channels if c not in CHANNEL_FILES]
    if unknown or not channels or len(set(channels)) != len(channels):
        raise SegCoreError(f"thalamus channels must be distinct names of the study's channels, got {list(channels)}",
                           fix=f"choose from {list(CHANNEL_FILES)}")
    source = LAYOUT.label_source(label_source)
    label_file = source.file
    subjects = [f for f in subfolders(root) if _is_subject(f)]
    if subjects_file is not None:
        subjects_file = _list_path(root, subjects_file)
        wanted = read_case_list(subjects_file)
        by_name = {f.name: f for f in subjects}
        absent = [s for s in wanted if s not in by_name]
        if absent:
            raise SegCoreError(f"listed subject(s) have no folder under {root}: {list_names(absent)}",
                               path=subjects_file, fix="correct the list or restore the subject folders")
        subjects = [by_name[s] for s in wanted]
    if not subjects:
        raise SegCoreError(f"no subject folders (with {SUBJECT_MARKS}) found",
                           path=root, fix="pass the folder that holds the subject folders (HCP_processed_data)")

    suffix = LAYOUT.subject_list_suffix
    lists = {p.name[: -len(suffix)]: set(read_case_list(p)) for p in visible(root.glob(f"*{suffix}"))}
    rule = label_rule(label_source, left_right=left_right)
    cases = []
    for folder in subjects:
        for channel in channels:
            if not (folder / CHANNEL_FILES[channel]).is_file():
                raise SegCoreError(f"subject {folder.name} has no {channel} channel ({CHANNEL_FILES[channel]})",
                                   path=folder / CHANNEL_FILES[channel],
                                   fix="restore the file, choose other channels, or leave the subject out "
                                       "(subjects_file)")
        label = folder / label_file
        if not label.is_file():
            if require_labels and source.every_subject:
                raise SegCoreError(f"subject {folder.name} has no {label_source} label file", path=label,
                                   fix="restore it, pick another label source, or pass require_labels=False")
            label = None
        member_of = sorted(name for name, ids in lists.items() if folder.name in ids)
        subset = "test" if any(name.startswith("test") for name in member_of) else "training"
        cases.append(Case(folder.name, tuple(ImageSource(folder / CHANNEL_FILES[c], (c,)) for c in channels),
                          label, rule, NAME, subset, {"subject_lists": member_of, "label_source": label_source}))
    if require_labels and not any(case.label_path is not None for case in cases):
        raise SegCoreError(f"none of the {len(cases)} subject(s) has a {label_source} label ({label_file})",
                           path=root, fix="pick another label source (data.options.label_source), or other subjects")
    names = STUDY.label_names("left_right" if left_right else None)
    return Dataset(root.name, NAME, root, cases, tuple(channels), names, STUDY.modality,
                   {"label_source": label_source, "subject_lists": sorted(lists),
                    "subjects_file": None if subjects_file is None else str(subjects_file)})
