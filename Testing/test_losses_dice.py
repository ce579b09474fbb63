"""Soft Dice, log-Dice and generalised Dice against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.losses import GeneralizedDiceLoss, LogDiceLoss, SoftDiceLoss, build_loss, generalized_dice_weights

EPS = 1e-6  # the default eps of the Dice losses (denominator only)


def binary_probs(values) -> torch.Tensor:
    """(1, 1, 1, X) foreground probabilities from a flat list."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def labels(values) -> torch.Tensor:
    return torch.tensor(values).view(1, 1, -1)


def test_atrium_formula_on_a_hand_example():
    # p = [1, 0, 0.5, 0], g = [1, 1, 0, 0]: sum(p*g) = 1, sum(p) = 1.5, sum(g) = 2.
    loss = SoftDiceLoss(inputs="probabilities")(binary_probs([1, 0, 0.5, 0]), labels([1, 1, 0, 0]))
    assert float(loss) == pytest.approx(1 - 2 * 1.0 / (1.5 + 2.0 + EPS), abs=1e-7)


def test_perfect_prediction_gives_zero():
    g = [0, 1, 1, 0, 1]
    loss = SoftDiceLoss(inputs="probabilities")(binary_probs(g), labels(g))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    # Same in logits mode with confident logits (+-20 -> p within 2e-9 of 0/1).
    logits = (torch.tensor(g, dtype=torch.float32) * 40 - 20).view(1, 1, 1, -1)
    assert float(SoftDiceLoss()(logits, labels(g))) == pytest.approx(0.0, abs=1e-6)


def test_disjoint_masks_give_one_and_smoothing_as_computed():
    p, g = [1, 1, 0, 0], [0, 0, 1, 0]
    assert float(SoftDiceLoss(inputs="probabilities")(binary_probs(p), labels(g))) == 1.0
    # smooth = 1 in numerator and denominator: 1 - (0 + 1) / (2 + 1 + 1 + eps)
    smoothed = SoftDiceLoss(smooth=1.0, inputs="probabilities")(binary_probs(p), labels(g))
    assert float(smoothed) == pytest.approx(1 - 1 / (2 + 1 + 1 + EPS), abs=1e-7)


def test_empty_reference_and_prediction():
    empty_p, empty_g = binary_probs([0, 0, 0]), labels([0, 0, 0])
    # smooth = 0: 0 / (0 + eps) -> loss 1 (documented), finite.
    assert float(SoftDiceLoss(inputs="probabilities")(empty_p, empty_g)) == 1.0
    # smooth = 1: 1 / (1 + eps) -> loss ~0.
    assert float(SoftDiceLoss(smooth=1.0, inputs="probabilities")(empty_p, empty_g)) == pytest.approx(
        1 - 1 / (1 + EPS), abs=1e-7)
    # Empty reference, some prediction, smooth = 1: 1 - 1 / (0.5 + 0 + 1 + eps).
    value = SoftDiceLoss(smooth=1.0, inputs="probabilities")(binary_probs([0.5, 0, 0]), empty_g)
    assert float(value) == pytest.approx(1 - 1 / (1.5 + EPS), abs=1e-7)


def three_class_example():
    """Pixels with labels [0, 1, 2, 2]; class probabilities per pixel (rows) -> (1, 3, 1, 4)."""
    probs = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]], dtype=torch.float32)
    return probs.T.reshape(1, 3, 1, 4), labels([0, 1, 2, 2])


def test_multiclass_dice_and_class_weights_as_computed():
    probs, target = three_class_example()
    # Class 1: sum(pg) = 1, sum(p) = 1.5, sum(g) = 1.  Class 2: sum(pg) = 1.5, sum(p) = 1.5, sum(g) = 2.
    d1 = 2 * 1.0 / (1.5 + 1 + EPS)
    d2 = 2 * 1.5 / (1.5 + 2 + EPS)
    plain = SoftDiceLoss(inputs="probabilities")(probs, target)
    assert float(plain) == pytest.approx(1 - (d1 + d2) / 2, abs=1e-6)
    weighted = SoftDiceLoss(class_weights=[0.0, 1.0, 3.0], inputs="probabilities")(probs, target)
    assert float(weighted) == pytest.approx((1 * (1 - d1) + 3 * (1 - d2)) / 4, abs=1e-6)
    assert float(weighted) != pytest.approx(float(plain), abs=1e-3)
    # With the background: class 0 has sum(pg) = 1, sum(p) = 1, sum(g) = 1 -> Dice ~1.
    d0 = 2 * 1.0 / (1 + 1 + EPS)
    with_bg = SoftDiceLoss(include_background=True, inputs="probabilities")(probs, target)
    assert float(with_bg) == pytest.approx(1 - (d0 + d1 + d2) / 3, abs=1e-6)


