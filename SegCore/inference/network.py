"""What every inference strategy does with a network's output and input: logits -> class probabilities, and
zero-padding spatial sides up to the network's `divisor`.

    logits = net_fn(x)                                   # (B, K, *spatial) float32 logits
    probs = probabilities(logits)                        # (B, max(K, 2), *spatial), sums to 1 over axis 1
    padded, sizes = pad_to_multiple(x, divisor=16, dims=3)
    out = net_fn(padded)[..., :sizes[0], :sizes[1], :sizes[2]]   # the caller crops back
    index_zyx = class_indices(probs_kzyx)                # (Z, Y, X) uint8: argmax over the classes, ties to the lowest

A one-channel network predicts one sigmoid foreground map; its probabilities are [1 - p, p], so every strategy
handles K' = max(K, 2) classes the same way. `network_function` makes the net_fn of a model, for the Predictor
and for validation during training alike.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from SegCore.errors import SegCoreError


def network_function(model: torch.nn.Module, device, precision: str | None = None) -> Callable[[Tensor], Tensor]:
    """net_fn(x (B, C, *spatial) on `device`) -> float32 logits (B, K, *spatial) of `model` (in eval mode).

    Runs under torch.inference_mode, and under autocast with `precision` ("float16", "bfloat16") on CUDA (None or
    "float32": full precision). A deep-supervision list gives its first, full-resolution output; a network built
    with `final_activation` (softmax or sigmoid) gives probabilities, which are turned back into logits.
    """
    device = torch.device(device)
    autocast = (torch.autocast("cuda", dtype=getattr(torch, precision))
                if device.type == "cuda" and precision not in (None, "float32") else nullcontext())
    activation = getattr(model, "final_activation", None)

    def net_fn(x: Tensor) -> Tensor:
        with torch.inference_mode(), autocast:
            out = model(x)
        if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution output comes first
            out = out[0]
        if not isinstance(out, Tensor):
            raise SegCoreError(f"the network {type(model).__name__} returns a {type(out).__name__}, not logits",
                               fix="use a network whose output is a logits tensor (B, K, ...)")
        out = out.float()
        if activation == "softmax":
            return out.clamp_min(1e-8).log()
        if activation == "sigmoid":
            return torch.logit(out, eps=1e-6)
        return out

    return net_fn


def probabilities(logits: Tensor) -> Tensor:
    """(B, K, *spatial) logits of any float dtype -> (B, K', *spatial) float32 probabilities, K' = max(K, 2).

    K >= 2: softmax over axis 1. K == 1: sigmoid p of the one channel, returned as [1 - p, p].
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits)
        # 1 - sigmoid(z) = sigmoid(-z), which keeps its precision where p is close to 1
        return torch.cat([torch.sigmoid(-logits), foreground], dim=1)
    return torch.softmax(logits, dim=1)


def class_indices(probs: Tensor, slab: int = 16) -> Tensor:
    """(K, N, *rest) class scores -> (N, *rest) uint8 (int32 past 256 classes): the index of the largest class,
    the lowest one on ties, exactly as `probs.argmax(0)` (finite scores), on the scores' device.

    A running maximum over the classes, `slab` entries of axis 1 at a time: torch's argmax over axis 0 of a
    (K, Z, Y, X) volume is slow (seconds for a CT) and gives an int64 volume; two classes are one comparison.
    """
    k = probs.shape[0]
    index = torch.zeros(probs.shape[1:], dtype=torch.uint8 if k <= 256 else torch.int32, device=probs.device)
    if k == 2:
        torch.gt(probs[1], probs[0], out=index.view(torch.bool))  # bool and uint8 share one byte: no copy
        return index
    for start in range(0, probs.shape[1], slab):
        part, best = index[start:start + slab], probs[0, start:start + slab].clone()
        for c in range(1, k):
            scores = probs[c, start:start + slab]
            better = scores > best  # strictly: a tie keeps the lower class, as argmax
            part.masked_fill_(better, c)
            torch.where(better, scores, best, out=best)
    return index


def pad_to_multiple(x: Tensor, divisor: int, dims: int) -> tuple[Tensor, tuple[int, ...]]:
    """Zero-pad the last `dims` axes of `x` at their ends up to multiples of `divisor` (>= 1).

    Returns (padded, sizes): `sizes` are the original lengths of those axes, so `padded[..., :sizes[0], ...]` is
    `x` again. No copy when every side is already a multiple.
    """
    sizes = tuple(int(n) for n in x.shape[-dims:]) if dims else ()
    pads: list[int] = []
    for size in reversed(sizes):  # F.pad lists the last axis first
        pads += [0, (-size) % divisor]
    if not any(pads):
        return x, sizes
    return torch.nn.functional.pad(x, pads), sizes
