"""`segcore convert`: any supported image, label map, segmentation or DICOM series to another format."""

from __future__ import annotations

HELP = "convert images, label maps, Slicer segmentations and DICOM series between formats"
DESCRIPTION = """\
Convert IN to OUT; OUT's format is chosen by its suffix:
  .nii .nii.gz .nrrd .mha   an image (a label map with --labels or when IN is a .seg.nrrd)
  .seg.nrrd                 a 3D Slicer segmentation (IN is read as a label map; names from --names)
  no suffix                 a folder holding a DICOM series (one file per slice)
IN is a file (.nii .nii.gz .nrrd .nhdr .mha .mhd .seg.nrrd) or a DICOM series folder. Geometry (size,
spacing, origin, direction) is kept exactly. OUT is written atomically and never over IN.

examples:
  segcore convert ct_dicom/ ct.nii.gz
  segcore convert study/ ct.nrrd --series 1.2.840.113619.2.55.3.1234
  segcore convert labels.nii.gz labels.seg.nrrd --names 1=liver 2=spleen
  segcore convert Segmentation.seg.nrrd labels.nii.gz
  segcore convert ct.nii.gz ct_dicom_out --modality CT
"""


INPUTS = ("input",)  # no output may be, hold or contain these (SegCore.atomic.guard_outputs)


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN", help="input file or DICOM series folder")
    parser.add_argument("output", metavar="OUT", help="output file, or a folder (no suffix) for a DICOM series")
    parser.add_argument("--series", metavar="UID", default=None,
                        help="SeriesInstanceUID to read when the DICOM folder holds several series")
    parser.add_argument("--labels", action="store_true",
                        help="IN is a label map: check it holds whole numbers and keep an integer type")
    parser.add_argument("--names", metavar="VALUE=NAME", nargs="+", default=None,
                        help="segment names for label values when writing a .seg.nrrd, e.g. --names 1=liver "
                             "2=spleen (or '1=liver,2=spleen'); other values are named Segment_N")
    parser.add_argument("--modality", default="CT", help="DICOM Modality when OUT is a DICOM folder (default CT)")


def run(args, progress) -> dict:
    from pathlib import Path

    from SegCore.atomic import file_suffix
    from SegCore.commands.text import parse_label_names
    from SegCore.errors import SegCoreError
    from SegCore.io import read_image, read_label, read_segmentation, write_dicom_series, write_image
    from SegCore.io.checks import IMAGE_WRITE_SUFFIXES, SEGMENTATION_SUFFIX
    from SegCore.io.segmentation import segments_for_labels, write_segmentation
    from SegCore.progress import ProgressEvent

    source, target = Path(args.input), Path(args.output)
    out_suffix = file_suffix(target)
    to_dicom = target.is_dir() or out_suffix == ""
    if not to_dicom and out_suffix not in IMAGE_WRITE_SUFFIXES + (SEGMENTATION_SUFFIX,):
        raise SegCoreError(f"cannot write {out_suffix!r}", path=target,
                           fix=f"use one of {', '.join(IMAGE_WRITE_SUFFIXES + (SEGMENTATION_SUFFIX,))}, or a "
                               "folder name without suffix for a DICOM series")
    names = parse_label_names(args.names, option="--names", require_names=True)

    progress(ProgressEvent("convert", 0, 2, f"reading {source.name}"))
    segments = None
    in_suffix = "" if source.is_dir() else file_suffix(source)
    if in_suffix == SEGMENTATION_SUFFIX and out_suffix == SEGMENTATION_SUFFIX:
        volume, segments = read_segmentation(source)
    elif args.labels or SEGMENTATION_SUFFIX in (in_suffix, out_suffix):
        volume = read_label(source, series_uid=args.series)
    else:
        volume = read_image(source, series_uid=args.series)

    progress(ProgressEvent("convert", 1, 2, f"writing {target.name}"))
    if out_suffix == SEGMENTATION_SUFFIX:
        if segments is None:
            import numpy as np

            segments = segments_for_labels(np.unique(volume.array).tolist(), names)
        elif names:
            raise SegCoreError("--names renames label values of a label map; a .seg.nrrd already has names",
                               path=source, fix="drop --names (rename segments in Slicer)")
        write_segmentation(volume, segments, target)
    elif to_dicom:
        write_dicom_series(volume, target, modality=args.modality, series_description=f"from {source.name}")
    else:
        write_image(volume, target)
    progress(ProgressEvent("convert", 2, 2, f"wrote {target}"))
    shape = "x".join(str(n) for n in volume.array.shape)
    spacing = " x ".join(f"{s:.4g}" for s in volume.grid.spacing_xyz_mm)
    axes = "z, y, x" if volume.array.ndim == 3 else "c, z, y, x"
    print(f"wrote {target}: {shape} voxels ({axes}), spacing {spacing} mm (x, y, z)"
          + (f", {len(segments)} segment(s)" if segments else ""))
    return {"files": [str(target)]}
