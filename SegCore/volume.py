"""`Volume`: the one geometry type. A numpy array plus where it lies in the patient, in LPS (the ITK convention).

Conventions (used everywhere in SegCore):
- `array` is (Z, Y, X) for one channel or (C, Z, Y, X) for several: `array[..., k, j, i]` is voxel (i, j, k).
- `spacing_xyz_mm` is (x, y, z): the voxel size along the i, j, k index axes.
- `origin_lps` is the physical position (mm, LPS) of voxel (0, 0, 0)'s centre.
- `direction_lps` is 3x3; its column c is the unit LPS direction of index axis c (i, j, k), as ITK stores it.
- physical_lps = origin_lps + direction_lps @ diag(spacing_xyz_mm) @ (i, j, k).
- RAS (NIfTI, Slicer) flips the first two physical axes: ras = diag(-1, -1, 1) @ lps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SegCore.errors import SegCoreError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Grid comparisons: spacing and direction relative/absolute, origin in mm. Tight enough to catch a one-voxel
# shift on any real grid, loose enough for float32 headers (NIfTI stores float32).
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class Grid:
    """Where a voxel array lies in space; see the module docstring for the conventions."""

    shape_zyx: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction_lps: tuple[tuple[float, float, float], ...]  # 3x3, rows of the matrix

    def __post_init__(self):
        spacing = np.asarray(self.spacing_xyz_mm, dtype=float)
        direction = np.asarray(self.direction_lps, dtype=float)
        origin = np.asarray(self.origin_lps, dtype=float)
        if len(self.shape_zyx) != 3 or spacing.shape != (3,) or origin.shape != (3,) or direction.shape != (3, 3):
            raise SegCoreError(f"a grid needs 3 sizes, spacings, origin values and a 3x3 direction, got shape "
                               f"{self.shape_zyx}, spacing {self.spacing_xyz_mm}, origin {self.origin_lps}")
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise SegCoreError(f"voxel spacing must be positive and finite, got {tuple(spacing.tolist())} mm",
                               fix="repair the image header's spacing (pixdim / space directions)")
        if not np.all(np.isfinite(direction)) or not np.all(np.isfinite(origin)):
            raise SegCoreError("origin or direction contains NaN or Inf", fix="repair the image header")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise SegCoreError(f"direction matrix is singular: {direction.tolist()}",
                               fix="repair the image header's orientation (qform/sform or space directions)")

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 affine from voxel indices (i, j, k) to physical LPS mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction_lps, dtype=float) * np.asarray(self.spacing_xyz_mm)[None, :]
        matrix[:3, 3] = self.origin_lps
        return matrix

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 affine from voxel indices (i, j, k) to physical RAS mm (Slicer's IJKToRAS, the NIfTI affine)."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices (i, j, k) -> (N, 3) LPS positions in mm."""
        ijk = np.asarray(ijk, dtype=float).reshape(-1, 3)
        matrix = self.ijk_to_lps()
        return ijk @ matrix[:3, :3].T + matrix[:3, 3]

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """(N, 3) LPS positions in mm -> (N, 3) continuous voxel indices (i, j, k)."""
        lps = np.asarray(lps, dtype=float).reshape(-1, 3)
        matrix = self.ijk_to_lps()
        return (lps - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T

    def mismatch(self, other: Grid) -> str | None:
        """None when the grids agree within tolerance, else a sentence saying how they differ."""
        if tuple(self.shape_zyx) != tuple(other.shape_zyx):
            return f"sizes differ (z, y, x): {tuple(self.shape_zyx)} vs {tuple(other.shape_zyx)}"
        if not np.allclose(self.spacing_xyz_mm, other.spacing_xyz_mm, rtol=SPACING_RTOL, atol=0):
            return f"spacings differ (x, y, z mm): {list(self.spacing_xyz_mm)} vs {list(other.spacing_xyz_mm)}"
        if not np.allclose(self.origin_lps, other.origin_lps, rtol=0, atol=ORIGIN_ATOL_MM):
            return f"origins differ (LPS mm): {list(self.origin_lps)} vs {list(other.origin_lps)}"
        if not np.allclose(self.direction_lps, other.direction_lps, rtol=0, atol=DIRECTION_ATOL):
            return f"directions differ: {self.direction_lps} vs {other.direction_lps}"
        return None

    def same_as(self, other: Grid) -> bool:
        return self.mismatch(other) is None

    @classmethod
    def from_ijk_to_lps(cls, matrix: np.ndarray, shape_zyx: tuple[int, int, int]) -> Grid:
        """Build a grid from a 4x4 IJK-to-LPS affine; spacing is the length of each column."""
        matrix = np.asarray(matrix, dtype=float)
        columns = matrix[:3, :3]
        spacing = np.linalg.norm(columns, axis=0)
        if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
            raise SegCoreError(f"affine has a zero or invalid axis (column lengths {spacing.tolist()} mm)",
                               fix="repair the image header's affine")
        direction = columns / spacing[None, :]
        return cls(tuple(int(s) for s in shape_zyx), tuple(spacing.tolist()), tuple(matrix[:3, 3].tolist()),
                   tuple(tuple(row) for row in direction.tolist()))

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray, shape_zyx: tuple[int, int, int]) -> Grid:
        """Build a grid from a 4x4 IJK-to-RAS affine (a NIfTI affine or Slicer's IJKToRAS matrix)."""
        return cls.from_ijk_to_lps(LPS_TO_RAS @ np.asarray(matrix, dtype=float), shape_zyx)


