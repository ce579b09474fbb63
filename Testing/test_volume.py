"""Volume and Grid: conventions, conversions to RAS/NIfTI/SimpleITK, grid comparison and resampling."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from SegCore import Grid, SegCoreError, Volume
from SegCore.volume import from_sitk, place_on_grid, resample_to_grid, to_sitk


def make_volume(direction, channels=0, rng=None):
    rng = rng or np.random.default_rng(0)
    shape = (channels, 5, 6, 7) if channels else (5, 6, 7)
    return Volume.create(rng.random(shape).astype(np.float32), (0.7, 1.1, 2.5), (12.0, -30.5, 4.25), direction)


def test_index_to_lps_follows_itk(oblique_direction):
    volume = make_volume(oblique_direction)
    image = to_sitk(volume)
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        expected = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(volume.grid.index_to_lps(np.array(ijk))[0], expected, atol=1e-9)
    np.testing.assert_allclose(volume.grid.lps_to_index(volume.grid.index_to_lps([[6, 5, 4]])), [[6, 5, 4]],
                               atol=1e-9)


def test_ijk_to_ras_flips_first_two_axes(oblique_direction):
    volume = make_volume(oblique_direction)
    lps = volume.grid.index_to_lps([[2, 3, 4]])[0]
    ras = (volume.ijk_to_ras() @ np.array([2, 3, 4, 1.0]))[:3]
    np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)


def test_voxel_lands_where_array_index_says():
    """array[k, j, i] is voxel (i, j, k): a single bright voxel is found at the same place by nibabel."""
    array = np.zeros((4, 5, 6), dtype=np.int16)
    array[1, 2, 3] = 7  # k=1, j=2, i=3
    volume = Volume.create(array, (2.0, 3.0, 4.0), (0, 0, 0))
    data = volume.to_nifti_array()
    assert data.shape == (6, 5, 4) and data[3, 2, 1] == 7
    np.testing.assert_allclose(volume.ijk_to_ras() @ [3, 2, 1, 1], [-6.0, -6.0, 4.0, 1.0])


@pytest.mark.parametrize("channels", [0, 3])
def test_nifti_round_trip_through_nibabel_file(tmp_path, oblique_direction, channels):
    volume = make_volume(oblique_direction, channels)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume.to_nifti_array(), volume.ijk_to_ras()), path)
    image = nib.load(path)
    back = Volume.from_nifti(np.asarray(image.dataobj), image.affine)
    assert back.grid.same_as(volume.grid), back.grid.mismatch(volume.grid)
    np.testing.assert_array_equal(back.array, volume.array)


def test_nifti_written_by_nibabel_reads_same_in_simpleitk(tmp_path, oblique_direction):
    volume = make_volume(oblique_direction)
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(volume.to_nifti_array(), volume.ijk_to_ras()), path)
    from_itk = from_sitk(sitk.ReadImage(str(path)))
    assert from_itk.grid.same_as(volume.grid), from_itk.grid.mismatch(volume.grid)
    np.testing.assert_array_equal(from_itk.array, volume.array)


def test_sitk_vector_image_becomes_channels(oblique_direction):
    volume = make_volume(oblique_direction, channels=2)
    back = from_sitk(to_sitk(volume))
    assert back.array.shape == (2, 5, 6, 7)
    np.testing.assert_array_equal(back.array, volume.array)


@pytest.mark.parametrize(
    ("spacing", "direction", "message"),
    [((1, 0, 1), np.eye(3), "spacing"), ((1, -2, 1), np.eye(3), "spacing"),
     ((1, 1, 1), [[1, 0, 0], [1, 0, 0], [0, 0, 1]], "singular")],
)
def test_invalid_geometry_is_refused(spacing, direction, message):
    with pytest.raises(SegCoreError, match=message):
        Volume.create(np.zeros((2, 2, 2)), spacing, (0, 0, 0), direction)


def test_grid_mismatch_names_what_differs(oblique_direction):
    grid = make_volume(oblique_direction).grid
    shifted = Grid(grid.shape_zyx, grid.spacing_xyz_mm, tuple(np.add(grid.origin_lps, [0, 0, 0.5])), grid.direction_lps)
    assert grid.mismatch(grid) is None
    assert "origins differ" in grid.mismatch(shifted)
    other_size = Grid((5, 6, 8), grid.spacing_xyz_mm, grid.origin_lps, grid.direction_lps)
    assert "sizes differ" in grid.mismatch(other_size)


def test_grid_from_ijk_to_ras_recovers_spacing_and_direction(oblique_direction):
    grid = make_volume(oblique_direction).grid
    again = Grid.from_ijk_to_ras(grid.ijk_to_ras(), grid.shape_zyx)
    assert again.same_as(grid)


def test_resample_label_onto_finer_grid_keeps_labels_in_place(oblique_direction):
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[2:4, 2:4, 2:4] = 3
    source = Volume.create(labels, (2.0, 2.0, 2.0), (5, 5, 5), oblique_direction)
    fine = Grid((12, 12, 12), (1.0, 1.0, 1.0), tuple(source.grid.index_to_lps([[-0.25] * 3])[0]),
                source.grid.direction_lps)
    out = resample_to_grid(source, fine)
    assert out.array.dtype == np.uint8 and set(np.unique(out.array)) == {0, 3}
    # The labelled block occupies the same physical volume: 8 voxels of 8 mm^3 = 64 voxels of 1 mm^3.
    assert int((out.array == 3).sum()) == 64
    centre = fine.index_to_lps(np.argwhere(out.array == 3)[:, ::-1]).mean(axis=0)
    expected = source.grid.index_to_lps(np.argwhere(labels == 3)[:, ::-1]).mean(axis=0)
    np.testing.assert_allclose(centre, expected, atol=1e-6)


def nearest_onto(volume: Volume, grid: Grid) -> np.ndarray:
    """The oracle: SimpleITK's own nearest-neighbour resampling of `volume` onto `grid` (0 outside)."""
    source = sitk.GetImageFromArray(volume.array)
    reference = sitk.GetImageFromArray(np.zeros(grid.shape_zyx, dtype=volume.array.dtype))
    for image, where in ((source, volume.grid), (reference, grid)):
        image.SetSpacing(where.spacing_xyz_mm)
        image.SetOrigin(where.origin_lps)
        image.SetDirection(np.asarray(where.direction_lps).flatten().tolist())
    return sitk.GetArrayFromImage(sitk.Resample(source, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


@pytest.mark.parametrize("oblique", [False, True])
def test_place_on_grid_pastes_a_crop_of_the_lattice_like_nearest_resampling(rng, oblique, oblique_direction):
    direction = oblique_direction if oblique else np.eye(3)
    spacing = (0.5, 0.6, 3.0)
    full = Volume.create(np.zeros((10, 12, 14), np.uint8), spacing, (1.0, 2.0, 3.0), direction)
    crop = (rng.random((4, 5, 6)) < 0.5).astype(np.uint8) * 7
    for start_ijk in ((5, 4, 3), (0, 0, 0), (8, 7, 6)):  # inside, at the corner, at the far edge
        origin = full.grid.index_to_lps([start_ijk])[0]
        # float32 headers: a spacing off by 2e-5 relative and an origin off by 2e-4 mm are the same lattice
        cropped = Volume.create(crop, np.asarray(spacing) * (1 + 2e-5), origin + 2e-4, direction)
        placed = place_on_grid(cropped, full.grid)
        assert placed is not None and placed.grid.same_as(full.grid)
        assert np.array_equal(placed.array, nearest_onto(cropped, full.grid))
        assert np.count_nonzero(placed.array) == np.count_nonzero(crop)


def test_place_on_grid_refuses_other_lattices_and_lost_voxels(oblique_direction):
    grid = Volume.create(np.zeros((10, 12, 14), np.uint8), (0.5, 0.6, 3.0), (1.0, 2.0, 3.0), oblique_direction).grid
    crop = np.ones((3, 4, 5), np.uint8)

    def at(start_ijk, spacing=(0.5, 0.6, 3.0), direction=oblique_direction):
        return Volume.create(crop, spacing, grid.index_to_lps([start_ijk])[0], direction)

    assert place_on_grid(at((0.5, 2, 2)), grid) is None  # half a voxel off: another lattice
    assert place_on_grid(at((2, 2, 2), spacing=(0.5, 0.6, 2.9)), grid) is None
    assert place_on_grid(at((2, 2, 2), direction=np.eye(3)), grid) is None
    assert place_on_grid(at((-1, 2, 2)), grid) is None  # labels would fall off the grid
    background_outside = crop.copy()
    background_outside[:, :, 0] = 0  # the column left of the grid holds only background: nothing is lost
    placed = place_on_grid(at((-1, 2, 2)).with_array(background_outside), grid)
    assert placed is not None and np.count_nonzero(placed.array) == np.count_nonzero(background_outside)
    assert place_on_grid(at((100, 2, 2)).with_array(np.zeros_like(crop)), grid) is not None  # empty: all zeros
