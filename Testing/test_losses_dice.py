"""Soft Dice, log-cosh Dice, -log Dice and generalised Dice against values worked out by hand on tiny tensors, and
the decathlon author's Dice against a brute-force numpy transcription of its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.losses import (
    GeneralizedDiceLoss,
    LogCoshDiceLoss,
    NegLogDiceLoss,
    SoftDiceLoss,
    build_loss,
    decathlon_dice_arguments,
    generalized_dice_weights,
)

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


def test_log_dice_is_the_log_cosh_of_the_dice_loss():
    p, g = binary_probs([1, 0, 0.5, 0]), labels([1, 1, 0, 0])
    # D = 2 * 1 / (1.5 + 2 + eps) (smooth 0, the Dice default); loss = log(cosh(1 - D)).
    x = 1 - 2 / (3.5 + EPS)
    value = LogCoshDiceLoss(inputs="probabilities")(p, g)
    assert float(value) == pytest.approx(math.log((math.exp(x) + math.exp(-x)) / 2), abs=1e-7)
    assert build_loss("log_dice").__class__ is LogCoshDiceLoss
    # Bounded by log(cosh(1)) for disjoint masks, 0 for a perfect prediction.
    disjoint = LogCoshDiceLoss(inputs="probabilities")(binary_probs([1, 1, 0, 0]), labels([0, 0, 1, 1]))
    assert float(disjoint) == pytest.approx(math.log(math.cosh(1.0)), abs=1e-6)
    perfect = LogCoshDiceLoss(inputs="probabilities")(binary_probs([0, 1, 1]), labels([0, 1, 1]))
    assert float(perfect) == pytest.approx(0.0, abs=1e-6)


def test_neg_log_dice_is_minus_log_of_the_dice():
    p, g = binary_probs([1, 0, 0.5, 0]), labels([1, 1, 0, 0])
    # smooth = 1 (its default): D = (2 * 1 + 1) / (1.5 + 2 + 1 + eps)
    value = NegLogDiceLoss(inputs="probabilities")(p, g)
    assert float(value) == pytest.approx(-math.log(3 / (4.5 + EPS)), abs=1e-6)
    # Disjoint masks: finite, and the gradient still pushes probability into the reference.
    x = torch.tensor([5.0, 5.0, -5.0, -5.0], requires_grad=True)
    loss = build_loss("neg_log_dice")(x.view(1, 1, 1, 4), labels([0, 0, 1, 1]))
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert (x.grad[2:] < 0).all() and (x.grad[:2] > 0).all()


def test_squared_denominator_by_hand():
    # p = [1, 0, 0.5, 0], g = [1, 1, 0, 0]: sum(p*g) = 1, sum(p^2) = 1.25, sum(g^2) = 2.
    loss = SoftDiceLoss(squared_denominator=True, inputs="probabilities")(binary_probs([1, 0, 0.5, 0]),
                                                                          labels([1, 1, 0, 0]))
    assert float(loss) == pytest.approx(1 - 2 * 1.0 / (1.25 + 2.0 + EPS), abs=1e-7)


# --- the decathlon author's Dice (segmentation_losses.py, Keras, channels last) ---------------------------------

KERAS_EPS = 1e-7


def keras_multiclass_dice(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """dice_coefficient(y_true, y_pred, axis=(0, 1, 2, 3)) on (N, X, Y, Z, C) arrays, one class at a time."""
    scores = []
    for c in range(y_true.shape[-1]):
        t, p = y_true[..., c].astype(np.float64), y_pred[..., c].astype(np.float64)
        numerator = 2 * np.sum(p * t) + KERAS_EPS
        denominator = np.sum(p ** 2) + np.sum(t ** 2) + KERAS_EPS
        scores.append(numerator / denominator)
    return float(np.mean(scores))


def keras_binary_dice(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """dice_coefficient_binary: everything flattened, plain denominator."""
    t, p = y_true.ravel().astype(np.float64), y_pred.ravel().astype(np.float64)
    return float((2 * np.sum(t * p) + KERAS_EPS) / (np.sum(t) + np.sum(p) + KERAS_EPS))


def log_cosh(x: float) -> float:
    return math.log((math.exp(x) + math.exp(-x)) / 2.0)  # the author's tf.math.log((exp(x) + exp(-x)) / 2)


def test_decathlon_multiclass_dice_matches_the_author_s_formula(rng):
    logits = rng.normal(scale=2.0, size=(2, 3, 2, 3, 4))  # (N, C, Z, Y, X)
    labels_nzyx = rng.integers(0, 3, size=(2, 2, 3, 4))
    labels_nzyx[0, 0, 0, :] = 2  # every class present
    e = np.exp(logits - logits.max(1, keepdims=True))
    softmax = e / e.sum(1, keepdims=True)
    y_pred = np.moveaxis(softmax, 1, -1)                       # channels last, as Keras
    y_true = np.eye(3)[labels_nzyx]                            # (N, Z, Y, X, C) one-hot (to_categorical)
    dice = keras_multiclass_dice(y_true, y_pred)
    arguments = decathlon_dice_arguments(out_channels=3)
    prediction, target = torch.tensor(logits, dtype=torch.float32), torch.from_numpy(labels_nzyx)
    assert float(build_loss("dice", **arguments)(prediction, target)) == pytest.approx(1 - dice, rel=1e-5)
    assert float(build_loss("log_dice", **arguments)(prediction, target)) == pytest.approx(log_cosh(1 - dice),
                                                                                           rel=1e-5)
    # The background and the squares matter: the project's default Dice gives another value.
    assert float(build_loss("dice")(prediction, target)) != pytest.approx(1 - dice, rel=1e-3)


def test_decathlon_binary_dice_matches_the_author_s_formula(rng):
    logits = rng.normal(scale=2.0, size=(2, 1, 2, 3, 4))  # one sigmoid channel, as the author's 2-class tasks
    labels_nzyx = rng.integers(0, 2, size=(2, 2, 3, 4))
    y_pred = 1 / (1 + np.exp(-logits[:, 0]))
    dice = keras_binary_dice(labels_nzyx, y_pred)
    arguments = decathlon_dice_arguments(out_channels=1)
    prediction, target = torch.tensor(logits, dtype=torch.float32), torch.from_numpy(labels_nzyx)
    assert float(build_loss("dice", **arguments)(prediction, target)) == pytest.approx(1 - dice, rel=1e-5)
    assert float(build_loss("log_dice", **arguments)(prediction, target)) == pytest.approx(log_cosh(1 - dice),
                                                                                           rel=1e-5)
    with pytest.raises(SegCoreError, match="out_channels"):
        decathlon_dice_arguments(0)


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


@pytest.mark.parametrize("name", ["dice", "log_dice", "neg_log_dice", "generalized_dice"])
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
