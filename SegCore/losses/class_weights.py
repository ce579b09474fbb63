"""Class weights from a dataset's label frequencies (for the `class_weights` of Dice and cross-entropy losses).

The decathlon study ("--weighted_classes True", its default) computed, over all training masks,
w_k = N / (C * N_k), N the total voxel count, N_k the voxels of class k, C the number of classes: the
"inverse" method below (with f_k = N_k / N: w_k = 1 / (C f_k)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from SegCore.errors import SegCoreError

METHODS = ("inverse", "inverse_sqrt", "median_frequency")


def _as_fractions(frequencies: Mapping | Sequence[float]) -> np.ndarray:
    if isinstance(frequencies, Mapping):
        try:
            by_label = {int(label): float(value) for label, value in frequencies.items()}
        except (TypeError, ValueError):
            raise SegCoreError(f"frequency labels must be integers, got {list(frequencies)}") from None
        expected = list(range(len(by_label)))
        if sorted(by_label) != expected:
            raise SegCoreError(f"frequencies are given for labels {sorted(by_label)}; class weights need every "
                               f"label 0..{len(by_label) - 1}",
                               fix="remap the labels to 0..C-1 (as the network's channels) first")
        values = np.array([by_label[k] for k in expected], dtype=float)
    else:
        values = np.asarray(list(frequencies), dtype=float)
    if values.ndim != 1 or values.size < 2:
        raise SegCoreError(f"need one frequency per class, at least 2, got {values.tolist()}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise SegCoreError(f"frequencies must be finite and >= 0, got {values.tolist()}")
    total = values.sum()
    if total <= 0:
        raise SegCoreError("all frequencies are 0", fix="compute the fingerprint from labels that contain voxels")
    return values / total  # fractions; voxel counts are accepted too


def class_weights_from_frequencies(frequencies: Mapping[int | str, float] | Sequence[float],
                                   method: str = "inverse", max_weight: float | None = None) -> list[float]:
    """Per-class loss weights from per-label voxel fractions.

    Args:
        frequencies: fraction of voxels of each label, as {label: fraction} (keys 0..C-1, ints or digit strings
            as in a JSON fingerprint) or a sequence indexed by label. Counts work too: they are divided by their sum.
        method, with f_k the fraction of class k and C the number of classes:
            "inverse": w_k = 1 / (C f_k)  (the decathlon study's N / (C N_k); 1 for every class when balanced).
            "inverse_sqrt": w_k = 1 / sqrt(C f_k)  (a milder correction).
            "median_frequency": w_k = median(f) / f_k  (Eigen & Fergus 2015, with dataset-wide fractions).
        max_weight: cap on any weight (None = no cap), so that a very rare class does not swamp the loss.

    Returns:
        C weights (float), in label order.

    A class with frequency 0 has no finite weight: this raises, because it means the training labels never
    contain that class.
    """
    if method not in METHODS:
        raise SegCoreError(f"unknown class-weight method {method!r}", fix=f"use one of {', '.join(METHODS)}")
    fractions = _as_fractions(frequencies)
    absent = [k for k, f in enumerate(fractions) if f == 0.0]
    if absent:
        raise SegCoreError(f"label(s) {absent} have no voxels in the frequencies, so no weight can balance them",
                           fix="check the training labels, or drop the class")
    num_classes = len(fractions)
    if method == "inverse":
        weights = 1.0 / (num_classes * fractions)
    elif method == "inverse_sqrt":
        weights = 1.0 / np.sqrt(num_classes * fractions)
    else:
        weights = float(np.median(fractions)) / fractions
    if max_weight is not None:
        if not (max_weight > 0 and math.isfinite(max_weight)):
            raise SegCoreError(f"max_weight must be a positive number, got {max_weight}")
        weights = np.minimum(weights, max_weight)
    return [float(w) for w in weights]
