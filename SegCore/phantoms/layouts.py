"""Write phantom cases in each study's real on-disk layout (the same trees the dataset readers expect).

`write_phantom_dataset` builds the whole dataset in a temporary folder beside `out_dir` and renames it into
place at the end (`atomic_dir`), so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from SegCore.atomic import atomic_dir
from SegCore.errors import SegCoreError
from SegCore.phantoms.abdomen import muscle_case, pancreas_case, spleen_case
from SegCore.phantoms.brain import brain_tumour_case, thalamus_case
from SegCore.phantoms.cardiac import atrium_case, heart_case
from SegCore.phantoms.catalog import DEFAULT_TASK, check_study, difficulty_from_name, resolve_shape
from SegCore.phantoms.memory import check_memory
from SegCore.phantoms.msd import (
    colon_case,
    hepatic_vessel_case,
    hippocampus_case,
    liver_case,
    lung_case,
    pancreas_tumour_case,
)
from SegCore.phantoms.pelvis import prostate_case
from SegCore.phantoms.render import Difficulty, PhantomCase
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress
from SegCore.studies import atrium, decathlon, muscle, pancreas, thalamus
from SegCore.studies.schema import MsdTask

CaseMaker = Callable[[int, int, tuple[int, int, int], Difficulty], PhantomCase]
TEST_FRACTION = 0.2  # the share of cases a layout files as its test subset (LA 'Testing Set', MSD imagesTs, ...)
# The phantom of each MSD task in catalog.DECATHLON_TASKS.
DECATHLON_MAKERS: dict[str, CaseMaker] = {"BrainTumour": brain_tumour_case, "Heart": heart_case, "Liver": liver_case,
                                          "Hippocampus": hippocampus_case, "Prostate": prostate_case,
                                          "Lung": lung_case, "Pancreas": pancreas_tumour_case,
                                          "HepaticVessel": hepatic_vessel_case, "Spleen": spleen_case,
                                          "Colon": colon_case}


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


def _write_pancreas(root: Path, shape, seed, level, cases, progress, zoom: float = 1.0) -> None:
    from SegCore.io import write_dicom_series, write_image

    layout = pancreas.LAYOUT
    for i in range(cases):
        case_id = layout.case_folder(i + 1)
        case = pancreas_case(i, seed, shape, level, zoom=zoom)
        study_uid, series_uid = _uid(seed, i, 0), _uid(seed, i, 1)
        write_dicom_series(case.image, root / layout.images_folder / case_id / study_uid / series_uid,
                           modality=pancreas.STUDY.modality, patient_id=case_id,
                           series_description=f"{layout.images_folder} phantom", study_uid=study_uid,
                           series_uid=series_uid)
        write_image(case.label, root / layout.label_folder / layout.label_file(i + 1))
        progress(ProgressEvent("phantoms", i + 1, cases, case_id))


def _write_muscle(root: Path, shape, seed, level, cases, progress, unlabelled: int = 0) -> None:
    """`cases` labelled scans, then `unlabelled` scans without a label (what self-distillation labels)."""
    from SegCore.io import write_dicom_series, write_image

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    total = cases + unlabelled
    for i, scan_id in enumerate(_ids(seed, total, alphabet, 10)):
        case = muscle_case(i, seed, shape, level)
        write_dicom_series(case.image, root / scan_id, modality=muscle.STUDY.modality, patient_id=scan_id,
                           series_description="abdominal CT at L3 (phantom)", study_uid=_uid(seed, i, 0),
                           series_uid=_uid(seed, i, 1))
        if i < cases:
            write_image(case.label, root / f"{scan_id}{muscle.LAYOUT.label_suffix}")
        progress(ProgressEvent("phantoms", i + 1, total, scan_id))


def _write_atrium(root: Path, shape, seed, level, cases, progress) -> None:
    from SegCore.io import write_image

    layout = atrium.LAYOUT
    for i, case_id in enumerate(_ids(seed, cases, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 20)):
        subset = layout.test_folder if i >= cases - _num_test(cases) else layout.training_folder
        case = atrium_case(i, seed, shape, level)
        write_image(case.image, root / subset / case_id / layout.image_file)
        write_image(case.label.with_array((case.label.array * layout.mask_value).astype(np.uint8)),
                    root / subset / case_id / layout.label_file)
        progress(ProgressEvent("phantoms", i + 1, cases, case_id))


def _write_thalamus(root: Path, shape, seed, level, cases, progress) -> None:
    from SegCore.io import write_image

    layout = thalamus.LAYOUT
    subjects = _ids(seed, cases, "0123456789", 6)
    split = cases - _num_test(cases)
    # The last half of the training subjects have manual labels too: the study's fine-tuning subset.
    fine_tuning = subjects[split - max(1, split // 2):split]
    extras = {source.name: "aseg" if source.name == "freesurfer" else source.name for source in layout.label_sources}
    for i, subject in enumerate(subjects):
        case = thalamus_case(i, seed, shape, level)
        for index, channel in enumerate(thalamus.STUDY.channels):
            write_image(case.image.channel(index), root / subject / channel.file)
        for source in layout.label_sources:
            if source.every_subject or subject in fine_tuning:
                write_image(case.extras[extras[source.name]], root / subject / source.file)
        progress(ProgressEvent("phantoms", i + 1, cases, subject))
    for name, ids in ((layout.training_list, subjects[:split]), (layout.testing_list, subjects[split:]),
                      (layout.fine_tuning_list, fine_tuning)):
        (root / name).write_text("".join(f"{s}\n" for s in ids), encoding="utf-8")


def _write_decathlon(root: Path, shape, seed, level, cases, progress, task: MsdTask) -> None:
    from SegCore.io import write_image

    layout = decathlon.LAYOUT
    images, labels, test_images = layout.training_images, layout.training_labels, layout.test_images
    make = DECATHLON_MAKERS[task.name]
    num_test = _num_test(cases)
    training, test = [], []
    for i in range(cases):
        name = task.file_name(i + 1)
        case = make(i, seed, shape, level)
        if i < cases - num_test:
            write_image(case.image, root / images / name)
            write_image(case.label, root / labels / name)
            training.append({"image": f"./{images}/{name}", "label": f"./{labels}/{name}"})
        else:
            write_image(case.image, root / test_images / name)
            test.append(f"./{test_images}/{name}")
        progress(ProgressEvent("phantoms", i + 1, cases, name))
    (root / test_images).mkdir(exist_ok=True)
    description = {
        "name": task.name,
        "description": f"SegCore phantom (synthetic data) in the layout of the Decathlon's {task.folder}",
        "reference": "synthetic: SegCore.phantoms", "licence": "CC-BY-SA 4.0", "release": "phantom",
        "tensorImageSize": "4D" if len(task.channels) > 1 else "3D",
        "modality": {str(k): name for k, name in enumerate(task.channels)},
        "labels": {str(label.value): label.name for label in task.labels},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }
    (root / layout.description_file).write_text(json.dumps(description, indent=4) + "\n", encoding="utf-8")


def write_phantom_dataset(study: str, out_dir: str | os.PathLike, *, cases: int = 3,
                          size_zyx: int | tuple[int, ...] | None = None, seed: int = 0, difficulty: str = "easy",
                          task: str = DEFAULT_TASK, overwrite: bool = False, unlabelled: int = 0,
                          zoom: float = 1.0, progress: ProgressCallback = no_progress) -> Path:
    """Write a synthetic dataset for `study` in that study's real layout and formats; returns `out_dir`.

    study: 'thalamus' (HCP folders, one NIfTI per channel, FreeSurfer, STAPLE, FSL and QuickNAT labels, manual
    ones for the fine-tuning subjects), 'atrium' (LA 2018 lgemri.nrrd / laendo.nrrd 0/255), 'muscle' (DICOM
    series + NIfTI label per scan), 'pancreas' (NIH Pancreas-CT DICOM + TCIA labels), 'decathlon' (MSD task
    folder, `task` one of catalog.DECATHLON_TASKS).
    size_zyx: None (small default), N (largest side) or (Z, Y, X). Same seed -> same dataset. difficulty:
    'easy' | 'medium' | 'hard' (less contrast between target and surroundings, more noise and blur).
    Refuses to replace a non-empty `out_dir` unless `overwrite`. Reports one progress event per case.
    unlabelled: muscle only, that many more scans without a label beside the others (the muscle preset reads them
    with require_labels=False and self-distillation labels them).
    zoom: pancreas only, the field of view divided by it (the pancreas a larger share of a small volume, for short
    tests; abdomen.pancreas_case).
    """
    check_study(study, task)
    if cases < 1:
        raise SegCoreError(f"cases must be at least 1, got {cases}", fix="e.g. --cases 4")
    if unlabelled and (study != "muscle" or unlabelled < 0):
        raise SegCoreError(f"unlabelled scans ({unlabelled}) are a muscle phantom's option only",
                           fix="leave unlabelled at 0, or use --study muscle")
    if zoom != 1.0 and (study != "pancreas" or not 1.0 <= zoom <= 4.0):
        raise SegCoreError(f"zoom {zoom} is a pancreas phantom's option only, between 1 and 4",
                           fix="leave zoom at 1, or use --study pancreas with a zoom in [1, 4]")
    level = difficulty_from_name(difficulty)
    shape = resolve_shape(study, size_zyx, task)
    check_memory(study, shape, task)
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
            _write_decathlon(tmp, shape, seed, level, cases, progress, decathlon.STUDY.task(task))
        elif study == "muscle":
            _write_muscle(tmp, shape, seed, level, cases, progress, unlabelled)
        elif study == "pancreas":
            _write_pancreas(tmp, shape, seed, level, cases, progress, zoom)
        else:
            writers[study](tmp, shape, seed, level, cases, progress)
    return out_dir
