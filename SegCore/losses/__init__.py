"""Segmentation losses by name: `build_loss(name, **kwargs)`; `LOSSES` lists them. See docs/losses.md.

Every loss is an nn.Module taking (prediction, target): prediction (N, C, *spatial) logits or probabilities
(C >= 2 softmax, C == 1 sigmoid), spatial (Y, X) or (Z, Y, X); target integer labels (N, *spatial) /
(N, 1, *spatial) or one-hot / probabilities (N, C, *spatial). Losses with `needs_distance_maps = True`
(boundary, hybrid) also take `distance_maps` and `case_ids`.
"""

from SegCore.losses.boundary import BoundaryLoss, HybridLoss
from SegCore.losses.class_weights import class_weights_from_frequencies
from SegCore.losses.cross_entropy import CrossEntropyLoss, DiceCELoss, FocalLoss
from SegCore.losses.dice import (
    GeneralizedDiceLoss,
    LogCoshDiceLoss,
    NegLogDiceLoss,
    SoftDiceLoss,
    decathlon_dice_arguments,
    generalized_dice_weights,
)
from SegCore.losses.distance_maps import DistanceMapCache, signed_distance_map_mm
from SegCore.losses.registry import LOSSES, build_loss, register_loss
from SegCore.losses.schedule import HybridSchedule

__all__ = [
    "LOSSES",
    "BoundaryLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "DistanceMapCache",
    "FocalLoss",
    "GeneralizedDiceLoss",
    "HybridLoss",
    "HybridSchedule",
    "LogCoshDiceLoss",
    "NegLogDiceLoss",
    "SoftDiceLoss",
    "build_loss",
    "class_weights_from_frequencies",
    "decathlon_dice_arguments",
    "generalized_dice_weights",
    "register_loss",
    "signed_distance_map_mm",
]
