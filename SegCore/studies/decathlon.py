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

from SegCore.studies import terminology as codes
from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Label, Layout, MsdTask, Stage, Study, Terminology

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


def _lesion(value: int, name: str, terminology: Terminology) -> Label:
    return anatomy_label(value, name, TUMOUR, why="the table's lesion colour", terminology=terminology)


MSD_TASKS = (
    MsdTask(1, "BrainTumour", "MRI", ("FLAIR", "T1w", "t1gd", "T2w"),
            (BACKGROUND, anatomy_label(1, "edema", terminology=codes.EDEMA),
             anatomy_label(2, "non-enhancing tumor", "necrosis", why="the non-enhancing core holds the necrosis",
                           terminology=codes.NON_ENHANCING_TUMOUR),
             _lesion(3, "enhancing tumour", codes.ENHANCING_TUMOUR)),
            "BRATS_", 3, 484, 266),
    MsdTask(2, "Heart", "MRI", ("MRI",), (BACKGROUND, anatomy_label(1, "left atrium", terminology=codes.LEFT_ATRIUM)),
            "la_", 3, 20, 10),
    MsdTask(3, "Liver", "CT", ("CT",),
            (BACKGROUND, anatomy_label(1, "liver", terminology=codes.LIVER), _lesion(2, "cancer", codes.NEOPLASM)),
            "liver_", 0, 131, 70),
    MsdTask(4, "Hippocampus", "MRI", ("MRI",),
            (BACKGROUND, anatomy_label(1, "Anterior", "region 1", why="the table has no hippocampus entry",
                                       terminology=codes.HIPPOCAMPUS_PART),
             anatomy_label(2, "Posterior", "region 2", why="the table has no hippocampus entry",
                           terminology=codes.HIPPOCAMPUS_PART)),
            "hippocampus_", 3, 260, 130),
    MsdTask(5, "Prostate", "MRI", ("T2", "ADC"),
            (BACKGROUND, anatomy_label(1, "PZ", "prostate", why="peripheral zone: the prostate's own colour",
                                       terminology=codes.PROSTATE_PERIPHERAL_ZONE),
             anatomy_label(2, "TZ", "region 5", why="transition zone: a colour apart from the peripheral zone",
                           terminology=codes.PROSTATE_TRANSITION_ZONE)),
            "prostate_", 2, 32, 16),
    MsdTask(6, "Lung", "CT", ("CT",), (BACKGROUND, _lesion(1, "cancer", codes.PRIMARY_NEOPLASM)), "lung_", 3, 63, 32),
    MsdTask(7, "Pancreas", "CT", ("CT",),
            (BACKGROUND, anatomy_label(1, "pancreas", terminology=codes.PANCREAS),
             _lesion(2, "cancer", codes.NEOPLASM)),
            "pancreas_", 3, 281, 139),
    MsdTask(8, "HepaticVessel", "CT", ("CT",),
            (BACKGROUND,
             anatomy_label(1, "Vessel", "vein", why="hepatic and portal veins", terminology=codes.HEPATIC_VESSEL),
             _lesion(2, "Tumour", codes.NEOPLASM)),
            "hepaticvessel_", 3, 303, 140),
    MsdTask(9, "Spleen", "CT", ("CT",), (BACKGROUND, anatomy_label(1, "spleen", terminology=codes.SPLEEN)),
            "spleen_", 0, 41, 20),
    MsdTask(10, "Colon", "CT", ("CT",), (BACKGROUND, _lesion(1, "colon cancer primaries", codes.PRIMARY_NEOPLASM)),
            "colon_", 3, 126, 64),
)

