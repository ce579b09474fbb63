"""Bad inputs at the edges of SegCore.io, with real files: inflated headers, damaged DICOM slices, missing data
files, unreadable files and link loops, and phantom sizes that cannot fit in memory.

CLI checks run `python -m SegCore` and look at the exit code, the one stderr line (naming the file), the output
location (nothing left behind) and the input's bytes (unchanged).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from unprivileged import as_another_user

from SegCore import cli
from SegCore.datasets import open_dataset
from SegCore.errors import SegCoreError
from SegCore.io import (
    read_dicom_series,
    read_image,
    read_label,
    read_segmentation,
    write_dicom_series,
    write_image,
    write_segmentation,
)
from SegCore.io.segmentation import segments_for_labels
from SegCore.io.sizes import MAX_DEFLATE_RATIO
from SegCore.phantoms import write_phantom_dataset
from SegCore.volume import Volume

INFLATED_ZYX = (512, 1024, 1024)  # float32: 2 GiB


def segcore(*args, cwd, env=None, preexec_fn=None):
    return subprocess.run([sys.executable, "-m", "SegCore", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env, preexec_fn=preexec_fn)


def one_line_error(result, command: str, names) -> str:
    """The single stderr line of a failed command; it must name `names` (a path or part of one)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"segcore {command}: error: "), lines[0]
    assert str(names) in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path: to show that a failed command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- headers that claim more voxels than the file holds ----------------------------------------------------------


def _inflated(tmp_path: Path, suffix: str) -> Path:
    """A small real file whose header then claims INFLATED_ZYX float32 voxels (its data stays 4x4x4)."""
    path = write_image(Volume.create(np.zeros((4, 4, 4), np.float32)), tmp_path / f"small{suffix}")
    data = path.read_bytes()
    big = tmp_path / f"big{suffix}"
    sizes_xyz = INFLATED_ZYX[::-1]
    if suffix == ".nii.gz":
        raw = bytearray(gzip.decompress(data))
        struct.pack_into("<4h", raw, 40, 3, *sizes_xyz)  # dim[0..3] of the NIfTI-1 header
        big.write_bytes(gzip.compress(bytes(raw)))
        assert nib.load(big).shape == sizes_xyz  # nibabel reads the claim from the header
    elif suffix == ".nrrd":
        big.write_bytes(data.replace(b"sizes: 4 4 4", b"sizes: " + " ".join(map(str, sizes_xyz)).encode()))
        assert tuple(nrrd.read_header(str(big))["sizes"]) == sizes_xyz  # pynrrd agrees
    else:
        big.write_bytes(data.replace(b"DimSize = 4 4 4", b"DimSize = " + " ".join(map(str, sizes_xyz)).encode()))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(big))
        reader.ReadImageInformation()
        assert reader.GetSize() == sizes_xyz  # ITK agrees (header only)
    assert big.stat().st_size < 2000
    return big


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_inflated_header_is_refused_by_the_cli_quickly_and_leaves_nothing(tmp_path, suffix):
    big = _inflated(tmp_path, suffix)
    before = snapshot(tmp_path)
    start = time.perf_counter()
    line = one_line_error(segcore("convert", big, tmp_path / "out" / "x.nii.gz", cwd=tmp_path), "convert", big)
    assert time.perf_counter() - start < 30
    assert "claims 1024 x 1024 x 512 voxels of 4 bytes each (2.0 GiB)" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


