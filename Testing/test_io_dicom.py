"""DICOM series: round trips (HU, oblique geometry), series choice, and every refused series with its reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegCore.errors import SegCoreError
from SegCore.io import list_dicom_series, read_dicom_series, read_image, write_dicom_series
from SegCore.volume import Volume

SPACING_MM = (0.75, 0.6, 2.5)
ORIGIN_LPS = (-120.5, 33.25, 210.0)


def _rotation_det_plus_one(oblique_direction: np.ndarray) -> np.ndarray:
    """The fixture's oblique rotation with the flip removed (a right-handed DICOM stack)."""
    return oblique_direction @ np.diag([1.0, 1.0, -1.0])


@pytest.fixture
def ct(rng) -> Volume:
    return Volume.create(rng.integers(-1024, 3072, size=(6, 5, 7)).astype(np.int16), SPACING_MM, ORIGIN_LPS)


def _write_slices(folder: Path, positions, row, column, *, series_uid="1.2.3.4", values=None, rows=4, columns=5):
    """Write one DICOM file per position with SimpleITK directly (to build series SegCore would not write)."""
    folder.mkdir(parents=True, exist_ok=True)
    row, column = np.asarray(row, float), np.asarray(column, float)
    direction = np.stack([row, column, np.cross(row, column)], axis=1)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, position in enumerate(positions):
        plane = values[k] if values is not None else np.full((1, rows, columns), k, np.int16)
        image = sitk.GetImageFromArray(plane.reshape(1, rows, columns))
        image.SetOrigin(tuple(float(p) for p in position))
        image.SetSpacing((0.5, 0.5, 1.0))
        image.SetDirection(direction.flatten().tolist())
        for tag, value in {"0008|0060": "CT", "0020|000e": series_uid, "0020|000d": "1.2.3",
                           "0020|0013": str(k + 1), "0008|0018": f"{series_uid}.{k + 1}",
                           "0008|103e": f"series {series_uid}"}.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(image)
    return folder


def _axial_positions(count, step_mm=2.0, start=(0.0, 0.0, 0.0)):
    return [np.asarray(start) + np.array([0.0, 0.0, k * step_mm]) for k in range(count)]


def test_round_trip_identity_keeps_hu_and_grid(tmp_path, ct):
    folder = write_dicom_series(ct, tmp_path / "ct", series_description="phantom CT")
    back = read_dicom_series(folder)
    assert back.array.dtype == np.int16
    assert np.array_equal(back.array, ct.array)
    assert back.grid.mismatch(ct.grid) is None
    assert len(list(folder.glob("*.dcm"))) == ct.shape_zyx[0]


def test_round_trip_oblique_right_handed_is_exact(tmp_path, ct, oblique_direction):
    volume = Volume.create(ct.array, SPACING_MM, ORIGIN_LPS, _rotation_det_plus_one(oblique_direction))
    back = read_dicom_series(write_dicom_series(volume, tmp_path / "oblique"))
    assert back.grid.mismatch(volume.grid) is None
    np.testing.assert_allclose(back.ijk_to_lps(), volume.ijk_to_lps(), atol=1e-6)
    assert np.array_equal(back.array, volume.array)


def test_round_trip_flipped_axis_gives_same_voxels_at_same_positions(tmp_path, ct, oblique_direction):
    """det(direction) = -1: DICOM stacks are sorted along row x column, so the k axis comes back reversed."""
    volume = Volume.create(ct.array, SPACING_MM, ORIGIN_LPS, oblique_direction)
    back = read_dicom_series(write_dicom_series(volume, tmp_path / "flipped"))
    last = ct.shape_zyx[0] - 1
    np.testing.assert_allclose(back.grid.origin_lps, volume.grid.index_to_lps([0, 0, last])[0], atol=1e-6)
    back_direction, direction = np.asarray(back.grid.direction_lps), np.asarray(volume.grid.direction_lps)
    np.testing.assert_allclose(back_direction[:, 2], -direction[:, 2], atol=1e-6)
    np.testing.assert_allclose(back_direction[:, :2], direction[:, :2], atol=1e-9)
    assert np.array_equal(back.array, volume.array[::-1])
    # every voxel centre of `back` is a voxel centre of `volume` with the same value
    ijk = np.array([[1, 2, 0], [4, 0, 5], [6, 4, 2]])
    np.testing.assert_allclose(volume.grid.lps_to_index(back.grid.index_to_lps(ijk)),
                               ijk * [1, 1, -1] + [0, 0, last], atol=1e-6)


