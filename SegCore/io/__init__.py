"""File I/O: every reader returns a `Volume` (LPS geometry), every failure is a `SegCoreError` naming the file.

Formats: NIfTI (.nii, .nii.gz, 4D = channels), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), 3D Slicer
segmentations (.seg.nrrd with segment names, colours, label values, layers), DICOM series folders and
single-slice DICOM files (.dcm).
See docs/io.md for the conventions and the rules applied to DICOM.
"""

from SegCore.io.checks import supported_formats
from SegCore.io.dicom import DicomSeries, list_dicom_series, read_dicom_series
from SegCore.io.dicom_writer import write_dicom_series
from SegCore.io.images import read_image, read_label, write_image
from SegCore.io.segmentation import Segment, read_segmentation, write_segmentation

__all__ = [
    "DicomSeries",
    "Segment",
    "list_dicom_series",
    "read_dicom_series",
    "read_image",
    "read_label",
    "read_segmentation",
    "supported_formats",
    "write_dicom_series",
    "write_image",
    "write_segmentation",
]
