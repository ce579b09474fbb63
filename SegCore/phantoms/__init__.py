"""Synthetic datasets in each study's real on-disk layout, for tests, the demo and sample data.

    write_phantom_dataset("atrium", "LA2018-phantom", cases=4, seed=1, difficulty="medium")

Each phantom is anatomy-like (ellipsoids, tubes and blobs under a smooth random warp) with realistic
intensities (CT in HU, LGE-MRI grey values, diffusion maps in mm^2/s), noise and blur, and a non-trivial
geometry (anisotropic spacing, non-zero origin, a rotated direction on odd-numbered cases). Deterministic for
a seed; `difficulty` lowers the target's contrast and raises noise. Labels, layouts and file names are the
studies' (SegCore.studies); which phantoms exist and their default sizes are in `catalog`.
"""

import importlib

from SegCore.phantoms.catalog import (
    DECATHLON_TASKS,
    DEFAULT_SHAPES,
    DIFFICULTIES,
    Difficulty,
    default_shape,
    resolve_shape,
)

# The writers need numpy and scipy; they load on first use, so that importing the catalog above (what
# `segcore --help` reads) stays cheap.
_LAZY = {"write_phantom_dataset": "SegCore.phantoms.layouts", "PhantomCase": "SegCore.phantoms.render"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DECATHLON_TASKS",
    "DEFAULT_SHAPES",
    "DIFFICULTIES",
    "Difficulty",
    "PhantomCase",
    "default_shape",
    "resolve_shape",
    "write_phantom_dataset",
]
