"""What every reader checks before and after reading, so that each failure names the file and the fix.

Formats are chosen by suffix (`SegCore.atomic.file_suffix`): '.nii.gz' and '.seg.nrrd' are double suffixes.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from SegCore.atomic import add_inputs, file_suffix
from SegCore.errors import SegCoreError
from SegCore.failures import os_error

# suffix -> (what it is, readable, writable). '.mhd' and '.nhdr' keep their voxels in a second file, which
# cannot be replaced atomically together with the header, so SegCore reads them but writes '.mha' / '.nrrd'.
_FORMATS: dict[str, tuple[str, bool, bool]] = {
    ".nii": ("NIfTI-1", True, True),
    ".nii.gz": ("NIfTI-1, gzip-compressed", True, True),
    ".nrrd": ("NRRD (one file, gzip-compressed when written)", True, True),
    ".nhdr": ("NRRD detached header (+ data file)", True, False),
    ".mha": ("MetaImage (one file, compressed when written)", True, True),
    ".mhd": ("MetaImage header (+ .raw/.zraw data file)", True, False),
    ".dcm": ("DICOM file, one slice (a folder of them reads as a series)", True, False),
    ".seg.nrrd": ("3D Slicer segmentation (segment names, colours, label values, layers)", True, True),
}
DICOM_FOLDER = "DICOM folder"

IMAGE_READ_SUFFIXES = tuple(s for s, (_, r, _w) in _FORMATS.items() if r and s != ".seg.nrrd")
IMAGE_WRITE_SUFFIXES = tuple(s for s, (_, _r, w) in _FORMATS.items() if w and s != ".seg.nrrd")
SEGMENTATION_SUFFIX = ".seg.nrrd"


def supported_formats() -> dict[str, str]:
    """Every format SegCore reads, suffix -> description (with '(read only)' where it cannot write it).

    The key 'DICOM folder' stands for a folder of DICOM files (read and written, one file per slice).
    """
    formats = {s: desc + ("" if writable else " (read only)") for s, (desc, _r, writable) in _FORMATS.items()}
    formats[DICOM_FOLDER] = "a folder of single-frame DICOM files, one series (or pick one with its UID)"
    return formats


def known_suffix(path: str | os.PathLike) -> str | None:
    """The format suffix of `path` if SegCore knows it ('.nii.gz', '.seg.nrrd', '.mha', ...), else None."""
    suffix = file_suffix(path)
    return suffix if suffix in _FORMATS else None


def check_input_file(path: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_READ_SUFFIXES) -> Path:
    """`path` as a Path after checking it is an existing file with one of `suffixes`; raises SegCoreError."""
    path = Path(path)
    info = stat_input(path)
    if stat.S_ISDIR(info.st_mode):
        raise SegCoreError("is a folder, expected an image file", path=path,
                           fix="pass a file, or read a DICOM folder with read_dicom_series")
    suffix = file_suffix(path)
    if suffix not in suffixes:
        raise SegCoreError(f"unknown file type {suffix or '(no suffix)'!r}", path=path,
                           fix=f"use one of {', '.join(suffixes)}")
    if info.st_size == 0:
        raise SegCoreError("file is empty", path=path, fix="re-export or re-download it")
    try:  # before any library: they report an unreadable file as a corrupt one
        with open(path, "rb"):
            pass
    except OSError as error:
        raise os_error(error, path) from error
    add_inputs([path])
    return path


def stat_input(path: Path, what: str = "file") -> os.stat_result:
    """os.stat of an input, or a SegCoreError: '<what> not found', a broken link, a link loop, permission denied."""
    try:
        return path.stat()
    except FileNotFoundError as error:
        if path.is_symlink():
            raise SegCoreError(f"broken symbolic link: it points to {os.readlink(path)}, which does not exist",
                               path=path, fix="repair the link or pass the file it should point to") from error
        raise SegCoreError(f"{what} not found", path=path, fix="check the path (and the working directory)") from error
    except OSError as error:
        raise os_error(error, path, what=what) from error


def check_finite(array: np.ndarray, path: str | os.PathLike) -> None:
    """Raise if a float array holds NaN or Inf (they poison normalisation and metrics silently)."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        num_nan = int(np.isnan(array).sum())
        raise SegCoreError(f"{int(bad.sum())} of {array.size} voxels are not finite ({num_nan} NaN, "
                           f"{int(bad.sum()) - num_nan} Inf)", path=path,
                           fix="repair the image (e.g. replace NaN/Inf by a background value) and save it again")


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a SegCoreError without a path (e.g. from `Grid` validation) as one that names `path`."""
    try:
        yield
    except SegCoreError as error:
        if error.path is not None:
            raise
        raise SegCoreError(error.problem, path=path, fix=error.fix) from error


def verify_compressed_payload(path: str | os.PathLike, voxels=None) -> None:
    """Check the checksum of the compressed voxels of a one-file NRRD (gzip) or MetaImage (zlib).

    ITK stops inflating once it has the voxels it expects and never checks the checksum, so a damaged byte would
    otherwise come through as wrong voxel values. voxels: optionally what a reader got from the file (a
    C-contiguous buffer, e.g. a numpy view of ITK's image). When their checksum (and length) equal those at the
    end of the stream, the payload is intact and is not inflated a second time, which would double the read
    time; otherwise, or without voxels, the stream is inflated in chunks to find out. Raises SegCoreError when
    the payload is damaged or truncated.
    """
    with open(path, "rb") as stream:
        head = stream.read(1 << 20)  # headers of segmentations with many segments run to tens of kB
        if head.startswith(b"NRRD"):
            end = head.find(b"\n\n")
            header = head[:end].lower() if end >= 0 else b""
            if end < 0 or b"data file:" in header or not re.search(rb"^encoding:\s*(gzip|gz)\s*$", header, re.M):
                return
            wbits, start = 31, end + 2  # 31: gzip wrapper (CRC-32 and length checked at the end)
        else:
            marker = re.search(rb"ElementDataFile\s*=\s*LOCAL\r?\n", head)
            if marker is None or not re.search(rb"CompressedData\s*=\s*True", head[: marker.start()]):
                return
            wbits, start = 15, marker.end()  # 15: zlib wrapper (Adler-32 checked at the end)
        if voxels is not None and _trailer_matches(stream, wbits, start, voxels):
            return
        stream.seek(start)
        inflater = zlib.decompressobj(wbits)
        try:
            while chunk := stream.read(1 << 22):
                inflater.decompress(chunk, 1 << 22)
                while inflater.unconsumed_tail:
                    inflater.decompress(inflater.unconsumed_tail, 1 << 22)
            complete = inflater.eof
        except zlib.error as error:
            raise unreadable(path, error) from error
    if not complete:
        raise SegCoreError("the compressed voxel data ends early (the file is truncated)", path=path,
                           fix="re-export or re-download the file")


def _trailer_matches(stream, wbits: int, start: int, voxels) -> bool:
    """Whether the stream's trailer (the file's last bytes) holds the checksum of `voxels`: gzip's CRC-32 and
    length, zlib's Adler-32. False when it cannot tell (voxels in another byte order or layout than the file's,
    data after the stream): the caller then inflates the stream. A match is the proof that inflating gives."""
    try:
        data = memoryview(voxels).cast("B")
    except (TypeError, ValueError):  # not one contiguous buffer
        return False
    size = stream.seek(0, os.SEEK_END)
    if size - start < 8 + 10:  # shorter than a header and a trailer
        return False
    stream.seek(size - 8)
    tail = stream.read(8)
    if wbits == 31:
        return (int.from_bytes(tail[4:], "little") == data.nbytes % (1 << 32)
                and int.from_bytes(tail[:4], "little") == zlib.crc32(data))
    return int.from_bytes(tail[4:], "big") == zlib.adler32(data)


def library_message(error: BaseException) -> str:
    """The useful part of a reader library's error: ITK's source location and object address dropped, the
    innermost line of a teem (NRRD) error chain kept, at most 200 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception thrown in SimpleITK")]
    teem = [line for line in lines if line.startswith("[nrrd]")]
    text = teem[-1] if teem else " ".join(lines)
    text = re.sub(r"(itk::)?(ITK )?ERROR: \w+\(0x[0-9a-fA-F]+\): ", "", text)
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def unreadable(path: str | os.PathLike, error: BaseException, what: str = "image") -> SegCoreError:
    """The error for a file that a library failed to parse (truncated, corrupt, wrong content)."""
    return SegCoreError(f"cannot read the {what}, the file is corrupt, truncated or not what its suffix says "
                        f"({library_message(error)})", path=path, fix="re-export or re-download the file")
