"""Overlap losses: soft Dice, log-cosh Dice, -log Dice, generalised Dice (Sudre et al. 2017).

    from SegCore.losses import build_loss, decathlon_dice_arguments

    dice = build_loss("dice")                                   # 1 - soft Dice, foreground classes
    author = build_loss("log_dice", **decathlon_dice_arguments(out_channels=4))  # the decathlon study's loss
    value = author(logits, labels)      # logits (N, 4, Z, Y, X) float, labels (N, Z, Y, X) int -> float32 scalar
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.losses._inputs import check_inputs_kind, check_weights, class_vector, prepare, selected_classes
from SegCore.losses.registry import register_loss

# Keras' K.epsilon(), the decathlon author's smoothing term (numerator and denominator).
KERAS_EPSILON = 1e-7


def decathlon_dice_arguments(out_channels: int) -> dict:
    """Arguments of `dice` / `log_dice` that give the decathlon study's Dice (its author's segmentation_losses.py).

    out_channels: the network's output channels. The author's 2-class tasks have ONE sigmoid channel
    (out_channels=1) and score the foreground only, with a plain denominator: (2 sum(p g) + e) / (sum(p) + sum(g)
    + e). The other tasks (out_channels = classes, softmax) average the Dice of every class, background
    included, with squares in the denominator: (2 sum(p g) + e) / (sum(p^2) + sum(g^2) + e). Both sum over the
    whole batch and use e = 1e-7 (Keras' epsilon) in numerator and denominator.
    """
    if int(out_channels) != out_channels or out_channels < 1:
        raise SegCoreError(f"out_channels must be an integer >= 1, got {out_channels!r}")
    binary = out_channels == 1
    return {"include_background": not binary, "squared_denominator": not binary, "smooth": KERAS_EPSILON,
            "eps": 0.0, "batch_dice": True}


def _check_smoothing(smooth: float, eps: float) -> None:
    if not (smooth >= 0.0 and eps >= 0.0):
        raise SegCoreError(f"smooth and eps must be >= 0, got smooth={smooth}, eps={eps}")
    if smooth + eps <= 0.0:
        raise SegCoreError("smooth and eps are both 0: an empty class would divide 0 by 0",
                           fix="keep eps > 0 (default 1e-6) or smooth > 0")


def overlap_sums(probs: Tensor, target: Tensor, batch_dice: bool,
                 squared: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection sum(p*g), and sum(p) and sum(g) (sum(p^2) and sum(g^2) when `squared`) per class.

    probs, target: (N, K, V) float32. Returns three (K,) tensors when batch_dice, else (N, K).
    """
    dims = (0, 2) if batch_dice else (2,)
    if squared:
        return (probs * target).sum(dims), probs.square().sum(dims), target.square().sum(dims)
    return (probs * target).sum(dims), probs.sum(dims), target.sum(dims)


@register_loss("dice")
class SoftDiceLoss(nn.Module):
    """Soft Dice loss, per class, averaged over classes (optionally weighted).

    For class k: D_k = (2 * sum(p_k * g_k) + smooth) / (sum(p_k) + sum(g_k) + smooth + eps); loss = weighted mean of
    (1 - D_k) over the classes used. With the defaults (smooth=0, eps=1e-6, batch_dice=True) and a binary
    prediction this is the atrium study's formula, 1 - 2*sum(p*g) / (sum(p) + sum(g) + eps).

    Args:
        include_background: use class 0 too (default False: foreground classes only).
        class_weights: one weight per class (K values; K = 2 for a binary prediction); None = equal weights.
        smooth: added to numerator and denominator (0 = none). With smooth = 0, a class absent from both the
            reference and the prediction scores loss 1 with zero gradient; smooth > 0 makes it score ~0.
        eps: added to the denominator only, so an empty class never divides by zero.
        batch_dice: True sums over the whole batch before the ratio (as the atrium study, and nnU-Net's
            batch Dice); False computes one Dice per sample and class and averages them.
        squared_denominator: sum(p_k^2) + sum(g_k^2) in the denominator (Milletari's V-Net form, the decathlon
            author's multi-class Dice) instead of sum(p_k) + sum(g_k). See decathlon_dice_arguments.
        inputs: "logits" (softmax / sigmoid applied here) or "probabilities".

    Shapes: prediction (N, C, *spatial) float, C >= 2 softmax or C == 1 sigmoid, spatial (Y, X) or (Z, Y, X);
    target labels (N, *spatial) / (N, 1, *spatial) or one-hot / probabilities (N, C, *spatial).
    Returns a float32 scalar in [0, 1].
    """

    def __init__(self, include_background: bool = False, class_weights: Sequence[float] | None = None,
                 smooth: float = 0.0, eps: float = 1e-6, batch_dice: bool = True, inputs: str = "logits",
                 squared_denominator: bool = False):
        super().__init__()
        _check_smoothing(smooth, eps)
        self.include_background = include_background
        self.class_weights = check_weights(class_weights, "class_weights")
        self.smooth, self.eps, self.batch_dice = float(smooth), float(eps), bool(batch_dice)
        self.squared_denominator = bool(squared_denominator)
        self.inputs = check_inputs_kind(inputs)

    def dice_scores(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Soft Dice per class used: (K',) with batch_dice, else (N, K')."""
        prep = prepare(prediction, target, self.inputs)
        inter, sum_p, sum_g = overlap_sums(prep.probs, prep.target, self.batch_dice, self.squared_denominator)
        dice = (2.0 * inter + self.smooth) / (sum_p + sum_g + self.smooth + self.eps)
        return dice[..., selected_classes(prep.num_classes, self.include_background)]

    def mean_dice(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Class-weighted mean soft Dice (a scalar); the loss is 1 minus this."""
        dice = self.dice_scores(prediction, target)
        if dice.shape[-1] == 0:
            raise SegCoreError("no class left to score: a binary or one-class prediction without its background",
                               fix="pass include_background=True or predict at least one foreground class")
        num_classes = dice.shape[-1] + (0 if self.include_background else 1)
        weights = class_vector(self.class_weights, num_classes, "class_weights", device=dice.device)
        if weights is None:
            per_sample = dice.mean(-1)
        else:
            weights = weights[selected_classes(num_classes, self.include_background)]
            if float(weights.sum()) <= 0.0:
                raise SegCoreError(f"the class weights of the classes used sum to 0: {weights.tolist()}")
            per_sample = (dice * weights).sum(-1) / weights.sum()
        return per_sample.mean()

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return 1.0 - self.mean_dice(prediction, target)


@register_loss("log_dice")
class LogCoshDiceLoss(SoftDiceLoss):
    """Log-cosh Dice loss, log(cosh(1 - D)): the decathlon study's 'log_dice' (its author's log_cosh_dice_loss).

    D is the class-weighted mean soft Dice of SoftDiceLoss, with the same arguments and defaults; pass
    `**decathlon_dice_arguments(out_channels)` for the author's exact Dice. log(cosh(x)) is ~x^2 / 2 near 0 and
    ~|x| - log 2 far from it: a smoothed Dice loss, in [0, log(cosh(1))] = [0, 0.434]. Shapes as SoftDiceLoss;
    returns a float32 scalar.
    """

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return torch.log(torch.cosh(1.0 - self.mean_dice(prediction, target)))


@register_loss("neg_log_dice")
class NegLogDiceLoss(SoftDiceLoss):
    """-log of the (class-weighted mean) soft Dice.

    loss = -log(max(D, eps)), D as in SoftDiceLoss. Same arguments, but smooth defaults to 1: with smooth > 0 the
    Dice of disjoint masks is > 0, so the loss stays finite (bounded by log(sum(p) + sum(g) + 1)) and keeps its
    gradient; with smooth = 0 the loss is capped at -log(eps). Shapes as SoftDiceLoss; returns a float32 scalar >= 0.
    """

    def __init__(self, include_background: bool = False, class_weights: Sequence[float] | None = None,
                 smooth: float = 1.0, eps: float = 1e-6, batch_dice: bool = True, inputs: str = "logits",
                 squared_denominator: bool = False):
        super().__init__(include_background, class_weights, smooth, eps, batch_dice, inputs, squared_denominator)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return -torch.log(self.mean_dice(prediction, target).clamp_min(max(self.eps, 1e-30)))


def generalized_dice_weights(volumes: Tensor) -> Tensor:
    """Sudre 2017 class weights 1 / volume^2, normalised to sum 1 along the last axis.

    volumes: (..., K) reference volumes sum(g_k) in voxels. A class with volume 0 gets the largest weight of the
    others (its 1/0 would dominate everything); if all are 0, all weights are equal.
    """
    raw = 1.0 / volumes.double().square()
    finite = torch.isfinite(raw)
    largest = torch.where(finite, raw, torch.zeros_like(raw)).amax(-1, keepdim=True)
    raw = torch.where(finite, raw, largest)
    raw = torch.where(largest > 0, raw, torch.ones_like(raw))  # all classes empty
    return (raw / raw.sum(-1, keepdim=True)).float()


@register_loss("generalized_dice")
class GeneralizedDiceLoss(nn.Module):
    """Generalised Dice loss (Sudre et al. 2017): one ratio over all classes, class k weighted by 1 / volume_k^2.

    loss = 1 - (2 * sum_k w_k sum(p_k g_k) + smooth) / (sum_k w_k (sum(p_k) + sum(g_k)) + smooth + eps),
    w_k = 1 / (sum g_k)^2 normalised to sum 1 (the ratio does not depend on the scale of w; normalising keeps
    smooth and eps meaningful). An empty reference class takes the largest weight of the others.

    Args:
        include_background: use class 0 too (default True, as in Sudre et al.; its weight is tiny).
        smooth, eps, batch_dice, inputs: as SoftDiceLoss (batch_dice=True: volumes and sums over the whole batch).

    Shapes as SoftDiceLoss. Returns a float32 scalar in [0, 1].
    """

    def __init__(self, include_background: bool = True, smooth: float = 0.0, eps: float = 1e-6,
                 batch_dice: bool = True, inputs: str = "logits"):
        super().__init__()
        _check_smoothing(smooth, eps)
        self.include_background = include_background
        self.smooth, self.eps, self.batch_dice = float(smooth), float(eps), bool(batch_dice)
        self.inputs = check_inputs_kind(inputs)

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        prep = prepare(prediction, target, self.inputs)
        inter, sum_p, sum_g = overlap_sums(prep.probs, prep.target, self.batch_dice)
        used = selected_classes(prep.num_classes, self.include_background)
        inter, sum_p, sum_g = inter[..., used], sum_p[..., used], sum_g[..., used]
        if inter.shape[-1] == 0:
            raise SegCoreError("no class left to score", fix="pass include_background=True")
        weights = generalized_dice_weights(sum_g.detach())
        numerator = 2.0 * (weights * inter).sum(-1) + self.smooth
        denominator = (weights * (sum_p + sum_g)).sum(-1) + self.smooth + self.eps
        return (1.0 - numerator / denominator).mean()
