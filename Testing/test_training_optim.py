"""Optimizers, parameter groups and learning-rate schedules (SegCore/training/optim.py).

Oracles: the arguments as given (read back from torch's param_groups), the pancreas study's group rule written out
by hand from its training.py, closed-form lr sequences, and torch's own schedulers where one computes the same rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from SegCore.errors import SegCoreError
from SegCore.models import MODELS, build_model
from SegCore.training.optim import build_optimizer, build_scheduler


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))


@pytest.mark.parametrize(("spec", "kind", "expected"), [
    ({"name": "sgd", "lr": 0.02, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-4}, torch.optim.SGD,
     {"lr": 0.02, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-4}),
    ({"name": "adam", "lr": 1e-4, "betas": [0.8, 0.95], "eps": 1e-6, "amsgrad": True, "weight_decay": 1e-5},
     torch.optim.Adam, {"lr": 1e-4, "betas": (0.8, 0.95), "eps": 1e-6, "amsgrad": True, "weight_decay": 1e-5}),
    ({"name": "adamw", "lr": 3e-4, "weight_decay": 0.05, "amsgrad": False, "eps": 1e-7}, torch.optim.AdamW,
     {"lr": 3e-4, "weight_decay": 0.05, "amsgrad": False, "eps": 1e-7}),
    ({"name": "nadam", "lr": 2e-3, "betas": [0.9, 0.99], "eps": 1e-9}, torch.optim.NAdam,
     {"lr": 2e-3, "betas": (0.9, 0.99), "eps": 1e-9}),
])
def test_each_optimizer_gets_its_arguments(spec, kind, expected):
    model = tiny_net()
    optimizer = build_optimizer(model, spec)
    assert type(optimizer) is kind
    for group in optimizer.param_groups:
        for key, value in expected.items():
            assert group[key] == value, key
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert sorted(map(id, held)) == sorted(id(p) for p in model.parameters())


def test_frozen_parameters_are_left_out():
    model = tiny_net()
    for p in model[0].parameters():
        p.requires_grad_(False)
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.1})
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert not held & {id(p) for p in model[0].parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(SegCoreError, match="no trainable parameter"):
        build_optimizer(model, {"name": "sgd", "lr": 0.1})


def expected_pancreas_rate(name: str, lr: float) -> tuple[float, float]:
    """(lr, weight decay) by the study's get_parameters: coarse_model at lr, saliency1/2 and fine_model at 10 lr;
    biases at twice their part's rate without weight decay (training.py of OrganSegRSTN_PyTorch)."""
    fine = name.split(".")[0] in ("saliency1", "saliency2", "fine_model")
    bias = name.endswith(".bias")
    return lr * (10 if fine else 1) * (2 if bias else 1), 0.0 if bias else 5e-4


def test_rstn_groups_reproduce_the_pancreas_study():
    model = build_model("rstn", **MODELS["rstn"].small)
    spec = {"name": "sgd", "lr": 1e-5, "momentum": 0.99, "weight_decay": 5e-4,
            "groups": [{"match": r"^(saliency1|saliency2|fine_model)\.", "lr_scale": 10}],
            "bias_lr_scale": 2, "bias_weight_decay": 0}
    optimizer = build_optimizer(model, spec)
    seen = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            seen[id(p)] = (group["lr"], group["weight_decay"])
    names = dict(model.named_parameters())
    assert len(seen) == len(names)
    rates = set()
    for name, p in names.items():
        lr, decay = expected_pancreas_rate(name, 1e-5)
        assert seen[id(p)][0] == pytest.approx(lr, rel=1e-12), name
        assert seen[id(p)][1] == decay, name
        rates.add(round(lr / 1e-5))
    assert rates == {1, 2, 10, 20}
    # The fixed bilinear upsampling of FCN-8s is a buffer: not in any group (the study never trains it).
    assert not any("upscore" in n for g in optimizer.param_groups for n in g["names"])


