"""What every inference strategy does with a network's output and input: logits -> class probabilities, and
zero-padding spatial sides up to the network's `divisor`.

    logits = net_fn(x)                                   # (B, K, *spatial) float32 logits
    probs = probabilities(logits)                        # (B, max(K, 2), *spatial), sums to 1 over axis 1
    padded, sizes = pad_to_multiple(x, divisor=16, dims=3)
    out = net_fn(padded)[..., :sizes[0], :sizes[1], :sizes[2]]   # the caller crops back

A one-channel network predicts one sigmoid foreground map; its probabilities are [1 - p, p], so every strategy
handles K' = max(K, 2) classes the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
