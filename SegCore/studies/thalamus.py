"""Thalamus study (thalamus_benchmark_diffusion): 2D U-Nets on diffusion-derived maps and T1, HCP-processed data.

On disk (the file names of the study's code), one folder per subject:

    HCP_processed_data/
      <subject>/diffusion/evalue1.nii.gz  FA.nii.gz  RD.nii.gz  MD.nii.gz
      <subject>/T1w_acpc_dc_restore_1.25.nii.gz
      <subject>/FreeSurfer/aparc+aseg_1.25_nearest.nii.gz          thalamus = 10 (left) and 49 (right)
      <subject>/STAPLE/..., FSL/..., QuickNAT/... (7 / 25), manual/manual.nii.gz
      training_subjects.txt, testing_subjects.txt, ...             optional: one subject id per line

The input channels are any combination of the five maps, each one file; the label is both thalami (1), or left
(1) and right (2) with the 'left_right' label set.
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Channel, Layout, Study, named


@dataclass(frozen=True)
class LabelSource:
    """One segmentation the dataset ships per subject: its file and the stored values of the two thalami."""

    name: str
    file: str
    left: int
    right: int


@dataclass(frozen=True, kw_only=True)
class ThalamusLayout(Layout):
    """label_sources: the segmentations per subject (FreeSurfer aseg values 10 / 49 unless stated).
    subject_list_suffix: subject lists in the root end so; a list whose name starts with 'test' files its
    subjects as the test subset. training_list / testing_list: the two lists a split is written to."""

    label_sources: tuple[LabelSource, ...]
    default_label_source: str
    subject_list_suffix: str
    training_list: str
    testing_list: str

    def label_source(self, name: str) -> LabelSource:
        """The label source called `name`; SegCoreError listing them otherwise."""
        return named(self.label_sources, name, "label source")


LAYOUT = ThalamusLayout(
    name="thalamus",
    unmapped="background",  # every FreeSurfer structure but the thalami is background
    label_sources=(
        LabelSource("freesurfer", "FreeSurfer/aparc+aseg_1.25_nearest.nii.gz", 10, 49),
        LabelSource("staple", "STAPLE/STAPLE_th0.5_thalamus_1.25.nii.gz", 10, 49),
        LabelSource("fsl", "FSL/T1_first_all_fast_firstseg_1.25_nearest.nii.gz", 10, 49),
        LabelSource("quicknat", "QuickNAT/segmentation_acpc_dc_restore_1.25_nearest.nii.gz", 7, 25),
        LabelSource("manual", "manual/manual.nii.gz", 10, 49),
    ),
    default_label_source="freesurfer",
    subject_list_suffix="_subjects.txt",
    training_list="training_subjects.txt",
    testing_list="testing_subjects.txt",
)

# The input combinations the study trained and compared (its inference script lists them).
CHANNEL_COMBINATIONS = (
    ("evalue1", "FA", "RD", "MD", "T1"), ("evalue1", "FA", "RD", "MD"), ("T1",), ("FA", "RD"), ("FA", "T1"),
    ("FA", "MD"), ("FA", "evalue1"), ("RD", "MD"), ("FA",), ("MD",), ("RD",), ("evalue1",), ("MD", "T1"),
    ("evalue1", "T1"),
)

STUDY = Study(
    name="thalamus",
    title="Thalamus in diffusion MRI and T1: 2D U-Nets",
    module="ThalamusSeg",
    modality="MRI",
    layout=LAYOUT,
    channels=(
        Channel("evalue1", "diffusion/evalue1.nii.gz", "axial diffusivity (first eigenvalue), mm^2/s"),
        Channel("FA", "diffusion/FA.nii.gz", "fractional anisotropy"),
        Channel("RD", "diffusion/RD.nii.gz", "radial diffusivity, mm^2/s"),
        Channel("MD", "diffusion/MD.nii.gz", "mean diffusivity, mm^2/s"),
        Channel("T1", "T1w_acpc_dc_restore_1.25.nii.gz", "T1-weighted MRI (HCP T1w_restore, 1.25 mm)"),
    ),
    labels=(BACKGROUND, anatomy_label(1, "thalamus")),
    label_sets=(("left_right", (
        BACKGROUND,
        anatomy_label(1, "left thalamus"),
        anatomy_label(2, "right thalamus", "thalamus",
                      why="the table gives both thalami one colour; the right takes the 'thalamus' entry"),
    )),),
    source="thalamus_benchmark_diffusion",
)
