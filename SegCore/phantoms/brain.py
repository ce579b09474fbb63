"""Brain MRI phantoms: thalamus on HCP-style diffusion maps + T1, and BraTS-like tumours (MSD Task01).

The frame is centred between the thalami (x left, y posterior, z superior). Deep grey nuclei sit either side
of the third ventricle under the lateral ventricles, so the thalami are two paired ovoids whose anterior ends
converge. Diffusion channels are physically consistent: the axial diffusivity (evalue1) and the radial
diffusivity (RD) are drawn per tissue, and MD = (evalue1 + 2 RD) / 3 and FA = |evalue1 - RD| /
sqrt(evalue1^2 + 2 RD^2) follow from them (units mm^2/s, as FSL's dtifit writes them; zero outside the brain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from SegCore.phantoms.render import Difficulty, PhantomCase, lookup, paint, render_tissues, with_contrast
from SegCore.phantoms.shapes import (
    Coords,
    SmoothWarp,
    blur,
    case_rngs,
    ellipsoid,
    place_case,
    rician,
    rotation_z,
)
from SegCore.studies.decathlon import STUDY as DECATHLON
from SegCore.studies.thalamus import LAYOUT as THALAMUS_LAYOUT
from SegCore.studies.thalamus import STUDY as THALAMUS
from SegCore.volume import Volume

(BACKGROUND, SCALP, SKULL, CSF, CORTEX_L, CORTEX_R, WM_L, WM_R, VENTRICLE_L, VENTRICLE_R, THIRD_VENTRICLE,
 THALAMUS_L, THALAMUS_R, CAUDATE_L, CAUDATE_R, PUTAMEN_L, PUTAMEN_R, EDEMA, CORE, ENHANCING) = range(20)
# FreeSurfer aseg values of each tissue (left structures lie at x > 0: LPS x points to the patient's left); the
# thalami's are the study's FreeSurfer label source.
_FREESURFER = THALAMUS_LAYOUT.label_source("freesurfer")
ASEG = {CSF: 24, CORTEX_L: 3, CORTEX_R: 42, WM_L: 2, WM_R: 41, VENTRICLE_L: 4, VENTRICLE_R: 43, THIRD_VENTRICLE: 14,
        THALAMUS_L: _FREESURFER.left, THALAMUS_R: _FREESURFER.right, CAUDATE_L: 11, CAUDATE_R: 50, PUTAMEN_L: 12,
        PUTAMEN_R: 51}
BRAIN_RADII = np.array([68.0, 85.0, 62.0])


def _pairs(left: int, right: int, values) -> dict[int, tuple]:
    return {left: values, right: values}


# tissue -> (axial diffusivity, radial diffusivity) in 1e-3 mm^2/s, and T1w grey value (HCP T1w_restore).
DIFFUSION = {CSF: (3.0, 2.9), **_pairs(CORTEX_L, CORTEX_R, (0.95, 0.75)), **_pairs(WM_L, WM_R, (1.4, 0.45)),
             **_pairs(VENTRICLE_L, VENTRICLE_R, (3.0, 2.9)), THIRD_VENTRICLE: (3.0, 2.9),
             **_pairs(THALAMUS_L, THALAMUS_R, (1.1, 0.6)), **_pairs(CAUDATE_L, CAUDATE_R, (0.9, 0.72)),
             **_pairs(PUTAMEN_L, PUTAMEN_R, (0.85, 0.68))}
T1W = {BACKGROUND: 5, SCALP: 600, SKULL: 120, CSF: 250, **_pairs(CORTEX_L, CORTEX_R, 600), **_pairs(WM_L, WM_R, 950),
       **_pairs(VENTRICLE_L, VENTRICLE_R, 200), THIRD_VENTRICLE: 200, **_pairs(THALAMUS_L, THALAMUS_R, 800),
       **_pairs(CAUDATE_L, CAUDATE_R, 650), **_pairs(PUTAMEN_L, PUTAMEN_R, 720)}
# BraTS-like grey values, skull-stripped (everything outside the brain is 0); the columns are the channels
# BRATS_COLUMNS, written in the order of the MSD task's channels.
BRATS_COLUMNS = ("FLAIR", "T1w", "t1gd", "T2w")
_GREY = (520, 480, 490, 600)
BRATS = {CSF: (150, 250, 260, 1500), **_pairs(CORTEX_L, CORTEX_R, _GREY), **_pairs(WM_L, WM_R, (420, 700, 700, 350)),
         **_pairs(VENTRICLE_L, VENTRICLE_R, (150, 250, 260, 1500)), THIRD_VENTRICLE: (150, 250, 260, 1500),
         **_pairs(THALAMUS_L, THALAMUS_R, _GREY), **_pairs(CAUDATE_L, CAUDATE_R, _GREY),
         **_pairs(PUTAMEN_L, PUTAMEN_R, _GREY), EDEMA: (900, 420, 430, 950), CORE: (650, 330, 350, 1100),
         ENHANCING: (700, 480, 1200, 800)}
BRATS_LABELS = {EDEMA: 1, CORE: 2, ENHANCING: 3}


def _table(values: dict[int, tuple], channels: int) -> np.ndarray:
    table = np.zeros((ENHANCING + 1, channels), dtype=np.float32)
    for tissue, row in values.items():
        table[tissue] = row
    return table


@dataclass(frozen=True)
class Head:
    """One subject's head; `tumour` is None or (centre xyz mm, radius mm)."""

    scale: float
    thalamus_radii: tuple[float, float, float]
    thalamus_angle: float
    tumour: tuple[tuple[float, float, float], float] | None

    @classmethod
    def random(cls, rng: np.random.Generator, *, tumour: bool = False) -> Head:
        lesion = None
        if tumour:
            side = rng.choice([-1.0, 1.0])
            lesion = ((side * rng.uniform(28, 40), rng.uniform(-35, 30), rng.uniform(5, 25)), rng.uniform(12, 20))
        return cls(rng.uniform(0.92, 1.08), tuple((np.array([9.5, 16.0, 10.0]) * rng.uniform(0.85, 1.15, 3)).tolist()),
                   rng.uniform(8, 16), lesion)

    def __call__(self, c: Coords) -> np.ndarray:
        x = c[0]
        t = np.full(x.shape, BACKGROUND, dtype=np.uint8)
        brain = BRAIN_RADII * self.scale
        t[ellipsoid(c, (0, 0, 5), brain + 13)] = SCALP
        t[ellipsoid(c, (0, 0, 5), brain + 8)] = SKULL
        t[ellipsoid(c, (0, 0, 5), brain + 2)] = CSF
        left = x > 0
        inside = ellipsoid(c, (0, 0, 5), brain)
        t[inside] = np.where(left[inside], CORTEX_L, CORTEX_R)
        white = ellipsoid(c, (0, 0, 5), brain - 3.5)
        t[white] = np.where(left[white], WM_L, WM_R)
        for side, (ventricle, thalamus, caudate, putamen) in ((1, (VENTRICLE_L, THALAMUS_L, CAUDATE_L, PUTAMEN_L)),
                                                             (-1, (VENTRICLE_R, THALAMUS_R, CAUDATE_R, PUTAMEN_R))):
            t[ellipsoid(c, (10 * side, -5, 18), (6, 32, 9), rotation_z(-8 * side))] = ventricle
            t[ellipsoid(c, (13 * side, -22, 12), (5, 13, 7))] = caudate
            t[ellipsoid(c, (25 * side, -3, 0), (6, 14, 10))] = putamen
            # Anterior ends (y < 0) converge on the midline: the long axis turns by -side * angle.
            t[ellipsoid(c, (11 * side, 6, 2), self.thalamus_radii, rotation_z(-side * self.thalamus_angle))] = thalamus
        t[ellipsoid(c, (0, -5, -2), (2.2, 14, 10))] = THIRD_VENTRICLE
        if self.tumour is not None:
            centre, radius = self.tumour
            in_brain = inside & (t != VENTRICLE_L) & (t != VENTRICLE_R) & (t != THIRD_VENTRICLE)
            t[in_brain & ellipsoid(c, centre, (1.9 * radius, 1.7 * radius, 1.6 * radius))] = EDEMA
            t[ellipsoid(c, centre, (radius, 0.9 * radius, 0.85 * radius))] = ENHANCING
            t[ellipsoid(c, centre, (0.65 * radius, 0.55 * radius, 0.5 * radius))] = CORE
        return t


