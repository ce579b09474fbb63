"""Every registered loss, 2D and 3D, binary and multi-class: finite values and gradients on empty references,
empty predictions, saturated and fp16 inputs; clear errors for shapes that do not fit."""

from __future__ import annotations

import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.losses import LOSSES, build_loss

# Arguments that make each loss exercise all its terms (the hybrid starts half region, half boundary).
ARGUMENTS = {"hybrid": {"schedule": {"alpha_start": 0.5, "alpha_end": 0.5, "ramp_epochs": 0}}}
NAMES = sorted(LOSSES)
SPATIAL = {"2d": (6, 7), "3d": (3, 5, 6)}


def make(name: str, **extra):
    return build_loss(name, **{**ARGUMENTS.get(name, {}), **extra})


def test_all_documented_losses_are_registered():
    assert set(NAMES) == {"dice", "log_dice", "neg_log_dice", "generalized_dice", "cross_entropy", "dice_ce",
                          "focal", "boundary", "hybrid"}


def check_finite(name, logits, target):
    logits = logits.detach().clone().requires_grad_(True)
    value = make(name)(logits, target)
    assert value.shape == () and value.dtype == torch.float32
    assert torch.isfinite(value), f"{name}: {value}"
    value.backward()
    assert torch.isfinite(logits.grad).all(), name
    return value.detach(), logits.grad


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", sorted(SPATIAL))
@pytest.mark.parametrize("channels", [1, 3])
def test_random_inputs_give_finite_values_and_nonzero_gradients(name, dims, channels, rng):
    spatial = SPATIAL[dims]
    logits = torch.from_numpy(rng.normal(size=(2, channels, *spatial)).astype("float32"))
    target = torch.from_numpy(rng.integers(0, max(channels, 2), size=(2, *spatial)))
    _, grad = check_finite(name, logits, target)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", sorted(SPATIAL))
@pytest.mark.parametrize("channels", [1, 3])
def test_empty_references_and_empty_predictions(name, dims, channels, rng):
    spatial = SPATIAL[dims]
    background_only = torch.zeros(2, *spatial, dtype=torch.long)
    random_logits = torch.from_numpy(rng.normal(size=(2, channels, *spatial)).astype("float32"))
    # Confident "all background" prediction: foreground logits -30 (sigmoid ~1e-13), background +30.
    empty_logits = torch.full((2, channels, *spatial), -30.0)
    if channels > 1:
        empty_logits[:, 0] = 30.0
    some_foreground = torch.from_numpy(rng.integers(0, max(channels, 2), size=(2, *spatial)))
    check_finite(name, random_logits, background_only)  # empty reference
    check_finite(name, empty_logits, some_foreground)  # empty prediction
    check_finite(name, empty_logits, background_only)  # both empty


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_fp16_saturated_and_tiny_inputs(name, channels, rng):
    spatial = SPATIAL["3d"]
    target = torch.from_numpy(rng.integers(0, max(channels, 2), size=(2, *spatial)))
    half = torch.from_numpy(rng.normal(scale=4.0, size=(2, channels, *spatial)).astype("float16"))
    value, _ = check_finite(name, half, target)
    assert float(value) == pytest.approx(float(make(name)(half.float(), target)), rel=1e-3, abs=1e-3)
    check_finite(name, torch.sign(half.float()) * 1e4, target)  # saturated logits
    # Probabilities with exact zeros and ones and fp16-size tiny values (6e-8, fp16's smallest subnormal).
    probs = torch.rand(2, channels, *spatial)
    probs = torch.where(probs < 0.3, torch.zeros_like(probs), probs)
    probs = torch.where(probs > 0.9, torch.ones_like(probs), probs)
    probs = torch.where((probs > 0.5) & (probs < 0.6), torch.full_like(probs, 6e-8), probs)
    if channels > 1:
        probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
    probs = probs.requires_grad_(True)
    value = make(name, inputs="probabilities")(probs, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(probs.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatches_name_the_shapes(name):
    loss = make(name)
    with pytest.raises(SegCoreError, match=r"target shape \(2, 5, 6\) does not fit prediction shape \(2, 3, 4, 6\)"):
        loss(torch.zeros(2, 3, 4, 6), torch.zeros(2, 5, 6, dtype=torch.long))
    with pytest.raises(SegCoreError, match=r"\(N, C, Y, X\) or \(N, C, Z, Y, X\), got shape \(4, 6\)"):
        loss(torch.zeros(4, 6), torch.zeros(4, 6, dtype=torch.long))
    with pytest.raises(SegCoreError, match=r"target shape \(2, 2, 4, 6\)"):
        loss(torch.zeros(2, 3, 4, 6), torch.zeros(2, 2, 4, 6))  # one-hot with the wrong class count
    with pytest.raises(SegCoreError, match=r"labels range 0..3 but the prediction has 3 classes"):
        loss(torch.zeros(2, 3, 4, 6), torch.arange(4).repeat(2, 4, 6)[:, :4, :6])
    with pytest.raises(SegCoreError, match=r"binary target must lie in \[0, 1\]"):
        loss(torch.zeros(2, 1, 4, 6), torch.full((2, 4, 6), 2))
    with pytest.raises(SegCoreError, match="inputs='probabilities'"):
        make(name, inputs="probabilities")(torch.full((2, 3, 4, 6), 2.0), torch.zeros(2, 4, 6, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cuda_under_autocast_matches_cpu(name, rng):
    logits = torch.from_numpy(rng.normal(size=(2, 3, *SPATIAL["3d"])).astype("float32"))
    target = torch.from_numpy(rng.integers(0, 3, size=(2, *SPATIAL["3d"])))
    on_cpu = make(name)(logits, target)
    gpu_logits = logits.cuda().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.float16):
        on_gpu = make(name)(gpu_logits.half(), target.cuda())
    on_gpu.backward()
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    assert torch.isfinite(gpu_logits.grad).all()
    assert float(on_gpu) == pytest.approx(float(on_cpu), rel=2e-3, abs=2e-3)
