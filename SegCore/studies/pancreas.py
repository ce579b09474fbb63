"""Pancreas study (OrganSegRSTN_PyTorch): coarse-to-fine recurrent saliency transformation network, NIH Pancreas-CT.

On disk (the TCIA download), DICOM series per patient plus one NIfTI label per patient:

    NIH-Pancreas/
      Pancreas-CT/PANCREAS_0001/<study folder>/<series folder>/1-001.dcm ...   ('DOI/' or no wrapper work too)
      TCIA_pancreas_labels-02-05-2017/label0001.nii.gz                           pancreas = 1

Case PANCREAS_00XX goes with label00XX.nii.gz (the number matches).
"""

from __future__ import annotations

from dataclasses import dataclass

from SegCore.studies.colours import BACKGROUND, anatomy_label
from SegCore.studies.schema import Channel, Layout, Stage, Study
from SegCore.studies.terminology import PANCREAS


@dataclass(frozen=True, kw_only=True)
class PancreasLayout(Layout):
    """images_folder: the TCIA collection folder holding the case folders. case_prefix + case_digits: the case
    folders (PANCREAS_0001). label_folder_prefix: the label folder's name up to its release date
    (label_release); label_prefix + case_digits + label_suffix: the label files (label0001.nii.gz)."""

    images_folder: str
    case_prefix: str
    case_digits: int
    label_folder_prefix: str
    label_release: str
    label_prefix: str
    label_suffix: str

    @property
    def label_folder(self) -> str:
        """'TCIA_pancreas_labels-02-05-2017', the folder as TCIA distributes it."""
        return f"{self.label_folder_prefix}-{self.label_release}"

    def case_folder(self, number: int) -> str:
        return f"{self.case_prefix}{number:0{self.case_digits}d}"

    def label_file(self, number: int) -> str:
        return f"{self.label_prefix}{number:0{self.case_digits}d}{self.label_suffix}"


LAYOUT = PancreasLayout(
    name="pancreas",
    label_mapping=((0, 0), (1, 1)),
    unmapped="error",
    images_folder="Pancreas-CT",
    case_prefix="PANCREAS_",
    case_digits=4,
    label_folder_prefix="TCIA_pancreas_labels",
    label_release="02-05-2017",
    label_prefix="label",
    label_suffix=".nii.gz",
)

# ---- the published settings (OrganSegRSTN_PyTorch; docs/studies.md, section 4, "Preset and protocol") ----------
# Sources: "run.sh", "training.py", "model.py", "Data.py", "utils.py", "*_testing.py" / "*_fusion.py" of the study's
# code; "choice: ..." where the study is silent or SegStudies does it differently, and why.
PLANES = {"X": "coronal", "Y": "sagittal", "Z": "axial"}  # init.py/dicom2npy.py: X cuts the DICOM rows (y), Y the
# columns (x), Z the slices; as SegCore's views of a (Z, Y, X) volume: X coronal, Y sagittal, Z axial
MODES = ("S", "I", "J")  # training.py: trained in this order, each stage from the previous one's weights
EPOCHS = {"S": 2, "I": 6, "J": 8}  # run.sh TRAINING_EPOCH_S / _I / _J
FOLDS = 4  # run.sh FOLDS=4; utils.in_training_set: test blocks of cases 1-20, 21-40, 41-61, 62-82
NO_AUGMENTATION = {key: 0.0 for key in ("flip_p", "rotate_p", "scale_p", "translate_p", "elastic_p", "noise_p",
                                        "brightness_p", "contrast_p", "gamma_p")}  # Data.py: none

