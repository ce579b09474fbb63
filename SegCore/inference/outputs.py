"""Where a prediction is written and how: label map, optional probabilities and uncertainty, all atomic.

    paths = output_paths(Path("out"), "case01", "seg.nrrd")
    # {"label": out/case01.seg.nrrd, "probabilities": out/case01_probabilities.nii.gz,
    #  "uncertainty": out/case01_uncertainty.nii.gz}
    written = write_prediction(prediction, paths["label"], "seg.nrrd", predictor.labels)

Formats of the label map: "nii.gz", "nrrd" (plain label maps) and "seg.nrrd" (a 3D Slicer segmentation whose
segments carry the checkpoint's label names and colours). Probabilities and uncertainty are always NIfTI beside
the label map. Every file goes through the SegCore.io writers, so it is written atomically and never over an
input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SegCore.atomic import file_stem, file_suffix
from SegCore.errors import SegCoreError
from SegCore.io.checks import known_suffix

FORMATS = ("nii.gz", "nrrd", "seg.nrrd")
DEFAULT_FORMAT = "nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
UNCERTAINTY_SUFFIX = "_uncertainty.nii.gz"
# NIfTI-1 has no float16 data type, so write_image stores float16 probabilities as float32 (exact: every
# float16 value is a float32 value). The Predictor's float16 keeps the memory in RAM halved, not on disk.
PROBABILITIES_DTYPE_ON_DISK = "float32"


def format_of(path: str | Path) -> str | None:
    """The prediction format a path's suffix names ('nii.gz', 'nrrd', 'seg.nrrd'), None for any other suffix."""
    suffix = file_suffix(path).lstrip(".")
    return suffix if suffix in FORMATS else None


def check_format(fmt: str) -> str:
    """`fmt` when it is one of FORMATS (a leading dot is allowed), else a SegCoreError listing them."""
    fmt = fmt.lstrip(".").lower()
    if fmt not in FORMATS:
        raise SegCoreError(f"unknown output format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    return fmt


def output_paths(output: Path, case_id: str | None, fmt: str | None) -> dict[str, Path]:
    """The files of one prediction: {"label", "probabilities", "uncertainty"} -> Path.

    case_id None: `output` is the label file itself; its suffix gives the format (a `fmt` that disagrees is an
    error), and a name without a format suffix gets `fmt`'s (default nii.gz). case_id given: `output` is a
    folder and the label file is `output/<case_id>.<fmt>`. Probabilities and uncertainty lie beside the label
    file as `<name>_probabilities.nii.gz` and `<name>_uncertainty.nii.gz`.
    """
    output = Path(output)
    if case_id is None:
        named = format_of(output)
        if named is None and known_suffix(output) is not None:  # an image format SegCore has, but not for this
            raise SegCoreError(f"cannot write predictions as {file_suffix(output)!r}", path=output,
                               fix=f"end the output file in one of .{', .'.join(FORMATS)}")
        if named is not None and fmt is not None and check_format(fmt) != named:
            raise SegCoreError(f"the output file ends in .{named} but --format says {fmt}", path=output,
                               fix=f"name the file NAME.{fmt}, or drop --format")
        if named is None:
            output = output.with_name(f"{output.name}.{check_format(fmt or DEFAULT_FORMAT)}")
        label = output
    else:
        label = output / f"{case_id}.{check_format(fmt or DEFAULT_FORMAT)}"
    stem = file_stem(label)
    return {"label": label, "probabilities": label.with_name(stem + PROBABILITIES_SUFFIX),
            "uncertainty": label.with_name(stem + UNCERTAINTY_SUFFIX)}


def segments_from_labels(labels: list[dict]) -> list:
    """SegCore.io Segments for the checkpoint's labels [{"value", "name", "colour_rgb" (0..255), "terminology"
    (Slicer's TerminologyEntry string; absent in checkpoints written before it)}], background (value 0) left out;
    colours scaled to Slicer's 0..1."""
    from SegCore.io import Segment

    return [Segment(str(label["name"]), int(label["value"]),
                    tuple(min(max(float(c) / 255.0, 0.0), 1.0) for c in label["colour_rgb"]),
                    terminology=label.get("terminology") or None)
            for label in labels if int(label["value"]) != 0]


def write_prediction(prediction, path: Path, fmt: str | None, labels: list[dict]) -> list[Path]:
    """Write `prediction` (a Predictor's: .label (Z, Y, X) integer Volume, .probabilities (K, Z, Y, X) float16
    Volume or None, .uncertainty (Z, Y, X) float32 Volume or None) with the label map at `path`.

    fmt: the label map's format (None: from `path`'s suffix, see `output_paths`); labels: the checkpoint's
    label list, naming and colouring the segments of a .seg.nrrd. Returns the paths written, label map first.
    """
    from SegCore.io import write_image, write_segmentation

    paths = output_paths(Path(path), None, fmt)
    written = []
    if format_of(paths["label"]) == "seg.nrrd":
        segments = segments_from_labels(labels)
        known = {segment.label_value for segment in segments}
        # A value the checkpoint does not name (it should not happen) still gets a segment, so nothing is lost.
        missing = sorted(set(np.unique(prediction.label.array).tolist()) - known - {0})
        if missing:
            from SegCore.io.segmentation import segments_for_labels

            segments += segments_for_labels(missing)
        written.append(write_segmentation(prediction.label, segments, paths["label"]))
    else:
        written.append(write_image(prediction.label, paths["label"]))
    if getattr(prediction, "probabilities", None) is not None:
        written.append(write_image(prediction.probabilities, paths["probabilities"]))
    if getattr(prediction, "uncertainty", None) is not None:
        written.append(write_image(prediction.uncertainty, paths["uncertainty"]))
    return written
