"""Abdominal muscle study: EfficientNet-encoder U-Net or SegResNet on CT at L3 (DICOM), mixup, self-distillation.

On disk (the 'sarco' dataset), each scan's DICOM next to a NIfTI label of the same name:

    sarco dataset/
      HyuyQN0Tca.dcm      one DICOM slice (at L3), as the study trained on
      HyuyQN0Tca.nii.gz   its muscle mask (binary; any non-zero value is muscle)
      scan_ABDO_.../      or a whole DICOM series folder ...
      scan_ABDO_....nii.gz  ... with its label of the same name

The study's ToBinary step is the label rule 'non-zero -> 1'.
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Channel, Layout, Stage, Study
from SegCore.studies.terminology import MUSCLE


@dataclass(frozen=True, kw_only=True)
class MuscleLayout(Layout):
    """scan_suffix: a one-slice scan's file ending (a series is a folder of such files); label_suffix: the
    ending of the label file named after its scan."""

    scan_suffix: str
    label_suffix: str


LAYOUT = MuscleLayout(name="muscle", label_mapping=((0, 0),), unmapped="foreground", scan_suffix=".dcm",
                      label_suffix=".nii.gz")

# The study's published settings (README: its options and their example values) as a partial plan; "choice:" marks
# what the README leaves unstated (docs/studies.md, section 3, "Preset and protocol in SegStudies").
PRESET = {
    # Unlabelled scans may sit beside the labelled ones: self-distillation labels them (choice: the reader's option).
    "data": {"layout": "muscle", "options": {"require_labels": False}},
    "split": {"kind": "kfold", "folds": 5, "seed": 0},  # choice: the README names train/valid/test, no proportions
    "preprocessing": [
        {"name": "reorient"},  # choice: canonical axes, so that 'axial' slices are the CT's transverse slices
        # choice: HU (the reader applies Rescale Slope/Intercept) clipped to [-250, 250] and scaled to [0, 1]:
        # fat (-190..-30) and muscle (-29..150) stay apart, bone and air saturate
        {"name": "ct_window", "hu_min": -250.0, "hu_max": 250.0},
        {"name": "pad", "multiple_zyx": "auto"},  # in-plane sides to the network's multiple, cropped back exactly
    ],
    # README: --model_choice unet | segresnet, --backbone efficientnet-b0..b7; its example: efficientnet-b3
    "model": {"name": "efficientnet_unet", "arguments": {"variant": "b3"}},
    "loss": {"name": "dice_ce", "arguments": {}},  # choice: the README does not state the loss
    # README: one slice per sample (2D); --channel_3d stacks 3 slices: --set sampler.kind=stack25d (k 3)
    "sampler": {"kind": "slice2d", "axis": "axial", "k": 3},
    # README: --do_flips (flips and rotations), --do_elastic_transforms, --aug_prob 0.5 for all of them;
    # choice: flips of both in-plane axes, rotations of +-15 degrees in-plane, the default elastic field; no
    # scaling and no intensity changes (the README names none)
    "augmentation": {"flip_axes": [1, 2], "flip_p": 0.5, "rotate_deg": [[-15.0, 15.0], [0.0, 0.0], [0.0, 0.0]],
                     "rotate_p": 0.5, "elastic_p": 0.5, "scale_p": 0.0, "translate_p": 0.0, "noise_p": 0.0,
                     "brightness_p": 0.0, "contrast_p": 0.0, "gamma_p": 0.0},
    "optim": {"name": "adam", "lr": 1e-4},  # README example --learning_rate=1e-4; choice: Adam (not stated)
    "schedule": {"name": "constant"},  # README: the pl_bolts scheduler "is commented"
    "training": {
        "epochs": 50,  # README example --max_epochs=50
        "batch_size": 8, "even_batch": True,  # README: "must be even and preferably a power of 2"; example 8
        # README: --early_stopping with --patience 7; it monitors validation average precision, SegStudies the
        # validation Dice (best.pt and last.pt are kept, as the README's 'best' and 'last')
        "early_stopping": {"patience": 7}, "best_metric": "dice_mean",
    },
    "mixup": {"mode": "manifold", "alpha": 1.0},  # README example --mixup=manifold --mixup_alpha=1
    "distillation": {"weight": 1.0, "subset": "training"},  # README: predictions join the training set
}

# supervised training, then one self-distillation round: the supervised model's best.pt labels the unlabelled
# scans (inference's own prediction) and a new model trains on labelled + pseudo-labelled scans (README:
# --add_predicted_data). Each model is tested on the held-out (validation) scans of the same split.
PROTOCOL = (
    Stage("supervised", "train"),
    Stage("test-supervised", "test", models=("supervised",)),
    Stage("distill-1", "train", {"distillation": {"teacher": "@supervised"}}),
    Stage("test-distill-1", "test", models=("distill-1",)),
)

# `segcore demo --study muscle`: 4 labelled scans and 1 unlabelled (for the self-distillation round). In 40 CPU
# steps the EfficientNet-B3 U-Net with mixup and elastic augmentation learns nothing useful, so the demo trains
# a small SegResNet (the README's other --model_choice) without them (Testing/test_study_muscle.py: Dice ~0.5).
DEMO = {"cases": 4, "size": None, "fold": None, "phantom": {"unlabelled": 1},
        "overrides": ['model={"name": "segresnet", "arguments": {"init_filters": 4, "num_groups": 2, '
                      '"blocks_down": [1, 1, 1], "blocks_up": [1, 1]}}', "optim.lr=3e-3", "training.epochs=4",
                      "training.steps_per_epoch=10", "training.batch_size=8", "mixup.mode=off",
                      "augmentation.flip_p=0", "augmentation.rotate_p=0", "augmentation.elastic_p=0"]}

STUDY = Study(
    name="muscle",
    title="Abdominal muscle in CT: EfficientNet U-Net or SegResNet, mixup, self-distillation",
    module="MuscleSeg",
    modality="CT",
    layout=LAYOUT,
    channels=(Channel("CT", description="CT in Hounsfield units, a DICOM slice or series"),),
    labels=(BACKGROUND, anatomy_label(1, "muscle", terminology=MUSCLE)),
    source="Semantic segmentation of muscles on abdominal CT scans",
    preset=PRESET,
    protocol=PROTOCOL,
    demo=DEMO,
)