def _render(index: int, seed: int, shape_zyx, fov_mm, *, tumour: bool):
    anatomy_rng, noise_rng = case_rngs(seed, index)
    head = Head.random(anatomy_rng, tumour=tumour)
    frame, grid = place_case(anatomy_rng, index, shape_zyx, fov_mm, 12.0)
    return grid, render_tissues(grid, frame, SmoothWarp.random(anatomy_rng, 3.0), head), noise_rng


# How each automatic label source of the phantom departs from the true thalami (a fraction of the boundary
# voxels): STAPLE flips some on both sides of the boundary, FSL misses some of the outer layer, QuickNAT adds
# some outside (so that the references disagree a little, as the study's do). FreeSurfer and the manual labels
# are the true masks.
SOURCE_ERRORS = {"staple": (0.1, 0.1), "fsl": (0.25, 0.0), "quicknat": (0.0, 0.3)}  # (removed inside, added outside)


def _label_sources(left: np.ndarray, right: np.ndarray, grid, seed: int, index: int) -> dict[str, Volume]:
    """The perturbed thalami of each automatic source in SOURCE_ERRORS, in that source's stored values.

    left, right: (Z, Y, X) bool. Each side separately: a random `removed` share of its inner boundary voxels is
    dropped and an `added` share of the voxels just outside is added (6-connected), from a generator of its own
    (the case's image and anatomy draws stay as they were)."""
    maps = {}
    for k, (name, (removed, added)) in enumerate(SOURCE_ERRORS.items()):
        rng = np.random.default_rng([seed, index, 4711, k])
        source = THALAMUS_LAYOUT.label_source(name)
        stored = np.zeros(left.shape, dtype=np.int16)
        for mask, value in ((right, source.right), (left, source.left)):
            inner = mask & ~ndimage.binary_erosion(mask)
            outer = ndimage.binary_dilation(mask) & ~mask & (stored == 0)
            kept = mask & ~(inner & (rng.random(mask.shape) < removed))
            stored[kept | (outer & (rng.random(mask.shape) < added))] = value
        maps[name] = Volume(stored, grid)
    return maps