@dataclass(frozen=True, eq=False)
class Volume:
    """A voxel array on a `Grid`.

    array: (Z, Y, X) or (C, Z, Y, X), any numeric dtype. Two volumes are compared with `grid.same_as`
    and `np.array_equal`, never with `==`.
    """

    array: np.ndarray
    grid: Grid

    def __post_init__(self):
        if self.array.ndim not in (3, 4):
            raise SegCoreError(f"a volume is (Z, Y, X) or (C, Z, Y, X), got an array of shape {self.array.shape}")
        if tuple(self.array.shape[-3:]) != tuple(self.grid.shape_zyx):
            raise SegCoreError(f"array shape {self.array.shape} does not fit grid shape {self.grid.shape_zyx}")

    @classmethod
    def create(cls, array: np.ndarray, spacing_xyz_mm=(1.0, 1.0, 1.0), origin_lps=(0.0, 0.0, 0.0),
               direction_lps=None) -> Volume:
        """A volume from an array and its geometry (direction defaults to identity)."""
        array = np.asarray(array)
        direction = np.eye(3) if direction_lps is None else np.asarray(direction_lps, dtype=float).reshape(3, 3)
        grid = Grid(tuple(int(s) for s in array.shape[-3:]), tuple(float(s) for s in spacing_xyz_mm),
                    tuple(float(o) for o in origin_lps), tuple(tuple(r) for r in direction.tolist()))
        return cls(array, grid)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """The grid's (Z, Y, X) size; spacing, origin and direction are read from `volume.grid`."""
        return tuple(self.grid.shape_zyx)

    @property
    def num_channels(self) -> int:
        return 1 if self.array.ndim == 3 else int(self.array.shape[0])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 ml = 1000 mm^3)."""
        return float(np.prod(self.grid.spacing_xyz_mm)) / 1000.0

    def with_array(self, array: np.ndarray) -> Volume:
        """The same grid with another array of matching (Z, Y, X) shape (channels may differ)."""
        return Volume(np.asarray(array), self.grid)

    def channel(self, index: int) -> Volume:
        """One channel of a multi-channel volume as a (Z, Y, X) volume."""
        if self.array.ndim == 3:
            if index != 0:
                raise SegCoreError(f"volume has one channel, asked for channel {index}")
            return self
        return Volume(self.array[index], self.grid)

    def ijk_to_ras(self) -> np.ndarray:
        return self.grid.ijk_to_ras()

    def ijk_to_lps(self) -> np.ndarray:
        return self.grid.ijk_to_lps()

    # NIfTI: nibabel's data array is indexed [i, j, k(, c)] and its affine maps (i, j, k) to RAS.
    def to_nifti_array(self) -> np.ndarray:
        """The array in nibabel's order, (X, Y, Z) or (X, Y, Z, C): reversing all axes does both."""
        return self.array.T

    @classmethod
    def from_nifti(cls, data_xyz: np.ndarray, affine_ras: np.ndarray) -> Volume:
        """A volume from nibabel's (X, Y, Z) or (X, Y, Z, C) data and its RAS affine."""
        array = np.ascontiguousarray(np.asarray(data_xyz).T)
        return cls(array, Grid.from_ijk_to_ras(affine_ras, array.shape[-3:]))


