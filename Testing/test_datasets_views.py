"""Anatomical views and the case preview, checked against where a marker really lies in the patient.

The oracle is Slicer's radiological convention written out by hand: axial R|L across and A over P, coronal
R|L across and S over I, sagittal A|P across and S over I. Volumes are filled voxel by voxel from physical
LPS positions (`Grid.index_to_lps`), so a wrong flip or transpose in the views moves the marker.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from SegCore.datasets import anatomical_views, plot_case, write_case_preview
from SegCore.volume import Grid, Volume

# view -> (patient side at top, bottom, left, right), from vtkMRMLSliceNode's default slice-to-RAS matrices.
SLICER_EDGES = {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"), "sagittal": ("S", "I", "A", "P")}
# Per view: the LPS axis and sign that points to the screen's right, and the one that points down.
SCREEN_AXES = {"axial": ((0, 1), (1, 1)), "coronal": ((0, 1), (2, -1)), "sagittal": ((1, 1), (2, -1))}
MARKER_LPS = np.array([30.0, -12.0, 20.0])  # the patient's left (x > 0), anterior (y < 0), superior (z > 0)

SAGITTAL_SERIES = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0.0]])  # i -> P, j -> I, k -> L
DIRECTIONS = {
    "identity LPS": np.eye(3),
    "RAS (i, j flipped)": np.diag([-1.0, -1.0, 1.0]),
    "k flipped": np.diag([1.0, 1.0, -1.0]),
    "sagittal series": SAGITTAL_SERIES,
    "coronal series, flipped": np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0.0]]),  # i -> R, j -> I, k -> P
}


def centred_grid(direction, shape_zyx=(36, 44, 52), spacing_xyz_mm=(2.0, 2.5, 3.0)) -> Grid:
    """A grid whose centre lies at LPS (0, 0, 0)."""
    direction = np.asarray(direction, dtype=float)
    half = (np.asarray(shape_zyx[::-1]) - 1) / 2 * np.asarray(spacing_xyz_mm)
    return Grid(tuple(shape_zyx), tuple(spacing_xyz_mm), tuple((-direction @ half).tolist()),
                tuple(tuple(row) for row in direction.tolist()))


def physical_positions(grid: Grid) -> np.ndarray:
    """(Z, Y, X, 3) LPS position of every voxel, brute force."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.shape_zyx], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return grid.index_to_lps(ijk).reshape(*grid.shape_zyx, 3)


def marker_volume(grid: Grid, centre_lps=MARKER_LPS, radius_mm=7.0) -> Volume:
    """uint8 volume: 1 inside a ball around `centre_lps`, 0 elsewhere."""
    inside = np.linalg.norm(physical_positions(grid) - centre_lps, axis=-1) < radius_mm
    return Volume(inside.astype(np.uint8), grid)


def screen_offset_mm(view, plane: np.ndarray) -> np.ndarray:
    """(right, down) offset in mm of the marker's centroid in `plane` from the plane's centre."""
    rows, columns = np.nonzero(plane)
    height, width = plane.shape[0] * view.row_mm, plane.shape[1] * view.column_mm
    return np.array([(columns.mean() + 0.5) * view.column_mm - width / 2,
                     (rows.mean() + 0.5) * view.row_mm - height / 2])


def expected_offset_mm(name: str, point_lps: np.ndarray) -> np.ndarray:
    (right_axis, right_sign), (down_axis, down_sign) = SCREEN_AXES[name]
    return np.array([right_sign * point_lps[right_axis], down_sign * point_lps[down_axis]])


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_marker_lands_where_the_patient_side_says_for_axis_aligned_grids(name):
    marker = marker_volume(centred_grid(DIRECTIONS[name]))
    centroid_zyx = np.argwhere(marker.array).mean(axis=0).round().astype(int)
    for view in anatomical_views(marker.grid):
        assert (view.letters["top"], view.letters["bottom"], view.letters["left"], view.letters["right"]) == \
            SLICER_EDGES[view.name]
        assert not view.oblique
        plane = view.plane(marker.array, centroid_zyx[view.normal_axis])
        # Within a voxel (3 mm at most) of where the marker lies in the patient.
        np.testing.assert_allclose(screen_offset_mm(view, plane), expected_offset_mm(view.name, MARKER_LPS), atol=3.0)
        assert view.position_mm(centroid_zyx) == pytest.approx(MARKER_LPS[view.patient_axis], abs=3.0)


