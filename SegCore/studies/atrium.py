"""Left atrium study (Pytorch_VNet_atriaseg2018): V-Net with BAM attention and a locator crop, LGE-MRI.

On disk (the 2018 Left Atrium Segmentation Challenge), one folder per case:

    LA2018/                         (or the case folders directly under the root)
      Training Set/<CASE_ID>/lgemri.nrrd   LGE-MRI, grey values 0..255
      Training Set/<CASE_ID>/laendo.nrrd   left atrium cavity mask, 0 / 255
      Testing Set/<CASE_ID>/...

The mask's 255 becomes label 1, as the study converts it; 0/1 masks are accepted too.

PRESET is the study's plain segmenter; PROTOCOL trains the locator, then the segmenter, then tests both together
(locate, crop, segment, paste back): `segcore run --study atrium --data LA2018 --out RUN`. Sources and every
difference from the original: docs/studies.md, section 2, "Preset and protocol in SegStudies".
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Channel, Layout, Stage, Study
from SegCore.studies.terminology import LEFT_ATRIUM


@dataclass(frozen=True, kw_only=True)
class AtriumLayout(Layout):
    """image_file / label_file: the two files of a case folder. mask_value: what label_file stores for the
    atrium. training_folder / test_folder: the challenge's two subsets (case folders may also sit in the root)."""

    image_file: str
    label_file: str
    mask_value: int
    training_folder: str
    test_folder: str


LAYOUT = AtriumLayout(
    name="atrium",
    label_mapping=((0, 0), (1, 1), (255, 1)),
    unmapped="error",
    image_file="lgemri.nrrd",
    label_file="laendo.nrrd",
    mask_value=255,
    training_folder="Training Set",
    test_folder="Testing Set",
)

# The study's settings as a partial plan. Sources: "README", or "code: <file>" (bragancas/VNet_PyTorch-Atriaseg2018
# at 10d0782) where the README is silent; "choice:" where both are. The preset is the plain segmenter; the
# locator stage below overrides what differs.
SCALE_ZYX = [0.5, 0.25, 0.25]  # README, code: train.py --scale_factor: the locator's downscaling (D, H, W)
CROP_ZYX = [96, 144, 224]  # README: "a patch of dimension 96x144x224"
PAD_ZYX = [96, 640, 640]  # README, code: data.py: every volume zero-padded to 96x640x640
ONE_IN_SIX = 1 / 6  # code: data.py: an epoch holds each image as itself, flipped, noisy, rotated, translated twice

# Both stages start with these steps (so --set preprocessing.0.min_zyx=... reaches both): the raw grey values
# padded with 0 (code: data.py pads before normalising), then a z-score (README: "normalised"; code: the mean and
# std of all training crops; choice: per volume, as SegCore's zscore does).
PREPROCESSING = [
    {"name": "pad", "min_zyx": PAD_ZYX, "multiple_zyx": "auto", "mode": "constant", "value": 0},
    {"name": "zscore", "mode": "volume"},
]
NO_AUGMENTATION = {"flip_p": 0.0, "rotate_p": 0.0, "scale_p": 0.0, "translate_p": 0.0, "elastic_p": 0.0,
                   "noise_p": 0.0, "brightness_p": 0.0, "contrast_p": 0.0, "gamma_p": 0.0}