PRESET = {
    "data": {"layout": "pancreas"},
    "split": {"kind": "pancreas", "folds": FOLDS, "fold": 0},  # utils.in_training_set; run.sh CURRENT_FOLD=0
    "preprocessing": [
        {"name": "reorient"},  # choice: canonical axes, so that the planes are the same anatomy on every case
        # run.sh LOW_RANGE=-100, HIGH_RANGE=240; Data.py: clip to them, then (x - low) / (high - low)
        {"name": "ct_window", "hu_min": -100, "hu_max": 240, "out": [0.0, 1.0]},
    ],
    "model": {"name": "rstn", "arguments": {
        "slices": 3,  # run.sh SLICE_THICKNESS=3
        "width_multiplier": 1.0, "upsampling": "bilinear", "dropout": 0.5,  # model.py FCN8s: VGG-16, Dropout2d
        "threshold": 0.5,  # model.py crop: prob >= 0.5
        "margin": 20, "random_margin_prob": 0.5,  # run.sh TRAINING_MARGIN=20, TRAINING_PROB=0.5
        "random_margin_min": 0, "random_margin_max": 40,  # model.py update_margin: randint(0, 2 x margin)
        "training_mode": "J",  # each train stage sets S, I or J (MODES)
    }},
    # model.py DSC_loss: per sample, 1 - (2 sum(pg) + 1e-6) / (sum(p) + sum(g) + 1e-6) on sigmoid maps; the RSTN
    # adaptor (SegCore/training/rstn.py) scores coarse and fine maps with it, 1/3 and 2/3 (training.py)
    "loss": {"name": "dice", "arguments": {"smooth": 1e-6, "eps": 0.0, "batch_dice": False,
                                           "include_background": False, "inputs": "logits"}},
    # Data.py: 3 adjacent slices, each with its own label, the whole plane, only slices through the organ
    # (choice: drawn through a random organ voxel, not uniformly among those slices); each stage sets its plane
    "sampler": {"kind": "stack25d", "k": 3, "axis": "axial", "foreground_fraction": 1.0, "size_yx": None,
                "labels": "stack"},
    "augmentation": NO_AUGMENTATION,
    "optim": {"name": "sgd", "lr": 1e-5, "momentum": 0.99, "weight_decay": 5e-4, "nesterov": False,  # training.py
              "groups": [{"match": r"^(saliency1|saliency2|fine_model)\.", "lr_scale": 10.0}],  # LEARNING_RATE_M1
              "bias_lr_scale": 2.0, "bias_weight_decay": 0.0},  # get_parameters: biases 2x (so fine 20x), no decay
    "schedule": {"name": "constant"},  # training.py: S and I keep the lr; J halves it (the J stage below)
    "training": {
        "epochs": EPOCHS["J"], "batch_size": 1,  # training.py batch_size = 1
        "steps_per_epoch": 2000,  # choice: the study's epoch is one pass over the training slices through the
        # pancreas (Data.py), which the Trainer does not count; 2000 is about an axial pass over 62 NIH cases
        "clip_grad_norm": None, "amp": "off",  # training.py: no clipping, float32
        "validate_every": 1000000,  # choice: validated after the last epoch only, so best.pt is the last epoch's
        # weights, the snapshot the study tests (the held-out fold is its test fold: choosing on it would leak)
        "early_stopping": {"patience": None},
    },
    "inference": {
        "strategy": "coarse_to_fine", "tta": False,  # coarse2fine_testing.py
        "precision": "float32",  # choice: the study's float32 (inter-round Dice compares whole masks)
        "coarse_to_fine": {"max_rounds": 10, "convergence_dice": 0.99,  # run.sh MAX_ROUNDS=10; README 99%
                           "thresholds": [0.90, 0.95, 0.98, 0.99],  # coarse2fine_testing.py DSC_90 .. DSC_99
                           "largest_component": True},  # utils.post_processing(pred, pred, 0.5) every round
    },
}


# README: "you need to confirm the average loss to be sufficiently low (e.g. 0.3 in `S`, 0.2 in `I`, 0.15 in `J`)"
LOSS_TARGETS = {"S": 0.3, "I": 0.2, "J": 0.15}