def test_oblique_grid_uses_the_nearest_axes_and_says_so(oblique_direction):
    marker = marker_volume(centred_grid(oblique_direction), centre_lps=MARKER_LPS * 0.8)
    centroid_zyx = np.argwhere(marker.array).mean(axis=0).round().astype(int)
    for view in anatomical_views(marker.grid):
        assert view.oblique
        assert (view.letters["top"], view.letters["bottom"], view.letters["left"], view.letters["right"]) == \
            SLICER_EDGES[view.name]
        offset = screen_offset_mm(view, view.plane(marker.array, centroid_zyx[view.normal_axis]))
        # Rotated by up to 30 degrees, the marker stays in its quadrant.
        assert np.all(np.sign(offset) == np.sign(expected_offset_mm(view.name, MARKER_LPS)))


@pytest.mark.parametrize("name", [n for n in DIRECTIONS if n != "identity LPS"])
def test_same_anatomy_on_any_axis_aligned_grid_gives_the_same_pictures(name, rng):
    """The same physical content stored flipped or permuted must give identical views and pixel sizes."""
    reference = centred_grid(np.eye(3), shape_zyx=(12, 14, 16), spacing_xyz_mm=(1.0, 2.0, 3.0))
    content = Volume(rng.integers(0, 1000, size=reference.shape_zyx).astype(np.int16), reference)
    # The other grid covers the same voxels: its spacing per patient axis is the reference's.
    direction = DIRECTIONS[name]
    index_of_patient = np.abs(direction).argmax(axis=1)  # LPS axis p is stored along index axis index_of_patient[p]
    spacing = np.empty(3)
    shape_xyz = np.empty(3, dtype=int)
    spacing[index_of_patient] = reference.spacing_xyz_mm
    shape_xyz[index_of_patient] = reference.shape_zyx[::-1]
    other = centred_grid(direction, tuple(shape_xyz[::-1].tolist()), tuple(spacing.tolist()))
    source_ijk = np.rint(reference.lps_to_index(physical_positions(other).reshape(-1, 3))).astype(int)
    copy = content.array[source_ijk[:, 2], source_ijk[:, 1], source_ijk[:, 0]].reshape(other.shape_zyx)
    for before, after in zip(anatomical_views(reference), anatomical_views(other), strict=True):
        index = 5
        centre_ijk = np.rint(other.lps_to_index(reference.index_to_lps([[index, index, index]]))[0]).astype(int)
        plane_before = before.plane(content.array, index)
        plane_after = after.plane(copy, centre_ijk[::-1][after.normal_axis])
        np.testing.assert_array_equal(plane_after, plane_before)
        assert (after.row_mm, after.column_mm) == (before.row_mm, before.column_mm)


def test_anisotropic_views_have_the_physical_aspect_ratio_on_screen():
    grid = centred_grid(np.eye(3), shape_zyx=(10, 40, 50), spacing_xyz_mm=(0.8, 0.8, 4.0))
    image = Volume(np.arange(np.prod(grid.shape_zyx), dtype=np.float32).reshape(grid.shape_zyx), grid)
    views = {view.name: view for view in anatomical_views(grid)}
    assert views["axial"].aspect == pytest.approx(0.8 / 0.8)
    assert views["coronal"].aspect == pytest.approx(4.0 / 0.8)
    assert views["sagittal"].aspect == pytest.approx(4.0 / 0.8)
    figure = plot_case(image, None)
    figure.canvas.draw()
    for axis in figure.axes:
        picture = axis.images[0]
        rows, columns = picture.get_array().shape
        left, right, bottom, top = picture.get_extent()
        (x0, y0), (x1, y1) = axis.transData.transform([(left, top), (right, bottom)])
        pixel_height, pixel_width = abs(y1 - y0) / rows, abs(x1 - x0) / columns
        name = axis.get_title().split(",")[0].split("\n")[0]
        assert pixel_height / pixel_width == pytest.approx(views[name].aspect, rel=0.02)


