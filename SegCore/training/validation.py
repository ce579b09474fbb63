"""Validation during training: per-label Dice and the loss on whole validation cases, predicted as inference does.

    metrics = validate(trainer.net, trainer.val_cached, trainer.loss_fn, {0: "background", 1: "left atrium"},
                       trainer.dist, trainer.device, trainer.amp, plan)
    metrics  # {"val_loss": 0.41, "dice_left_atrium": 0.83, "dice_mean": 0.83}

Each validation case is the preprocessed, cached case (no augmentation) predicted whole by the inference engine's
own strategy for the training sampler: a 3D network slides a window of the training patch over the case
(`SegCore.inference.windows.SlidingWindow`, Gaussian blending, `training.validation.overlap`; sampler `whole`:
one window of the whole case), a 2D network goes slice by slice along the training axis, a 2.5D one with its k
slices in (`SegCore.inference.slices.predict_slices`), an RSTN runs the coarse-to-fine test on its training
plane (`SegCore.training.rstn.case_predictor`). The prediction is the argmax of the class probabilities
(class index i is label value i, as in training). Voxel counts (true/false positives, false negatives) are pooled
over every case, summed across DDP ranks, and scored by `SegCore.metrics.overlap_metrics`. Metric names:
`dice_<label name>` per label, `dice_mean` (their mean), `val_loss`.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from SegCore.errors import SegCoreError
from SegCore.training import distributed as ddp

LOWER_IS_BETTER = ("val_loss",)
LOG_FLOOR = 1e-12  # probabilities below this are rounding: keeps log p finite for the loss


def metric_name(label_name: str) -> str:
    """'left atrium' -> 'dice_left_atrium' (a CSV column and a --set value without spaces)."""
    return "dice_" + re.sub(r"[^0-9A-Za-z]+", "_", label_name).strip("_").lower()


@torch.no_grad()
def validate(net, cases: list, loss_fn, label_names: dict[int, str], dist, device, amp: str | None,
             plan: dict) -> dict[str, float]:
    """Validation metrics of `net` (eval mode) on whole cached cases; every rank must call it, even with no case.

    net: the training network (DistributedDataParallel and torch.compile wrappers are taken off: a DDP forward
        broadcasts buffers, and ranks with different numbers of forwards would wait on each other for ever).
    cases: `CachedCase`s (.image (C, Z, Y, X) float32, .label (Z, Y, X) integers); the first
        `plan["training"]["validation"]["max_cases"]` (None: all), rank r takes every world_size-th from r.
    loss_fn: the training loss; label_names: label value -> name (0 is the background, not scored).
    amp: the autocast dtype name ("bfloat16", "float16") on CUDA, None for float32.
    Returns {"val_loss", "dice_<label>"..., "dice_mean"}, the same on every rank. val_loss is the training loss
    of each whole case (its log-probabilities as logits, since softmax(log p) = p; 2D networks: the case's slices
    as one batch), averaged over cases: a whole-case loss, not comparable with the per-patch training loss.
    """
    from SegCore.metrics import OverlapCounts, overlap_metrics

    spec = plan["training"]["validation"]
    max_cases, overlap = spec.get("max_cases"), spec["overlap"]
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise SegCoreError(f"training.validation.overlap must be a number in [0, 1), got {overlap!r}",
                           fix="--set training.validation.overlap=0.5")
    mine = list(cases)[:int(max_cases) if max_cases else None][dist.rank::dist.world_size]
    model = ddp.unwrap(net)
    model.eval()
    predict = _case_predictor(model, plan, device, amp, overlap=float(overlap))
    axis = _slicing_axis(plan)
    labels = sorted(v for v in label_names if v > 0)
    counts = np.zeros((len(labels), 3), dtype=np.float64)  # tp, fp, fn per label
    loss_sum, voxels = 0.0, 0
    for case in mine:
        try:
            probs, channels = predict(torch.from_numpy(np.array(case.image, dtype=np.float32)))
        except torch.cuda.OutOfMemoryError:  # the sliding window falls back on its own; slices cannot
            raise SegCoreError(f"out of GPU memory validating case {case.case_id} (shape "
                               f"{list(case.image.shape[1:])}, {int(plan['training']['batch_size'])} windows or "
                               "slices at a time)", fix="lower the batch (--batch) or use mixed precision "
                               "(training.amp=auto)") from None
        label = torch.from_numpy(np.asarray(case.label).astype(np.int64))
        prediction = probs.argmax(0)  # (Z, Y, X) int64: class index = label value
        for row, value in enumerate(labels):
            p, r = prediction == value, label == value
            tp = int((p & r).sum())
            counts[row] += (tp, int(p.sum()) - tp, int(r.sum()) - tp)
        voxels += label.numel()
        del prediction
        loss_sum += _case_loss(loss_fn, probs, label, channels, axis)
    totals = ddp.all_reduce_sum(np.concatenate([counts.ravel(), [loss_sum, len(mine), voxels]]), dist, device)
    counts, (loss_sum, case_count, voxels) = totals[:-3].reshape(-1, 3), totals[-3:]
    metrics = {"val_loss": float(loss_sum / case_count) if case_count else float("nan")}
    dices = []
    for (tp, fp, fn), value in zip(counts, labels, strict=True):
        scored = overlap_metrics(OverlapCounts(int(tp), int(fp), int(fn), int(voxels - tp - fp - fn)), 1.0)
        metrics[metric_name(label_names[value])] = float(scored["dice"])
        dices.append(float(scored["dice"]))
    metrics["dice_mean"] = float(np.mean(dices)) if dices else float("nan")
    return metrics


def _slicing_axis(plan: dict) -> int | None:
    from SegCore.training.samplers import Sampler

    return Sampler(plan["sampler"]).axis


def _case_predictor(model, plan: dict, device, amp: str | None, *, overlap: float):
    """A function image (C, Z, Y, X) float32 CPU -> (probabilities (K', Z, Y, X) float32 CPU, network channels K),
    with the inference strategy that matches the training sampler."""
    # Imported here: training sits above inference in DESIGN's stage order, and only validation needs it.
    from SegCore.inference.slices import predict_slices
    from SegCore.inference.windows import SlidingWindow
    from SegCore.training.samplers import Sampler

    if plan["model"]["name"] == "rstn":  # coarse to fine on the training plane, as inference tests it
        from SegCore.training.rstn import case_predictor

        return case_predictor(model, plan, device, amp)
    sampler = Sampler(plan["sampler"])
    net_fn, seen = _net_fn(model, device, amp)
    divisor = int(getattr(model, "divisor", 1))
    batch = int(plan["training"]["batch_size"])
    if sampler.axis is not None:  # slice2d, stack25d
        k = int(sampler.spec["k"]) if sampler.kind == "stack25d" else 1

        def predict(image_czyx):
            probs = predict_slices(net_fn, image_czyx, axis=sampler.axis, k=k, batch=batch, divisor=divisor,
                                   device=device)
            return probs, seen["channels"]

        return predict
    patch = sampler.spec.get("patch_zyx") or sampler.spec.get("size_zyx")  # patch3d, crop; whole: none
    # One SlidingWindow for every case: it keeps what an out-of-memory fallback learnt (stitching, batch).
    window = SlidingWindow(list(patch), overlap=overlap, batch=batch) if patch else None

    def predict(image_czyx):
        # whole: one window of the case itself (SlidingWindow rounds it up to the divisor and crops back)
        chosen = window or SlidingWindow(list(image_czyx.shape[1:]), overlap=overlap, batch=batch)
        return chosen(net_fn, image_czyx, device=device, divisor=divisor), seen["channels"]

    return predict


def _net_fn(model, device, amp: str | None):
    """(net_fn, seen): inference's net_fn of `model` (autocast on CUDA when `amp`); seen["channels"] records the
    number of output channels K (1: a sigmoid network)."""
    from SegCore.inference.network import network_function  # training sits above inference: imported here

    forward = network_function(model, device, amp)
    seen = {"channels": None}

    def net_fn(x: torch.Tensor) -> torch.Tensor:
        out = forward(x)
        seen["channels"] = int(out.shape[1])
        return out

    return net_fn, seen


def _case_loss(loss_fn, probs: torch.Tensor, label: torch.Tensor, channels: int, axis: int | None) -> float:
    """The training loss of one whole case, on the CPU (where the probabilities are; host memory is the larger).

    probs: (K', Z, Y, X) float32, changed in place (it becomes log p); label: (Z, Y, X) int64; channels: the
    network's K (1: the loss gets the one foreground logit log p - log(1 - p)); axis: the slicing axis of a 2D
    network (its slices become the batch, the shape it trained on) or None (a batch of one volume)."""
    inputs = getattr(loss_fn, "inputs", "logits")
    if inputs == "probabilities":
        prediction = probs[1:2] if channels == 1 else probs
    else:
        log_p = probs.clamp_min_(LOG_FLOOR).log_()
        prediction = (log_p[1:2] - log_p[0:1]) if channels == 1 else log_p
    if axis is None:
        batch, target = prediction[None], label[None]
    else:
        batch, target = prediction.movedim(axis + 1, 0), label.movedim(axis, 0)
    return float(loss_fn(batch, target))


def best_is_better(key: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether `value` of metric `key` beats `best` by more than `min_delta` (lower is better for losses)."""
    if value is None or not np.isfinite(value):
        return False
    if best is None:
        return True
    if key in LOWER_IS_BETTER:
        return value < best - min_delta
    return value > best + min_delta
