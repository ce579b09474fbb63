"""Which phantoms exist, their default sizes and the difficulty levels: plain data without numpy, so that
`segcore --help` lists its choices from here. Study facts (labels, layouts, file names) are in SegCore.studies.
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.errors import SegCoreError
from SegCore.studies import STUDIES


@dataclass(frozen=True)
class Difficulty:
    """How hard the target structure is to see.

    contrast: the fraction of the nominal target-vs-surroundings intensity difference that is kept.
    noise: multiplier of the study's base noise level. blur_voxels: partial-volume blur (Gaussian sigma).
    """

    name: str
    contrast: float
    noise: float
    blur_voxels: float


DIFFICULTIES = {
    "easy": Difficulty("easy", 1.0, 1.0, 0.5),
    "medium": Difficulty("medium", 0.6, 1.6, 0.7),
    "hard": Difficulty("hard", 0.35, 2.4, 0.9),
}

# Default (Z, Y, X) sizes, small: a study's own, and one per MSD task a phantom imitates (its keys are the
# tasks `--study decathlon --task` offers).
DEFAULT_SHAPES = {"thalamus": (40, 48, 40), "atrium": (32, 48, 48), "muscle": (16, 48, 48),
                  "pancreas": (32, 48, 48)}
DECATHLON_SHAPES = {"BrainTumour": (32, 48, 40), "Heart": (32, 48, 48), "Liver": (32, 48, 48),
                    "Hippocampus": (24, 40, 32), "Prostate": (20, 48, 48), "Lung": (32, 48, 48),
                    "Pancreas": (32, 48, 48), "HepaticVessel": (32, 48, 48), "Spleen": (32, 48, 48),
                    "Colon": (32, 48, 48)}
DECATHLON_TASKS = tuple(DECATHLON_SHAPES)
DEFAULT_TASK = "BrainTumour"
MIN_SIDE = 8


def difficulty_from_name(name: str) -> Difficulty:
    if name not in DIFFICULTIES:
        raise SegCoreError(f"unknown difficulty {name!r}", fix=f"use one of {', '.join(DIFFICULTIES)}")
    return DIFFICULTIES[name]


def check_study(study: str, task: str = DEFAULT_TASK) -> None:
    """SegCoreError unless a phantom of `study` (and, for the Decathlon, of MSD task `task`) exists."""
    if study not in STUDIES:
        raise SegCoreError(f"unknown study {study!r}", fix=f"use one of {', '.join(STUDIES)}")
    if study == "decathlon" and task not in DECATHLON_SHAPES:
        raise SegCoreError(f"no phantom of the Decathlon task {task!r}",
                           fix=f"use one of {', '.join(DECATHLON_TASKS)}")


def default_shape(study: str, task: str = DEFAULT_TASK) -> tuple[int, int, int]:
    check_study(study, task)
    return DECATHLON_SHAPES[task] if study == "decathlon" else DEFAULT_SHAPES[study]


def resolve_shape(study: str, size_zyx: int | tuple[int, ...] | None, task: str = DEFAULT_TASK) -> tuple[int, int, int]:
    """(Z, Y, X) from `size_zyx`: None -> the study's small default; N -> the default scaled so its largest
    side is N (no side below 8); (Z, Y, X) as given. Sides must be at least 8."""
    base = default_shape(study, task)
    if size_zyx is None:
        shape = base
    elif isinstance(size_zyx, int) or len(size_zyx) == 1:
        n = int(size_zyx if isinstance(size_zyx, int) else size_zyx[0])
        if n < MIN_SIDE:
            raise SegCoreError(f"size {n} is too small: the largest side needs at least {MIN_SIDE} voxels",
                               fix=f"use --size {MIN_SIDE} or more")
        shape = tuple(max(MIN_SIDE, round(s * n / max(base))) for s in base)
    elif len(size_zyx) == 3:
        shape = tuple(int(s) for s in size_zyx)
    else:
        raise SegCoreError(f"size must be one number or three (Z Y X), got {list(size_zyx)}", fix="e.g. --size 64")
    if min(shape) < MIN_SIDE:
        raise SegCoreError(f"size {list(shape)} is too small: every side needs at least {MIN_SIDE} voxels",
                           fix=f"use --size {MIN_SIDE} or more")
    return shape
