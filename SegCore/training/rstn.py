"""Training the RSTN (the pancreas study) through the Trainer: its forward with the label, and the study's loss.

    loss = forward_loss(net, images, labels, lambda logits, target: loss_fn(logits, target))   # in the Trainer
    predict = case_predictor(model, plan, device, amp)       # validation: coarse to fine on the training plane
    probabilities, channels = predict(image_czyx)            # (2, Z, Y, X) float32, 1 (one sigmoid map)

An RSTN step needs the label (its modes S and I crop the fine stage to the label's box, J falls back on it) and
gives two maps per slice, coarse and fine, each scored by the plan's loss. The study (OrganSegRSTN_PyTorch
training.py) weights them COARSE_WEIGHT = 1/3 and 2/3, with DSC_loss: per sample, over the stack's maps together,
1 - (2 sum(p g) + 1e-6) / (sum(p) + sum(g) + 1e-6) on sigmoid probabilities. That is the plan loss "dice" with
smooth 1e-6, eps 0, batch_dice false, include_background false, given the maps as one (N, 1, k, H, W) logit
volume: the pancreas preset sets exactly this. The mode (S, I or J) is the network's own `training_mode`
(model.arguments.training_mode, set per stage), so it is in plan.json and in every checkpoint.

Labels: (N, k, H, W), one map per slice of the stack, as the study trains (Data.py gives each slice's label):
the stack25d sampler with `labels: "stack"`, which the plan derives for the RSTN (sampler.labels "auto").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from SegCore.errors import SegCoreError

COARSE_WEIGHT = 1.0 / 3.0  # the study's training.py: loss = 1/3 coarse + 2/3 fine


def is_rstn(model) -> bool:
    """Whether `model` (the bare network, not a DDP wrapper) is an RSTN, trained by this module."""
    from SegCore.models.rstn import RSTN

    return isinstance(model, RSTN)


def label_stack(labels: Tensor, slices: int) -> Tensor:
    """The (N, slices, H, W) labels as they are: one label map per slice of each stack; anything else (a centre
    slice's (N, H, W)) is refused, as each of the RSTN's maps is scored against its own slice."""
    if labels.dim() == 4 and labels.shape[1] == slices:
        return labels
    raise SegCoreError(f"RSTN training takes labels (N, {slices}, H, W), one per slice, got {tuple(labels.shape)}",
                       fix=f"train with the stack25d sampler, k = {slices} and labels stack (sampler.kind, "
                           "sampler.k, sampler.labels)")


def forward_loss(net, images: Tensor, labels: Tensor, loss: Callable[[Tensor, Tensor], Tensor], *,
                 mixup=None) -> Tensor:
    """COARSE_WEIGHT x loss(coarse) + (1 - COARSE_WEIGHT) x loss(fine) of one RSTN training step.

    net: the RSTN (or its DDP wrapper), in its training mode. images: (N, k, H, W) float32; labels: integer
    (N, k, H, W), each slice's, organ = 1. loss(logits (N, 1, k, H, W), target (N, k, H, W) int64) -> scalar: the
    plan's loss. Returns the scalar to back-propagate.
    """
    if mixup is not None:
        raise SegCoreError("mixup does not apply to the RSTN: its fine stage crops to the label's own box",
                           fix="set mixup.mode to off")
    target = label_stack(labels, images.shape[1]).long()
    out = net(images, target.to(images.dtype))  # the mode: the network's training_mode (the stage's)
    coarse = loss(out["coarse_logits"][:, None], target)
    fine = loss(out["fine_logits"][:, None], target)
    return COARSE_WEIGHT * coarse + (1.0 - COARSE_WEIGHT) * fine


def case_predictor(model, plan: dict, device, amp: str | None):
    """Validation's predict(image (C, Z, Y, X) float32 CPU) -> (probabilities (2, Z, Y, X) float32 CPU, 1): the
    coarse-to-fine test of the plan's inference settings on the training plane (sampler.axis) alone."""
    from SegCore.inference.coarse_to_fine import coarse_to_fine  # training sits above inference: imported here

    view = plan["sampler"]["axis"]
    c2f = plan["inference"]["coarse_to_fine"]
    batch = int(plan["training"]["batch_size"])

    def predict(image_czyx: Tensor) -> tuple[Tensor, int]:
        with torch.no_grad():
            result = coarse_to_fine({view: model}, image_czyx, max_rounds=int(c2f["max_rounds"]),
                                    convergence_dice=float(c2f["convergence_dice"]), thresholds=(),
                                    largest_component=bool(c2f["largest_component"]), batch=batch,
                                    precision=amp or "float32", device=device, extras=False)
        return result["probabilities"].clone(), 1  # a normal tensor (validation changes it in place)

    return predict
