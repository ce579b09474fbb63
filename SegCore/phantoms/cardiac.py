"""Cardiac MRI phantoms: the left atrium in LGE-MRI (LA 2018 challenge) and in bSSFP-like MRI (MSD Task02).

The frame is centred on the left atrium: a blob with four pulmonary vein stubs (part of the label, as in the
LA 2018 masks), a thin wall with bright fibrotic enhancement in LGE, and the other blood pools (left and right
ventricle, right atrium, aorta) around it at blood intensity - what makes the atrium hard to isolate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SegCore.phantoms.render import Difficulty, PhantomCase, lookup, paint, render_tissues, with_contrast
from SegCore.phantoms.shapes import (
    Coords,
    SmoothScalar,
    SmoothWarp,
    blur,
    capsule,
    case_rngs,
    ellipse_radius,
    ellipsoid,
    place_case,
    rician,
    rotation_z,
    smooth_field,
)
from SegCore.volume import Volume

AIR, BODY, FAT, LUNG, MYOCARDIUM, BLOOD, LA_BLOOD, LA_WALL, FIBROSIS, SPINE = range(10)
# LGE-MRI grey values (the challenge's images are 0..255): nulled myocardium dark, blood intermediate,
# enhanced (fibrotic) atrial wall bright.
LGE = np.array([4, 70, 140, 12, 35, 125, 125, 45, 200, 75], dtype=np.float32)[:, None]
# Steady-state free precession (MSD Heart): bright blood, grey myocardium, no enhancement.
SSFP = np.array([0, 300, 500, 40, 200, 560, 560, 220, 220, 250], dtype=np.float32)[:, None]
WALL_MM = 3.0


@dataclass(frozen=True)
class Thorax:
    """One patient's heart around the left atrium (mm; LPS axes, origin at the atrium's centre)."""

    la_radii: tuple[float, float, float]
    heart_angle: float
    fibrosis: SmoothScalar
    vein_angles: tuple[float, ...]

    @classmethod
    def random(cls, rng: np.random.Generator) -> Thorax:
        return cls(tuple((np.array([25.0, 18.0, 20.0]) * rng.uniform(0.85, 1.15, 3)).tolist()),
                   rng.uniform(20, 40), SmoothScalar.random(rng, (15.0, 30.0)),
                   tuple(rng.uniform(-10, 10, 4).tolist()))

    def __call__(self, c: Coords) -> np.ndarray:
        t = np.full(c[0].shape, AIR, dtype=np.uint8)
        body = ellipse_radius(c, (0, 20), (170, 120))
        t[body <= 1] = FAT
        t[body <= 0.9] = BODY
        for side in (-1, 1):
            t[ellipsoid(c, (85 * side, 25, 0), (65, 85, 140))] = LUNG
        heart = rotation_z(self.heart_angle)
        t[ellipsoid(c, (15, -25, -20), (70, 60, 65), heart)] = MYOCARDIUM
        t[ellipsoid(c, (40, -45, -30), (25, 20, 35), heart)] = BLOOD  # left ventricle
        t[ellipsoid(c, (-5, -65, -25), (30, 15, 30), heart)] = BLOOD  # right ventricle
        t[ellipsoid(c, (-42, -10, 0), (22, 20, 25))] = BLOOD  # right atrium
        t[capsule(c, (5, -32, -10), (5, -32, 80), 14)] = BLOOD  # ascending aorta
        t[ellipse_radius(c, (15, 45), (11, 11)) <= 1] = BLOOD  # descending aorta
        radii = np.asarray(self.la_radii)
        wall = ellipsoid(c, (0, 0, 0), radii + WALL_MM)
        t[wall] = LA_WALL
        t[wall & (self.fibrosis(c) > 1.0)] = FIBROSIS
        atrium = ellipsoid(c, (0, 0, 0), radii)
        for (sx, sz), tilt in zip(((1, 1), (1, -1), (-1, 1), (-1, -1)), self.vein_angles, strict=True):
            start = (0.6 * radii[0] * sx, 0.4 * radii[1], 0.45 * radii[2] * sz)
            end = (start[0] + 32 * sx, start[1] + 18 + tilt, start[2] + (14 + tilt / 2) * sz)
            t[capsule(c, start, end, 6.5) & (t != LA_BLOOD)] = LA_WALL
            atrium |= capsule(c, start, end, 5.0)
        t[atrium] = LA_BLOOD
        t[ellipse_radius(c, (0, 75), (18, 18)) <= 1] = SPINE
        return t


def _case(index: int, seed: int, shape_zyx, level: Difficulty, table: np.ndarray, noise: float) -> tuple:
    anatomy_rng, noise_rng = case_rngs(seed, index)
    thorax = Thorax.random(anatomy_rng)
    frame, grid = place_case(anatomy_rng, index, shape_zyx, (200.0, 200.0, 90.0), 20.0)
    tissues = render_tissues(grid, frame, SmoothWarp.random(anatomy_rng, 4.0), thorax)
    # Poor blood-to-wall contrast is what makes LGE atria hard: all blood loses contrast to the wall.
    table = with_contrast(table, [BLOOD, LA_BLOOD], table[LA_WALL], level)
    image = blur(paint(tissues, table, noise_rng)[0], level.blur_voxels)
    image *= np.exp(0.15 * smooth_field(noise_rng, image.shape, max(image.shape) / 4))  # coil bias field
    image = rician(image, noise * level.noise, noise_rng)
    return grid, tissues, image


def atrium_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """LGE-MRI as the LA 2018 challenge stores it: uint8 grey values; label 1 = atrium cavity + vein stubs."""
    grid, tissues, image = _case(index, seed, shape_zyx, level, LGE, 7.0)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return PhantomCase(Volume(image, grid), Volume(lookup(tissues, {LA_BLOOD: 1}), grid))


def heart_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """MSD Task02 (Heart): mono-modal MRI, float32; label 1 = left atrium."""
    grid, tissues, image = _case(index, seed, shape_zyx, level, SSFP, 25.0)
    return PhantomCase(Volume(image.astype(np.float32), grid), Volume(lookup(tissues, {LA_BLOOD: 1}), grid))
