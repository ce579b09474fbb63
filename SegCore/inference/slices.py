"""2D networks on volumes: slice by slice along one axis, 2.5D stacks of k slices, and the fusion of three views.

    probs_kzyx = predict_slices(net_fn, image_czyx, axis=AXES["coronal"], k=3, batch=8, divisor=16, device="cuda")
    probs_kzyx = predict_views(net_fn, image_czyx, views=["axial", "coronal", "sagittal"], fusion="vote",
                               batch=8, divisor=16, device="cuda", progress=lambda done, total: ...)

Slices along axis 0 (axial, z), 1 (coronal, y) or 2 (sagittal, x) of a (Z, Y, X) volume, as the training
samplers cut them. A 2.5D network takes k adjacent slices centred on the one it labels, channel c * k + j holding
channel c of slice i - k // 2 + j (zeros past the ends), the stack25d sampler's layout. In-plane sides are
zero-padded up to the network's `divisor` and cropped back. Results are (K', Z, Y, X) float32 probabilities on the
CPU (`SegCore.inference.network.probabilities`). `progress(done, total)`, when given, is called after each batch
with the slices done so far over all views and their total (the Segment panel's progress bar).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from SegCore.errors import SegCoreError
from SegCore.inference.network import probabilities
from SegCore.training.samplers import AXES  # {"axial": 0, "coronal": 1, "sagittal": 2}, the samplers' own

FUSIONS = ("mean", "vote")
# vote: each view adds its one-hot label plus TIE_WEIGHT * its probabilities; below 1 / (number of views) it
# can only order classes with equal votes, and small enough that the result stays close to the vote shares
TIE_WEIGHT = 1e-3

__all__ = ["AXES", "FUSIONS", "predict_slices", "predict_views"]


def _volume(image_czyx: Tensor) -> Tensor:
    image = torch.as_tensor(image_czyx, dtype=torch.float32)
    if image.ndim != 4:
        raise SegCoreError(f"slice inference takes a (C, Z, Y, X) volume, got shape {tuple(image.shape)}",
                           fix="pass the preprocessed image with its channel axis first")
    return image


@torch.no_grad()
def predict_slices(net_fn: Callable[[Tensor], Tensor], image_czyx: Tensor, *, axis: int, k: int = 1, batch: int = 8,
                   divisor: int = 1, device: str | torch.device,
                   progress: Callable[[int, int], None] | None = None) -> Tensor:
    """(K', Z, Y, X) float32 CPU probabilities of a 2D (k == 1) or 2.5D (odd k > 1) network, slice by slice.

    image_czyx: float32 (C, Z, Y, X). axis: 0, 1 or 2 (`AXES`). net_fn: (B, C * k, H, W) float32 on `device`, H
    and W multiples of `divisor` -> (B, K, H, W) logits. `batch` slices per forward pass.
    progress(slices done, slices along the axis) after each batch.
    """
    if axis not in (0, 1, 2):
        raise SegCoreError(f"slicing axis must be 0 (axial), 1 (coronal) or 2 (sagittal), got {axis!r}",
                           fix="use AXES[view]")
    if not (type(k) is int and k >= 1 and k % 2 == 1):
        raise SegCoreError(f"a 2.5D stack needs an odd number of slices k >= 1, got {k!r}", fix="e.g. k 3")
    device = torch.device(device)
    image = _volume(image_czyx)
    image_shape_zyx = tuple(image.shape[1:])
    slices = image.movedim(axis + 1, 1)  # (C, S, H, W) view: S slices along the axis
    channels, count, height, width = slices.shape
    padded_hw = tuple(-(-n // divisor) * divisor for n in (height, width))
    half = k // 2
    out = out_sliced = None
    for first in range(0, count, batch):
        last = min(first + batch, count)  # centres first .. last - 1
        stack = torch.zeros((last - first, channels, k, *padded_hw), dtype=torch.float32,
                            pin_memory=device.type == "cuda")
        for j in range(k):  # neighbour j of centre i is slice i - half + j; missing ones stay zero
            lo, hi = max(first - half + j, 0), min(last - half + j, count)
            if lo < hi:
                offset = lo - (first - half + j)
                stack[offset:offset + hi - lo, :, j, :height, :width] = slices[:, lo:hi].transpose(0, 1)
        x = stack.view(last - first, channels * k, *padded_hw)  # channel c * k + j
        logits = net_fn(x.to(device, non_blocking=True))
        if not (isinstance(logits, Tensor) and logits.ndim == 4 and logits.shape[0] == x.shape[0]
                and tuple(logits.shape[2:]) == padded_hw):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise SegCoreError(f"the network returned {got} for slices {tuple(x.shape)}; slice inference needs "
                               "logits (B, K, H, W)", fix="use a 2D segmentation network")
        probs = probabilities(logits)[:, :, :height, :width]
        if out is None:
            out = torch.empty((probs.shape[1], *image_shape_zyx), dtype=torch.float32)
            out_sliced = out.movedim(axis + 1, 1)  # (K', S, H, W) view, written in place
        out_sliced[:, first:last] = probs.transpose(0, 1)
        if progress is not None:
            progress(last, count)
    return out


@torch.no_grad()
def predict_views(net_fn: Callable[[Tensor], Tensor], image_czyx: Tensor, *, views: Sequence[str],
                  fusion: str = "mean", k: int = 1, batch: int = 8, divisor: int = 1,
                  device: str | torch.device, progress: Callable[[int, int], None] | None = None) -> Tensor:
    """(K', Z, Y, X) float32 CPU: `predict_slices` along each view of `views` ("axial", "coronal", "sagittal"),
    fused.

    fusion "mean": the average of the views' probabilities. "vote": per class the share of views whose argmax is
    that class, ties broken by the mean probability: (votes + TIE_WEIGHT * sum of probabilities) / (V (1 +
    TIE_WEIGHT)) for V views, which sums to 1 over classes and whose argmax is the majority label. Memory: one
    accumulator plus one view. progress(slices done, slices of all views) after each batch, ending at the total.
    """
    if not views or any(v not in AXES for v in views) or len(set(views)) != len(views):
        raise SegCoreError(f"views must be distinct names from {', '.join(AXES)}, got {list(views)}",
                           fix='e.g. views ["axial", "coronal", "sagittal"]')
    if fusion not in FUSIONS:
        raise SegCoreError(f"view fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}", fix="use mean")
    image = _volume(image_czyx)
    slices_all_views = sum(image.shape[AXES[view] + 1] for view in views)
    done_before = 0  # slices of the views already run
    total = None
    for view in views:
        view_progress = None
        if progress is not None:
            def view_progress(done: int, _count: int, before: int = done_before) -> None:
                progress(before + done, slices_all_views)
        probs = predict_slices(net_fn, image, axis=AXES[view], k=k, batch=batch, divisor=divisor, device=device,
                               progress=view_progress)
        done_before += image.shape[AXES[view] + 1]
        if fusion == "vote":
            _vote_in_place(probs)
        if total is None:
            total = probs
        else:
            if total.shape != probs.shape:
                raise SegCoreError(f"the {view} view gives {probs.shape[0]} classes, the {views[0]} view "
                                   f"{total.shape[0]}", fix="use one network for every view")
            total += probs
        del probs  # before the next view is computed: one view at a time
    return total.div_(len(views) * (1 + TIE_WEIGHT) if fusion == "vote" else len(views))


def _vote_in_place(probs_kzyx: Tensor, slab: int = 16) -> None:
    """probs := one-hot(argmax) + TIE_WEIGHT * probs, a few z slices at a time (the argmax index is int64)."""
    for z in range(0, probs_kzyx.shape[1], slab):
        part = probs_kzyx[:, z:z + slab]
        label = part.argmax(0, keepdim=True)
        part.mul_(TIE_WEIGHT).scatter_add_(0, label, torch.ones(label.shape, dtype=part.dtype))
