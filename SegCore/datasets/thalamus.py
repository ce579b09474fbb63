"""Thalamus benchmark layout (HCP-processed data): one folder per subject with diffusion maps, T1 and masks.

    HCP_processed_data/
      <subject>/diffusion/evalue1.nii.gz  FA.nii.gz  RD.nii.gz  MD.nii.gz
      <subject>/T1w_acpc_dc_restore_1.25.nii.gz
      <subject>/FreeSurfer/aparc+aseg_1.25_nearest.nii.gz          thalamus = 10 (left) and 49 (right)
      <subject>/STAPLE/STAPLE_th0.5_thalamus_1.25.nii.gz, FSL/..., QuickNAT/... (7/25), manual/manual.nii.gz
      training_subjects.txt, testing_subjects.txt, ...             optional: one subject id per line

The study's input channels are any combination of evalue1, FA, RD, MD and T1; each is one file.
"""

from __future__ import annotations

from pathlib import Path

from SegCore.datasets._common import check_root, list_names, subfolders, visible
from SegCore.datasets.case import Case, Dataset, ImageSource, LabelRule
from SegCore.datasets.splits import read_case_list
from SegCore.errors import SegCoreError

NAME = "thalamus"
DESCRIPTION = "thalamus (HCP): <subject>/diffusion/{evalue1,FA,RD,MD}.nii.gz + T1w_acpc_dc_restore_1.25.nii.gz"
CHANNEL_FILES = {
    "evalue1": "diffusion/evalue1.nii.gz",
    "FA": "diffusion/FA.nii.gz",
    "RD": "diffusion/RD.nii.gz",
    "MD": "diffusion/MD.nii.gz",
    "T1": "T1w_acpc_dc_restore_1.25.nii.gz",
}
DEFAULT_CHANNELS = ("evalue1", "FA", "RD", "MD", "T1")
# The input combinations the study trained and compared (its inference script lists them).
STUDY_CHANNEL_COMBINATIONS = (
    ("evalue1", "FA", "RD", "MD", "T1"), ("evalue1", "FA", "RD", "MD"), ("T1",), ("FA", "RD"), ("FA", "T1"),
    ("FA", "MD"), ("FA", "evalue1"), ("RD", "MD"), ("FA",), ("MD",), ("RD",), ("evalue1",), ("MD", "T1"),
    ("evalue1", "T1"),
)
# label source -> (file inside the subject folder, (left thalamus value, right thalamus value)), as the study.
LABEL_SOURCES = {
    "freesurfer": ("FreeSurfer/aparc+aseg_1.25_nearest.nii.gz", (10, 49)),
    "staple": ("STAPLE/STAPLE_th0.5_thalamus_1.25.nii.gz", (10, 49)),
    "fsl": ("FSL/T1_first_all_fast_firstseg_1.25_nearest.nii.gz", (10, 49)),
    "quicknat": ("QuickNAT/segmentation_acpc_dc_restore_1.25_nearest.nii.gz", (7, 25)),
    "manual": ("manual/manual.nii.gz", (10, 49)),
}
SUBJECT_LIST_SUFFIX = "_subjects.txt"


def label_rule(source: str = "freesurfer", *, left_right: bool = False) -> LabelRule:
    """Both thalami -> 1 (the study's single label), or left -> 1 and right -> 2; every other value -> 0."""
    left, right = LABEL_SOURCES[source][1]
    return LabelRule(((left, 1), (right, 2 if left_right else 1)), unmapped="background")


def _is_subject(folder: Path) -> bool:
    return (folder / "diffusion").is_dir() or (folder / CHANNEL_FILES["T1"]).is_file()


def looks_like(root: Path) -> bool:
    return any(_is_subject(f) for f in subfolders(root))


def read(root: str | Path, *, channels: tuple[str, ...] = DEFAULT_CHANNELS, label_source: str = "freesurfer",
         left_right: bool = False, subjects_file: str | Path | None = None, require_labels: bool = True) -> Dataset:
    """Read the subjects under `root` (or those listed in `subjects_file`) with the given input channels.

    Raises SegCoreError naming the first missing channel file, a listed subject that has no folder, or a
    missing label file (unless `require_labels` is False).
    """
    root = check_root(root)
    unknown = [c for c in channels if c not in CHANNEL_FILES]
    if unknown or not channels:
        raise SegCoreError(f"unknown thalamus channel(s) {unknown}", fix=f"choose from {list(CHANNEL_FILES)}")
    if label_source not in LABEL_SOURCES:
        raise SegCoreError(f"unknown label source {label_source!r}", fix=f"choose from {list(LABEL_SOURCES)}")
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
        raise SegCoreError("no subject folders (with diffusion/ or T1w_acpc_dc_restore_1.25.nii.gz) found",
                           path=root, fix="pass the folder that holds the subject folders (HCP_processed_data)")

    lists = {p.name[: -len(SUBJECT_LIST_SUFFIX)]: set(read_case_list(p))
             for p in visible(root.glob(f"*{SUBJECT_LIST_SUFFIX}"))}
    rule = label_rule(label_source, left_right=left_right)
    label_file = LABEL_SOURCES[label_source][0]
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
    names = {0: "background", 1: "left thalamus", 2: "right thalamus"} if left_right else \
        {0: "background", 1: "thalamus"}
    return Dataset(root.name, NAME, root, cases, tuple(channels), names, "MRI",
                   {"label_source": label_source, "subject_lists": sorted(lists)})