def test_rescale_intercept_is_applied_to_stored_values(tmp_path):
    """Known answer: stored pixel values are HU + 1024 with intercept -1024; reading gives HU."""
    hu = np.array([[-1024, -500, 0], [40, 1000, 3071]], np.int16)
    image = sitk.GetImageFromArray(hu[None])
    image.SetMetaData("0028|1052", "-1024")
    image.SetMetaData("0028|1053", "1")
    image.SetMetaData("0020|000e", "1.2.3.9")
    folder = tmp_path / "hu"
    folder.mkdir()
    sitk.WriteImage(image, str(folder / "one.dcm"))
    raw = np.frombuffer((folder / "one.dcm").read_bytes()[-hu.size * 2:], "<i2").reshape(hu.shape)
    assert np.array_equal(raw.astype(int), hu.astype(int) + 1024)  # the file really stores shifted values
    back = read_dicom_series(folder)
    assert back.array.dtype == np.int16
    assert np.array_equal(back.array[0], hu)


def test_non_integer_values_are_quantised_within_half_a_slope(tmp_path, rng):
    values = rng.uniform(-3.0, 5.0, size=(3, 4, 5)).astype(np.float32)
    back = read_dicom_series(write_dicom_series(Volume.create(values), tmp_path / "float", modality="MR"))
    assert back.array.dtype == np.float32
    slope = (values.max() - values.min()) / 65530.0
    assert np.abs(back.array - values).max() <= slope * 0.51 + 1e-6


def test_list_series_sorted_by_position(tmp_path, ct):
    folder = write_dicom_series(ct, tmp_path / "ct", series_description="abdomen", series_uid="1.2.826.0.1.7")
    (series,) = list_dicom_series(folder)
    assert (series.series_uid, series.description, series.modality, series.num_files) == (
        "1.2.826.0.1.7", "abdomen", "CT", 6)
    positions = []
    for path in series.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        positions.append(float(reader.GetMetaData("0020|0032").split("\\")[2]))
    assert positions == sorted(positions)


def test_mixed_series_need_a_uid_and_the_error_lists_them(tmp_path, ct):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, uid, volume in (("a", "1.2.3.100", ct), ("b", "1.2.3.200", ct.with_array(ct.array[:, :, ::-1]))):
        for path in write_dicom_series(volume, tmp_path / name, series_uid=uid, series_description=name).iterdir():
            shutil.copy(path, mixed / f"{name}_{path.name}")
    with pytest.raises(SegCoreError) as caught:
        read_dicom_series(mixed)
    message = str(caught.value)
    assert str(mixed) in message and "1.2.3.100" in message and "1.2.3.200" in message and "6 files" in message
    assert "--series" in message
    chosen = read_dicom_series(mixed, series_uid="1.2.3.200")
    assert np.array_equal(chosen.array, ct.array[:, :, ::-1])
    assert np.array_equal(read_image(mixed, series_uid="1.2.3.100").array, ct.array)
    with pytest.raises(SegCoreError, match="1.2.3.999"):
        read_dicom_series(mixed, series_uid="1.2.3.999")


def test_missing_slice_is_refused_naming_the_gap(tmp_path):
    positions = _axial_positions(6, step_mm=2.0)
    del positions[3]
    folder = _write_slices(tmp_path / "gap", positions, (1, 0, 0), (0, 1, 0))
    with pytest.raises(SegCoreError, match=r"1 missing slice.*2 mm apart.*4 mm apart.*at 4 and 8 mm") as caught:
        read_dicom_series(folder)
    assert str(folder) in str(caught.value)


def test_uneven_spacing_is_refused(tmp_path):
    steps = [0.0, 2.0, 4.0, 6.0, 8.7, 10.7]
    positions = [np.array([0.0, 0.0, z]) for z in steps]
    folder = _write_slices(tmp_path / "uneven", positions, (1, 0, 0), (0, 1, 0))
    with pytest.raises(SegCoreError, match=r"uneven slice spacing: steps range from 2 to 2\.7 mm") as caught:
        read_dicom_series(folder)
    assert str(folder) in str(caught.value)


