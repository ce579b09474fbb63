"""Validation during training: per-label Dice on fixed, unaugmented patches of the validation cases.

Until the Predictor (whole cases, sliding window) exists, the validation loader draws the same patches at every
validation (its own seed, epoch 0). Voxel counts (true/false positives, false negatives) are pooled over every
patch, summed across DDP ranks, and scored by `SegCore.metrics.overlap_metrics`, so a patch without a label
neither helps nor hurts. Metric names: `dice_<label name>` per label, `dice_mean` (their mean), `val_loss`.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import numpy as np
import torch

from SegCore.training import distributed as ddp

LOWER_IS_BETTER = ("val_loss",)


def metric_name(label_name: str) -> str:
    """'left atrium' -> 'dice_left_atrium' (a CSV column and a --set value without spaces)."""
    return "dice_" + re.sub(r"[^0-9A-Za-z]+", "_", label_name).strip("_").lower()


@torch.no_grad()
def validate(net, loader, loss_fn, label_names: dict[int, str], dist, device, amp: str | None) -> dict[str, float]:
    """Run `net` (eval mode) over every batch of `loader.epoch(0)`; returns {"val_loss", "dice_<label>"...,
    "dice_mean"} for the labels > 0 of `label_names`."""
    from SegCore.metrics import OverlapCounts, overlap_metrics

    labels = sorted(v for v in label_names if v > 0)
    counts = np.zeros((len(labels), 3), dtype=np.float64)  # tp, fp, fn per label
    loss_sum, batches, voxels = 0.0, 0, 0
    net.eval()
    autocast = torch.autocast("cuda", dtype=getattr(torch, amp)) if amp else nullcontext()
    for images, target in loader.epoch(0):
        images, target = images.to(device), target.to(device)
        with autocast:
            logits = net(images)
            loss_sum += float(loss_fn(logits, target))
        batches += 1
        prediction = logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()
        for row, value in enumerate(labels):
            p, r = prediction == value, target == value
            tp = int((p & r).sum())
            counts[row] += (tp, int(p.sum()) - tp, int(r.sum()) - tp)
        voxels += target.numel()
    totals = ddp.all_reduce_sum(np.concatenate([counts.ravel(), [loss_sum, batches, voxels]]), dist, device)
    counts, (loss_sum, batches, voxels) = totals[:-3].reshape(-1, 3), totals[-3:]
    metrics = {"val_loss": float(loss_sum / max(batches, 1))}
    dices = []
    for (tp, fp, fn), value in zip(counts, labels, strict=True):
        scored = overlap_metrics(OverlapCounts(int(tp), int(fp), int(fn), int(voxels - tp - fp - fn)), 1.0)
        metrics[metric_name(label_names[value])] = float(scored["dice"])
        dices.append(float(scored["dice"]))
    metrics["dice_mean"] = float(np.mean(dices)) if dices else float("nan")
    return metrics


def best_is_better(key: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether `value` of metric `key` beats `best` by more than `min_delta` (lower is better for losses)."""
    if value is None or not np.isfinite(value):
        return False
    if best is None:
        return True
    if key in LOWER_IS_BETTER:
        return value < best - min_delta
    return value > best + min_delta