PRESET = {
    "data": {"layout": "atrium"},  # 255 read as 1 (README: "converted to 1")
    # choice: 5 folds, fold 0 = 80 training / 20 validation cases of the 100 (README: 80/20 with a seed)
    "split": {"kind": "kfold", "folds": 5, "fold": 0, "seed": 0},
    "preprocessing": PREPROCESSING,
    # README: V-Net, 5x5x5 convs, PReLU; code: model.py VNet(num_layers=1, dilation=1), one output channel
    # (sigmoid); BAM (attention=true) with reduction 4, dilation 4 (code: SpatialGate); 16.2 M: num_layers=2
    "model": {"name": "vnet", "arguments": {"out_channels": 1, "num_layers": 1, "base_channels": 8, "dilation": 1,
                                            "attention": False, "bam_reduction": 4, "bam_dilation": 4}},
    # README: Dice 1 - 2 p g / (p + g + eps); code: utils.py Dice (sigmoid, the batch flattened) = SegCore's dice
    # defaults (batch Dice, foreground only, eps 1e-6). Hybrid: docs/studies.md (--set loss.name=hybrid ...)
    "loss": {"name": "dice", "arguments": {}},
    # README: crops of 96x144x224 around the located atrium; choice: centred on the label's box in training
    "sampler": {"kind": "crop", "size_zyx": CROP_ZYX},
    "augmentation": {
        **NO_AUGMENTATION,
        "flip_axes": [1], "flip_p": ONE_IN_SIX,  # README: horizontal flip; code: np.flip(axis=1) of (D, H, W)
        "noise_std": [0.0, 1.0], "noise_p": ONE_IN_SIX,  # code: transforms.py GaussianNoise, std ~ U(0, 1)
        # README: -3..3 degrees "along depth dimension"; code: RotateImage axes (2, 1), about z
        "rotate_deg": [[-3.0, 3.0], [0.0, 0.0], [0.0, 0.0]], "rotate_p": ONE_IN_SIX,
        # README: -5 and/or 5 voxels along H, W or both, two sets of 80 (choice: uniform in [-5, 5])
        "translate_vox": [[0.0, 0.0], [-5.0, 5.0], [-5.0, 5.0]], "translate_p": 2 * ONE_IN_SIX,
        # README: elastic deformation supported, not used; code: ElasticDeformation sigma 50 voxels, about
        # 0.85-voxel displacements (choice: magnitude 1); --set augmentation.elastic_p=... switches it on
        "elastic_sigma_vox": 50.0, "elastic_magnitude_vox": 1.0,
        "image_order": 0, "label_mode": "nearest",  # code: rotation and translation with order 0 for images too
    },
    # README: Adam, lr 0.0003 (V-Net, Dice or Hybrid); 0.00025 with BAM, 0.00015 for the wider one (code default)
    "optim": {"name": "adam", "lr": 3e-4, "weight_decay": 0.0},
    # README: patience 7, factor 0.8; code: ReduceLROnPlateau(mode='min') on the validation Dice loss, here the
    # validation Dice (mode max)
    "schedule": {"name": "plateau", "patience": 7, "factor": 0.8, "mode": "max"},
    "training": {
        "epochs": 200,  # README: 200 (code: --max_epochs 201, range(0, 201))
        "batch_size": 3,  # README, code: --batch_size 3
        "steps_per_epoch": 160,  # code: 480 samples per epoch (80 images x 6) / batch 3
        "seed": 123,  # code: train.py --seed 123
        "clip_grad_norm": None,  # code: no gradient clipping
        "best_metric": "dice_mean", "validate_every": 1,  # code: best model on validation Dice, every epoch
    },
    "inference": {
        "strategy": "locate_segment",  # README: locator -> indexes + buffer -> crop -> segmenter -> paste back
        "tta": False,  # code: predict.py, one forward pass
        # README: buffer 30 (code: train.py --padding 35 for training crops, predict.py 30); crop 96x144x224
        "locator": {"scale_zyx": SCALE_ZYX, "margin_voxels": 30, "crop_zyx": "auto"},  # auto: the crop sampler's
    },
}

# The locator (code: train.py, LocatorDataGenerator): the same V-Net on whole volumes downscaled by SCALE_ZYX. Its
# input is the segmenter's preprocessing, then the zoom that locate_box applies at inference (linear, like its
# F.interpolate; code: skimage rescale order 0 with anti-aliasing, labels scipy zoom order 0), then a pad to the
# network's multiple.
LOCATOR_PLAN = {
    "preprocessing": [*PREPROCESSING, {"name": "zoom", "scale_zyx": SCALE_ZYX, "image_order": 1},
                      {"name": "pad", "multiple_zyx": "auto", "mode": "constant", "value": 0}],
    "sampler": {"kind": "whole"},
    "augmentation": dict(NO_AUGMENTATION),  # code: the locator's images are not augmented
    "optim": {"name": "adam", "lr": 1e-4},  # README, code: --locator_learning_rate 0.0001
    "schedule": {"name": "plateau", "patience": 15, "factor": 0.85, "mode": "max"},  # README, code: 15, 0.85
    "training": {"batch_size": 5, "steps_per_epoch": 16},  # README, code: batch 5; 80 images / 5
    "inference": {"strategy": "sliding_window"},  # alone, it segments its own (downscaled) input
}

# Locator, then segmenter (README: trained separately, the best locator's path given to the segmentation), then
# both on the held-out cases of the split. The segmenter's best.pt names its locator (relative to its folder), so
# `segcore predict --model RUN/segmenter/best.pt` runs both stages.
PROTOCOL = (
    Stage("locator", "train", LOCATOR_PLAN),
    Stage("segmenter", "train", {"inference": {"locator": {"checkpoint": "../locator/best.pt"}}}),
    Stage("test", "test", {"inference": {"strategy": "locate_segment", "locator": {"checkpoint": "@locator"}}},
          models=("segmenter",)),
)

# `segcore demo` (the default study): 7 phantom cases of 32x64x64 (6 in the Training Set, 1 in the Testing Set,
# which no fold uses), 3 folds (4 train, 2 held out), --tiny with
# the locator and segmenter trained 120 steps each at a larger step; crop and buffer scaled to the small volumes
# (held-out Dice about 0.8, Testing/test_study_atrium.py).
DEMO = {"cases": 7, "size": [32, 64, 64], "fold": None,
        "overrides": ["preprocessing.0.min_zyx=[32,64,64]", "sampler.size_zyx=[16,32,32]",
                      "inference.locator.margin_voxels=8", "split.folds=3",
                      "training.epochs=1", "training.steps_per_epoch=120", "training.checkpoint_every_steps=0",
                      "optim.lr=0.003"]}

STUDY = Study(
    name="atrium",
    title="Left atrium in LGE-MRI: V-Net with BAM attention and a locator crop",
    module="AtriumSeg",
    modality="MRI",
    layout=LAYOUT,
    channels=(Channel("LGE-MRI", LAYOUT.image_file, "late gadolinium enhancement MRI, grey values 0..255"),),
    labels=(BACKGROUND, anatomy_label(1, "left atrium", terminology=LEFT_ATRIUM)),
    source="Pytorch_VNet_atriaseg2018",
    preset=PRESET,
    protocol=PROTOCOL,
    demo=DEMO,
)