def test_group_order_and_bias_scale_without_groups():
    model = tiny_net()
    optimizer = build_optimizer(model, {"name": "adam", "lr": 1e-3, "bias_lr_scale": 20})
    by_name = {n: g["lr"] for g in optimizer.param_groups for n in g["names"]}
    for name in by_name:
        assert by_name[name] == pytest.approx(2e-2 if name.endswith("bias") else 1e-3)
    assert [g["bias"] for g in optimizer.param_groups] == [False, True]


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "lion"}, "unknown optimizer"),
    ({"lrr": 0.1}, "unknown optim key lrr"),
    ({"lr": 0}, "optim.lr must be"),
    ({"lr": float("nan")}, "optim.lr must be"),
    ({"name": "sgd", "momentum": 1.0}, "optim.momentum"),
    ({"name": "sgd", "nesterov": True, "momentum": 0}, "nesterov needs momentum"),
    ({"name": "nadam", "amsgrad": True}, "amsgrad applies"),
    ({"betas": [0.9]}, "optim.betas"),
    ({"groups": [{"match": "^nothing_here", "lr_scale": 2}]}, "matches no parameter"),
    ({"groups": [{"match": "([", "lr_scale": 2}]}, "not a regular expression"),
    ({"groups": [{"match": "0", "scale": 2}]}, "unknown optim.groups"),
])
def test_bad_optimizer_specs_are_named(spec, message):
    with pytest.raises(SegCoreError, match=message):
        build_optimizer(tiny_net(), spec)


def lr_sequence(spec: dict, *, epochs: int, steps_per_epoch: int, metrics=None, groups=None) -> list[list[float]]:
    """The lr of every optimizer step, read before each step, stepping the schedule as the trainer does."""
    model = tiny_net()
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.1, **(groups or {})})
    schedule = build_scheduler(optimizer, spec, epochs=epochs, steps_per_epoch=steps_per_epoch)
    seen = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            seen.append(schedule.lr)
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch(None if metrics is None else metrics[epoch])
    return seen


def test_poly_matches_the_formula_and_torch():
    seen = [lrs[0] for lrs in lr_sequence({"name": "poly", "power": 0.9}, epochs=3, steps_per_epoch=4)]
    total = 12
    assert seen == pytest.approx([0.1 * (1 - t / total) ** 0.9 for t in range(total)], rel=1e-12)
    optimizer = torch.optim.SGD(tiny_net().parameters(), lr=0.1)
    oracle = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=0.9)
    reference = []
    for _ in range(total):
        reference.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        oracle.step()
    assert seen == pytest.approx(reference, rel=1e-9)


def test_cosine_with_linear_warmup():
    seen = [lrs[0] for lrs in lr_sequence({"name": "cosine", "warmup_epochs": 1, "min_lr": 0.01},
                                          epochs=4, steps_per_epoch=5)]
    warm, total = 5, 20
    expected = [0.1 * (s + 1) / warm for s in range(warm)]
    expected += [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))) for s in range(warm, total)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[:warm] == sorted(seen[:warm]) and seen[warm - 1] == pytest.approx(0.1)


def test_constant_with_warmup_and_step_match_torch():
    seen = [lrs[0] for lrs in lr_sequence({"name": "constant", "warmup_epochs": 0.5}, epochs=2, steps_per_epoch=4)]
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    seen = [lrs[0] for lrs in lr_sequence({"name": "step", "step_epochs": 2, "gamma": 0.5}, epochs=5,
                                          steps_per_epoch=1)]
    optimizer = torch.optim.SGD(tiny_net().parameters(), lr=0.1)
    oracle = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    reference = []
    for _ in range(5):
        reference.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        oracle.step()
    assert seen == pytest.approx(reference, rel=1e-12) == [0.1, 0.1, 0.05, 0.05, 0.025]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_reduces_after_patience_like_torch(mode):
    metrics = [0.5, 0.6, 0.6, 0.55, 0.61, 0.61, 0.61, 0.6, 0.7, 0.7, 0.7, 0.7]
    if mode == "min":
        metrics = [-m for m in metrics]
        metrics[5] = float("nan")  # never better: a bad epoch
    seen = [lrs[0] for lrs in lr_sequence({"name": "plateau", "patience": 1, "factor": 0.5, "mode": mode},
                                          epochs=len(metrics), steps_per_epoch=1, metrics=metrics)]
    optimizer = torch.optim.SGD(tiny_net().parameters(), lr=0.1)
    oracle = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=1, threshold=0)
    reference = []
    for metric in metrics:
        reference.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        oracle.step(metric)
    assert seen == pytest.approx(reference, rel=1e-12)
    assert min(seen) < 0.1  # the sequence does reduce