_LIMITED_READ = """
import resource, sys
import nibabel, numpy, SimpleITK
from SegCore.errors import SegCoreError
from SegCore.io import read_image
with open("/proc/self/status") as status:
    vm = int(next(line for line in status if line.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (384 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    read_image(sys.argv[1])
    print("read")
except SegCoreError as error:
    print("refused:", error)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the address space size")
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_inflated_header_is_refused_before_the_claimed_memory_is_allocated(tmp_path, suffix):
    """With the address space capped 384 MiB above what the loaded libraries use, allocating the claimed 2 GiB
    would fail inside the library ('corrupt', 'Failed to allocate'); the header check must refuse first."""
    big = _inflated(tmp_path, suffix)
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # glibc reserves 64 MiB of address space per malloc arena
    result = subprocess.run([sys.executable, "-c", _LIMITED_READ, str(big)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:") and "claims 1024 x 1024 x 512 voxels" in result.stdout, result.stdout


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_highly_compressible_real_files_are_still_read(tmp_path, suffix):
    """An all-zero 256^3 label map compresses about 1000:1, close to deflate's bound."""
    zeros = Volume.create(np.zeros((256, 256, 256), np.uint8), (0.8, 0.8, 1.5))
    path = write_image(zeros, tmp_path / f"empty{suffix}")
    assert path.stat().st_size * 50 < zeros.array.nbytes
    labels = read_label(path)
    assert labels.shape_zyx == (256, 256, 256) and not labels.array.any()


def test_a_maximally_compressed_nifti_is_read(tmp_path):
    """gzip -9 of zeros reaches about 1029:1, the most deflate gives (bound: 1032:1)."""
    raw = nib.Nifti1Image(np.zeros((256, 256, 256), np.uint8), np.eye(4)).to_bytes()
    path = tmp_path / "zeros.nii.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=9))
    ratio = len(raw) / path.stat().st_size
    assert 1000 < ratio < MAX_DEFLATE_RATIO
    assert not read_label(path).array.any()


def test_a_maximally_compressed_metaimage_is_read(tmp_path):
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "CompressedData = True\nElementSpacing = 1 1 1\nDimSize = 256 256 256\nElementType = MET_UCHAR\n"
              "ElementDataFile = LOCAL\n")
    path = tmp_path / "zeros.mha"
    path.write_bytes(header.encode() + zlib.compress(bytes(256 ** 3), 9))
    assert 256 ** 3 / path.stat().st_size > 1000
    assert read_label(path).shape_zyx == (256, 256, 256)


def test_truncated_uncompressed_nifti_and_detached_data_files_are_refused_by_size(tmp_path, rng):
    volume = Volume.create(rng.normal(size=(6, 7, 8)).astype(np.float32))
    nifti = write_image(volume, tmp_path / "image.nii")
    nifti.write_bytes(nifti.read_bytes()[:-100])
    with pytest.raises(SegCoreError, match=r"claims 8 x 7 x 6 voxels .* holds only 1244 bytes") as caught:
        read_image(nifti)  # 6 * 7 * 8 * 4 = 1344 bytes of voxels, 100 cut off
    assert str(nifti) in str(caught.value)
    for suffix, data_name in ((".mhd", "image.raw"), (".nhdr", "image2.raw")):
        header = tmp_path / f"image{'' if suffix == '.mhd' else '2'}{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(volume.array), str(header))
        data = tmp_path / data_name
        data.write_bytes(data.read_bytes()[:1000])
        with pytest.raises(SegCoreError, match=rf"its data file {re.escape(str(data))} holds only 1000 bytes"):
            read_image(header)


@pytest.mark.parametrize("suffix, data_name", [(".mhd", "scan.raw"), (".nhdr", "scan.raw")])
def test_missing_data_file_is_named_in_one_line_without_library_noise(tmp_path, suffix, data_name):
    header = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(header))
    (tmp_path / data_name).unlink()
    before = snapshot(tmp_path)
    result = segcore("convert", header, tmp_path / "out.nii.gz", cwd=tmp_path)
    line = one_line_error(result, "convert", header)  # exactly one stderr line: ITK printed nothing
    assert f"its data file {tmp_path / data_name}" in line and "does not exist" in line
    assert snapshot(tmp_path) == before


# --- DICOM series with a damaged file -----------------------------------------------------------------------------


@pytest.fixture
def series(tmp_path, rng) -> tuple[Path, Volume]:
    volume = Volume.create(rng.integers(-1000, 1500, size=(6, 10, 12)).astype(np.int16), (0.7, 0.8, 2.5),
                           (10.0, -20.0, 30.0))
    return write_dicom_series(volume, tmp_path / "series"), volume


