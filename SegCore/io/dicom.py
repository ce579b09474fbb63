"""DICOM series: list the series in a folder and read one as a `Volume` (HU for CT); `dicom_writer` writes them.

Everything goes through SimpleITK (GDCM): headers are read with `ImageFileReader.ReadImageInformation`, voxels
one file at a time (GDCM applies Rescale Slope/Intercept, so CT comes out in HU). The geometry is computed here
from Image Position/Orientation (Patient) rather than taken from `ImageSeriesReader`, so that a tilted gantry,
a missing slice or uneven spacing is refused with a message instead of becoming a silently wrong grid.

Rules (see docs/io.md): slices are sorted by their position along the slice normal (row x column direction of
Image Orientation), so the k axis always points along that normal; every slice must share orientation, size
and pixel spacing; consecutive positions must differ only along the normal (no gantry tilt) and by the same
step (no gaps, no uneven spacing) within `STEP_RTOL`.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SegCore.atomic import add_inputs
from SegCore.errors import SegCoreError
from SegCore.failures import os_error
from SegCore.io.checks import library_message, naming, stat_input
from SegCore.volume import Grid, Volume

# Slice positions may deviate from a uniform step by this fraction of the step (scanners round positions to
# ~0.01 mm; a missing slice is a 100 % deviation, a wrong grid by > 1 % shows as a visible shift).
STEP_RTOL = 0.01
STEP_ATOL_MM = 1e-3
# Gantry tilt: the part of a slice-to-slice step that lies in the slice plane, relative to the step.
TILT_RTOL = 1e-3
ORIENTATION_ATOL = 1e-4

# Media Storage SOP Classes of DICOM objects that hold no image slice: a file of these that GDCM cannot read as an
# image is skipped (as a DICOMDIR is); any other file that looks like DICOM and cannot be read is an error.
NON_IMAGE_SOP_CLASSES = (
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, segmentation objects
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA documents
    "1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.481.5",  # RT structure set, RT plan
)

_TAGS = {"series_uid": "0020|000e", "description": "0008|103e", "modality": "0008|0060",
         "position": "0020|0032", "orientation": "0020|0037", "instance": "0020|0013", "frames": "0028|0008",
         "thickness": "0018|0050", "slice_spacing": "0018|0088"}


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a folder: its UID, SeriesDescription, Modality, number of files, and the files
    sorted by position along the slice normal (by InstanceNumber when positions are missing)."""

    series_uid: str
    description: str
    modality: str
    num_files: int
    files: tuple[Path, ...]


