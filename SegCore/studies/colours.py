"""Label colours: the entries of 3D Slicer's GenericAnatomyColors table that the studies use.

GenericAnatomyColors (Slicer: Modules/Loadable/Colors/Resources/ColorFiles/GenericAnatomyColors.txt; Halle,
Talos, Kikinis et al.) is the colour table Slicer gives anatomical segments, so a study's segments look in
Slicer as the same structures do elsewhere. Values are copied as published (0..255 RGB). Where the table has no
entry for a structure (hippocampus parts, prostate zones) or gives two labels one colour (left and right
thalamus), the study file picks another entry of the table and says so in the label's `colour_source`.
"""

from __future__ import annotations

from SegCore.studies.schema import Label, Terminology

GENERIC_ANATOMY_COLORS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "edema": (140, 224, 228),
    "necrosis": (216, 191, 216),
    "mass": (144, 238, 144),
    "muscle": (192, 104, 88),
    "vein": (0, 151, 206),
    "thalamus": (166, 113, 137),
    "left thalamus": (122, 101, 38),
    "left atrium": (203, 108, 81),
    "liver": (221, 130, 101),
    "pancreas": (249, 180, 111),
    "spleen": (157, 108, 162),
    "prostate": (230, 158, 140),
    "region 1": (0, 226, 255),
    "region 2": (251, 159, 255),
    "region 5": (104, 160, 249),
}


def anatomy_label(value: int, name: str, entry: str | None = None, *, why: str = "",
                  terminology: Terminology | None = None) -> Label:
    """Label `value` called `name`, coloured with GenericAnatomyColors `entry` (default: `name` itself).

    why: the reason when the entry is not the structure's own (recorded in `colour_source`). terminology: the
    label's DICOM codes (SegCore.studies.terminology).
    """
    entry = name if entry is None else entry
    source = f"Slicer GenericAnatomyColors '{entry}'" + (f" ({why})" if why else "")
    return Label(value, name, GENERIC_ANATOMY_COLORS[entry], source, terminology)


BACKGROUND = anatomy_label(0, "background")
