"""What every loss does first: check shapes, turn the prediction into class probabilities and the target into
per-class maps, in float32.

Conventions (shared by all losses; see docs/losses.md):
- prediction: (N, C, Y, X) or (N, C, Z, Y, X). C >= 2: one channel per class, softmax over C.
  C == 1: binary, one channel for the foreground, sigmoid.
  `inputs="logits"` (raw network output) or `inputs="probabilities"` (already softmax / sigmoid).
- target: integer labels (N, *spatial) or (N, 1, *spatial) with values 0..C-1 (0..1 when binary), or per-class
  one-hot / probabilities (N, C, *spatial) (C >= 2). A binary target may be soft (foreground probability in [0, 1]).
- Internally a binary problem becomes two classes, background = 1 - p and foreground = p, so that every loss
  handles binary and multi-class the same way (K = 2 when C == 1, else K = C).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from SegCore.errors import SegCoreError

INPUT_KINDS = ("logits", "probabilities")
# Floor for probabilities before a log in "probabilities" mode: keeps log finite for a prediction of exactly 0.
PROBABILITY_FLOOR = 1e-7


@dataclass
class Prepared:
    """A prediction and target in the shared form.

    probs: (N, K, V) float32 class probabilities (V = number of voxels).
    target: (N, K, V) float32 per-class reference (one-hot or soft).
    log_probs: (N, K, V) float32 log-probabilities, or None when not asked for.
    binary: the prediction had one channel (sigmoid).
    spatial_shape: the spatial size, (Y, X) or (Z, Y, X).
    """

    probs: Tensor
    target: Tensor
    log_probs: Tensor | None
    binary: bool
    spatial_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return self.probs.shape[1]


def check_inputs_kind(inputs: str) -> str:
    if inputs not in INPUT_KINDS:
        raise SegCoreError(f"inputs must be 'logits' or 'probabilities', got {inputs!r}",
                           fix="pass inputs='logits' for raw network output, 'probabilities' after softmax/sigmoid")
    return inputs


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def check_prediction(prediction: Tensor) -> None:
    if not torch.is_tensor(prediction):
        raise SegCoreError(f"the prediction must be a torch.Tensor, got {type(prediction).__name__}")
    if prediction.ndim not in (4, 5) or prediction.shape[1] < 1:
        raise SegCoreError(f"the prediction must be (N, C, Y, X) or (N, C, Z, Y, X), got shape {_shape(prediction)}",
                           fix="add the batch and channel axes (prediction[None] / [:, None])")
    if not prediction.is_floating_point():
        raise SegCoreError(f"the prediction must be floating point, got dtype {prediction.dtype}")


def target_kind(prediction: Tensor, target: Tensor) -> str:
    """'labels' for (N, *spatial) or (N, 1, *spatial); 'maps' for (N, C, *spatial) with C >= 2. Raises otherwise."""
    check_prediction(prediction)
    if not torch.is_tensor(target):
        raise SegCoreError(f"the target must be a torch.Tensor, got {type(target).__name__}")
    n, c = prediction.shape[:2]
    spatial = tuple(prediction.shape[2:])
    shape = tuple(target.shape)
    if shape == (n, *spatial) or shape == (n, 1, *spatial):
        return "labels"
    if c >= 2 and shape == (n, c, *spatial):
        return "maps"
    raise SegCoreError(
        f"target shape {_shape(target)} does not fit prediction shape {_shape(prediction)}",
        fix=f"pass labels of shape {(n, *spatial)} or {(n, 1, *spatial)}"
            + (f", or one-hot/probabilities of shape {(n, c, *spatial)}" if c >= 2 else ""))


def target_maps(prediction: Tensor, target: Tensor) -> Tensor:
    """The reference as (N, K, *spatial) float32 per-class maps (K = 2 for a binary prediction)."""
    kind = target_kind(prediction, target)
    n, c = prediction.shape[:2]
    spatial = tuple(prediction.shape[2:])
    if kind == "maps":
        maps = target.float()
        _check_unit_range(maps, "one-hot/probability target")
        return maps
    values = target.reshape(n, *spatial)
    if c == 1:
        # Binary: labels 0/1 and soft foreground probabilities are the same thing.
        fg = values.float()
        _check_unit_range(fg, "binary target")
        return torch.stack([1.0 - fg, fg], dim=1)
    if values.is_floating_point():
        if not torch.equal(values, values.round()):
            raise SegCoreError(f"target of shape {_shape(target)} has non-integer values but a label shape",
                               fix=f"pass integer labels, or per-class probabilities of shape {(n, c, *spatial)}")
    elif values.dtype == torch.bool:
        values = values.long()
    labels = values.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= c:
        raise SegCoreError(f"target labels range {low}..{high} but the prediction has {c} classes (0..{c - 1})",
                           fix="remap the labels to 0..C-1 or give the network one output channel per label")
    return F.one_hot(labels, c).movedim(-1, 1).float()


def _check_unit_range(t: Tensor, what: str) -> None:
    low, high = float(t.detach().min()), float(t.detach().max())
    if low < 0.0 or high > 1.0:
        raise SegCoreError(f"the {what} must lie in [0, 1], got values from {low:g} to {high:g}")


def class_probabilities(prediction: Tensor, inputs: str, *, with_log: bool) -> tuple[Tensor, Tensor | None]:
    """(N, K, *spatial) float32 probabilities and, if asked, log-probabilities computed stably from logits."""
    x = prediction.float()  # losses in float32 even under fp16/bf16 autocast: sums over 1e6 voxels overflow fp16
    binary = x.shape[1] == 1
    if inputs == "logits":
        if binary:
            log_probs = torch.cat([F.logsigmoid(-x), F.logsigmoid(x)], dim=1)
            probs = torch.cat([torch.sigmoid(-x), torch.sigmoid(x)], dim=1)
        else:
            log_probs = F.log_softmax(x, dim=1)
            probs = log_probs.exp()
        return probs, (log_probs if with_log else None)
    _check_unit_range(x, "prediction (inputs='probabilities')")
    probs = torch.cat([1.0 - x, x], dim=1) if binary else x
    log_probs = probs.clamp_min(PROBABILITY_FLOOR).log() if with_log else None
    return probs, log_probs


def prepare(prediction: Tensor, target: Tensor, inputs: str, *, with_log: bool = False) -> Prepared:
    """Check and convert a (prediction, target) pair; see the module docstring for the accepted shapes."""
    maps = target_maps(prediction, target)
    probs, log_probs = class_probabilities(prediction, inputs, with_log=with_log)
    n, k = probs.shape[:2]
    return Prepared(probs=probs.reshape(n, k, -1), target=maps.reshape(n, k, -1),
                    log_probs=None if log_probs is None else log_probs.reshape(n, k, -1),
                    binary=prediction.shape[1] == 1, spatial_shape=tuple(prediction.shape[2:]))


def check_weights(values: float | Sequence[float] | None, what: str) -> list[float] | None:
    """Constructor-time check of per-class values: a list of finite floats >= 0, or None."""
    if values is None:
        return None
    if torch.is_tensor(values):
        listed = [float(v) for v in values.detach().flatten().tolist()]
    elif isinstance(values, Sequence):
        listed = [float(v) for v in values]
    else:
        listed = [float(values)]
    if not listed or any(not (v >= 0.0 and v < float("inf")) for v in listed):
        raise SegCoreError(f"{what} must be finite values >= 0, got {listed}")
    return listed


def class_vector(values: float | Sequence[float] | Tensor | None, num_classes: int, what: str,
                 *, device: torch.device) -> Tensor | None:
    """Per-class values as a (K,) float32 tensor, or None. Raises when the length is not K."""
    if values is None:
        return None
    vector = torch.as_tensor(values, dtype=torch.float32, device=device).flatten()
    if vector.numel() != num_classes:
        raise SegCoreError(f"{what} has {vector.numel()} values but there are {num_classes} classes "
                           "(a binary, one-channel prediction counts 2: background, foreground)",
                           fix=f"give one value per class ({num_classes})")
    if not torch.isfinite(vector).all() or (vector < 0).any():
        raise SegCoreError(f"{what} must be finite and >= 0, got {vector.tolist()}")
    return vector


def selected_classes(num_classes: int, include_background: bool) -> slice:
    """Classes a region loss sums over: all, or all but class 0 (the background)."""
    return slice(0, num_classes) if include_background else slice(1, num_classes)
