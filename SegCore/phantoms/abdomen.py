"""Abdominal CT phantoms in Hounsfield units: pancreas (NIH Pancreas-CT), muscle at L3, spleen (MSD Task09).

The anatomical frame is centred on the body axis at the level of the pancreas (about L1-L2); L3 lies 70 mm
below. Tissues carry typical portal-venous HU: air -1000, fat -100, muscle 50, liver 60, spleen 110, kidney
cortex 160, aorta 180, bone cortex 800, marrow 250, pancreas 100, bowel 35, gas -950.
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
    rotation_z,
)
from SegCore.volume import Volume

(AIR, FAT, WALL, VISCERAL, LIVER, SPLEEN, KIDNEY, BOWEL, GAS, AORTA, VEIN, CORTEX, MARROW, PSOAS, BACK, PANCREAS,
 SPLENIC_VEIN, DISC) = range(18)
HU = np.array([-1000, -100, 50, -95, 60, 110, 160, 35, -950, 180, 140, 800, 250, 50, 50, 100, 150, 80],
              dtype=np.float32)[:, None]
NOISE_HU = 12.0
L3_Z_MM = -70.0
MUSCLES = (WALL, PSOAS, BACK)


@dataclass(frozen=True)
class Abdomen:
    """One patient's abdomen; sizes in mm (see the module docstring for the frame)."""

    half_width: float
    half_depth: float
    fat_mm: float
    wall_mm: float
    pancreas_scale: float
    pancreas_shift: tuple[float, float]
    spleen_scale: float
    bowel: SmoothScalar

    @classmethod
    def random(cls, rng: np.random.Generator) -> Abdomen:
        return cls(rng.uniform(145, 172), rng.uniform(105, 125), rng.uniform(12, 30), rng.uniform(8, 13),
                   rng.uniform(0.85, 1.15), tuple(rng.uniform(-5, 5, 2).tolist()), rng.uniform(0.85, 1.15),
                   SmoothScalar.random(rng, (25.0, 45.0)))

    def __call__(self, c: Coords) -> np.ndarray:
        x, y, z = c
        t = np.full(x.shape, AIR, dtype=np.uint8)
        t[ellipse_radius(c, (0, 0), (self.half_width, self.half_depth)) <= 1] = FAT
        inner = self.fat_mm
        t[ellipse_radius(c, (0, 0), (self.half_width - inner, self.half_depth - inner)) <= 1] = WALL
        inner += self.wall_mm
        cavity = ellipse_radius(c, (0, 0), (self.half_width - inner, self.half_depth - inner)) <= 1
        t[cavity] = VISCERAL
        field = self.bowel(c)
        bowel = cavity & (y < 30) & (field > 0.1)
        t[bowel] = BOWEL
        t[bowel & (field > 1.3)] = GAS
        t[cavity & ellipsoid(c, (-85, 0, 75), (80, 80, 80))] = LIVER
        s = self.spleen_scale
        t[cavity & ellipsoid(c, (95, 45, 50), (28 * s, 45 * s, 55 * s), rotation_z(-30))] = SPLEEN
        for side in (-1, 1):
            t[cavity & ellipsoid(c, (72 * side, 50, -25), (28, 24, 55))] = KIDNEY
        duodenum = capsule(c, (-78, -10, 30), (-78, -10, -25), 11) | capsule(c, (-78, -10, -25), (0, -5, -40), 10)
        t[cavity & duodenum] = BOWEL
        self._pancreas(c, t, cavity)
        t[ellipse_radius(c, (15, 28), (11, 11)) <= 1] = AORTA
        t[ellipse_radius(c, (-25, 22), (12, 10)) <= 1] = VEIN
        vertebra = ellipse_radius(c, (0, 58), (22, 20)) <= 1
        t[vertebra] = CORTEX
        t[ellipse_radius(c, (0, 58), (19, 17)) <= 1] = MARROW
        t[vertebra & (np.mod(z, 35.0) < 7.0)] = DISC
        t[ellipse_radius(c, (0, 88), (7, 14)) <= 1] = CORTEX
        psoas = 1.0 + np.clip(-z, 0, 150) / 120.0  # the psoas thickens towards the pelvis
        for side in (-1, 1):
            t[(z < 30) & (ellipse_radius(c, (38 * side, 55), (11 * psoas, 13 * psoas)) <= 1)] = PSOAS
            t[(t != AIR) & (ellipse_radius(c, (32 * side, 92), (24, 17)) <= 1)] = BACK
        return t

    def _pancreas(self, c: Coords, t: np.ndarray, cavity: np.ndarray) -> None:
        """An elongated curved tube: head right of the midline (x < 0), tail rising towards the spleen."""
        x, y, z = c
        dy, dz = self.pancreas_shift
        y_centre = -15 + 0.004 * (x - 10) ** 2 + dy
        z_centre = 0.12 * x + dz
        radius = (16 - 6 * (x + 50) / 150) * self.pancreas_scale
        along = (x > -50) & (x < 100)
        t[cavity & along & ((y - y_centre) ** 2 + (z - z_centre) ** 2 <= radius**2)] = PANCREAS
        vein = (x > -10) & (x < 95) & ((y - y_centre - radius - 3) ** 2 + (z - z_centre) ** 2 <= 4.5**2)
        t[cavity & vein] = SPLENIC_VEIN


