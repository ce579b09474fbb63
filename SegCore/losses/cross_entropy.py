"""Voxel-wise losses: cross-entropy, focal loss (Lin et al. 2017), and Dice + cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.losses._inputs import check_inputs_kind, check_weights, class_vector, prepare
from SegCore.losses.dice import SoftDiceLoss
from SegCore.losses.registry import register_loss


@register_loss("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Cross-entropy over classes, optionally class-weighted; binary (sigmoid) or multi-class (softmax).

    Per voxel i: l_i = -sum_k w_k g_ik log p_ik. Without weights the loss is the mean of l_i over all voxels of
    the batch. With weights it is sum_i l_i / sum_i sum_k w_k g_ik, which for hard labels is
    torch.nn.functional.cross_entropy(..., weight=w): a weighted mean, so weights change the balance between
    classes but not the overall scale.

    Args:
        class_weights: one weight per class (K values; K = 2 for a one-channel binary prediction:
            background, foreground); None = unweighted. See class_weights_from_frequencies.
        inputs: "logits" (log-softmax / log-sigmoid computed stably here) or "probabilities" (clamped at 1e-7
            before the log).

    Shapes: prediction (N, C, *spatial) float, C >= 2 softmax or C == 1 sigmoid, spatial (Y, X) or (Z, Y, X);
    target labels (N, *spatial) / (N, 1, *spatial) or one-hot / probabilities (N, C, *spatial).
    Returns a float32 scalar >= 0.
    """

    def __init__(self, class_weights: Sequence[float] | None = None, inputs: str = "logits"):
        super().__init__()
        self.class_weights = check_weights(class_weights, "class_weights")
        self.inputs = check_inputs_kind(inputs)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        prep = prepare(prediction, target, self.inputs, with_log=True)
        weights = class_vector(self.class_weights, prep.num_classes, "class_weights", device=prep.probs.device)
        per_class = -prep.target * prep.log_probs  # (N, K, V)
        if weights is None:
            return per_class.sum(1).mean()
        weights = weights.view(1, -1, 1)
        normaliser = (weights * prep.target).sum()
        # A batch made only of zero-weight classes contributes nothing rather than 0/0.
        return (weights * per_class).sum() / normaliser.clamp_min(1e-12)


@register_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma to down-weight easy voxels.

    Per voxel i: l_i = -sum_k alpha_k g_ik (1 - p_ik)^gamma log p_ik; loss = mean of l_i over all voxels. For a
    hard label y this is -alpha_y (1 - p_y)^gamma log p_y, the paper's FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t.
    With gamma = 0 and alpha = None it equals CrossEntropyLoss exactly.

    Args:
        gamma: focusing parameter >= 0 (Lin et al.: 2).
        alpha: None (no class balancing); a float in [0, 1] for a binary prediction (alpha for the foreground,
            1 - alpha for the background, as in the paper; Lin et al. use 0.25); or one value per class
            (K values; K = 2 for a binary prediction). Unlike CrossEntropyLoss's class_weights, alpha does not
            renormalise the mean (the paper's alpha-balanced form).
        inputs: "logits" or "probabilities".

    Shapes as CrossEntropyLoss. Returns a float32 scalar >= 0.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, inputs: str = "logits"):
        super().__init__()
        if not gamma >= 0.0:
            raise SegCoreError(f"focal loss gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        if isinstance(alpha, int | float):
            if not 0.0 <= alpha <= 1.0:
                raise SegCoreError(f"focal loss alpha (a float) must be in [0, 1], got {alpha}",
                                   fix="pass a float for a binary prediction or one value per class")
            self.alpha: float | list[float] | None = float(alpha)
        else:
            self.alpha = check_weights(alpha, "alpha")
        self.inputs = check_inputs_kind(inputs)

    def _alpha_vector(self, num_classes: int, binary: bool, device: torch.device) -> Tensor | None:
        if isinstance(self.alpha, float):
            if not binary:
                raise SegCoreError("a single focal alpha only applies to a binary (one-channel) prediction",
                                   fix=f"pass one alpha per class ({num_classes} values) or alpha=None")
            return torch.tensor([1.0 - self.alpha, self.alpha], device=device)
        return class_vector(self.alpha, num_classes, "alpha", device=device)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        prep = prepare(prediction, target, self.inputs, with_log=True)
        # The floor keeps pow's gradient finite at p = 1 for 0 < gamma < 1 (0^(gamma-1) would be inf, times
        # log 1 = 0 gives NaN); it changes the value by at most 1e-12^gamma.
        modulating = (1.0 - prep.probs).clamp_min(1e-12).pow(self.gamma)
        per_class = -prep.target * modulating * prep.log_probs
        alpha = self._alpha_vector(prep.num_classes, prep.binary, prep.probs.device)
        if alpha is not None:
            per_class = per_class * alpha.view(1, -1, 1)
        return per_class.sum(1).mean()


@register_loss("dice_ce")
class DiceCELoss(nn.Module):
    """Soft Dice + cross-entropy: dice_weight * SoftDiceLoss + ce_weight * CrossEntropyLoss (nnU-Net's default).

    Args:
        dice_weight, ce_weight: weight of each term (>= 0).
        class_weights: per-class weights given to both terms (K values), or None.
        include_background, smooth, eps, batch_dice: passed to SoftDiceLoss.
        inputs: "logits" or "probabilities".

    Shapes as SoftDiceLoss. Returns a float32 scalar >= 0.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 class_weights: Sequence[float] | None = None, include_background: bool = False,
                 smooth: float = 0.0, eps: float = 1e-6, batch_dice: bool = True, inputs: str = "logits"):
        super().__init__()
        check_weights([dice_weight, ce_weight], "dice_weight and ce_weight")
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.dice = SoftDiceLoss(include_background, class_weights, smooth, eps, batch_dice, inputs)
        self.ce = CrossEntropyLoss(class_weights, inputs)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return self.dice_weight * self.dice(prediction, target) + self.ce_weight * self.ce(prediction, target)