@pytest.mark.parametrize("name", ["identity LPS", "sagittal series", "oblique"])
def test_case_preview_panels_show_marker_letters_slice_and_scale(name, oblique_direction, tmp_path):
    import matplotlib.image

    direction = oblique_direction if name == "oblique" else DIRECTIONS[name]
    centre = MARKER_LPS * 0.8
    label = marker_volume(centred_grid(direction), centre_lps=centre)
    image = label.with_array(label.array.astype(np.float32) * 100 + 10)
    figure = plot_case(image, label, title="marker")
    # Where the marker's centre lies in (z, y, x) index space: the slices must pass within a voxel of it.
    centre_zyx = label.grid.lps_to_index(centre)[0][::-1]
    assert [axis.get_title().split(",")[0].split("\n")[0] for axis in figure.axes] == list(SLICER_EDGES)
    for axis, view in zip(figure.axes, anatomical_views(label.grid), strict=True):
        left, right, bottom, top = axis.images[0].get_extent()
        shown = axis.images[0].get_array()
        rows, columns = np.nonzero(shown > 50)
        # The marker, as drawn, sits on the patient's side of the panel centre.
        assert np.sign(columns.mean() + 0.5 - shown.shape[1] / 2) == np.sign(expected_offset_mm(view.name, centre)[0])
        assert np.sign(rows.mean() + 0.5 - shown.shape[0] / 2) == np.sign(expected_offset_mm(view.name, centre)[1])
        letters = {text.get_text(): text.get_position() for text in axis.texts if len(text.get_text()) == 1}
        top_letter, bottom_letter, left_letter, right_letter = SLICER_EDGES[view.name]
        assert letters[top_letter][1] == top and letters[bottom_letter][1] == bottom
        assert letters[left_letter][0] == left and letters[right_letter][0] == right
        title = axis.get_title()
        index = re.search(r"slice ([ijk]) = (\d+) of (\d+)", title)
        assert index.group(1) == "kji"[view.normal_axis]
        assert abs(int(index.group(2)) - centre_zyx[view.normal_axis]) <= 1
        assert int(index.group(3)) == label.grid.shape_zyx[view.normal_axis]
        side = "LPS"[view.patient_axis] if centre[view.patient_axis] > 0 else "RAI"[view.patient_axis]
        position = re.search(rf"{side} (\d+\.\d) mm", title)
        # Within a voxel diagonal (2 x 2.5 x 3 mm) of the marker's centre.
        assert float(position.group(1)) == pytest.approx(abs(centre[view.patient_axis]), abs=4.5)
        assert ("oblique" in title) == (name == "oblique")
        assert axis.get_xlabel().endswith("(mm)") and axis.get_ylabel().endswith("(mm)")
        bar = next(line for line in axis.lines)
        length = float(next(t.get_text() for t in axis.texts if t.get_text().endswith(" mm")).split()[0])
        assert np.ptp(bar.get_xdata()) == pytest.approx(length)
        assert 0 < length <= (right - left) / 4
        assert len(axis.collections) > 0  # the label outline
    path = write_case_preview(image, label, tmp_path / "preview.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(path).shape[2] in (3, 4)


def test_a_single_slice_shows_only_the_view_across_it():
    grid = centred_grid(np.eye(3), shape_zyx=(1, 40, 48), spacing_xyz_mm=(0.7, 0.7, 5.0))
    image = Volume(np.random.default_rng(3).normal(size=grid.shape_zyx).astype(np.float32), grid)
    figure = plot_case(image, None)
    assert [axis.get_title().split("\n")[0] for axis in figure.axes] == ["axial"]


def test_plane_refuses_an_array_of_another_grid():
    from SegCore.errors import SegCoreError

    view = anatomical_views(centred_grid(np.eye(3), shape_zyx=(4, 5, 6)))[0]
    with pytest.raises(SegCoreError, match="axial"):
        view.plane(np.zeros((4, 6, 5)), 0)


def test_every_view_of_a_paired_structure_crosses_the_label():
    """Two thalamus-like blobs either side of the midline: their centre lies between them, outside both."""
    grid = centred_grid(np.eye(3))
    pair = marker_volume(grid, centre_lps=(-15.0, 0.0, 0.0)).array | marker_volume(grid, (15.0, 0.0, 0.0)).array
    label = Volume(pair, grid)
    figure = plot_case(label.with_array(pair.astype(np.float32)), label)
    for axis in figure.axes:
        outlines = [path for contour in axis.collections for path in contour.get_paths() if len(path.vertices)]
        assert outlines, axis.get_title()