@dataclass(frozen=True)
class _Slice:
    path: Path
    tags: dict
    size_xy: tuple[int, int]
    spacing_xy: tuple[float, float]
    num_frames: int


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series in `folder` (not its sub-folders), largest first; non-DICOM files are ignored.

    Raises SegCoreError if `folder` is not a folder. Returns [] when it holds no DICOM image.
    """
    return [_series_info(uid, slices) for uid, slices in _scan(_check_folder(folder)).items()]


def _check_folder(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not stat.S_ISDIR(stat_input(folder, "folder").st_mode):
        raise SegCoreError("expected a folder of DICOM files, got a file", path=folder,
                           fix="pass the folder that holds the series' .dcm files")
    add_inputs([folder])
    return folder


def _scan(folder: Path) -> dict[str, list[_Slice]]:
    try:
        paths = [p for p in sorted(folder.iterdir())
                 if not p.name.startswith(".") and p.is_file() and p.name.upper() != "DICOMDIR"]
    except OSError as error:
        raise os_error(error, folder, what="folder") from error
    return _scan_files(paths)


def _scan_files(paths) -> dict[str, list[_Slice]]:
    """Series UID -> its slices sorted along the normal, largest series first; non-DICOM files are skipped, a
    damaged DICOM file is an error (`_check_not_an_image`)."""
    import SimpleITK as sitk

    series: dict[str, list[_Slice]] = {}
    for path in paths:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            _check_not_an_image(path, error)
            continue  # not a DICOM image (a text file, a DICOMDIR, a structured report)
        tags = {name: reader.GetMetaData(tag).strip() for name, tag in _TAGS.items() if reader.HasMetaDataKey(tag)}
        size = reader.GetSize()
        frames = int(size[2]) if len(size) > 2 else 1
        entry = _Slice(path, tags, (int(size[0]), int(size[1])), tuple(float(s) for s in reader.GetSpacing()[:2]),
                       frames)
        series.setdefault(tags.get("series_uid", ""), []).append(entry)
    ordered = sorted(series.items(), key=lambda item: (-len(item[1]), item[0]))
    return {uid: _sort_slices(slices) for uid, slices in ordered}


def _check_not_an_image(path: Path, error: RuntimeError) -> None:
    """Return when `path`, which GDCM could not read as an image, is no DICOM image; raise when it is a damaged one.

    A file looks like DICOM when it has the 'DICM' marker at byte 128 or a .dcm suffix; such a file is skipped
    only when its file meta information names a non-image SOP class (`NON_IMAGE_SOP_CLASSES`). Skipping a
    damaged slice would silently shorten the series (at either end no gap shows). A file this user may not read
    cannot be told apart, so it is an error too.
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(1 << 16)
    except OSError as error_of_os:
        raise os_error(error_of_os, path) from error_of_os
    marked = head[128:132] == b"DICM"
    if not marked and path.suffix.lower() != ".dcm":
        return
    if marked and (_media_sop_class(head) or "").startswith(NON_IMAGE_SOP_CLASSES):
        return
    why = "it has the DICM marker" if marked else "its suffix is .dcm"
    raise SegCoreError(f"not a readable DICOM image file: {why} but cannot be read, so it is truncated or damaged "
                       f"(GDCM: {library_message(error)})", path=path,
                       fix="copy or export the file again, or move it out of the folder if it is not a slice")


def _media_sop_class(head: bytes) -> str | None:
    """(0002,0002) Media Storage SOP Class UID from the file meta information after the 'DICM' marker (always
    explicit VR little endian), or None when it cannot be found in `head`."""
    position = 132
    while position + 8 <= len(head):
        group, element = struct.unpack("<HH", head[position:position + 4])
        if group != 0x0002:
            return None
        if head[position + 4:position + 6] in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            if position + 12 > len(head):
                return None
            length, start = struct.unpack("<I", head[position + 8:position + 12])[0], position + 12
        else:
            length, start = struct.unpack("<H", head[position + 6:position + 8])[0], position + 8
        if element == 0x0002:
            return head[start:start + length].rstrip(b"\0 ").decode("ascii", "replace")
        position = start + length
    return None


def _floats(text: str | None, count: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in (text or "").split("\\")], dtype=float)
    except ValueError:
        return None
    return values if values.shape == (count,) and np.all(np.isfinite(values)) else None


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def _sort_slices(slices: list[_Slice]) -> list[_Slice]:
    orientation = _floats(slices[0].tags.get("orientation"), 6)
    positions = [_floats(s.tags.get("position"), 3) for s in slices]
    if orientation is None or any(p is None for p in positions):
        return sorted(slices, key=lambda s: (_instance(s), s.path.name))
    distances = [float(p @ _normal(orientation)) for p in positions]
    return [s for _, s in sorted(zip(distances, slices, strict=True), key=lambda pair: pair[0])]


def _instance(entry: _Slice) -> float:
    try:
        return float(entry.tags.get("instance", ""))
    except ValueError:
        return float("inf")


def _series_info(uid: str, slices: list[_Slice]) -> DicomSeries:
    first = slices[0].tags
    return DicomSeries(uid, first.get("description", ""), first.get("modality", ""), len(slices),
                       tuple(s.path for s in slices))


def _describe(series: list[DicomSeries]) -> str:
    return "; ".join(f"{s.series_uid or '(no UID)'} ({s.description or 'no description'}, {s.modality}, "
                     f"{s.num_files} files)" for s in series)


