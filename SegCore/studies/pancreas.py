"""Pancreas study (OrganSegRSTN_PyTorch): coarse-to-fine recurrent saliency transformation network, NIH Pancreas-CT.

On disk (the TCIA download), DICOM series per patient plus one NIfTI label per patient:

    NIH-Pancreas/
      Pancreas-CT/PANCREAS_0001/<study folder>/<series folder>/1-001.dcm ...   ('DOI/' or no wrapper work too)
      TCIA_pancreas_labels-02-05-2017/label0001.nii.gz                           pancreas = 1

Case PANCREAS_00XX goes with label00XX.nii.gz (the number matches).
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Channel, Layout, Study


@dataclass(frozen=True, kw_only=True)
class PancreasLayout(Layout):
    """images_folder: the TCIA collection folder holding the case folders. case_prefix + case_digits: the case
    folders (PANCREAS_0001). label_folder_prefix: the label folder's name up to its release date
    (label_release); label_prefix + case_digits + label_suffix: the label files (label0001.nii.gz)."""

    images_folder: str
    case_prefix: str
    case_digits: int
    label_folder_prefix: str
    label_release: str
    label_prefix: str
    label_suffix: str

    @property
    def label_folder(self) -> str:
        """'TCIA_pancreas_labels-02-05-2017', the folder as TCIA distributes it."""
        return f"{self.label_folder_prefix}-{self.label_release}"

    def case_folder(self, number: int) -> str:
        return f"{self.case_prefix}{number:0{self.case_digits}d}"

    def label_file(self, number: int) -> str:
        return f"{self.label_prefix}{number:0{self.case_digits}d}{self.label_suffix}"


LAYOUT = PancreasLayout(
    name="pancreas",
    label_mapping=((0, 0), (1, 1)),
    unmapped="error",
    images_folder="Pancreas-CT",
    case_prefix="PANCREAS_",
    case_digits=4,
    label_folder_prefix="TCIA_pancreas_labels",
    label_release="02-05-2017",
    label_prefix="label",
    label_suffix=".nii.gz",
)

STUDY = Study(
    name="pancreas",
    title="Pancreas in CT: coarse-to-fine recurrent saliency transformation network (RSTN)",
    module="PancreasSeg",
    modality="CT",
    layout=LAYOUT,
    channels=(Channel("CT", description="portal-venous CT in Hounsfield units, a DICOM series"),),
    labels=(BACKGROUND, anatomy_label(1, "pancreas")),
    source="OrganSegRSTN_PyTorch",
)
