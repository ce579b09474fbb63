"""Phantoms of the Decathlon tasks that no SegStudies study imitates otherwise: Liver (Task03), Hippocampus (Task04),
Lung (Task06), Pancreas (Task07), HepaticVessel (Task08) and Colon (Task10).

    case = liver_case(0, seed=1, shape_zyx=(32, 48, 48), level=DIFFICULTIES["easy"])
    case.image.array        # (32, 48, 48) int16, HU;  case.label.array: 1 liver, 2 tumour

The CT tasks paint lesions over the abdominal anatomy of `abdomen.py` (same frame, same HU), Lung paints a nodule
into the lungs of the thorax of `cardiac.py` in HU, Hippocampus adds the hippocampus (head anterior, body and
tail posterior) to the brain of `brain.py` on a T1-weighted crop around the left one, as the MSD crops are.
Every lesion lies inside its organ, so every label is present in every case. Label values and channels are the
tasks' own (SegCore.studies.decathlon).
"""

from __future__ import annotations

import numpy as np

from SegCore.phantoms import abdomen, brain, cardiac
from SegCore.phantoms.abdomen import LIVER, PANCREAS, _ct_case, _painted_over
from SegCore.phantoms.render import Difficulty, PhantomCase, lookup, paint, render_tissues, with_contrast
from SegCore.phantoms.shapes import SmoothWarp, blur, capsule, case_rngs, ellipsoid, place_case, rician
from SegCore.volume import Volume

# Tissues painted over the abdomen (indices after abdomen.py's 18), with their portal-venous HU.
TUMOUR, VESSEL, PANCREAS_TUMOUR, COLON_MASS = range(18, 22)
ABDOMEN_HU = np.vstack([abdomen.HU, np.array([[40.0], [190.0], [60.0], [50.0]], dtype=np.float32)])
LIVER_CENTRE = np.array([-85.0, 0.0, 75.0])  # abdomen.py's liver ellipsoid (radius 80 mm)
HILUM = np.array([-45.0, 5.0, 55.0])  # where the portal vein enters the liver


def _tumour_in(organ: int, centre, radius: float):
    """Paint TUMOUR where an ellipsoid around `centre` meets `organ`."""
    def paint_tumour(c, t):
        t[(t == organ) & ellipsoid(c, centre, (radius, 0.9 * radius, 0.8 * radius))] = TUMOUR
        return t
    return paint_tumour


def _liver_tumour(rng: np.random.Generator, body) -> callable:
    return _tumour_in(LIVER, LIVER_CENTRE + rng.uniform(-25, 25, 3) * (0.6, 1.0, 0.7), rng.uniform(14, 22))


def liver_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """MSD Task03 (Liver): CT; label 1 liver, 2 a hypodense tumour (40 HU) inside it."""
    return _ct_case(index, seed, shape_zyx, level, centre=(-70.0, 0.0, 60.0), fov_mm=(380.0, 380.0, 160.0),
                    targets=(LIVER, TUMOUR), labels={LIVER: 1, TUMOUR: 2}, reference_hu=50.0,
                    lesions=_liver_tumour, hu=ABDOMEN_HU)


def _vessels_and_tumour(rng: np.random.Generator, body) -> callable:
    """Three or four portal branches from the hilum into the liver (3.5-5 mm radius), and a small tumour."""
    branches = []
    for _ in range(int(rng.integers(3, 5))):
        direction = np.array([-1.0, 0.0, 0.4]) + rng.uniform(-0.7, 0.7, 3)
        branches.append((HILUM + direction / np.linalg.norm(direction) * rng.uniform(45, 70), rng.uniform(3.5, 5.0)))
    tumour = _tumour_in(LIVER, LIVER_CENTRE + rng.uniform(-20, 20, 3) * (0.6, 1.0, 0.7), rng.uniform(10, 15))

    def paint_vessels(c, t):
        in_liver = t == LIVER
        for end, radius in branches:
            t[in_liver & capsule(c, HILUM, end, radius)] = VESSEL
        return tumour(c, t)
    return paint_vessels


def hepatic_vessel_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """MSD Task08 (HepaticVessel): CT of the liver; label 1 vessels (contrast-filled, 190 HU), 2 a tumour."""
    return _ct_case(index, seed, shape_zyx, level, centre=(-70.0, 0.0, 60.0), fov_mm=(240.0, 240.0, 160.0),
                    targets=(VESSEL, TUMOUR), labels={VESSEL: 1, TUMOUR: 2}, reference_hu=60.0,
                    lesions=_vessels_and_tumour, hu=ABDOMEN_HU)


def _pancreas_tumour(rng: np.random.Generator, body) -> callable:
    """A hypodense mass on the pancreas's centre line (abdomen.Abdomen._pancreas), in the head or body."""
    x = rng.uniform(-35.0, 30.0)
    dy, dz = body.pancreas_shift
    centre = (x, -15 + 0.004 * (x - 10) ** 2 + dy, 0.12 * x + dz)
    radius = rng.uniform(8.0, 12.0) * body.pancreas_scale

    def paint_mass(c, t):
        t[(t == PANCREAS) & ellipsoid(c, centre, (radius, radius, radius))] = PANCREAS_TUMOUR
        return t
    return paint_mass


def pancreas_tumour_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """MSD Task07 (Pancreas): CT; label 1 pancreas, 2 a hypodense tumour (60 HU) inside it."""
    return _ct_case(index, seed, shape_zyx, level, centre=(20.0, 0.0, 0.0), fov_mm=(300.0, 300.0, 120.0),
                    targets=(PANCREAS, PANCREAS_TUMOUR), labels={PANCREAS: 1, PANCREAS_TUMOUR: 2},
                    reference_hu=40.0, lesions=_pancreas_tumour, hu=ABDOMEN_HU)


