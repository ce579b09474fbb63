"""What an image header claims, checked against the bytes behind it, before a reading library allocates.

nibabel and ITK allocate the voxel buffer that the header asks for and only then read, so a small damaged file
whose header claims a huge size costs that much memory before it fails (2 GiB for a 1 kB file), and a compressed
MetaImage that holds too few voxels even comes out padded with zeros. `check_claimed_size` reads only the header
and file sizes, and refuses the file when its voxel data cannot be as large as claimed. It also names a detached
data file (.mhd ElementDataFile, .nhdr 'data file') that is missing or unreadable, before ITK prints to stderr.

Compressed voxels: deflate (gzip, zlib) spends at least 2 bits on a 258-byte match (length code 285 and a
distance code, each at least 1 bit, no extra bits), so n compressed bytes inflate to at most 8 n / 2 x 258 =
1032 n bytes. The bound holds for any deflate stream, multi-member gzip included. gzip's ISIZE trailer is not
used: it is the length of the last member only, modulo 2^32, so it bounds nothing in general. bzip2 has no
useful bound (its run-length stages compress long runs by millions), so bzip2 NRRDs are not checked.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from SegCore.atomic import file_suffix
from SegCore.errors import SegCoreError

MAX_DEFLATE_RATIO = 1032
_SLACK_BYTES = 1024  # a partial last byte, block headers: far more than the bound needs
_HEADER_LIMIT = 1 << 20  # segmentation headers with many segments run to tens of kB

# NIfTI datatype code -> bytes per voxel (DT_BINARY, 1 bit, is left to nibabel).
_NIFTI_ITEM_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                     1536: 16, 1792: 16, 2048: 32, 2304: 4}
_NRRD_ITEM_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64",
                     "uint64_t", "double"), 8),
}
_NRRD_ENCODINGS = {"raw": "raw", "gz": "deflate", "gzip": "deflate", "hex": "hex", "txt": "text", "text": "text",
                   "ascii": "text"}
# MET_LONG is 4 or 8 bytes depending on the platform that wrote the file; the smaller keeps the check sound.
_META_ITEM_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                    "MET_DOUBLE": 8}


@dataclass(frozen=True)
class _Claim:
    """sizes: the header's sizes (fastest axis first); item_bytes: bytes per voxel (all components);
    encoding: 'raw', 'deflate', 'hex' or 'text'; data_bytes: bytes available for the voxels (compressed
    bytes for 'deflate'); data_file: the detached data file, when not the header's file."""

    sizes: tuple[int, ...]
    item_bytes: int
    encoding: str
    data_bytes: int
    data_file: Path | None = None


def check_claimed_size(path: str | os.PathLike) -> None:
    """Refuse a NIfTI, NRRD or MetaImage whose header claims more voxel bytes than the file (or its data file)
    can hold, or whose data file is missing. Headers this cannot parse pass: the reader reports them."""
    path = Path(path)
    suffix = file_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        claim = _nifti_claim(path, suffix == ".nii.gz")
    elif suffix in (".nrrd", ".nhdr", ".seg.nrrd"):
        claim = _nrrd_claim(path)
    elif suffix in (".mha", ".mhd"):
        claim = _meta_claim(path)
    else:
        return
    if claim is not None:
        _check(claim, path)


def check_inflated_nifti(raw: bytes, path: str | os.PathLike) -> None:
    """Refuse a decompressed .nii.gz (`raw`, header and voxels) that holds fewer voxel bytes than its header
    claims, before nibabel allocates the claimed array."""
    layout = _nifti_layout(raw[:540])
    if layout is not None:
        sizes, item_bytes, start = layout
        _check(_Claim(sizes, item_bytes, "raw", len(raw) - start), Path(path), inflated=True)