def _train_stage(fold: int, plane: str, mode: str) -> Stage:
    """'fold0-X-S': one plane's RSTN in one mode; I starts from S's weights, J from I's (training.py)."""
    plan: dict = {"split": {"fold": fold}, "sampler": {"axis": PLANES[plane]},
                  "model": {"arguments": {"training_mode": mode}}, "training": {"epochs": EPOCHS[mode]}}
    if mode == "S":  # no gradient reaches the saliency module in S: frozen, as SGD leaves it (and DDP needs)
        plan["training"]["freeze"] = ["saliency1", "saliency2"]
    else:
        plan["training"]["init"] = f"@fold{fold}-{plane}-{MODES[MODES.index(mode) - 1]}"
    if mode == "J":  # training.py: lr x 0.5 after every LR_DECAY_EPOCH_J_STEP = 2 epochs of J
        plan["schedule"] = {"name": "step", "step_epochs": 2, "gamma": 0.5}
    return Stage(f"fold{fold}-{plane}-{mode}", "train", plan, fold=fold, loss_target=LOSS_TARGETS[mode])


def _fold_stages(fold: int) -> tuple[Stage, ...]:
    """A fold: the nine trainings, then coarse testing + fusion + coarse-to-fine (one Predictor run gives them all,
    as extras) and oracle testing + fusion (the label's box)."""
    trained = tuple(_train_stage(fold, plane, mode) for plane in PLANES for mode in MODES)
    planes = tuple(f"fold{fold}-{plane}-J" for plane in PLANES)
    return (*trained, Stage(f"fold{fold}-coarse2fine", "test", {}, models=planes, fold=fold),
            Stage(f"fold{fold}-oracle", "test", {"oracle": True}, models=planes, fold=fold))


PROTOCOL = tuple(stage for fold in range(FOLDS) for stage in _fold_stages(fold))

# segcore demo --study pancreas: fold 0 (cases 1 and 2 held out) of 8 zoomed phantom cases, all eleven stages, over
# --tiny (FCN-8s at 1/16 width). What the short run changes from the preset, and why (Testing/test_study_pancreas.py
# runs the same settings on the axial plane and checks the Dice it reaches; docs/studies.md, section 4):
DEMO = {"cases": 8, "size": [32, 96, 96], "fold": 0,
        # the field of view halved: the pancreas 2 to 5 % of the volume, ~16 px across on 96 x 96 planes (FCN-8s'
        # stride-8 scores need several cells across the organ, and its 100 px padding makes small planes no cheaper)
        "phantom": {"zoom": 2.0},
        "overrides": [
            "sampler.size_yx=null",  # the whole plane, as the study (--tiny cuts 32 x 32 windows)
            "training.batch_size=2", "training.epochs=5", "training.steps_per_epoch=12",
            "training.checkpoint_every_steps=0",
            # Dice + cross-entropy: from random weights the study's Dice alone sits for hundreds of steps on a
            # saturated all-body mask (sigmoid gradients ~0), and whether it leaves it within 100 depends on the seed
            "loss.name=dice_ce",
            # the study's SGD at 1e-5 needs ~10^4 steps: Adam, warmed up for an epoch, then decayed to 0, without
            # weight decay (Adam's L2 would shrink every weight with a small gradient by lr a step)
            "optim.name=adam", "optim.lr=5e-4", "optim.weight_decay=0", "optim.groups=[]", "optim.bias_lr_scale=1",
            "schedule.name=poly", "schedule.warmup_epochs=1",
            "model.arguments.dropout=0",  # the study's 0.5 slows a run this short
            # boxes 40 px (random 0..80) beyond the mask: at 20 px the fine stage first learns to fill its box, which
            # then grows round after round at test
            "model.arguments.margin=40", "model.arguments.random_margin_max=80"]}

STUDY = Study(
    name="pancreas",
    title="Pancreas in CT: coarse-to-fine recurrent saliency transformation network (RSTN)",
    module="PancreasSeg",
    modality="CT",
    layout=LAYOUT,
    channels=(Channel("CT", description="portal-venous CT in Hounsfield units, a DICOM series"),),
    labels=(BACKGROUND, anatomy_label(1, "pancreas", terminology=PANCREAS)),
    source="OrganSegRSTN_PyTorch",
    preset=PRESET,
    protocol=PROTOCOL,
    demo=DEMO,
)
