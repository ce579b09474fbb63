"""Medical Segmentation Decathlon study (3D-image-segmentation-medical-decathlon-tensorflow): a 3D U-Net for the
ten MSD tasks.

On disk, one folder per task (Simpson et al. 2019, arXiv:1902.09063):

    Task01_BrainTumour/
      dataset.json          name, modality {"0": "FLAIR", ...}, labels {"0": "background", ...}, training, test
      imagesTr/BRATS_001.nii.gz   4D NIfTI (X, Y, Z, C) for multi-modal tasks
      labelsTr/BRATS_001.nii.gz
      imagesTs/BRATS_485.nii.gz   test images, no labels

`MSD_TASKS` holds what each task's dataset.json says as distributed: channel ('modality') and label names are
spelled as there ('non-enhancing tumor' next to 'enhancing tumour', 'Vessel', 'Tumour'), case counts are
numTraining / numTest. The reader takes a task's facts from its own dataset.json; this table is for the
CLI, the phantoms and the Slicer module.
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Label, Layout, MsdTask, Study

TUMOUR = "mass"  # GenericAnatomyColors has no entry per tumour type; 'mass' is its lesion colour


@dataclass(frozen=True, kw_only=True)
class DecathlonLayout(Layout):
    """description_file: the task's JSON description; the folders of training images, training labels and test
    images."""

    description_file: str
    training_images: str
    training_labels: str
    test_images: str


LAYOUT = DecathlonLayout(name="decathlon", unmapped="error", description_file="dataset.json",
                         training_images="imagesTr", training_labels="labelsTr", test_images="imagesTs")


def _lesion(value: int, name: str) -> Label:
    return anatomy_label(value, name, TUMOUR, why="the table's lesion colour")


MSD_TASKS = (
    MsdTask(1, "BrainTumour", "MRI", ("FLAIR", "T1w", "t1gd", "T2w"),
            (BACKGROUND, anatomy_label(1, "edema"),
             anatomy_label(2, "non-enhancing tumor", "necrosis", why="the non-enhancing core holds the necrosis"),
             _lesion(3, "enhancing tumour")),
            "BRATS_", 3, 484, 266),
    MsdTask(2, "Heart", "MRI", ("MRI",), (BACKGROUND, anatomy_label(1, "left atrium")), "la_", 3, 20, 10),
    MsdTask(3, "Liver", "CT", ("CT",), (BACKGROUND, anatomy_label(1, "liver"), _lesion(2, "cancer")),
            "liver_", 0, 131, 70),
    MsdTask(4, "Hippocampus", "MRI", ("MRI",),
            (BACKGROUND, anatomy_label(1, "Anterior", "region 1", why="the table has no hippocampus entry"),
             anatomy_label(2, "Posterior", "region 2", why="the table has no hippocampus entry")),
            "hippocampus_", 3, 260, 130),
    MsdTask(5, "Prostate", "MRI", ("T2", "ADC"),
            (BACKGROUND, anatomy_label(1, "PZ", "prostate", why="peripheral zone: the prostate's own colour"),
             anatomy_label(2, "TZ", "region 5", why="transition zone: a colour apart from the peripheral zone")),
            "prostate_", 2, 32, 16),
    MsdTask(6, "Lung", "CT", ("CT",), (BACKGROUND, _lesion(1, "cancer")), "lung_", 3, 63, 32),
    MsdTask(7, "Pancreas", "CT", ("CT",), (BACKGROUND, anatomy_label(1, "pancreas"), _lesion(2, "cancer")),
            "pancreas_", 3, 281, 139),
    MsdTask(8, "HepaticVessel", "CT", ("CT",),
            (BACKGROUND, anatomy_label(1, "Vessel", "vein", why="hepatic and portal veins"), _lesion(2, "Tumour")),
            "hepaticvessel_", 3, 303, 140),
    MsdTask(9, "Spleen", "CT", ("CT",), (BACKGROUND, anatomy_label(1, "spleen")), "spleen_", 0, 41, 20),
    MsdTask(10, "Colon", "CT", ("CT",), (BACKGROUND, _lesion(1, "colon cancer primaries")), "colon_", 3, 126, 64),
)

STUDY = Study(
    name="decathlon",
    title="Medical Segmentation Decathlon: 3D U-Net",
    module="DecathlonSeg",
    modality="per task",
    layout=LAYOUT,
    channels=(),  # per task: MsdTask.channels
    labels=(),  # per task: MsdTask.labels
    tasks=MSD_TASKS,
    source="3D-image-segmentation-medical-decathlon-tensorflow",
)
