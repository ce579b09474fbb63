"""Dataset layouts, splits and the dataset fingerprint.

    dataset = open_dataset("Task01_BrainTumour")          # layout detected: 'decathlon'
    image, label = load_case(dataset.cases[0])            # (C, Z, Y, X) float32, (Z, Y, X) uint8

Readers look only at names and folders; voxels are read by `load_case_image` / `load_case_label`, which also
apply the layout's label conversion (LA 2018 0/255 -> 0/1, FreeSurfer thalami 10/49 -> 1).
"""

from SegCore.datasets.case import (
    Case,
    Dataset,
    ImageSource,
    LabelRule,
    apply_label_rule,
    load_case,
    load_case_image,
    load_case_label,
)
from SegCore.datasets.fingerprint import Fingerprint, compute_fingerprint, orientation_code, write_fingerprint
from SegCore.datasets.preview import plot_case, write_case_preview
from SegCore.datasets.registry import LAYOUTS, detect_layout, open_dataset
from SegCore.datasets.splits import (
    kfold_splits,
    load_splits,
    pancreas_folds,
    random_split,
    read_case_list,
    save_splits,
    split_from_lists,
)
from SegCore.datasets.views import View, anatomical_views

__all__ = [
    "LAYOUTS",
    "Case",
    "Dataset",
    "Fingerprint",
    "ImageSource",
    "LabelRule",
    "View",
    "anatomical_views",
    "apply_label_rule",
    "compute_fingerprint",
    "detect_layout",
    "kfold_splits",
    "load_case",
    "load_case_image",
    "load_case_label",
    "load_splits",
    "open_dataset",
    "orientation_code",
    "plot_case",
    "pancreas_folds",
    "random_split",
    "read_case_list",
    "save_splits",
    "split_from_lists",
    "write_case_preview",
    "write_fingerprint",
]
