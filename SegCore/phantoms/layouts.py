"""Write phantom cases in each study's real on-disk layout (the same trees the dataset readers expect).

`write_phantom_dataset` builds the whole dataset in a temporary folder beside `out_dir` and renames it into
place at the end (`atomic_dir`), so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SegCore.atomic import atomic_dir
from SegCore.errors import SegCoreError
from SegCore.phantoms.abdomen import muscle_case, pancreas_case, spleen_case
from SegCore.phantoms.brain import brain_tumour_case, thalamus_case
from SegCore.phantoms.cardiac import atrium_case, heart_case
from SegCore.phantoms.pelvis import prostate_case
from SegCore.phantoms.render import Difficulty, PhantomCase, difficulty_from_name
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress

CaseMaker = Callable[[int, int, tuple[int, int, int], Difficulty], PhantomCase]
TEST_FRACTION = 0.2  # the share of cases a layout files as its test subset (LA 'Testing Set', MSD imagesTs, ...)


@dataclass(frozen=True)
class DecathlonTask:
    """An MSD task the phantom can imitate: folder name, file prefix and number width, channels, labels."""

    folder: str
    prefix: str
    digits: int
    modality: tuple[str, ...]
    labels: tuple[str, ...]
    make: CaseMaker
    shape_zyx: tuple[int, int, int]


DECATHLON_TASKS = {
    "BrainTumour": DecathlonTask("Task01_BrainTumour", "BRATS_", 3, ("FLAIR", "T1w", "t1gd", "T2w"),
                                 ("background", "edema", "non-enhancing tumor", "enhancing tumour"),
                                 brain_tumour_case, (32, 48, 40)),
    "Heart": DecathlonTask("Task02_Heart", "la_", 3, ("MRI",), ("background", "left atrium"), heart_case,
                           (32, 48, 48)),
    "Prostate": DecathlonTask("Task05_Prostate", "prostate_", 2, ("T2", "ADC"), ("background", "PZ", "TZ"),
                              prostate_case, (20, 48, 48)),
    "Spleen": DecathlonTask("Task09_Spleen", "spleen_", 0, ("CT",), ("background", "spleen"), spleen_case,
                            (32, 48, 48)),
}
DEFAULT_SHAPES = {"thalamus": (40, 48, 40), "atrium": (32, 48, 48), "muscle": (16, 48, 48),
                  "pancreas": (32, 48, 48)}
STUDIES = ("thalamus", "atrium", "muscle", "pancreas", "decathlon")
MIN_SIDE = 8


def default_shape(study: str, task: str = "BrainTumour") -> tuple[int, int, int]:
    return DECATHLON_TASKS[task].shape_zyx if study == "decathlon" else DEFAULT_SHAPES[study]


def resolve_shape(study: str, size: int | tuple[int, ...] | None, task: str = "BrainTumour") -> tuple[int, int, int]:
    """(Z, Y, X) from `size`: None -> the study's small default; N -> the default scaled so its largest
    side is N (no side below 8); (Z, Y, X) as given. Sides must be at least 8."""
    base = default_shape(study, task)
    if size is None:
        shape = base
    elif isinstance(size, int) or len(size) == 1:
        n = int(size if isinstance(size, int) else size[0])
        if n < MIN_SIDE:
            raise SegCoreError(f"size {n} is too small: the largest side needs at least {MIN_SIDE} voxels",
                               fix=f"use --size {MIN_SIDE} or more")
        shape = tuple(max(MIN_SIDE, round(s * n / max(base))) for s in base)
    elif len(size) == 3:
        shape = tuple(int(s) for s in size)
    else:
        raise SegCoreError(f"size must be one number or three (Z Y X), got {list(size)}", fix="e.g. --size 64")
    if min(shape) < MIN_SIDE:
        raise SegCoreError(f"size {list(shape)} is too small: every side needs at least {MIN_SIDE} voxels",
                           fix=f"use --size {MIN_SIDE} or more")
    return shape


def _ids(seed: int, count: int, alphabet: str, length: int) -> list[str]:
    """`count` distinct random ids like the study's (deterministic by seed)."""
    rng = np.random.default_rng([seed, 424242])
    ids: list[str] = []
    while len(ids) < count:
        candidate = "".join(rng.choice(list(alphabet), size=length))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _uid(seed: int, index: int, which: int) -> str:
    """A deterministic DICOM UID under the UUID-derived root 2.25 (PS3.5 B.2)."""
    high, low = np.random.default_rng([seed, index, which, 77]).integers(0, 2**63, size=2, dtype=np.int64)
    return f"2.25.{(int(high) << 63) | int(low)}"


def _num_test(cases: int) -> int:
    return int(TEST_FRACTION * cases + 0.5)


def _write_pancreas(root: Path, shape, seed, level, cases, progress) -> None:
    from SegCore.io import write_dicom_series, write_image

    for i in range(cases):
        case_id = f"PANCREAS_{i + 1:04d}"
        case = pancreas_case(i, seed, shape, level)
        study_uid, series_uid = _uid(seed, i, 0), _uid(seed, i, 1)
        write_dicom_series(case.image, root / "Pancreas-CT" / case_id / study_uid / series_uid, modality="CT",
                           patient_id=case_id, series_description="Pancreas-CT phantom", study_uid=study_uid,
                           series_uid=series_uid)
        write_image(case.label, root / "TCIA_pancreas_labels-02-05-2017" / f"label{i + 1:04d}.nii.gz")
        progress(ProgressEvent("phantoms", i + 1, cases, case_id))


