"""Prostate MRI phantom (MSD Task05): T2-weighted and ADC channels; labels 1 peripheral zone, 2 transition zone.

Frame centred on the prostate (x left, y posterior, z superior): bladder above and in front, rectum behind,
obturator muscles and hip bones at the sides, all inside pelvic fat. ADC in 1e-6 mm^2/s as the MSD stores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SegCore.phantoms.render import Difficulty, PhantomCase, lookup, paint, render_tissues, with_contrast
from SegCore.phantoms.shapes import (
    Coords,
    SmoothWarp,
    blur,
    case_rngs,
    ellipse_radius,
    ellipsoid,
    place_case,
    rician,
)
from SegCore.studies.decathlon import STUDY as DECATHLON
from SegCore.volume import Volume

AIR, FAT, MUSCLE, BONE, BLADDER, RECTAL_WALL, RECTAL_LUMEN, PERIPHERAL, TRANSITION = range(9)
#                     air  fat  muscle bone bladder wall lumen  PZ    TZ
T2 = np.array([0, 480, 140, 300, 1000, 200, 60, 520, 260], dtype=np.float32)
ADC = np.array([0, 150, 1350, 500, 2900, 1200, 800, 1700, 1250], dtype=np.float32)
COLUMNS = ("T2", "ADC")  # the channels these tables and REFERENCE give, written in the MSD task's order
# With difficulty both zones fade towards their surroundings: periprostatic fat on T2 (480), and on ADC
# towards the muscle-like 1350 (fat's ADC is near zero, nothing a real gland approaches).
REFERENCE = np.array([480.0, 1350.0], dtype=np.float32)


@dataclass(frozen=True)
class Pelvis:
    gland_radii: tuple[float, float, float]
    transition_scale: float

    @classmethod
    def random(cls, rng: np.random.Generator) -> Pelvis:
        return cls(tuple((np.array([22.0, 16.0, 18.0]) * rng.uniform(0.85, 1.2, 3)).tolist()), rng.uniform(0.85, 1.15))

    def __call__(self, c: Coords) -> np.ndarray:
        t = np.full(c[0].shape, AIR, dtype=np.uint8)
        body = ellipse_radius(c, (0, 10), (170, 120))
        t[body <= 1] = FAT
        t[(body <= 0.93) & (body > 0.75)] = MUSCLE  # gluteal and abdominal wall muscles
        t[body <= 0.75] = FAT
        for side in (-1, 1):
            t[ellipse_radius(c, (62 * side, 10), (24, 34)) <= 1] = BONE
            t[ellipse_radius(c, (40 * side, 2), (8, 26)) <= 1] = MUSCLE  # obturator internus
        t[ellipsoid(c, (0, -25, 38), (35, 28, 26))] = BLADDER
        rectum = ellipse_radius(c, (0, 33), (16, 14))
        t[rectum <= 1] = RECTAL_WALL
        t[rectum <= 0.65] = RECTAL_LUMEN
        radii = np.asarray(self.gland_radii)
        t[ellipsoid(c, (0, 0, 0), radii)] = PERIPHERAL
        s = self.transition_scale
        t[ellipsoid(c, (0, -0.25 * radii[1], 0.15 * radii[2]), radii * np.array([0.7, 0.65, 0.7]) * s)] = TRANSITION
        return t


def prostate_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    anatomy_rng, noise_rng = case_rngs(seed, index)
    pelvis = Pelvis.random(anatomy_rng)
    frame, grid = place_case(anatomy_rng, index, shape_zyx, (160.0, 160.0, 72.0), 12.0)
    tissues = render_tissues(grid, frame, SmoothWarp.random(anatomy_rng, 3.0), pelvis)
    table = with_contrast(np.stack([T2, ADC], axis=1), [PERIPHERAL, TRANSITION], REFERENCE, level)
    noise = (18.0, 60.0)
    channels = [rician(blur(ch, level.blur_voxels), n * level.noise, noise_rng)
                for ch, n in zip(paint(tissues, table, noise_rng), noise, strict=True)]
    by_name = dict(zip(COLUMNS, channels, strict=True))
    image = np.stack([by_name[name] for name in DECATHLON.task("Prostate").channels]).astype(np.float32)
    label = lookup(tissues, {PERIPHERAL: 1, TRANSITION: 2})
    return PhantomCase(Volume(image, grid), Volume(label, grid))
