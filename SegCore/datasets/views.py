"""Axial, coronal and sagittal views of a voxel array, the way 3D Slicer shows them, without resampling.

Slicer's default (radiological) slice orientations, from `vtkMRMLSliceNode::Get{Axial,Coronal,Sagittal}
SliceToRASMatrix` with `patientRightIsScreenLeft=true`:

| view     | screen left -> right | screen top -> bottom | slices along |
|----------|----------------------|----------------------|--------------|
| axial    | R -> L               | A -> P               | I-S          |
| coronal  | R -> L               | S -> I               | P-A          |
| sagittal | A -> P               | S -> I               | R-L          |

Each patient axis (L-R, A-P, S-I) is matched with the index axis (i, j, k) that points closest to it (one
index axis per patient axis). A view then cuts the array across one index axis and shows the other two,
transposed and flipped so the screen follows the table whatever the direction matrix is (a flipped or
permuted acquisition, a sagittal series). On an oblique grid this is the nearest such view, marked
`oblique`; nothing is resampled. Index axis c (i, j, k) is array axis 2 - c of a (Z, Y, X) array.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.volume import Grid

# A direction column that is not within this of a patient axis makes the grid oblique (about 0.8 degrees).
OBLIQUE_TOLERANCE = 1e-4

# Per view: the patient (LPS) axis it slices across, then (LPS axis, sign) that screen rows (top to bottom) and
# screen columns (left to right) run towards. LPS axes: 0 = R->L, 1 = A->P, 2 = I->S.
SLICER_VIEWS = {
    "axial": (2, (1, +1), (0, +1)),
    "coronal": (1, (2, -1), (0, +1)),
    "sagittal": (0, (2, -1), (1, +1)),
}
VIEW_NAMES = tuple(SLICER_VIEWS)


def patient_letter(vector_lps: np.ndarray) -> str:
    """The patient direction a 3-vector (LPS) points to most: one of 'L', 'R', 'P', 'A', 'S', 'I'."""
    vector = np.asarray(vector_lps, dtype=float)
    axis = int(np.argmax(np.abs(vector)))
    return ("LPS" if vector[axis] > 0 else "RAI")[axis]


def position_label(value_mm: float, patient_axis: int) -> str:
    """A coordinate along one LPS axis, named by its side so it reads the same in LPS and RAS: 'S 12.5 mm'."""
    letter = ("LPS" if value_mm >= 0 else "RAI")[patient_axis]
    return f"{letter} {abs(value_mm):.1f} mm"


def is_oblique(direction_lps: np.ndarray) -> bool:
    """True when some index axis is not along a patient axis. direction_lps: 3x3, columns = i, j, k."""
    return bool(np.any(np.abs(np.asarray(direction_lps, dtype=float)).max(axis=0) < 1 - OBLIQUE_TOLERANCE))


def nearest_index_axes(direction_lps: np.ndarray) -> tuple[int, int, int]:
    """For LPS axes 0, 1, 2 (R->L, A->P, I->S): the index axis (0 = i, 1 = j, 2 = k) pointing closest to it.

    A one-to-one match: the permutation with the largest summed |cosine|, so two index axes never claim the
    same patient axis, even at 45 degrees (ties go to the first permutation in itertools order).
    """
    cosines = np.abs(np.asarray(direction_lps, dtype=float))
    best = max(itertools.permutations(range(3)), key=lambda perm: sum(cosines[p, perm[p]] for p in range(3)))
    return tuple(int(a) for a in best)


@dataclass(frozen=True)
class View:
    """How one anatomical view is cut from a (Z, Y, X) array on `grid`; built by `anatomical_views`.

    Array axes (0 = z/k, 1 = y/j, 2 = x/i): `normal_axis` is the one the slice index runs along, `row_axis` is
    shown top to bottom and `column_axis` left to right, reversed where `flip_rows` / `flip_columns`.
    `row_mm` / `column_mm` are the pixel height / width (the spacings of those axes), so a picture with
    `extent_mm` (or `aspect = row_mm / column_mm`) has the physical aspect ratio. `letters` names the patient
    side at each screen edge ('top', 'bottom', 'left', 'right'), worked out from the direction matrix.
    """

    name: str
    patient_axis: int
    normal_axis: int
    row_axis: int
    column_axis: int
    flip_rows: bool
    flip_columns: bool
    row_mm: float
    column_mm: float
    letters: dict[str, str]
    oblique: bool
    grid: Grid

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of `plane`."""
        return self.grid.shape_zyx[self.row_axis], self.grid.shape_zyx[self.column_axis]

    @property
    def num_slices(self) -> int:
        return int(self.grid.shape_zyx[self.normal_axis])

    @property
    def index_name(self) -> str:
        """The index letter the slice number counts along: 'i', 'j' or 'k'."""
        return "kji"[self.normal_axis]

    @property
    def aspect(self) -> float:
        """Pixel height / width, for `imshow(..., aspect=...)` without an extent."""
        return self.row_mm / self.column_mm

    @property
    def extent_mm(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in mm from the top-left corner, for `imshow(origin='upper', extent=...)`."""
        rows, columns = self.shape
        return 0.0, columns * self.column_mm, rows * self.row_mm, 0.0

    def plane(self, array: np.ndarray, index: int) -> np.ndarray:
        """Slice `index` of a (Z, Y, X) array on this grid as (rows, columns), oriented for the screen.

        Works for any array on the grid (image channel, label, prediction), so overlays line up. A view
        into `array`, not a copy.
        """
        array = np.asarray(array)
        if array.shape != tuple(self.grid.shape_zyx):
            raise SegCoreError(f"cannot cut a {self.name} view from an array of shape {array.shape}: the view's grid "
                               f"is {tuple(self.grid.shape_zyx)} (z, y, x)", fix="pass an array on the same grid")
        plane = np.take(array, int(index), axis=self.normal_axis)
        remaining = [a for a in range(3) if a != self.normal_axis]
        if remaining.index(self.row_axis) == 1:
            plane = plane.T
        return plane[::-1 if self.flip_rows else 1, ::-1 if self.flip_columns else 1]

    def screen_to_index(self, row: float, column: float, index: int) -> np.ndarray:
        """(i, j, k) of the voxel shown at (row, column) of `plane(array, index)`."""
        rows, columns = self.shape
        zyx = np.zeros(3)
        zyx[self.normal_axis] = index
        zyx[self.row_axis] = rows - 1 - row if self.flip_rows else row
        zyx[self.column_axis] = columns - 1 - column if self.flip_columns else column
        return zyx[::-1]

    def position_mm(self, index_zyx) -> float:
        """Where voxel (z, y, x) lies along this view's patient axis, in LPS mm (for titles)."""
        return float(self.grid.index_to_lps(np.asarray(index_zyx, dtype=float)[::-1])[0, self.patient_axis])


def anatomical_views(grid: Grid) -> list[View]:
    """The axial, coronal and sagittal `View`s of `grid`, in that order (see the module docstring)."""
    direction = np.asarray(grid.direction_lps, dtype=float)
    nearest = nearest_index_axes(direction)
    oblique = is_oblique(direction)
    views = []
    for name, (patient, (row_patient, row_sign), (column_patient, column_sign)) in SLICER_VIEWS.items():
        screen = []
        for patient_axis, sign in ((row_patient, row_sign), (column_patient, column_sign)):
            index_axis = nearest[patient_axis]
            flip = bool(np.sign(direction[patient_axis, index_axis]) != sign)
            # The LPS direction in which the screen coordinate grows: the letter at the far (bottom/right) edge.
            growing = direction[:, index_axis] * (-1.0 if flip else 1.0)
            screen.append((2 - index_axis, flip, growing, float(grid.spacing_xyz_mm[index_axis])))
        (row_axis, flip_rows, down, row_mm), (column_axis, flip_columns, right, column_mm) = screen
        letters = {"top": patient_letter(-down), "bottom": patient_letter(down),
                   "left": patient_letter(-right), "right": patient_letter(right)}
        views.append(View(name, patient, 2 - nearest[patient], row_axis, column_axis, flip_rows, flip_columns,
                          row_mm, column_mm, letters, oblique, grid))
    return views