def _write_muscle(root: Path, shape, seed, level, cases, progress) -> None:
    from SegCore.io import write_dicom_series, write_image

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    for i, scan_id in enumerate(_ids(seed, cases, alphabet, 10)):
        case = muscle_case(i, seed, shape, level)
        write_dicom_series(case.image, root / scan_id, modality="CT", patient_id=scan_id,
                           series_description="abdominal CT at L3 (phantom)", study_uid=_uid(seed, i, 0),
                           series_uid=_uid(seed, i, 1))
        write_image(case.label, root / f"{scan_id}.nii.gz")
        progress(ProgressEvent("phantoms", i + 1, cases, scan_id))


def _write_atrium(root: Path, shape, seed, level, cases, progress) -> None:
    from SegCore.io import write_image

    for i, case_id in enumerate(_ids(seed, cases, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 20)):
        subset = "Testing Set" if i >= cases - _num_test(cases) else "Training Set"
        case = atrium_case(i, seed, shape, level)
        write_image(case.image, root / subset / case_id / "lgemri.nrrd")
        write_image(case.label.with_array((case.label.array * 255).astype(np.uint8)),
                    root / subset / case_id / "laendo.nrrd")
        progress(ProgressEvent("phantoms", i + 1, cases, case_id))


def _write_thalamus(root: Path, shape, seed, level, cases, progress) -> None:
    from SegCore.datasets.thalamus import CHANNEL_FILES, LABEL_SOURCES
    from SegCore.io import write_image

    subjects = _ids(seed, cases, "0123456789", 6)
    for i, subject in enumerate(subjects):
        case = thalamus_case(i, seed, shape, level)
        for index, channel in enumerate(case.channel_names):
            write_image(case.image.channel(index), root / subject / CHANNEL_FILES[channel])
        write_image(case.extras["aseg"], root / subject / LABEL_SOURCES["freesurfer"][0])
        progress(ProgressEvent("phantoms", i + 1, cases, subject))
    split = cases - _num_test(cases)
    for name, ids in (("training_subjects.txt", subjects[:split]), ("testing_subjects.txt", subjects[split:])):
        (root / name).write_text("".join(f"{s}\n" for s in ids), encoding="utf-8")


def _write_decathlon(root: Path, shape, seed, level, cases, progress, task: DecathlonTask) -> None:
    from SegCore.io import write_image

    num_test = _num_test(cases)
    training, test = [], []
    for i in range(cases):
        name = f"{task.prefix}{i + 1:0{task.digits}d}.nii.gz"
        case = task.make(i, seed, shape, level)
        if i < cases - num_test:
            write_image(case.image, root / "imagesTr" / name)
            write_image(case.label, root / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            write_image(case.image, root / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")
        progress(ProgressEvent("phantoms", i + 1, cases, name))
    (root / "imagesTs").mkdir(exist_ok=True)
    description = {
        "name": task.folder.split("_", 1)[1],
        "description": f"SegCore phantom (synthetic data) in the layout of the Decathlon's {task.folder}",
        "reference": "synthetic: SegCore.phantoms", "licence": "CC-BY-SA 4.0", "release": "phantom",
        "tensorImageSize": "4D" if len(task.modality) > 1 else "3D",
        "modality": {str(k): name for k, name in enumerate(task.modality)},
        "labels": {str(k): name for k, name in enumerate(task.labels)},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(description, indent=4) + "\n", encoding="utf-8")


def write_phantom_dataset(study: str, out_dir: str | os.PathLike, *, cases: int = 3,
                          size: int | tuple[int, ...] | None = None, seed: int = 0, difficulty: str = "easy",
                          task: str = "BrainTumour", overwrite: bool = False,
                          progress: ProgressCallback = no_progress) -> Path:
    """Write a synthetic dataset for `study` in that study's real layout and formats; returns `out_dir`.

    study: 'thalamus' (HCP folders, one NIfTI per channel + FreeSurfer aparc+aseg), 'atrium' (LA 2018
    lgemri.nrrd / laendo.nrrd 0/255), 'muscle' (DICOM series + NIfTI label per scan), 'pancreas' (NIH
    Pancreas-CT DICOM + TCIA labels), 'decathlon' (MSD task folder, `task` one of DECATHLON_TASKS).
    size: None (small default), N (largest side) or (Z, Y, X). Same seed -> same dataset. difficulty:
    'easy' | 'medium' | 'hard' (less contrast between target and surroundings, more noise and blur).
    Refuses to replace a non-empty `out_dir` unless `overwrite`. Reports one progress event per case.
    """
    if study not in STUDIES:
        raise SegCoreError(f"unknown study {study!r}", fix=f"use one of {', '.join(STUDIES)}")
    if study == "decathlon" and task not in DECATHLON_TASKS:
        raise SegCoreError(f"unknown Decathlon task {task!r}", fix=f"use one of {', '.join(DECATHLON_TASKS)}")
    if cases < 1:
        raise SegCoreError(f"cases must be at least 1, got {cases}", fix="e.g. --cases 4")
    level = difficulty_from_name(difficulty)
    shape = resolve_shape(study, size, task)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SegCoreError("a file is in the way of the output folder", path=out_dir, fix="choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SegCoreError("the output folder exists and is not empty", path=out_dir,
                           fix="choose a new folder, or pass --overwrite to replace it")
    writers = {"pancreas": _write_pancreas, "muscle": _write_muscle, "atrium": _write_atrium,
               "thalamus": _write_thalamus}
    with atomic_dir(out_dir) as tmp:
        if study == "decathlon":
            _write_decathlon(tmp, shape, seed, level, cases, progress, DECATHLON_TASKS[task])
        else:
            writers[study](tmp, shape, seed, level, cases, progress)
    return out_dir