def _painted_over(anatomy, paint):
    """The anatomy with `paint(coords, tissues) -> tissues` applied to every slab it renders."""
    return lambda c: paint(c, anatomy(c))


def _ct_case(index: int, seed: int, shape_zyx, level: Difficulty, *, centre, fov_mm, targets, labels,
             reference_hu: float, lesions=None, hu: np.ndarray = HU) -> PhantomCase:
    """lesions: None, or lesions(rng, abdomen) -> f(coords, tissues) -> tissues, which paints further tissues
    (rows of `hu` past the abdomen's) over the anatomy; drawn last, so the other phantoms keep their streams."""
    anatomy_rng, noise_rng = case_rngs(seed, index)
    body = Abdomen.random(anatomy_rng)
    frame, grid = place_case(anatomy_rng, index, shape_zyx, fov_mm, 15.0, centre)
    warp = SmoothWarp.random(anatomy_rng, 6.0)
    if lesions is not None:
        body = _painted_over(body, lesions(anatomy_rng, body))
    tissues = render_tissues(grid, frame, warp, body)
    table = with_contrast(hu, list(targets), np.array([reference_hu]), level)
    image = blur(paint(tissues, table, noise_rng, texture=0.0)[0], level.blur_voxels)
    image += noise_rng.normal(0.0, NOISE_HU * level.noise, image.shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return PhantomCase(Volume(image, grid), Volume(lookup(tissues, labels), grid))


PANCREAS_FOV_MM = (380.0, 380.0, 120.0)  # x, y, z: a whole abdominal slice, 120 mm about the pancreas


def pancreas_case(index: int, seed: int, shape_zyx, level: Difficulty, zoom: float = 1.0) -> PhantomCase:
    """Abdomen around the pancreas; label 1 = pancreas (which loses contrast against soft tissue, 40 HU).

    zoom: the field of view is PANCREAS_FOV_MM / zoom about the same centre (same anatomy, finer voxels), so the
    pancreas fills zoom^3 times its share of the volume: about 0.4 % at 1 (NIH-like), 3 % at 2 (short tests)."""
    return _ct_case(index, seed, shape_zyx, level, centre=(20.0, 0.0, 0.0),
                    fov_mm=tuple(side / zoom for side in PANCREAS_FOV_MM), targets=(PANCREAS,), labels={PANCREAS: 1},
                    reference_hu=40.0)


def muscle_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """A short series at L3; label 1 = skeletal muscle (wall ring, psoas, back muscles), whose HU falls
    towards fat with difficulty (as in myosteatosis)."""
    return _ct_case(index, seed, shape_zyx, level, centre=(0.0, 0.0, L3_Z_MM), fov_mm=(400.0, 400.0, 48.0),
                    targets=MUSCLES, labels=dict.fromkeys(MUSCLES, 1), reference_hu=-100.0)


def spleen_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """Upper abdomen around the spleen (MSD Task09); label 1 = spleen."""
    return _ct_case(index, seed, shape_zyx, level, centre=(40.0, 20.0, 40.0), fov_mm=(380.0, 380.0, 160.0),
                    targets=(SPLEEN,), labels={SPLEEN: 1}, reference_hu=40.0)
