"""Building blocks of the phantoms: case grids, smooth random warps, solid shapes and image noise.

Anatomy is described in millimetres in an anatomical frame (x towards the patient's left, y posterior, z
superior: LPS axes, centred on the region of interest), so a case's spacing, size, origin or rotated direction
changes how the anatomy is sampled, never the anatomy itself. Shapes take coordinate arrays (float32, any
shape) and return boolean masks of that shape; everything is vectorised numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from SegCore.volume import Grid

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


def random_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A proper rotation (det +1) about a random axis by 0.4..1 x `max_degrees` (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(max_degrees) * rng.uniform(0.4, 1.0) * rng.choice([-1.0, 1.0])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def case_grid(rng: np.random.Generator, shape_zyx: tuple[int, int, int], fov_mm_xyz: tuple[float, float, float],
              *, rotate_degrees: float = 0.0, centre_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Grid:
    """A grid covering about `fov_mm_xyz` with `shape_zyx` voxels, centred at `centre_lps`.

    Spacing is fov / size per axis, jittered by +-6 % per case (so anisotropic fields of view give anisotropic
    voxels); the direction is the identity or, with `rotate_degrees`, a random rotation (det +1, so DICOM
    stores it as it is); the origin follows from the centre, so it is non-zero.
    """
    size_xyz = np.array(shape_zyx[::-1], dtype=float)
    spacing = np.asarray(fov_mm_xyz, dtype=float) / size_xyz * rng.uniform(0.94, 1.06, size=3)
    spacing = np.round(spacing, 3)
    direction = random_rotation(rng, rotate_degrees) if rotate_degrees else np.eye(3)
    centre = np.asarray(centre_lps, dtype=float) + rng.uniform(-10.0, 10.0, size=3)
    origin = centre - direction @ (spacing * (size_xyz - 1) / 2.0)
    return Grid(tuple(int(s) for s in shape_zyx), tuple(spacing.tolist()), tuple(np.round(origin, 3).tolist()),
                tuple(tuple(row) for row in direction.tolist()))


def grid_coords(grid: Grid, centre_lps: np.ndarray, z_range: tuple[int, int] | None = None) -> Coords:
    """LPS positions (mm) of the voxel centres of slices z_range (default all), minus `centre_lps`.

    Returns (x, y, z), each float32 of shape (nz, Y, X): broadcasting keeps peak memory at three arrays.
    """
    k0, k1 = z_range or (0, grid.shape_zyx[0])
    k = np.arange(k0, k1, dtype=np.float32)[:, None, None]
    j = np.arange(grid.shape_zyx[1], dtype=np.float32)[None, :, None]
    i = np.arange(grid.shape_zyx[2], dtype=np.float32)[None, None, :]
    ijk_to_lps = grid.ijk_to_lps()
    matrix = ijk_to_lps[:3, :3].astype(np.float32)
    offset = (ijk_to_lps[:3, 3] - np.asarray(centre_lps)).astype(np.float32)
    return tuple(offset[r] + matrix[r, 0] * i + matrix[r, 1] * j + matrix[r, 2] * k for r in range(3))


@dataclass(frozen=True)
class SmoothWarp:
    """A smooth random displacement: a sum of a few plane waves (wavelength 60..150 mm, amplitude in mm).

    Evaluated point-wise, so it is the same function of position whatever the grid or chunking.
    """

    wavevectors: np.ndarray  # (K, 3) cycles per mm
    phases: np.ndarray  # (K,)
    amplitudes: np.ndarray  # (K, 3) mm

    @classmethod
    def random(cls, rng: np.random.Generator, amplitude_mm: float, waves: int = 5) -> SmoothWarp:
        directions = rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(60.0, 150.0, size=(waves, 1))
        amplitudes = rng.normal(size=(waves, 3)) * amplitude_mm / np.sqrt(waves)
        return cls(directions / wavelengths, rng.uniform(0, 2 * np.pi, size=waves), amplitudes)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> Coords:
        dx, dy, dz = np.zeros_like(x), np.zeros_like(y), np.zeros_like(z)
        for w, phase, a in zip(self.wavevectors, self.phases, self.amplitudes, strict=True):
            wave = np.sin(np.float32(2 * np.pi) * (w[0] * x + w[1] * y + w[2] * z) + phase).astype(np.float32)
            dx += a[0] * wave
            dy += a[1] * wave
            dz += a[2] * wave
        return x + dx, y + dy, z + dz


def ellipsoid(c: Coords, centre_xyz_mm, radii_xyz_mm, rotation: np.ndarray | None = None) -> np.ndarray:
    """Voxels inside an ellipsoid with semi-axes `radii_xyz_mm` about `centre_xyz_mm` (frame coordinates, as `c`),
    optionally rotated (3x3)."""
    centre, radii = centre_xyz_mm, radii_xyz_mm
    x, y, z = (c[i] - np.float32(centre[i]) for i in range(3))
    if rotation is not None:
        r = np.asarray(rotation, dtype=np.float32).T  # into the ellipsoid's own axes
        x, y, z = (r[i, 0] * x + r[i, 1] * y + r[i, 2] * z for i in range(3))
    return (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 <= 1.0


def ellipse_radius(c: Coords, centre_xy_mm, radii_xy_mm) -> np.ndarray:
    """Normalised elliptic radius in the axial plane: < 1 inside the elliptic cylinder (any z)."""
    return np.sqrt(((c[0] - centre_xy_mm[0]) / radii_xy_mm[0]) ** 2 + ((c[1] - centre_xy_mm[1]) / radii_xy_mm[1]) ** 2)


def capsule(c: Coords, start, end, radius: float) -> np.ndarray:
    """Voxels within `radius` mm of the segment start-end (a tube with round ends)."""
    start, end = np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)
    axis = end - start
    length2 = float(axis @ axis)
    rel = [c[i] - start[i] for i in range(3)]
    t = np.clip((rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]) / length2, 0.0, 1.0)
    return sum((rel[i] - t * axis[i]) ** 2 for i in range(3)) <= radius**2


def rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_voxels: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation, float32 (texture, bias fields)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_voxels, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def blur(image: np.ndarray, sigma_voxels: float) -> np.ndarray:
    """Partial-volume blur of a (Z, Y, X) image (the scanner's point spread)."""
    return ndimage.gaussian_filter(image, sigma_voxels, mode="nearest") if sigma_voxels > 0 else image


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude-MRI noise: |image + complex Gaussian noise|."""
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


@dataclass(frozen=True)
class SmoothScalar:
    """A smooth random scalar function of position (zero mean, unit variance): a sum of plane waves with
    wavelengths in `wavelength_mm`. Used for bowel loops, fibrosis patches and tissue texture."""

    wavevectors: np.ndarray  # (K, 3) cycles per mm
    phases: np.ndarray  # (K,)

    @classmethod
    def random(cls, rng: np.random.Generator, wavelength_mm: tuple[float, float], waves: int = 8) -> SmoothScalar:
        directions = rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return cls(directions / rng.uniform(*wavelength_mm, size=(waves, 1)), rng.uniform(0, 2 * np.pi, waves))

    def __call__(self, c: Coords) -> np.ndarray:
        total = np.zeros_like(c[0])
        for w, phase in zip(self.wavevectors, self.phases, strict=True):
            total += np.cos(np.float32(2 * np.pi) * (w[0] * c[0] + w[1] * c[1] + w[2] * c[2]) + phase)
        return total / np.float32(np.sqrt(len(self.phases) / 2.0))


def patient_position(rng: np.random.Generator) -> np.ndarray:
    """Where a patient's anatomical frame lies in scanner LPS (mm): the table is never at the origin."""
    return np.array([0.0, 0.0, -300.0]) + rng.uniform(-40.0, 40.0, size=3)


def case_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The two generators of case `index`: anatomy (shapes, position, grid) and noise, independent of each other
    so that a difficulty level changes the noise without changing the anatomy."""
    return np.random.default_rng([seed, index, 0]), np.random.default_rng([seed, index, 1])


def place_case(anatomy_rng: np.random.Generator, index: int, shape_zyx: tuple[int, int, int],
               fov_mm_xyz: tuple[float, float, float], rotate_degrees: float,
               offset_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[np.ndarray, Grid]:
    """Patient frame (LPS mm) and image grid of case `index`, centred at frame + `offset_lps`.

    Odd-numbered cases get a grid rotated by up to `rotate_degrees`, so every dataset holds oblique cases.
    """
    frame = patient_position(anatomy_rng)
    grid = case_grid(anatomy_rng, shape_zyx, fov_mm_xyz, rotate_degrees=rotate_degrees if index % 2 else 0.0,
                     centre_lps=frame + np.asarray(offset_lps))
    return frame, grid