def _colon_mass(rng: np.random.Generator, body) -> callable:
    """A mass in the lower abdominal cavity, where the bowel lies (what the colon primaries of Task10 are)."""
    centre = (rng.uniform(-45, 45), rng.uniform(-35, 0), rng.uniform(-55, -25))
    radius = rng.uniform(15, 22)
    inside = [abdomen.VISCERAL, abdomen.BOWEL, abdomen.GAS]

    def paint_mass(c, t):
        t[np.isin(t, inside) & ellipsoid(c, centre, (radius, 0.8 * radius, 1.2 * radius))] = COLON_MASS
        return t
    return paint_mass


def colon_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """MSD Task10 (Colon): CT of the lower abdomen; label 1 a colon mass (50 HU among bowel and fat)."""
    return _ct_case(index, seed, shape_zyx, level, centre=(0.0, -10.0, -40.0), fov_mm=(380.0, 380.0, 120.0),
                    targets=(COLON_MASS,), labels={COLON_MASS: 1}, reference_hu=35.0, lesions=_colon_mass,
                    hu=ABDOMEN_HU)


# Thorax CT (cardiac.py's tissues in HU) and a nodule.
NODULE = cardiac.SPINE + 1
THORAX_HU = np.array([-1000, 40, -100, -850, 45, 45, 45, 45, 45, 600, 35], dtype=np.float32)[:, None]


def lung_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """MSD Task06 (Lung): chest CT in HU; label 1 a solid tumour (10-18 mm radius) inside a lung."""
    anatomy_rng, noise_rng = case_rngs(seed, index)
    thorax = cardiac.Thorax.random(anatomy_rng)
    frame, grid = place_case(anatomy_rng, index, shape_zyx, (360.0, 300.0, 200.0), 15.0, (0.0, 20.0, 0.0))
    warp = SmoothWarp.random(anatomy_rng, 4.0)
    side = anatomy_rng.choice([-1.0, 1.0])
    centre = (side * (85 + anatomy_rng.uniform(-15, 15)), 25 + anatomy_rng.uniform(-25, 25),
              anatomy_rng.uniform(-40, 40))
    radius = anatomy_rng.uniform(10, 18)

    def nodule(c, t):
        t[(t == cardiac.LUNG) & ellipsoid(c, centre, (radius, radius, radius))] = NODULE
        return t
    tissues = render_tissues(grid, frame, warp, _painted_over(thorax, nodule))
    table = with_contrast(THORAX_HU, [NODULE], THORAX_HU[cardiac.LUNG], level)
    image = blur(paint(tissues, table, noise_rng, texture=0.0)[0], level.blur_voxels)
    image += noise_rng.normal(0.0, abdomen.NOISE_HU * level.noise, image.shape).astype(np.float32)
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return PhantomCase(Volume(image, grid), Volume(lookup(tissues, {NODULE: 1}), grid))


# The hippocampus in brain.py's head: two tissues past its 20, grey matter on T1.
HIPPOCAMPUS_ANTERIOR, HIPPOCAMPUS_POSTERIOR = brain.ENHANCING + 1, brain.ENHANCING + 2
HEAD_OF_HIPPOCAMPUS_Y = 6.0  # mm; the head (anterior, y < 6) against the body and tail (posterior)


def hippocampus_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """MSD Task04 (Hippocampus): a T1-weighted crop around the left hippocampus (as the MSD crops are); label 1
    anterior (head), 2 posterior (body and tail)."""
    anatomy_rng, noise_rng = case_rngs(seed, index)
    head = brain.Head.random(anatomy_rng)
    frame, grid = place_case(anatomy_rng, index, shape_zyx, (40.0, 56.0, 40.0), 10.0, (28.0, 8.0, -10.0))
    warp = SmoothWarp.random(anatomy_rng, 1.5)
    s = head.scale
    start, end = np.array([27.0, -10.0, -16.0]) * s, np.array([30.0, 26.0, -4.0]) * s

    def hippocampus(c, t):
        tube = capsule(c, start, end, 5.5 * s) & (t != brain.BACKGROUND)
        t[tube] = np.where(c[1][tube] < HEAD_OF_HIPPOCAMPUS_Y * s, HIPPOCAMPUS_ANTERIOR, HIPPOCAMPUS_POSTERIOR)
        return t
    tissues = render_tissues(grid, frame, warp, _painted_over(head, hippocampus))
    table = np.zeros((HIPPOCAMPUS_POSTERIOR + 1, 1), dtype=np.float32)
    for tissue, value in brain.T1W.items():
        table[tissue] = value
    table[[HIPPOCAMPUS_ANTERIOR, HIPPOCAMPUS_POSTERIOR]] = 640.0  # grey matter, darker than the white (950)
    table = with_contrast(table, [HIPPOCAMPUS_ANTERIOR, HIPPOCAMPUS_POSTERIOR], table[brain.WM_L], level)
    image = rician(blur(paint(tissues, table, noise_rng)[0], level.blur_voxels), 20.0 * level.noise, noise_rng)
    label = lookup(tissues, {HIPPOCAMPUS_ANTERIOR: 1, HIPPOCAMPUS_POSTERIOR: 2})
    return PhantomCase(Volume(image.astype(np.float32), grid), Volume(label, grid))