@pytest.mark.parametrize("which", [0, 2, 5])  # first, a middle one, last (sorted by position = by file name)
def test_a_truncated_slice_is_an_error_naming_it(tmp_path, series, which):
    folder, _ = series
    damaged = sorted(folder.glob("*.dcm"))[which]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    before = snapshot(folder)
    with pytest.raises(SegCoreError, match="not a readable DICOM image file") as caught:
        read_dicom_series(folder)
    assert caught.value.path == str(damaged)
    line = one_line_error(segcore("convert", folder, tmp_path / "out.nii.gz", cwd=tmp_path), "convert", damaged)
    assert "truncated or damaged" in line
    assert snapshot(folder) == before and not (tmp_path / "out.nii.gz").exists()


def test_a_file_cut_before_the_dicm_marker_is_named_by_its_suffix(series):
    folder, _ = series
    first = sorted(folder.glob("*.dcm"))[0]
    first.write_bytes(first.read_bytes()[:100])
    with pytest.raises(SegCoreError, match="its suffix is .dcm") as caught:
        read_dicom_series(folder)
    assert caught.value.path == str(first)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian data element (short form), value padded to an even length."""
    value += b"\0" if len(value) % 2 and vr == b"UI" else b" " if len(value) % 2 else b""
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _structured_report() -> bytes:
    """A minimal DICOM Basic Text SR object: preamble, file meta information and a dataset without pixels."""
    sop_class, uid = b"1.2.840.10008.5.1.4.1.1.88.11", b"2.25.1234567890"
    meta = (struct.pack("<HH", 2, 1) + b"OB\0\0" + struct.pack("<I", 2) + b"\0\1" + _element(2, 2, b"UI", sop_class)
            + _element(2, 3, b"UI", uid) + _element(2, 0x10, b"UI", b"1.2.840.10008.1.2.1"))  # explicit VR LE
    dataset = _element(8, 0x16, b"UI", sop_class) + _element(8, 0x18, b"UI", uid) + _element(8, 0x60, b"CS", b"SR")
    return bytes(128) + b"DICM" + meta + dataset


def test_files_that_are_not_dicom_images_stay_ignored(series):
    folder, volume = series
    (folder / "README.txt").write_text("exported by a PACS\n")
    (folder / "DICOMDIR").write_bytes(bytes(128) + b"DICM" + b"\0" * 40)
    (folder / "report.dcm").write_bytes(_structured_report())
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(folder / "report.dcm"))
    with pytest.raises(RuntimeError):  # GDCM reads no image from it: it is skipped by its SOP class
        reader.ReadImageInformation()
    read = read_dicom_series(folder)
    assert np.array_equal(read.array, volume.array)


# --- unreadable inputs and link loops -----------------------------------------------------------------------------


def _raises(call) -> int:
    """Exit code 0 and the message on stderr when `call()` raises SegCoreError; 2 when it returns."""
    try:
        call()
    except SegCoreError as error:
        print(error, file=sys.stderr)
        return 0
    return 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to change the user of a child")
def test_unreadable_inputs_say_permission_denied(open_folder, rng):
    image = Volume.create(rng.normal(size=(5, 6, 7)).astype(np.float32), (1.0, 1.2, 2.0))
    labels = image.with_array((image.array > 0).astype(np.uint8))
    series = write_dicom_series(image.with_array(np.round(image.array * 100)), open_folder / "series")
    task = write_phantom_dataset("decathlon", open_folder / "Task09_Spleen", cases=1, size_zyx=16, task="Spleen")
    for folder in (series, *[p for p in task.rglob("*") if p.is_dir()], task):
        folder.chmod(0o755)  # written as private temporary folders; nobody must reach the files inside
    readers = {write_image(image, open_folder / "image.nii.gz"): read_image,
               write_image(labels, open_folder / "labels.nrrd"): read_label,
               write_segmentation(labels, segments_for_labels([1]), open_folder / "labels.seg.nrrd"): read_segmentation,
               sorted(series.glob("*.dcm"))[3]: lambda _: read_dicom_series(series),
               task / "dataset.json": lambda _: open_dataset(task)}
    for path, reader in readers.items():
        reader(path)  # root reads them all: they are fine files
    for path, reader in readers.items():
        path.chmod(0)
        code, stderr = as_another_user(partial(_raises, partial(reader, path)))
        assert code == 0, stderr
        assert stderr.startswith(f"{path}: permission denied"), stderr
        path.chmod(0o644)
    series.chmod(0o700)  # the folder itself: nobody may not list it
    code, stderr = as_another_user(partial(_raises, partial(read_dicom_series, series)))
    assert code == 0 and stderr.startswith(f"{series}: permission denied"), stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to change the user of a child")
def test_unreadable_input_through_the_cli_is_one_line(open_folder, rng):
    image = write_image(Volume.create(rng.normal(size=(4, 5, 6)).astype(np.float32)), open_folder / "ct.nrrd")
    out = open_folder / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    assert cli.main(["convert", str(image), str(open_folder / "as-root.nii.gz")]) == 0  # a fine file; and
    (open_folder / "as-root.nii.gz").unlink()  # every module the child needs is now imported
    image.chmod(0)
    before = image.read_bytes()
    code, stderr = as_another_user(lambda: cli.main(["convert", str(image), str(out / "ct.nii.gz")]))
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith(f"segcore convert: error: {image}: permission denied"), lines[0]
    assert list(out.iterdir()) == [] and image.read_bytes() == before


def test_a_symbolic_link_loop_is_one_line(tmp_path):
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop)
    folder_loop = tmp_path / "dataset"
    folder_loop.symlink_to(folder_loop)
    line = one_line_error(segcore("convert", loop, "out.nii.gz", cwd=tmp_path), "convert", loop)
    assert "loop of symbolic links" in line
    line = one_line_error(segcore("inspect", folder_loop, "--out", "fp", cwd=tmp_path), "inspect", folder_loop)
    assert "loop of symbolic links" in line
    broken = tmp_path / "broken.nrrd"
    broken.symlink_to(tmp_path / "gone.nrrd")
    line = one_line_error(segcore("convert", broken, "out.nii.gz", cwd=tmp_path), "convert", broken)
    assert f"broken symbolic link: it points to {tmp_path / 'gone.nrrd'}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nrrd", "dataset", "loop.nii.gz"]


# --- phantom sizes -------------------------------------------------------------------------------------------------


def _gib_in(line: str) -> float:
    number, unit = re.search(r"needs about ([\d.,]+) (GiB|TiB|PiB)", line).groups()
    return float(number.replace(",", "")) * {"GiB": 1, "TiB": 2 ** 10, "PiB": 2 ** 20}[unit]


@pytest.mark.parametrize("command", ["phantoms", "demo"])
def test_a_size_that_cannot_fit_in_memory_is_refused_before_anything_is_made(tmp_path, command):
    start = time.perf_counter()
    result = segcore(command, "--study", "muscle", "--out", "big", "--size", "100000", cwd=tmp_path)
    line = one_line_error(result, command, "33333 x 100000 x 100000")  # muscle's 16 x 48 x 48, scaled by hand
    assert time.perf_counter() - start < 60
    # at least one float32 image of that many voxels (2^30 bytes per GiB)
    assert _gib_in(line) >= 33333 * 100000 * 100000 * 4 / 2 ** 30
    suggested = int(re.search(r"--size (\d+)", line).group(1))
    assert 8 <= suggested < 100000
    assert list(tmp_path.iterdir()) == []


def test_phantoms_and_demo_take_the_same_size_forms(tmp_path):
    # the demo's three-number form runs in test_demo.py (a whole demo); here both refuse two numbers alike
    result = segcore("phantoms", "--study", "atrium", "--out", tmp_path / "one", "--cases", "1", "--size", "12", "16",
                     "20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    image = next((tmp_path / "one").rglob("lgemri.nrrd"))
    assert sitk.ReadImage(str(image)).GetSize() == (20, 16, 12)  # x, y, z as ITK reads the file
    for command in ("phantoms", "demo"):
        line = one_line_error(segcore(command, "--study", "atrium", "--out", tmp_path / "two", "--size", "12", "16",
                                      cwd=tmp_path), command, "--size takes one number or three")
        assert "got 2" in line
    assert not (tmp_path / "two").exists()
