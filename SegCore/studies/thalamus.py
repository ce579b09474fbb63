"""Thalamus study (thalamus_benchmark_diffusion): 2D U-Nets on diffusion-derived maps and T1, HCP-processed data.

On disk (the file names of the study's code), one folder per subject:

    HCP_processed_data/
      <subject>/diffusion/evalue1.nii.gz  FA.nii.gz  RD.nii.gz  MD.nii.gz
      <subject>/T1w_acpc_dc_restore_1.25.nii.gz
      <subject>/FreeSurfer/aparc+aseg_1.25_nearest.nii.gz          thalamus = 10 (left) and 49 (right)
      <subject>/STAPLE/..., FSL/..., QuickNAT/... (7 / 25), manual/manual.nii.gz
      training_subjects.txt, testing_subjects.txt, fine_tuning_subjects.txt   optional: one subject id per line

The input channels are any combination of the five maps, each one file; the label is both thalami (1), or left
(1) and right (2) with the 'left_right' label set. Only some subjects have a manual label; with
label_source='manual' the others are unlabelled.

PRESET trains one view (axial) on STAPLE labels; PROTOCOL trains the three views in the study's order, tests
their mean, fine-tunes each on the manual labels with the encoder frozen and tests again, against every label
source: `segcore run --study thalamus --data HCP_processed_data --out RUN`. Sources and every difference from
the original: docs/studies.md, section 1, "Preset and protocol in SegStudies".
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Channel, Layout, Stage, Study, named
from SegCore.studies.terminology import LEFT_THALAMUS, RIGHT_THALAMUS, THALAMUS


@dataclass(frozen=True)
class LabelSource:
    """One segmentation the dataset ships per subject: its file and the stored values of the two thalami.
    every_subject: False where only some subjects have one (the manual labels); the others are then unlabelled."""

    name: str
    file: str
    left: int
    right: int
    every_subject: bool = True


@dataclass(frozen=True, kw_only=True)
class ThalamusLayout(Layout):
    """label_sources: the segmentations per subject (FreeSurfer aseg values 10 / 49 unless stated).
    subject_list_suffix: subject lists in the root end so; a list whose name starts with 'test' files its
    subjects as the test subset. training_list / testing_list: the two lists a split is written to;
    fine_tuning_list: the subjects with manual labels the study fine-tunes on."""

    label_sources: tuple[LabelSource, ...]
    default_label_source: str
    subject_list_suffix: str
    training_list: str
    testing_list: str
    fine_tuning_list: str = "fine_tuning_subjects.txt"

    def label_source(self, name: str) -> LabelSource:
        """The label source called `name`; SegCoreError listing them otherwise."""
        return named(self.label_sources, name, "label source")


LAYOUT = ThalamusLayout(
    name="thalamus",
    unmapped="background",  # every FreeSurfer structure but the thalami is background
    label_sources=(
        LabelSource("freesurfer", "FreeSurfer/aparc+aseg_1.25_nearest.nii.gz", 10, 49),
        LabelSource("staple", "STAPLE/STAPLE_th0.5_thalamus_1.25.nii.gz", 10, 49),
        LabelSource("fsl", "FSL/T1_first_all_fast_firstseg_1.25_nearest.nii.gz", 10, 49),
        LabelSource("quicknat", "QuickNAT/segmentation_acpc_dc_restore_1.25_nearest.nii.gz", 7, 25),
        LabelSource("manual", "manual/manual.nii.gz", 10, 49, every_subject=False),
    ),
    default_label_source="freesurfer",
    subject_list_suffix="_subjects.txt",
    training_list="training_subjects.txt",
    testing_list="testing_subjects.txt",
)

# The input combinations the study trained and compared (its inference script lists them).
CHANNEL_COMBINATIONS = (
    ("evalue1", "FA", "RD", "MD", "T1"), ("evalue1", "FA", "RD", "MD"), ("T1",), ("FA", "RD"), ("FA", "T1"),
    ("FA", "MD"), ("FA", "evalue1"), ("RD", "MD"), ("FA",), ("MD",), ("RD",), ("evalue1",), ("MD", "T1"),
    ("evalue1", "T1"),
)

# ---- the study's settings and protocol ---------------------------------------------------------------------------
# Sources: "code: <file>" (MICLab-Unicamp/thalamus_benchmark_diffusion, code/), "README", or "choice:" where both
# are silent. docs/studies.md, section 1, "Preset and protocol in SegStudies", says why each choice was made.
VIEWS = ("coronal", "sagittal", "axial")  # code: 2 - Training.ipynb trains views ["coronal", "sagittal", "axial"]
# code: inference.py crops every normalised volume to [:144, 15:159, :144] (NIfTI order i, j, k = x, y, z) and
# pastes the prediction back into zeros of the full size: the 144 x 144 slices the networks see
CROP_START_ZYX, CROP_STOP_ZYX = [0, 15, 0], [144, 159, 144]
# code: 1 - Patche_creation.ipynb, N_PATCHES = [10, 50]: per subject and view 10 patches centred on background
# voxels and 50 on thalamus voxels (of the STAPLE mask), Patch_size = 64
PATCH_SIDE, BACKGROUND_PATCHES, THALAMUS_PATCHES = 64, 10, 50
ROTATE_DEG = 5.0  # code: taug_angle = 5, Utils/transforms.py Rotate: U(-5, 5) degrees in-plane, every patch
IN_PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}  # the axis a view's in-plane rotation turns about (z, y, x)
# code: 4 - Finetuning.ipynb freezes model.parameters() 1..31 ("freeze": 32, `if i < freeze`): the four encoder
# blocks and the bottleneck (tensors 1..30), and by the count also upconv4's weight (not its bias). choice: the
# encoder and the bottleneck, which every depth of the network has; add "upconv4.weight" for the study's 31
FROZEN = ["encoder", "bottleneck"]


def _augmentation(view: str) -> dict:
    """The study's augmentation of one view's slices: every other kind off (code: My_transforms gets only angle
    and flip_prob)."""
    rotate = [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    rotate[IN_PLANE_AXIS[view]] = [-ROTATE_DEG, ROTATE_DEG]
    return {
        # code: HorizontalFlip(0.5); "Disabling sagital flip aug" (taug_flip_prob = 0 for the sagittal view).
        # choice: the flip is left-right (x), the one axis a sagittal slice lacks
        "flip_axes": [2], "flip_p": 0.0 if view == "sagittal" else 0.5,
        "rotate_deg": rotate, "rotate_p": 1.0,
        "scale_p": 0.0, "translate_p": 0.0, "elastic_p": 0.0, "noise_p": 0.0, "brightness_p": 0.0,
        "contrast_p": 0.0, "gamma_p": 0.0,
        "image_order": 1, "label_mode": "nearest",  # code: skimage rotate, order 1 for images, order 0 for masks
    }


PRESET = {
    # code: 2 - Training.ipynb masks ['staple_oh']: the networks learn the STAPLE labels; subjects_file: the
    # training list (relative to the dataset folder); any channel subset: --set data.options.channels='["FA","T1"]'
    "data": {"layout": "thalamus", "options": {"label_source": "staple", "subjects_file": LAYOUT.training_list}},
    # code: split_train_val = 0.2; choice: 5 folds over the training subjects, fold 0 validates (20 %)
    "split": {"kind": "kfold", "folds": 5, "fold": 0, "seed": 0},
    "preprocessing": [
        # code: inference.py / 1 - Patche_creation.ipynb: values above the 99.98th percentile set to it, then
        # min-max to [0, 1] (normalize_volumes = [0, 1]), per channel over the whole volume, before the crop
        {"name": "percentile_minmax", "lower": 0.0, "upper": 99.98},
        {"name": "crop_box", "start_zyx": CROP_START_ZYX, "stop_zyx": CROP_STOP_ZYX},
        # choice: every side a multiple of 16 (four poolings) on all three axes, so that the three views share
        # one preprocessing (an ensemble must); 144 needs no padding
        {"name": "pad", "multiple_zyx": [16, 16, 16], "mode": "constant", "value": 0},
    ],
    # code: CNNs/unet.py UNet(init_features=32), n_outchannels = 2 (softmax: background, thalamus)
    "model": {"name": "unet2d", "arguments": {"out_channels": 2, "features": [32, 64, 128, 256, 512]}},
    # code: DiceLoss_weighs with lossweighs [[0, 1]]: the Dice of the thalamus channel only (Utils/loss.py is not
    # published: smoothing and batch handling are SegCore's dice defaults)
    "loss": {"name": "dice", "arguments": {"include_background": False}},
    # code: 64 x 64 patches of one view's slices, 50 of every 60 centred on a thalamus voxel (the others: choice,
    # a random window, where the study centres them on a random background voxel)
    "sampler": {"kind": "slice2d", "axis": "axial", "size_yx": [PATCH_SIDE, PATCH_SIDE],
                "foreground_fraction": THALAMUS_PATCHES / (BACKGROUND_PATCHES + THALAMUS_PATCHES)},
    "augmentation": _augmentation("axial"),
    # code: Adam(lr=1e-3), torch's defaults otherwise ('eps': 1e-05 in its hyperparameters is the scheduler's)
    "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8},
    # code: ReduceLROnPlateau(optimizer) on val_loss. Lightning 1.3.8 ignored the notebook's factor / patience /
    # threshold keys ("Found unsupported keys in the lr scheduler dict"), so torch's defaults ran: factor 0.1,
    # patience 10, mode min
    "schedule": {"name": "plateau", "patience": 10, "factor": 0.1, "mode": "min", "min_lr": 0.0},
    "training": {
        # code: max_epochs 2000, EarlyStopping(val_loss, patience 20), ModelCheckpoint(val_loss, mode min)
        "epochs": 2000, "best_metric": "val_loss", "early_stopping": {"patience": 20, "min_delta": 0.0},
        # code: batch_size 256, accumulate_grad_batches 2; its log: 91 optimizer steps per epoch (60 patches of
        # each of about 970 training subjects, 80 % of them, in 182 batches)
        "batch_size": 256, "accumulate": 2, "steps_per_epoch": 91,
        "amp": "off", "clip_grad_norm": None,  # code: precision=32, no gradient clipping (Lightning's default)
        # choice: 16 whole validation subjects per epoch: about the pixels of the study's 20 % validation patches
        "validation": {"max_cases": 16},
    },
    # code: inference.py: each view's network on its own slices of the 144 cube, fp32, no mirroring; the views'
    # softmax averaged and the thalamus channel thresholded at 0.5 (the Predictor averages its members)
    "inference": {"views": "auto", "fusion": "mean", "tta": False, "precision": "float32"},
}


def _view(view: str) -> dict:
    """A view's training stage: the preset with that view's slices and its augmentation."""
    return {"sampler": {"axis": view}, "augmentation": _augmentation(view)}


def _fine_tuning(view: str) -> dict:
    """code: 4 - Finetuning.ipynb: the view's network, encoder frozen, on the manual labels of the fine-tuning
    subjects; EarlyStopping patience 30; everything else as in training."""
    return {**_view(view),
            "data": {"options": {"label_source": "manual", "subjects_file": LAYOUT.fine_tuning_list}},
            "training": {"init": f"@{view}", "freeze": FROZEN, "early_stopping": {"patience": 30}}}


# code: 6 - Evaluate_prediction.ipynb scores each prediction against every mask the subjects have; the held-out
# training subjects have every automatic one, the fine-tuning subjects the manual one too
AUTOMATIC_REFERENCES = {s.name: {"label_source": s.name} for s in LAYOUT.label_sources if s.every_subject}
ALL_REFERENCES = {s.name: {"label_source": s.name} for s in LAYOUT.label_sources}

PROTOCOL = (
    *(Stage(view, "train", _view(view)) for view in VIEWS),
    Stage("test", "test", {"references": AUTOMATIC_REFERENCES}, models=VIEWS),
    *(Stage(f"finetune-{view}", "train", _fine_tuning(view)) for view in VIEWS),
    Stage("test-finetuned", "test", {"references": ALL_REFERENCES}, models=tuple(f"finetune-{v}" for v in VIEWS)),
    # code: 5 - Save inference (test set _20 subjects).ipynb: the fine-tuned views segment the subjects of
    # testing_subjects.txt (never trained on: SegCore.training.components.split_cases), here scored against the
    # automatic masks they have (their manual ones were not released)
    Stage("test-subjects", "test", {"cases": "test", "references": AUTOMATIC_REFERENCES,
                                    "options": {"subjects_file": None, "label_source": LAYOUT.default_label_source}},
          models=tuple(f"finetune-{v}" for v in VIEWS)),
)

# `segcore demo --study thalamus`: the whole protocol on 8 phantom subjects (6 training, 3 of them with manual
# labels, 2 test), --tiny and a little longer and wider: 60 steps per stage (a held-out Dice of about 0.7,
# Testing/test_study_thalamus.py), one validation at the end.
DEMO = {"cases": 8, "size": None, "fold": None,
        "overrides": ["training.epochs=6", "training.steps_per_epoch=10", "training.batch_size=8",
                      "training.validate_every=6", "training.checkpoint_every_steps=0", "optim.lr=0.01",
                      "sampler.size_yx=[48,48]", "model.arguments.features=[8,16,32]"]}

STUDY = Study(
    name="thalamus",
    title="Thalamus in diffusion MRI and T1: 2D U-Nets",
    module="ThalamusSeg",
    modality="MRI",
    layout=LAYOUT,
    channels=(
        Channel("evalue1", "diffusion/evalue1.nii.gz", "axial diffusivity (first eigenvalue), mm^2/s"),
        Channel("FA", "diffusion/FA.nii.gz", "fractional anisotropy"),
        Channel("RD", "diffusion/RD.nii.gz", "radial diffusivity, mm^2/s"),
        Channel("MD", "diffusion/MD.nii.gz", "mean diffusivity, mm^2/s"),
        Channel("T1", "T1w_acpc_dc_restore_1.25.nii.gz", "T1-weighted MRI (HCP T1w_restore, 1.25 mm)"),
    ),
    labels=(BACKGROUND, anatomy_label(1, "thalamus", terminology=THALAMUS)),
    label_sets=(("left_right", (
        BACKGROUND,
        anatomy_label(1, "left thalamus", terminology=LEFT_THALAMUS),
        anatomy_label(2, "right thalamus", "thalamus",
                      why="the table gives both thalami one colour; the right takes the 'thalamus' entry",
                      terminology=RIGHT_THALAMUS),
    )),),
    source="thalamus_benchmark_diffusion",
    preset=PRESET,
    protocol=PROTOCOL,
    demo=DEMO,
)
