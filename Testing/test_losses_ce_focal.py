"""Cross-entropy, focal and Dice + CE losses, and class weights from label frequencies, against hand values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from SegCore.errors import SegCoreError
from SegCore.losses import (
    CrossEntropyLoss,
    DiceCELoss,
    FocalLoss,
    SoftDiceLoss,
    build_loss,
    class_weights_from_frequencies,
)


def binary_logits(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def labels(values) -> torch.Tensor:
    return torch.tensor(values).view(1, 1, -1)


# Two pixels: logit 0 (p = 0.5) with label 1; logit ln 3 (p = 0.75) with label 0, so p_t = 0.25.
LOGITS = binary_logits([0.0, math.log(3.0)])
TARGET = labels([1, 0])


def test_binary_cross_entropy_by_hand():
    expected = (-math.log(0.5) - math.log(0.25)) / 2
    assert float(CrossEntropyLoss()(LOGITS, TARGET)) == pytest.approx(expected, abs=1e-6)


def test_class_weights_change_cross_entropy_as_computed():
    # Weighted mean: (w1 * -log 0.5 + w0 * -log 0.25) / (w1 + w0) with w0 = 1, w1 = 3.
    expected = (3 * -math.log(0.5) + 1 * -math.log(0.25)) / (3 + 1)
    assert float(CrossEntropyLoss(class_weights=[1.0, 3.0])(LOGITS, TARGET)) == pytest.approx(expected, abs=1e-6)


def test_multiclass_cross_entropy_matches_torch_with_weights(rng):
    logits = torch.from_numpy(rng.normal(size=(2, 4, 3, 5, 6)).astype("float32"))
    target = torch.from_numpy(rng.integers(0, 4, size=(2, 3, 5, 6)))
    weights = [0.2, 1.0, 2.5, 4.0]
    ours = CrossEntropyLoss(class_weights=weights)(logits, target)
    reference = F.cross_entropy(logits, target, weight=torch.tensor(weights))
    assert float(ours) == pytest.approx(float(reference), abs=1e-6)
    assert float(CrossEntropyLoss()(logits, target)) == pytest.approx(float(F.cross_entropy(logits, target)),
                                                                     abs=1e-6)


def test_binary_focal_by_hand():
    # gamma 2: -(1 - p_t)^2 log p_t per pixel, p_t = 0.5 and 0.25.
    expected = (0.5 ** 2 * -math.log(0.5) + 0.75 ** 2 * -math.log(0.25)) / 2
    assert float(FocalLoss(gamma=2.0)(LOGITS, TARGET)) == pytest.approx(expected, abs=1e-6)
    # alpha = 0.25: alpha_t = 0.25 for the label-1 pixel, 0.75 for the label-0 pixel.
    expected_alpha = (0.25 * 0.5 ** 2 * -math.log(0.5) + 0.75 * 0.75 ** 2 * -math.log(0.25)) / 2
    assert float(FocalLoss(gamma=2.0, alpha=0.25)(LOGITS, TARGET)) == pytest.approx(expected_alpha, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_focal_equals_cross_entropy_at_gamma_zero(channels, spatial, rng):
    logits = torch.from_numpy(rng.normal(scale=3.0, size=(2, channels, *spatial)).astype("float32"))
    target = torch.from_numpy(rng.integers(0, max(channels, 2), size=(2, *spatial)))
    focal = FocalLoss(gamma=0.0, alpha=None)(logits, target)
    ce = CrossEntropyLoss()(logits, target)
    assert abs(float(focal) - float(ce)) < 1e-6


def test_focal_below_cross_entropy_for_confident_correct_predictions():
    target = torch.tensor([[0, 1, 2, 1]]).view(1, 1, 4)
    logits = F.one_hot(target, 3).movedim(-1, 1).float() * 6.0  # p_correct ~ 0.995
    focal, ce = FocalLoss(gamma=2.0)(logits, target), CrossEntropyLoss()(logits, target)
    assert 0 < float(focal) < float(ce) * 1e-3  # (1 - 0.995)^2 ~ 2.5e-5


def test_focal_multiclass_alpha_and_errors():
    target = torch.tensor([[0, 1]]).view(1, 1, 2)
    logits = torch.zeros(1, 3, 1, 2)  # p = 1/3 everywhere
    value = FocalLoss(gamma=1.0, alpha=[0.5, 2.0, 1.0])(logits, target)
    per_pixel = (2 / 3) * -math.log(1 / 3)
    assert float(value) == pytest.approx((0.5 * per_pixel + 2.0 * per_pixel) / 2, abs=1e-6)
    with pytest.raises(SegCoreError, match="single focal alpha"):
        FocalLoss(alpha=0.25)(logits, target)
    with pytest.raises(SegCoreError, match="gamma"):
        FocalLoss(gamma=-1.0)


def test_dice_ce_combines_the_terms_with_their_weights():
    probs = torch.tensor([0.9, 0.2, 0.6, 0.1]).view(1, 1, 1, 4)
    target = labels([1, 0, 1, 0])
    # Dice: sum(pg) = 1.5, sum(p) = 1.8, sum(g) = 2. CE: mean of -log p_t.
    dice = 1 - 2 * 1.5 / (1.8 + 2 + 1e-6)
    ce = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.9)) / 4
    value = DiceCELoss(dice_weight=2.0, ce_weight=0.5, inputs="probabilities")(probs, target)
    assert float(value) == pytest.approx(2.0 * dice + 0.5 * ce, abs=1e-6)
    assert float(SoftDiceLoss(inputs="probabilities")(probs, target)) == pytest.approx(dice, abs=1e-6)


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "dice_ce"])
@pytest.mark.parametrize("channels", [1, 3])
def test_logits_and_probabilities_modes_agree(name, channels, rng):
    logits = torch.from_numpy(rng.normal(size=(2, channels, 4, 5)).astype("float32"))
    target = torch.from_numpy(rng.integers(0, max(channels, 2), size=(2, 4, 5)))
    probs = torch.sigmoid(logits) if channels == 1 else torch.softmax(logits, 1)
    from_logits = build_loss(name)(logits, target)
    from_probs = build_loss(name, inputs="probabilities")(probs, target)
    assert float(from_logits) == pytest.approx(float(from_probs), abs=1e-5)


def test_soft_binary_targets_are_accepted():
    # A mixup-style soft target 0.3 at p = 0.5: CE = -(0.3 log 0.5 + 0.7 log 0.5) = log 2.
    value = CrossEntropyLoss()(binary_logits([0.0]), torch.tensor([0.3]).view(1, 1, 1, 1))
    assert float(value) == pytest.approx(math.log(2.0), abs=1e-6)


# --- class weights from a fingerprint's frequencies ---------------------------------------------------------

def test_inverse_weights_are_the_decathlon_formula():
    counts = [90, 9, 1]  # voxels per class; N = 100, C = 3 -> w_k = N / (C * N_k)
    assert class_weights_from_frequencies(counts) == pytest.approx([100 / 270, 100 / 27, 100 / 3])
    assert class_weights_from_frequencies({0: 0.9, 1: 0.1}) == pytest.approx([1 / 1.8, 1 / 0.2])
    assert class_weights_from_frequencies({"1": 0.5, "0": 0.5}) == pytest.approx([1.0, 1.0])


def test_inverse_sqrt_and_median_frequency():
    fractions = [0.9, 0.09, 0.01]
    assert class_weights_from_frequencies(fractions, method="inverse_sqrt") == pytest.approx(
        [1 / math.sqrt(2.7), 1 / math.sqrt(0.27), 1 / math.sqrt(0.03)])
    assert class_weights_from_frequencies(fractions, method="median_frequency") == pytest.approx([0.1, 1.0, 9.0])
    assert class_weights_from_frequencies(fractions, method="median_frequency", max_weight=5.0) == pytest.approx(
        [0.1, 1.0, 5.0])


def test_bad_frequencies_raise():
    with pytest.raises(SegCoreError, match=r"label\(s\) \[2\] have no voxels"):
        class_weights_from_frequencies([0.5, 0.5, 0.0])
    with pytest.raises(SegCoreError, match="every label 0..1"):
        class_weights_from_frequencies({0: 0.5, 2: 0.5})
    with pytest.raises(SegCoreError, match="unknown class-weight method"):
        class_weights_from_frequencies([0.5, 0.5], method="log")
    with pytest.raises(SegCoreError, match=">= 0"):
        class_weights_from_frequencies([0.5, -0.5])
