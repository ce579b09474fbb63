"""Hybrid region + boundary loss: the schedules (ramp, Dice threshold), resuming them, and the combined value."""

from __future__ import annotations

import json

import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.losses import DistanceMapCache, HybridLoss, HybridSchedule, build_loss


def run(schedule: HybridSchedule, dice_per_epoch) -> list[float]:
    """alpha used in each epoch when the validation Dice after epoch e is dice_per_epoch[e]."""
    used = []
    for epoch, dice in enumerate(dice_per_epoch):
        used.append(schedule.alpha)
        schedule.step_epoch(epoch, dice)
    return used


def test_ramp_goes_linearly_from_start_to_end():
    schedule = HybridSchedule(mode="ramp", alpha_start=1.0, alpha_end=0.01, ramp_epochs=99)  # Kervadec et al.
    used = run(schedule, [None] * 120)
    assert used[0] == 1.0
    assert used[1] == pytest.approx(0.99)
    assert used[50] == pytest.approx(0.5)
    assert used[99] == pytest.approx(0.01) and used[119] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(used[:99], used[1:100], strict=True))


def test_atrium_code_numbers_as_a_ramp():
    # The atrium study's released train.py: alpha from 1, minus 0.01 after each epoch, stopping at 0.15.
    used = run(HybridSchedule(alpha_start=1.0, alpha_end=0.15, ramp_epochs=85), [None] * 100)
    assert used[:3] == pytest.approx([1.0, 0.99, 0.98])
    assert used[85] == pytest.approx(0.15) and used[99] == pytest.approx(0.15)


def test_dice_threshold_switches_on_after_the_threshold_and_stays_on():
    schedule = HybridSchedule(mode="dice_threshold", alpha_start=1.0, alpha_end=0.5, ramp_epochs=0,
                              dice_threshold=0.8)
    assert not schedule.boundary_on
    used = run(schedule, [0.3, 0.79, None, 0.81, 0.2, 0.9])
    # Epoch 3 reaches 0.81 >= 0.8: the boundary term is on from epoch 4, and stays on when Dice drops.
    assert used == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    assert schedule.alpha == 0.5 and schedule.boundary_on


def test_dice_threshold_then_ramp():
    schedule = HybridSchedule(mode="dice_threshold", alpha_start=1.0, alpha_end=0.2, ramp_epochs=4,
                              dice_threshold=0.5)
    used = run(schedule, [0.6, None, None, None, None, None])
    assert used == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])


def test_resume_from_state_dict_matches_an_uninterrupted_run(tmp_path):
    settings = {"mode": "dice_threshold", "alpha_start": 1.0, "alpha_end": 0.1, "ramp_epochs": 3,
                "dice_threshold": 0.7}
    dice = [0.2, 0.5, 0.75, 0.6, 0.8, 0.9, 0.9]
    uninterrupted = run(HybridSchedule(**settings), dice)
    first = HybridSchedule(**settings)
    part = run(first, dice[:3])
    saved = tmp_path / "schedule.json"
    saved.write_text(json.dumps(first.state_dict()))
    resumed = HybridSchedule(**settings)
    resumed.load_state_dict(json.loads(saved.read_text()))
    rest = []
    for epoch in range(3, len(dice)):
        rest.append(resumed.alpha)
        resumed.step_epoch(epoch, dice[epoch])
    assert part + rest == pytest.approx(uninterrupted)
    assert uninterrupted[3] < 1.0  # the switch happened before the interruption and survived it


def test_schedule_errors():
    with pytest.raises(SegCoreError, match="needs dice_threshold"):
        HybridSchedule(mode="dice_threshold")
    with pytest.raises(SegCoreError, match="unknown hybrid schedule mode"):
        HybridSchedule(mode="cosine")
    schedule = HybridSchedule()
    with pytest.raises(SegCoreError, match=r"step_epoch\(3\) after 0"):
        schedule.step_epoch(3)
    other = HybridSchedule(alpha_end=0.5).state_dict()
    with pytest.raises(SegCoreError, match="alpha_end: checkpoint 0.5, now 0.01"):
        schedule.load_state_dict(other)


def row(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_hybrid_value_is_the_weighted_sum_by_hand():
    # Reference [1, 1, 0, 0], 1 mm: foreground map [-1, 0, 1, 2] (Kervadec's). p = [1, 0, 0, 1].
    target = torch.tensor([1, 1, 0, 0]).view(1, 1, 4)
    p = row([1, 0, 0, 1])
    dice = 1 - 2 * 1 / (2 + 2 + 1e-6)
    boundary = (-1 + 2) / 4
    loss = HybridLoss(schedule={"alpha_start": 0.25, "alpha_end": 0.25, "ramp_epochs": 0},
                      spacing_xyz_mm=(1.0, 1.0), inputs="probabilities")
    assert float(loss(p, target)) == pytest.approx(0.25 * dice + 0.75 * boundary, abs=1e-6)
    assert float(loss.last_terms["region"]) == pytest.approx(dice, abs=1e-6)
    assert float(loss.last_terms["boundary"]) == pytest.approx(boundary)


def test_hybrid_skips_distance_maps_while_the_boundary_is_off():
    cache = DistanceMapCache()
    loss = HybridLoss(schedule={"mode": "dice_threshold", "alpha_end": 0.5, "ramp_epochs": 0,
                                "dice_threshold": 0.9}, cache=cache)
    logits, target = torch.randn(2, 1, 6, 6), torch.randint(0, 2, (2, 6, 6))
    dice_only = build_loss("dice")(logits, target)
    assert float(loss(logits, target)) == pytest.approx(float(dice_only))
    assert cache.computed == 0
    loss.step_epoch(0, val_dice=0.95)
    loss(logits, target)
    assert cache.computed == 2 and loss.alpha == 0.5


def test_hybrid_state_travels_in_a_checkpoint(tmp_path):
    settings = {"alpha_start": 1.0, "alpha_end": 0.0, "ramp_epochs": 10}
    loss = HybridLoss(region="focal", region_kwargs={"gamma": 2.0}, schedule=settings)
    for epoch in range(4):
        loss.step_epoch(epoch, None)
    path = tmp_path / "ckpt.pt"
    torch.save({"loss": loss.state_dict()}, path)
    resumed = HybridLoss(region="focal", region_kwargs={"gamma": 2.0}, schedule=settings)
    resumed.load_state_dict(torch.load(path, weights_only=True)["loss"])
    assert resumed.alpha == pytest.approx(0.6) == pytest.approx(loss.alpha)
    resumed.step_epoch(4)
    assert resumed.alpha == pytest.approx(0.5)


def test_hybrid_argument_errors():
    with pytest.raises(SegCoreError, match="not a region loss"):
        HybridLoss(region="boundary")
    with pytest.raises(SegCoreError, match="differs"):
        HybridLoss(region_kwargs={"inputs": "probabilities"})
    with pytest.raises(SegCoreError, match="unknown loss 'dcie'"):
        build_loss("dcie")
    with pytest.raises(SegCoreError, match="loss 'dice'.*its arguments are"):
        build_loss("dice", gamma=2.0)
