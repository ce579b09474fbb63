"""Every loss takes logits by default, as every network returns them: checked against Dice computed by hand."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from SegCore.losses import LOSSES, build_loss


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_defaults_to_logits(name):
    assert inspect.signature(LOSSES[name].__init__).parameters["inputs"].default == "logits"


def hand_softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_dice(probs: np.ndarray, onehot: np.ndarray, classes, smooth=0.0, eps=1e-6) -> float:
    """Mean over `classes` of (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth + eps), sums over the batch."""
    scores = [(2 * (probs[:, k] * onehot[:, k]).sum() + smooth) / (probs[:, k].sum() + onehot[:, k].sum()
                                                                  + smooth + eps) for k in classes]
    return float(np.mean(scores))


def test_dice_of_multiclass_logits_is_the_dice_of_their_softmax(rng):
    logits = rng.normal(scale=2.0, size=(2, 3, 4, 5, 6))
    labels = rng.integers(0, 3, size=(2, 4, 5, 6))
    onehot = np.stack([labels == k for k in range(3)], axis=1).astype(float)
    expected = 1.0 - hand_dice(hand_softmax(logits), onehot, classes=(1, 2))  # foreground classes only
    value = build_loss("dice")(torch.tensor(logits, dtype=torch.float32), torch.from_numpy(labels))
    assert float(value) == pytest.approx(expected, rel=1e-5)
    log_cosh = build_loss("log_dice")(torch.tensor(logits, dtype=torch.float32), torch.from_numpy(labels))
    assert float(log_cosh) == pytest.approx(np.log(np.cosh(expected)), rel=1e-5)  # log(cosh(1 - Dice))
    neg_log = build_loss("neg_log_dice")(torch.tensor(logits, dtype=torch.float32), torch.from_numpy(labels))
    assert float(neg_log) == pytest.approx(-np.log(hand_dice(hand_softmax(logits), onehot, (1, 2), smooth=1.0)),
                                           rel=1e-5)


def test_dice_of_one_channel_logits_is_the_dice_of_their_sigmoid(rng):
    logits = rng.normal(scale=2.0, size=(2, 1, 6, 7))
    labels = rng.integers(0, 2, size=(2, 1, 6, 7))
    foreground = 1.0 / (1.0 + np.exp(-logits[:, 0]))
    expected = 1.0 - 2 * (foreground * labels[:, 0]).sum() / (foreground.sum() + labels.sum() + 1e-6)
    value = build_loss("dice")(torch.tensor(logits, dtype=torch.float32), torch.from_numpy(labels))
    assert float(value) == pytest.approx(expected, rel=1e-5)
