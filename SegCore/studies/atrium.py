"""Left atrium study (Pytorch_VNet_atriaseg2018): V-Net with BAM attention and a locator crop, LGE-MRI.

On disk (the 2018 Left Atrium Segmentation Challenge), one folder per case:

    LA2018/                         (or the case folders directly under the root)
      Training Set/<CASE_ID>/lgemri.nrrd   LGE-MRI, grey values 0..255
      Training Set/<CASE_ID>/laendo.nrrd   left atrium cavity mask, 0 / 255
      Testing Set/<CASE_ID>/...

The mask's 255 becomes label 1, as the study converts it; 0/1 masks are accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Channel, Layout, Study


@dataclass(frozen=True, kw_only=True)
class AtriumLayout(Layout):
    """image_file / label_file: the two files of a case folder. mask_value: what label_file stores for the
    atrium. training_folder / test_folder: the challenge's two subsets (case folders may also sit in the root)."""

    image_file: str
    label_file: str
    mask_value: int
    training_folder: str
    test_folder: str


LAYOUT = AtriumLayout(
    name="atrium",
    label_mapping=((0, 0), (1, 1), (255, 1)),
    unmapped="error",
    image_file="lgemri.nrrd",
    label_file="laendo.nrrd",
    mask_value=255,
    training_folder="Training Set",
    test_folder="Testing Set",
)

STUDY = Study(
    name="atrium",
    title="Left atrium in LGE-MRI: V-Net with BAM attention and a locator crop",
    module="AtriumSeg",
    modality="MRI",
    layout=LAYOUT,
    channels=(Channel("LGE-MRI", LAYOUT.image_file, "late gadolinium enhancement MRI, grey values 0..255"),),
    labels=(BACKGROUND, anatomy_label(1, "left atrium")),
    source="Pytorch_VNet_atriaseg2018",
)
