"""Thalamus benchmark layout (HCP-processed data): one folder per subject with diffusion maps, T1 and masks.

The channel files, the label sources with their stored thalamus values (FreeSurfer 10 / 49, QuickNAT 7 / 25),
the subject lists and the labels are the thalamus study's (`SegCore.studies.thalamus`, whose docstring draws
the tree). The input channels are any combination of the study's channels; each is one file.
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


def read(root: str | Path, *, channels: tuple[str, ...] = DEFAULT_CHANNELS,
         label_source: str = LAYOUT.default_label_source,
         left_right: bool = False, subjects_file: str | Path | None = None, require_labels: bool = True) -> Dataset:
    """Read the subjects under `root` (or those listed in `subjects_file`) with the given input channels.

    Raises SegCoreError naming the first missing channel file, a listed subject that has no folder, or a
    missing label file (unless `require_labels` is False).
    """
    root = check_root(root)
    unknown = [c for c in channels if c not in CHANNEL_FILES]
    if unknown or not channels:
        raise SegCoreError(f"unknown thalamus channel(s) {unknown}", fix=f"choose from {list(CHANNEL_FILES)}")
    label_file = LAYOUT.label_source(label_source).file
    subjects = [f for f in subfolders(root) if _is_subject(f)]
    if subjects_file is not None:
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
            if require_labels:
                raise SegCoreError(f"subject {folder.name} has no {label_source} label file", path=label,
                                   fix="restore it, pick another label source, or pass require_labels=False")
            label = None
        member_of = sorted(name for name, ids in lists.items() if folder.name in ids)
        subset = "test" if any(name.startswith("test") for name in member_of) else "training"
        cases.append(Case(folder.name, tuple(ImageSource(folder / CHANNEL_FILES[c], (c,)) for c in channels),
                          label, rule, NAME, subset, {"subject_lists": member_of, "label_source": label_source}))
    names = STUDY.label_names("left_right" if left_right else None)
    return Dataset(root.name, NAME, root, cases, tuple(channels), names, STUDY.modality,
                   {"label_source": label_source, "subject_lists": sorted(lists)})