def test_one_hot_target_equals_label_target():
    probs, target = three_class_example()
    one_hot = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    loss = SoftDiceLoss(inputs="probabilities")
    assert float(loss(probs, one_hot)) == pytest.approx(float(loss(probs, target)), abs=1e-7)
    assert float(loss(probs, target[:, None])) == pytest.approx(float(loss(probs, target)), abs=1e-7)


def test_batch_versus_per_sample_aggregation():
    # Sample A: g = p = [1, 1, 1, 0]. Sample B: g = [1, 0, 0, 0], p = [0, 1, 0, 0].
    p = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]], dtype=torch.float32).view(2, 1, 1, 4)
    g = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).view(2, 1, 4)
    batch = SoftDiceLoss(batch_dice=True, inputs="probabilities")(p, g)
    # Whole batch: sum(pg) = 3, sum(p) = 4, sum(g) = 4.
    assert float(batch) == pytest.approx(1 - 6 / (8 + EPS), abs=1e-6)
    per_sample = SoftDiceLoss(batch_dice=False, inputs="probabilities")(p, g)
    assert float(per_sample) == pytest.approx(((1 - 6 / (6 + EPS)) + 1.0) / 2, abs=1e-6)


def test_log_dice_is_minus_log_of_the_dice():
    p, g = binary_probs([1, 0, 0.5, 0]), labels([1, 1, 0, 0])
    # smooth = 1 (log-Dice default): D = (2 * 1 + 1) / (1.5 + 2 + 1 + eps)
    value = LogDiceLoss(inputs="probabilities")(p, g)
    assert float(value) == pytest.approx(-math.log(3 / (4.5 + EPS)), abs=1e-6)
    # Disjoint masks: finite, and the gradient still pushes probability into the reference.
    x = torch.tensor([5.0, 5.0, -5.0, -5.0], requires_grad=True)
    loss = LogDiceLoss()(x.view(1, 1, 1, 4), labels([0, 0, 1, 1]))
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert (x.grad[2:] < 0).all() and (x.grad[:2] > 0).all()


def test_generalized_dice_weights_by_hand():
    assert generalized_dice_weights(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([0.9, 0.1])
    # An empty class takes the largest finite weight: raw [inf, 1/4, 1/16] -> [1/4, 1/4, 1/16] / (9/16).
    assert generalized_dice_weights(torch.tensor([0.0, 2.0, 4.0])).tolist() == pytest.approx([4 / 9, 4 / 9, 1 / 9])
    assert generalized_dice_weights(torch.zeros(3)).tolist() == pytest.approx([1 / 3] * 3)


def test_generalized_dice_value_by_hand():
    # Labels [0, 1, 1, 1]; p(class 1) = [0, 1, 1, 0.5]. Volumes 1 and 3 -> weights 0.9, 0.1.
    p1 = torch.tensor([0, 1, 1, 0.5])
    probs = torch.stack([1 - p1, p1]).view(1, 2, 1, 4)
    # class 0: I = 1, sum(p) = 1.5, sum(g) = 1; class 1: I = 1 + 1 + 0.5 = 2.5, sum(p) = 2.5, sum(g) = 3.
    expected = 1 - 2 * (0.9 * 1 + 0.1 * 2.5) / (0.9 * 2.5 + 0.1 * 5.5 + EPS)
    value = GeneralizedDiceLoss(inputs="probabilities")(probs, labels([0, 1, 1, 1]))
    assert float(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", ["dice", "log_dice", "generalized_dice"])
@pytest.mark.parametrize("channels", [1, 3])
def test_logits_and_probabilities_modes_agree(name, channels, rng):
    logits = torch.from_numpy(rng.normal(size=(2, channels, 3, 4, 5)).astype("float32"))
    target = torch.from_numpy(rng.integers(0, max(channels, 2), size=(2, 3, 4, 5)))
    probs = torch.sigmoid(logits) if channels == 1 else torch.softmax(logits, 1)
    from_logits = build_loss(name)(logits, target)
    from_probs = build_loss(name, inputs="probabilities")(probs, target)
    assert float(from_logits) == pytest.approx(float(from_probs), abs=1e-5)


def test_bad_settings_raise():
    with pytest.raises(SegCoreError, match="both 0"):
        SoftDiceLoss(smooth=0.0, eps=0.0)
    with pytest.raises(SegCoreError, match="3 values but there are 2 classes"):
        SoftDiceLoss(class_weights=[1, 1, 1])(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(SegCoreError, match="sum to 0"):
        SoftDiceLoss(class_weights=[1.0, 0.0])(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(SegCoreError, match="inputs must be"):
        SoftDiceLoss(inputs="softmax")