def test_groups_keep_their_ratio_and_floor():
    groups = {"groups": [{"match": r"^3\.", "lr_scale": 10}]}
    seen = lr_sequence({"name": "poly", "power": 2.0, "min_lr": 0.001}, epochs=2, steps_per_epoch=3, groups=groups)
    for lrs in seen:
        assert lrs[2] / lrs[0] == pytest.approx(10)  # groups: default weights, default biases, "3." weights...
        assert lrs[0] >= 0.001 and lrs[2] >= 0.01


def run_steps(model, optimizer, schedule, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(2, 2, 8, 8, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step_batch()


@pytest.mark.parametrize("name", ["poly", "cosine", "plateau"])
def test_state_dict_round_trip_continues_identically(tmp_path, name):
    spec = {"name": name, "warmup_epochs": 1, "patience": 0, "factor": 0.5, "mode": "min"}
    optim = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "bias_lr_scale": 2}

    def fresh():
        model = tiny_net()
        optimizer = build_optimizer(model, optim)
        return model, optimizer, build_scheduler(optimizer, spec, epochs=4, steps_per_epoch=3)

    model, optimizer, schedule = fresh()  # uninterrupted
    for epoch in range(4):
        run_steps(model, optimizer, schedule, 3, seed=epoch)
        schedule.step_epoch(1.0)
    model2, optimizer2, schedule2 = fresh()  # interrupted after 2 epochs, saved, loaded, continued
    for epoch in range(2):
        run_steps(model2, optimizer2, schedule2, 3, seed=epoch)
        schedule2.step_epoch(1.0)
    path = tmp_path / "state.pt"
    torch.save({"model": model2.state_dict(), "optimizer": optimizer2.state_dict(),
                "schedule": schedule2.state_dict()}, path)
    state = torch.load(path, weights_only=True)
    model3, optimizer3, schedule3 = fresh()
    model3.load_state_dict(state["model"])
    optimizer3.load_state_dict(state["optimizer"])
    schedule3.load_state_dict(state["schedule"])
    assert schedule3.lr == schedule2.lr
    for epoch in range(2, 4):
        run_steps(model3, optimizer3, schedule3, 3, seed=epoch)
        schedule3.step_epoch(1.0)
    assert schedule3.lr == schedule.lr
    for a, b in zip(model.state_dict().values(), model3.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(SegCoreError, match="does not match"):
        build_scheduler(optimizer3, {"name": "constant"}, epochs=4, steps_per_epoch=3).load_state_dict(
            state["schedule"])


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "exp"}, "unknown schedule"),
    ({"name": "plateau", "mode": "up"}, "schedule.mode"),
    ({"patience": -1}, "schedule.patience"),
    ({"factor": 1.0}, "schedule.factor"),
    ({"warmup_epochs": 9}, "covers the whole run"),
    ({"min_lr": 0.5}, "min_lr"),
    ({"decay": 1}, "unknown schedule key"),
])
def test_bad_schedule_specs_are_named(spec, message):
    optimizer = build_optimizer(tiny_net(), {"name": "sgd", "lr": 0.1})
    with pytest.raises(SegCoreError, match=message):
        build_scheduler(optimizer, spec, epochs=3, steps_per_epoch=2)