def thalamus_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """HCP-style subject: the study's channels (evalue1, FA, RD, MD, T1) on one grid; label 1 = both thalami;
    the FreeSurfer aparc+aseg (10 = left, 49 = right thalamus) comes as extras['aseg'], the true thalami in the
    manual labels' values as extras['manual'], and the slightly wrong ones of the other label sources as
    extras['staple'], extras['fsl'] and extras['quicknat'] (QuickNAT's 7 / 25)."""
    grid, tissues, rng = _render(index, seed, shape_zyx, (180.0, 216.0, 160.0), tumour=False)
    diffusion = _table(DIFFUSION, 2)
    diffusion = with_contrast(diffusion, [THALAMUS_L, THALAMUS_R], diffusion[WM_L], level)
    axial, radial = (blur(channel, level.blur_voxels) for channel in paint(tissues, diffusion, rng))
    brain = np.isin(tissues, list(DIFFUSION))
    sigma = 0.05 * level.noise
    axial = np.clip(axial + rng.normal(0, sigma, axial.shape).astype(np.float32), 0.05, 3.5)
    radial = np.minimum(np.clip(radial + rng.normal(0, sigma, radial.shape).astype(np.float32), 0.02, 3.5), axial)
    md = (axial + 2 * radial) / 3
    fa = np.abs(axial - radial) / np.sqrt(axial**2 + 2 * radial**2)
    t1_table = with_contrast(_table({k: (v,) for k, v in T1W.items()}, 1), [THALAMUS_L, THALAMUS_R],
                             np.array([T1W[WM_L]]), level)
    t1 = rician(blur(paint(tissues, t1_table, rng)[0], level.blur_voxels), 20.0 * level.noise, rng)
    # Each map under its channel name (diffusivities in mm^2/s, zero outside the brain), stacked in study order.
    maps = {"evalue1": axial * 1e-3, "FA": fa, "RD": radial * 1e-3, "MD": md * 1e-3}
    maps = {name: np.where(brain, value, 0.0) for name, value in maps.items()} | {"T1": t1}
    image = np.stack([maps[name] for name in THALAMUS.channel_names]).astype(np.float32)
    aseg = Volume(lookup(tissues, ASEG, np.int16), grid)
    label = Volume(lookup(tissues, {THALAMUS_L: 1, THALAMUS_R: 1}), grid)
    manual = THALAMUS_LAYOUT.label_source("manual")
    extras = {"aseg": aseg, "manual": Volume(lookup(tissues, {THALAMUS_L: manual.left, THALAMUS_R: manual.right},
                                                    np.int16), grid),
              **_label_sources(tissues == THALAMUS_L, tissues == THALAMUS_R, grid, seed, index)}
    return PhantomCase(Volume(image, grid), label, extras)


def brain_tumour_case(index: int, seed: int, shape_zyx, level: Difficulty) -> PhantomCase:
    """MSD Task01 (BrainTumour): 4 channels FLAIR, T1w, t1gd, T2w, skull-stripped, float32; labels 1 edema,
    2 non-enhancing tumour core, 3 enhancing tumour."""
    grid, tissues, rng = _render(index, seed, shape_zyx, (200.0, 220.0, 160.0), tumour=True)
    table = _table(BRATS, 4)
    table = with_contrast(table, list(BRATS_LABELS), table[WM_L], level)
    channels = [rician(blur(ch, level.blur_voxels), 15.0 * level.noise, rng) for ch in paint(tissues, table, rng)]
    brain = np.isin(tissues, list(BRATS))
    by_name = dict(zip(BRATS_COLUMNS, channels, strict=True))
    order = DECATHLON.task("BrainTumour").channels
    image = np.stack([np.where(brain, by_name[name], 0.0) for name in order]).astype(np.float32)
    return PhantomCase(Volume(image, grid), Volume(lookup(tissues, BRATS_LABELS), grid))