# The study's settings as a partial plan, for every task (the data folder is the task: its dataset.json gives the
# channels and labels). "README" / "code: <file>" give the source in the author's repository; "choice:" marks
# SegStudies' own (docs/studies.md, section 5, "Preset and protocol in SegStudies").
FOLDS = 5
PRESET = {
    "data": {"layout": "decathlon"},
    # choice (the issue): 5-fold cross-validation of imagesTr; the author split train/val folders by hand
    "split": {"kind": "kfold", "folds": FOLDS, "fold": 0, "seed": 0},
    "preprocessing": [
        # choice (the issue): the automatic plan's median spacing (training/autoplan.py), linear like the
        # author's in-plane Resize (code: create_separate_files_from_dataset.py, interpolation=1)
        {"name": "resample", "spacing_xyz_mm": "auto", "image_order": 1},
        # code: datagenerator.py standardize(): each channel's each z slice to mean 0, std 1 (constant slices 0)
        {"name": "zscore", "mode": "slice", "axis": "z"},
        {"name": "pad", "multiple_zyx": "auto"},
    ],
    # README: --model_architecture default conv3dtranspose_batchnormalization, --unet_resize_factor 2,
    # --unet_dropout_rate 0.3 (for the two dropout variants); softmax / sigmoid stay out of the network (logits)
    "model": {"name": "unet3d", "arguments": {"upsampling": "transpose", "regularisation": "batchnorm",
                                              "resize_factor": 2, "dropout": 0.3}},
    # README: --loss log_dice (default) | dice; code: segmentation_losses.py: log(cosh(1 - Dice)), the author's
    # Dice (squared denominator and background for several classes, one sigmoid channel for two: the "form")
    "loss": {"name": "log_dice", "arguments": {"form": "decathlon"}},
    # choice (the issue): patches of the automatic plan's size; the author fed whole 240x240x160 volumes
    "sampler": {"kind": "patch3d", "patch_zyx": "auto"},
    # code: datagenerator.py: albumentations HorizontalFlip(p=0.5), the second voxel axis; nothing else
    "augmentation": {"flip_axes": [1], "flip_p": 0.5, "rotate_p": 0.0, "scale_p": 0.0, "translate_p": 0.0,
                     "elastic_p": 0.0, "noise_p": 0.0, "brightness_p": 0.0, "contrast_p": 0.0, "gamma_p": 0.0},
    # README: --optimizer adam (sgd | nadam), --lr 0.0001; code: train_unet_segmentation_model.py: Adam and NAdam
    # betas 0.9 / 0.999 with epsilon 0.1, SGD momentum 0.9, Nesterov and AMSGrad off
    "optim": {"name": "adam", "lr": 1e-4, "betas": [0.9, 0.999], "eps": 0.1, "momentum": 0.9, "nesterov": False,
              "amsgrad": False},
    # code: ReduceLROnPlateau(monitor validation Dice, factor 0.1, patience 20, mode max, min_lr 1e-6). Keras
    # lowers the rate at the 20th epoch without improvement; SegStudies' plateau (PyTorch's rule) after more than
    # `patience` epochs, so 19 here is the author's 20
    "schedule": {"name": "plateau", "factor": 0.1, "patience": 19, "mode": "max", "min_lr": 1e-6},
    "training": {
        "epochs": 200,  # README: --training_epochs 200
        # choice (the issue): the automatic plan's batch (at least 2, as nnU-Net); the README's --train_batch_size
        # is 1, set by hand like the input shapes (--set training.batch_size=1 keeps it and sizes the patch for it)
        "batch_size": "auto",
        # README: --weighted_classes True; code: w_j = N / (C N_j) over the training labels ('inverse')
        "class_weights": "inverse",
        "best_metric": "dice_mean",  # code: ModelCheckpoint on the validation Dice, save_best_only
        # code/README: the author sized the inputs by hand for a TITAN RTX (24 GB); the automatic plan does it
        # for this budget, --memory-budget MiB for another device
        "memory_budget_mb": 24576,
    },
    "inference": {"strategy": "sliding_window"},  # choice: Gaussian-weighted sliding window over the patch
}

# One model per fold, each tested on its held-out fold; new scans are segmented by the five folds' ensemble
# (`segcore predict --model RUN/fold*/best.pt`).
PROTOCOL = tuple(stage for k in range(FOLDS) for stage in (
    Stage(f"fold{k}", "train", {"split": {"fold": k}}, fold=k),
    Stage(f"test-fold{k}", "test", models=(f"fold{k}",), fold=k),
))

# `segcore demo --study decathlon`: fold 0 on a Task03_Liver phantom of 5 cases. A 60-step CPU run learns with
# the dropout variant and Dice + CE at a larger step (Keras' BatchNorm momentum 0.01 and Adam's eps 0.1 move
# too little in 60 steps; Testing/test_study_decathlon.py: Dice ~0.4).
DEMO = {"cases": 5, "size": None, "fold": 0, "phantom": {"task": "Liver"},
        "overrides": ["model.arguments.regularisation=dropout", 'loss={"name": "dice_ce", "arguments": {}}',
                      "training.class_weights=null", "optim.lr=3e-3", "optim.eps=1e-8", "training.epochs=6",
                      "training.steps_per_epoch=10", "inference.batch=16"]}

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
    preset=PRESET,
    protocol=PROTOCOL,
    demo=DEMO,
)