def _check(claim: _Claim, path: Path, inflated: bool = False) -> None:
    need = math.prod(claim.sizes) * claim.item_bytes
    have = claim.data_bytes
    capacity = {"raw": have, "deflate": MAX_DEFLATE_RATIO * have + _SLACK_BYTES, "hex": have // 2,
                "text": (have + 1) // 2 * claim.item_bytes}[claim.encoding]  # text: a digit and a separator
    if need <= capacity:
        return
    where = f"its data file {claim.data_file}" if claim.data_file is not None else "the file"
    claimed = (f"the header claims {' x '.join(str(s) for s in claim.sizes)} voxels of {claim.item_bytes} "
               f"byte{'s' if claim.item_bytes > 1 else ''} each ({format_bytes(need)})")
    if claim.encoding == "deflate":
        problem = (f"{claimed}, but the {have} compressed bytes of {where} inflate to at most "
                   f"{format_bytes(capacity)} (deflate compresses at most {MAX_DEFLATE_RATIO}:1)")
    elif inflated:
        problem = f"{claimed}, but the decompressed file holds only {have} bytes of voxels"
    else:
        problem = f"{claimed}, but {where} holds only {have} bytes of voxel data"
    raise SegCoreError(f"{problem}: the file is truncated or its header is damaged", path=path,
                       fix="re-export or re-download the file")


def format_bytes(n_bytes: int) -> str:
    """'2.0 GiB', '78.6 kiB', '77 bytes': binary units, one decimal."""
    for unit, size in (("PiB", 2 ** 50), ("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("kiB", 2 ** 10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} bytes"


def _nifti_layout(header: bytes) -> tuple[tuple[int, ...], int, int] | None:
    """(sizes, bytes per voxel, offset of the voxels) of a one-file NIfTI-1 or NIfTI-2 header; None otherwise.

    nibabel reads the voxels from vox_offset; an invalid one (inside the header) counts as the header's end."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(f"{order}i", header[:4])[0] == 348 and header[344:347] == b"n+1":
            dims = struct.unpack(f"{order}8h", header[40:56])
            datatype, header_bytes = struct.unpack(f"{order}h", header[70:72])[0], 348
            offset = struct.unpack(f"{order}f", header[108:112])[0]
        elif len(header) >= 540 and struct.unpack(f"{order}i", header[:4])[0] == 540 and header[4:7] == b"n+2":
            dims = struct.unpack(f"{order}8q", header[16:80])
            datatype, header_bytes = struct.unpack(f"{order}h", header[12:14])[0], 540
            offset = struct.unpack(f"{order}q", header[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7 or datatype not in _NIFTI_ITEM_BYTES or min(dims[1:dims[0] + 1]) < 1:
            return None
        start = int(offset) if math.isfinite(offset) and header_bytes <= offset < 2 ** 40 else header_bytes
        return tuple(int(d) for d in dims[1:dims[0] + 1]), _NIFTI_ITEM_BYTES[datatype], start
    return None


def _nifti_claim(path: Path, compressed: bool) -> _Claim | None:
    try:
        with gzip.open(path) if compressed else open(path, "rb") as stream:
            header = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return None  # not gzip / not readable: the reader says so
    layout = _nifti_layout(header)
    if layout is None:
        return None
    sizes, item_bytes, start = layout
    file_bytes = path.stat().st_size
    if compressed:  # the whole file bounds the compressed voxels
        return _Claim(sizes, item_bytes, "deflate", file_bytes)
    return _Claim(sizes, item_bytes, "raw", file_bytes - start)


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(_HEADER_LIMIT)


def _nrrd_claim(path: Path) -> _Claim | None:
    head = _read_head(path)
    if not head.startswith(b"NRRD"):
        return None
    match = re.search(rb"\r?\n\r?\n", head)
    detached_header = file_suffix(path) == ".nhdr"
    if match is None and not (detached_header and len(head) < _HEADER_LIMIT):
        return None
    header_end = match.end() if match else len(head)
    fields = {}
    for line in head[:match.start() if match else len(head)].decode("latin-1").splitlines()[1:]:
        key, separator, value = line.partition(":")
        if line.startswith("#") or not separator or value.startswith("="):  # a comment or a key:=value pair
            continue
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    try:
        sizes = tuple(int(s) for s in fields["sizes"].split())
        kind = fields["type"].lower()
        item_bytes = int(fields["blocksize"]) if kind == "block" else _NRRD_ITEM_BYTES[kind]
        encoding = _NRRD_ENCODINGS[fields.get("encoding", "").lower()]
    except (KeyError, ValueError):
        return None  # bzip2, an unknown type or a malformed field: left to the reader
    if not sizes or min(sizes) < 1:
        return None
    data_name = fields.get("datafile")
    if data_name is None:
        return _Claim(sizes, item_bytes, encoding, path.stat().st_size - header_end)
    if data_name.startswith("LIST") or len(data_name.split()) > 1:
        return None  # several data files (a list or a numbered pattern)
    data_file = _data_file(path, data_name, "'data file:'")
    return _Claim(sizes, item_bytes, encoding, data_file.stat().st_size, data_file)


def _meta_claim(path: Path) -> _Claim | None:
    head = _read_head(path)
    fields, data_start = {}, None
    for match in re.finditer(rb"^[ \t]*(\w+)[ \t]*=[ \t]*([^\r\n]*)\r?\n?", head, re.M):
        key, value = match.group(1).decode("latin-1").lower(), match.group(2).decode("latin-1").strip()
        fields[key] = value
        if key == "elementdatafile":
            data_start = match.end()
            break
    if data_start is None:
        return None
    try:
        ndims = int(fields["ndims"])
        sizes = tuple(int(s) for s in fields["dimsize"].split()[:ndims])
        channels = int(fields.get("elementnumberofchannels", "1"))
        item_bytes = _META_ITEM_BYTES[fields["elementtype"].upper().removesuffix("_ARRAY")] * channels
    except (KeyError, ValueError):
        return None
    if len(sizes) != ndims or not sizes or min(sizes) < 1 or channels < 1:
        return None
    if fields.get("compresseddata", "false").lower() == "true":
        encoding = "deflate"
    else:
        encoding = "text" if fields.get("binarydata", "true").lower() == "false" else "raw"
    data_name = fields["elementdatafile"]
    if data_name.upper() == "LOCAL":
        return _Claim(sizes, item_bytes, encoding, path.stat().st_size - data_start)
    if data_name.upper().startswith("LIST") or "%" in data_name:
        return None  # one file per slice
    data_file = _data_file(path, data_name, "ElementDataFile")
    return _Claim(sizes, item_bytes, encoding, data_file.stat().st_size, data_file)


def _data_file(header: Path, name: str, field: str) -> Path:
    """The detached data file `name` (relative to the header's folder), checked to exist and be readable."""
    from SegCore.failures import os_error

    data_file = header.parent / name
    try:
        with open(data_file, "rb"):
            pass
    except FileNotFoundError as error:
        raise SegCoreError(f"its data file {data_file} (named by {field} in the header) does not exist",
                           path=header, fix=f"put {Path(name).name} where the header says, or correct {field}"
                           ) from error
    except OSError as error:
        raise os_error(error, data_file) from error
    return data_file
