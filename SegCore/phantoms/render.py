"""From anatomy to voxels: tissue maps rendered slab by slab, intensity tables lowered to a difficulty level.

An anatomy is a callable taking warped anatomical coordinates (x, y, z arrays, mm) and returning a uint8
tissue-index array of the same shape. `render_tissues` evaluates it over a grid in slabs of slices (bounded
memory at real sizes); `paint` turns tissue indices into intensities through a (tissues x channels) table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from SegCore.phantoms.catalog import Difficulty
from SegCore.phantoms.shapes import Coords, SmoothWarp, grid_coords, smooth_field
from SegCore.volume import Grid, Volume

SLAB_SLICES = 16


def render_tissues(grid: Grid, centre_lps: np.ndarray, warp: SmoothWarp,
                   anatomy: Callable[[Coords], np.ndarray]) -> np.ndarray:
    """Tissue indices (Z, Y, X) uint8 of `anatomy` sampled at the voxel centres of `grid`."""
    tissues = np.empty(grid.shape_zyx, dtype=np.uint8)
    for k0 in range(0, grid.shape_zyx[0], SLAB_SLICES):
        k1 = min(k0 + SLAB_SLICES, grid.shape_zyx[0])
        tissues[k0:k1] = anatomy(warp(*grid_coords(grid, centre_lps, (k0, k1))))
    return tissues


def with_contrast(table: np.ndarray, targets: list[int], reference: np.ndarray, level: Difficulty) -> np.ndarray:
    """A copy of the (tissues, channels) `table` whose `targets` rows keep only `level.contrast` of their
    difference to `reference` (one value per channel): lower contrast, same anatomy."""
    table = np.array(table, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    for t in targets:
        table[t] = reference + level.contrast * (table[t] - reference)
    return table


def paint(tissues: np.ndarray, table: np.ndarray, rng: np.random.Generator, *, texture: float = 0.03) -> np.ndarray:
    """(C, Z, Y, X) float32 intensities: `table[tissue, channel]` times a smooth texture (1 +- `texture`)."""
    image = np.moveaxis(np.asarray(table, dtype=np.float32)[tissues], -1, 0)
    if texture:
        image *= 1.0 + texture * smooth_field(rng, tissues.shape, 1.5)[None]
    return image


def lookup(tissues: np.ndarray, values: dict[int, int], dtype=np.uint8) -> np.ndarray:
    """Map tissue indices to label values (tissues not in `values` -> 0)."""
    table = np.zeros(256, dtype=dtype)
    for tissue, value in values.items():
        table[tissue] = value
    return table[tissues]


@dataclass
class PhantomCase:
    """One synthetic case before it is laid out on disk.

    image: (Z, Y, X) or (C, Z, Y, X) in the modality's units, channels in the study's order (SegCore.studies);
    label: (Z, Y, X) uint8 in SegCore values; extras: other files the layout holds (e.g. the thalamus study's
    FreeSurfer aparc+aseg), by name.
    """

    image: Volume
    label: Volume
    extras: dict[str, Volume] = field(default_factory=dict)