def place_on_grid(volume: Volume, grid: Grid) -> Volume | None:
    """`volume` pasted onto `grid` when both are one voxel lattice (a .seg.nrrd saved cropped to its segments, a
    label map cropped around an organ), else None. Exact: voxels are copied, never interpolated.

    volume: (Z, Y, X). The lattices match when spacing and direction agree within `SPACING_RTOL` and
    `DIRECTION_ATOL` and `volume`'s origin lies within `ORIGIN_ATOL_MM` of a voxel centre of `grid` (the
    tolerances of `Grid.mismatch`). Voxels of `grid` that `volume` does not cover are 0. Returns None too when
    a non-zero voxel of `volume` falls outside `grid`: pasting would lose it.
    """
    if volume.array.ndim != 3:
        raise SegCoreError(f"only a (Z, Y, X) volume can be placed on a grid, got shape {volume.array.shape}")
    source = volume.grid
    if not (np.allclose(source.spacing_xyz_mm, grid.spacing_xyz_mm, rtol=SPACING_RTOL, atol=0)
            and np.allclose(source.direction_lps, grid.direction_lps, rtol=0, atol=DIRECTION_ATOL)):
        return None
    shift_ijk = np.round(grid.lps_to_index(source.origin_lps)[0])
    if not np.allclose(grid.index_to_lps(shift_ijk)[0], source.origin_lps, rtol=0, atol=ORIGIN_ATOL_MM):
        return None  # between voxel centres: another lattice
    start_zyx = shift_ijk.astype(int)[::-1]
    out = np.zeros(grid.shape_zyx, dtype=volume.array.dtype)
    src, dst = [], []
    for start, size, full in zip(start_zyx, volume.array.shape, grid.shape_zyx, strict=True):
        low, high = max(start, 0), min(start + size, full)
        if low >= high:  # no overlap at all
            return Volume(out, grid) if not volume.array.any() else None
        dst.append(slice(low, high))
        src.append(slice(low - start, high - start))
    inside = volume.array[tuple(src)]
    if inside.shape != volume.array.shape and np.count_nonzero(inside) != np.count_nonzero(volume.array):
        return None
    out[tuple(dst)] = inside
    return Volume(out, grid)


def to_sitk(volume: Volume):
    """A (Z, Y, X) volume as a SimpleITK image (same geometry); a (C, Z, Y, X) one as a vector image."""
    import SimpleITK as sitk

    if volume.array.ndim == 3:
        image = sitk.GetImageFromArray(volume.array)
    else:
        image = sitk.GetImageFromArray(np.moveaxis(volume.array, 0, -1), isVector=True)
    image.SetSpacing([float(s) for s in volume.grid.spacing_xyz_mm])
    image.SetOrigin([float(o) for o in volume.grid.origin_lps])
    image.SetDirection(np.asarray(volume.grid.direction_lps, dtype=float).flatten().tolist())
    return image


def from_sitk(image) -> Volume:
    """A 3D SimpleITK image (scalar or vector) as a Volume; vector components become channels."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise SegCoreError(f"expected a 3D image, got {image.GetDimension()}D")
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    grid = Grid(tuple(int(s) for s in reversed(image.GetSize())), tuple(image.GetSpacing()),
                tuple(image.GetOrigin()), tuple(tuple(r) for r in np.reshape(image.GetDirection(), (3, 3))))
    return Volume(np.ascontiguousarray(array), grid)


def resample_to_grid(volume: Volume, grid: Grid, *, interpolation: str = "nearest", fill_value: float = 0) -> Volume:
    """Resample `volume` onto `grid` in physical space (identity transform).

    interpolation: 'nearest' for labels (values are preserved exactly), 'linear' for images.
    Multi-channel volumes are resampled channel by channel. Returns a volume whose array has the dtype of
    the input. Integer inputs (CT in HU as int16, say) are interpolated in float64, then rounded half to even
    (np.rint: -1000.5 -> -1000, 6.5 -> 6, 7.5 -> 8, so a dataset does not drift up or down by half a unit) and
    clipped to the dtype's range; `fill_value` (outside the source) is clipped to that range too.
    """
    import SimpleITK as sitk

    methods = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear}
    if interpolation not in methods:
        raise SegCoreError(f"unknown interpolation {interpolation!r}", fix=f"use one of {sorted(methods)}")
    if volume.array.ndim == 4:
        channels = [resample_to_grid(volume.channel(c), grid, interpolation=interpolation, fill_value=fill_value)
                    for c in range(volume.num_channels)]
        return Volume(np.stack([c.array for c in channels]), grid)
    reference = to_sitk(Volume(np.zeros(grid.shape_zyx, dtype=np.uint8), grid))
    source = volume.array
    if source.dtype == bool:
        source = source.astype(np.uint8)
    image = to_sitk(volume.with_array(source))
    integer = np.issubdtype(source.dtype, np.integer)
    if integer:  # ITK would cast an out-of-range fill value with wrap-around
        info = np.iinfo(source.dtype)
        fill_value = min(max(fill_value, info.min), info.max)
    # ITK casts an interpolated value to an integer pixel type by truncation (6.6 -> 6, -1.5 -> -1): interpolate
    # in float64 instead and round here.
    float64 = integer and interpolation == "linear"
    out = sitk.Resample(image, reference, sitk.Transform(), methods[interpolation], float(fill_value),
                        sitk.sitkFloat64 if float64 else image.GetPixelID())
    array = sitk.GetArrayFromImage(out)
    if float64:
        array = np.clip(np.rint(array), info.min, info.max).astype(source.dtype)
    if volume.array.dtype == bool:
        array = array.astype(bool)
    return Volume(array, grid)