def test_gantry_tilt_is_refused(tmp_path):
    """Positions advance 2 mm along the normal and 0.35 mm along the column direction: a 10 degree tilt."""
    positions = [np.array([0.0, 0.35 * k, 2.0 * k]) for k in range(5)]
    folder = _write_slices(tmp_path / "tilt", positions, (1, 0, 0), (0, 1, 0))
    with pytest.raises(SegCoreError, match=r"gantry tilt.*9\.93 degrees") as caught:
        read_dicom_series(folder)
    assert str(folder) in str(caught.value)


def test_oblique_but_untilted_series_is_accepted(tmp_path, oblique_direction):
    rotation = _rotation_det_plus_one(oblique_direction)
    row, column, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    positions = [np.array([5.0, -3.0, 1.0]) + 1.5 * k * normal for k in range(4)]
    volume = read_dicom_series(_write_slices(tmp_path / "oblique", positions, row, column))
    np.testing.assert_allclose(volume.grid.direction_lps, rotation, atol=1e-6)
    np.testing.assert_allclose(volume.grid.spacing_xyz_mm, [0.5, 0.5, 1.5], atol=1e-6)
    assert [int(volume.array[k, 0, 0]) for k in range(4)] == [0, 1, 2, 3]


def test_duplicate_positions_are_refused(tmp_path):
    folder = _write_slices(tmp_path / "dup", _axial_positions(3) + _axial_positions(1), (1, 0, 0), (0, 1, 0))
    with pytest.raises(SegCoreError, match="same position") as caught:
        read_dicom_series(folder)
    assert str(folder) in str(caught.value)


def test_empty_folder_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    with pytest.raises(SegCoreError, match="no DICOM") as caught:
        read_dicom_series(empty)
    assert str(empty) in str(caught.value)
    assert list_dicom_series(empty) == []


def test_writer_refuses_a_sheared_grid(tmp_path, ct):
    sheared = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sheared /= np.linalg.norm(sheared, axis=0)
    with pytest.raises(SegCoreError, match="sheared"):
        write_dicom_series(Volume.create(ct.array, SPACING_MM, ORIGIN_LPS, sheared), tmp_path / "sheared")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_replace_a_folder_with_other_files(tmp_path, ct):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "report.pdf").write_bytes(b"%PDF")
    with pytest.raises(SegCoreError, match="other than a DICOM series") as caught:
        write_dicom_series(ct, folder)
    assert str(folder) in str(caught.value)
    assert (folder / "report.pdf").exists()


def test_writer_replaces_an_existing_series_atomically(tmp_path, ct):
    folder = write_dicom_series(ct, tmp_path / "ct")
    thin = Volume.create(ct.array[:3], SPACING_MM, ORIGIN_LPS)
    write_dicom_series(thin, folder)
    assert len(list(folder.iterdir())) == 3
    assert np.array_equal(read_dicom_series(folder).array, ct.array[:3])
    assert [p.name for p in tmp_path.iterdir()] == ["ct"]  # no temporary folders left behind


def test_single_dcm_file_is_one_slice_of_its_series(tmp_path, ct, oblique_direction):
    oblique = Volume(ct.array, Volume.create(ct.array, SPACING_MM, ORIGIN_LPS,
                                              _rotation_det_plus_one(oblique_direction)).grid)
    folder = write_dicom_series(oblique, tmp_path / "series")
    files = list_dicom_series(folder)[0].files  # sorted along the slice normal
    one = read_image(files[2])
    assert one.shape_zyx == (1, *ct.shape_zyx[1:])
    np.testing.assert_array_equal(one.array[0], ct.array[2])
    np.testing.assert_allclose(one.grid.origin_lps, oblique.grid.index_to_lps([[0, 0, 2]])[0], atol=1e-3)
    np.testing.assert_allclose(one.grid.direction_lps, oblique.grid.direction_lps, atol=1e-4)
    np.testing.assert_allclose(one.grid.spacing_xyz_mm[:2], SPACING_MM[:2], rtol=1e-5)


def test_a_file_that_is_not_dicom_is_refused_by_name(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_text("not a DICOM file")
    with pytest.raises(SegCoreError, match="scan.dcm: not a readable DICOM image file"):
        read_image(path)
