"""Synthetic datasets in each study's real on-disk layout, for tests, the demo and sample data.

    write_phantom_dataset("atrium", "LA2018-phantom", cases=4, seed=1, difficulty="medium")

Each phantom is anatomy-like (ellipsoids, tubes and blobs under a smooth random warp) with realistic
intensities (CT in HU, LGE-MRI grey values, diffusion maps in mm^2/s), noise and blur, and a non-trivial
geometry (anisotropic spacing, non-zero origin, a rotated direction on odd-numbered cases). Deterministic for
a seed; `difficulty` lowers the target's contrast and raises noise.
"""

from SegCore.phantoms.layouts import (
    DECATHLON_TASKS,
    DEFAULT_SHAPES,
    STUDIES,
    default_shape,
    resolve_shape,
    write_phantom_dataset,
)
from SegCore.phantoms.render import DIFFICULTIES, Difficulty, PhantomCase

__all__ = [
    "DECATHLON_TASKS",
    "DEFAULT_SHAPES",
    "DIFFICULTIES",
    "STUDIES",
    "Difficulty",
    "PhantomCase",
    "default_shape",
    "resolve_shape",
    "write_phantom_dataset",
]
