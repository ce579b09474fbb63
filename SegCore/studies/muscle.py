"""Abdominal muscle study: EfficientNet-encoder U-Net or SegResNet on CT at L3 (DICOM), mixup, self-distillation.

On disk (the 'sarco' dataset), each scan's DICOM next to a NIfTI label of the same name:

    sarco dataset/
      HyuyQN0Tca.dcm      one DICOM slice (at L3), as the study trained on
      HyuyQN0Tca.nii.gz   its muscle mask (binary; any non-zero value is muscle)
      scan_ABDO_.../      or a whole DICOM series folder ...
      scan_ABDO_....nii.gz  ... with its label of the same name

The study's ToBinary step is the label rule 'non-zero -> 1'.
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Channel, Layout, Study


@dataclass(frozen=True, kw_only=True)
class MuscleLayout(Layout):
    """scan_suffix: a one-slice scan's file ending (a series is a folder of such files); label_suffix: the
    ending of the label file named after its scan."""

    scan_suffix: str
    label_suffix: str


LAYOUT = MuscleLayout(name="muscle", label_mapping=((0, 0),), unmapped="foreground", scan_suffix=".dcm",
                      label_suffix=".nii.gz")

STUDY = Study(
    name="muscle",
    title="Abdominal muscle in CT: EfficientNet U-Net or SegResNet, mixup, self-distillation",
    module="MuscleSeg",
    modality="CT",
    layout=LAYOUT,
    channels=(Channel("CT", description="CT in Hounsfield units, a DICOM slice or series"),),
    labels=(BACKGROUND, anatomy_label(1, "muscle")),
    source="Semantic segmentation of muscles on abdominal CT scans",
)