def read_dicom_series(folder: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from `folder` as a (Z, Y, X) volume in LPS.

    Values have Rescale Slope/Intercept applied (HU for CT): int16 when every value is a whole number in the
    int16 range, else float32. The k axis points along the slice normal (row x column of Image Orientation).

    Args:
        series_uid: which series to read; needed when the folder holds several (the error lists them).
    Raises SegCoreError naming the folder for: no DICOM files, several series and no `series_uid`, an unknown
    `series_uid`, multi-frame or colour images, inconsistent orientation/size/spacing between slices,
    duplicate positions, gantry tilt, missing slices or uneven spacing.
    """

    folder = _check_folder(folder)
    found = _scan(folder)
    if not found:
        raise SegCoreError("no DICOM image files found in the folder (sub-folders are not searched)", path=folder,
                           fix="pass the folder that directly holds the series' files")
    if series_uid is None:
        if len(found) > 1:
            listing = _describe([_series_info(uid, slices) for uid, slices in found.items()])
            raise SegCoreError(f"the folder holds {len(found)} DICOM series: {listing}", path=folder,
                               fix="choose one by passing its series UID (segcore convert --series UID)")
        series_uid = next(iter(found))
    if series_uid not in found:
        listing = _describe([_series_info(uid, slices) for uid, slices in found.items()])
        raise SegCoreError(f"no series with UID {series_uid!r}; the folder holds: {listing}", path=folder,
                           fix="pass one of the listed series UIDs")
    return _read_slices(found[series_uid], folder)


def read_dicom_file(path: str | os.PathLike) -> Volume:
    """Read one DICOM image file as a one-slice (1, Y, X) volume in LPS, with Rescale Slope/Intercept applied.

    The slice thickness is the Spacing Between Slices or Slice Thickness tag (1 mm when neither is set).
    Use `read_dicom_series` for a multi-slice series: one file holds one slice of it.
    """
    path = Path(path)
    found = _scan_files([path])
    if not found:
        raise SegCoreError("not a readable DICOM image file", path=path,
                           fix="check the file; for a series pass its folder instead")
    return _read_slices(next(iter(found.values())), path)


def _read_slices(slices: list[_Slice], where: Path) -> Volume:
    """The pixel data of sorted slices of one series as a volume; `where` is named in errors."""
    import SimpleITK as sitk

    grid = _series_grid(slices, where)
    planes = []
    for entry in slices:
        try:
            image = sitk.ReadImage(str(entry.path), imageIO="GDCMImageIO")
        except RuntimeError as error:
            raise SegCoreError(f"cannot read the pixel data of this DICOM file ({library_message(error)})",
                               path=entry.path, fix="re-export the series; the file is corrupt or compressed with "
                                                    "an unsupported transfer syntax") from error
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise SegCoreError(f"{entry.path.name} is a colour image; only greyscale series are supported",
                               path=where)
        planes.append(sitk.GetArrayFromImage(image).reshape(grid.shape_zyx[1:]))
    array = np.stack(planes)
    return Volume(_hu_dtype(array), grid)


def _hu_dtype(array: np.ndarray) -> np.ndarray:
    """int16 when every value is a whole number that fits int16, else float32."""
    if np.issubdtype(array.dtype, np.integer) or np.array_equal(array, np.round(array)):
        info = np.iinfo(np.int16)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(np.int16)
    return array.astype(np.float32)


def _series_grid(slices: list[_Slice], folder: Path) -> Grid:
    first = slices[0]
    if any(s.num_frames != 1 for s in slices):
        raise SegCoreError("multi-frame (enhanced) DICOM files are not supported", path=folder,
                           fix="convert the series to single-frame DICOM or NIfTI first (e.g. with dcm2niix)")
    orientation = _floats(first.tags.get("orientation"), 6)
    if orientation is None:
        raise SegCoreError(f"{first.path.name} has no valid Image Orientation (Patient) (0020,0037)", path=folder,
                           fix="re-export the series with its geometry tags")
    for entry in slices:
        other = _floats(entry.tags.get("orientation"), 6)
        if other is None or not np.allclose(other, orientation, atol=ORIENTATION_ATOL):
            raise SegCoreError(f"slice orientation changes within the series ({first.path.name}: "
                               f"{orientation.tolist()}, {entry.path.name}: {entry.tags.get('orientation')})",
                               path=folder, fix="the series mixes acquisitions; split it by orientation")
        if entry.size_xy != first.size_xy or not np.allclose(entry.spacing_xy, first.spacing_xy, rtol=1e-4):
            raise SegCoreError(f"slices differ in size or pixel spacing ({first.path.name}: {first.size_xy} "
                               f"{first.spacing_xy} mm, {entry.path.name}: {entry.size_xy} {entry.spacing_xy} mm)",
                               path=folder, fix="the series mixes acquisitions; split it")
    row, column = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise SegCoreError(f"Image Orientation (Patient) {orientation.tolist()} is not two orthogonal unit vectors",
                           path=folder, fix="repair the series' orientation tags")
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    positions = [_floats(s.tags.get("position"), 3) for s in slices]
    missing = [s.path.name for s, p in zip(slices, positions, strict=True) if p is None]
    if missing:
        raise SegCoreError(f"{len(missing)} files have no valid Image Position (Patient) (0020,0032), e.g. "
                           f"{missing[0]}", path=folder, fix="re-export the series with its geometry tags")
    positions = np.array(positions)
    step_mm = _check_positions(positions, normal, slices, folder)
    if step_mm is None:  # one slice: the slice spacing (or thickness) tag is the best available z spacing
        candidates = [_floats(first.tags.get(name), 1) for name in ("slice_spacing", "thickness")]
        step_mm = next((float(c[0]) for c in candidates if c is not None and c[0] > 0), 1.0)
    direction = np.stack([row, column, normal], axis=1)
    with naming(folder):
        return Grid((len(slices), first.size_xy[1], first.size_xy[0]),
                    (first.spacing_xy[0], first.spacing_xy[1], step_mm), tuple(positions[0].tolist()),
                    tuple(tuple(r) for r in direction.tolist()))


def _check_positions(positions: np.ndarray, normal: np.ndarray, slices: list[_Slice], folder: Path) -> float | None:
    """The uniform slice step (mm) of positions sorted along `normal`; raises on tilt, gaps, uneven steps."""
    if len(positions) < 2:
        return None
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    names = [s.path.name for s in slices]
    duplicate = np.flatnonzero(along < STEP_ATOL_MM)
    if duplicate.size:
        k = int(duplicate[0])
        raise SegCoreError(f"{names[k]} and {names[k + 1]} lie at the same position {positions[k].tolist()} mm",
                           path=folder, fix="the series holds several volumes (echoes, phases, duplicates); split "
                                            "them into separate folders")
    in_plane = np.linalg.norm(steps - along[:, None] * normal[None, :], axis=1)
    tilted = np.flatnonzero(in_plane > TILT_RTOL * along)
    if tilted.size:
        k = int(tilted[0])
        angle = float(np.degrees(np.arctan2(in_plane[k], along[k])))
        raise SegCoreError(f"gantry tilt: slice positions move {in_plane[k]:.3g} mm sideways per "
                           f"{along[k]:.3g} mm step ({angle:.2f} degrees from the slice normal, first between "
                           f"{names[k]} and {names[k + 1]}); a tilted stack is not a rectangular grid",
                           path=folder, fix="resample the series onto an untilted grid first (Slicer's "
                                            "'Acquisition transform' or dcm2niix), then read the result")
    step_mm = float((positions[-1] - positions[0]) @ normal) / (len(positions) - 1)
    typical = float(np.median(along))
    off = np.flatnonzero(np.abs(along - typical) > STEP_RTOL * typical + STEP_ATOL_MM)
    if off.size:
        k = int(off[0])
        where = (f"between {names[k]} and {names[k + 1]} (positions {along[k]:.4g} mm apart along the normal, "
                 f"at {float(positions[k] @ normal):.4g} and {float(positions[k + 1] @ normal):.4g} mm)")
        ratio = along[k] / typical
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            problem = f"{int(round(ratio)) - 1} missing slice(s): slices are {typical:.4g} mm apart, except {where}"
            fix = "find the missing files, or export the complete series again"
        else:
            problem = (f"uneven slice spacing: steps range from {along.min():.4g} to {along.max():.4g} mm "
                       f"(typical {typical:.4g} mm); first off {where}")
            fix = "resample the series onto a uniform grid first, or check that it is one acquisition"
        raise SegCoreError(problem, path=folder, fix=fix)
    return step_mm
