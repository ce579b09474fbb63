"""Intensity preprocessing steps: CT window, clip-and-scale in HU, z-score and percentile clip plus min-max.

Each works on the image only, channel by channel (`channels`: null = every channel), in float64 and returns
float32. Labels never go through them, so they have no inverse; their facts (the window, the mean and standard
deviation, the percentile values actually found) go into the record so that a run can be audited.
"""

from __future__ import annotations

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.transforms.parameters import REQUIRED, Parameter, StepKind, channels, choice, interval, number

# A channel whose standard deviation is below this is only centred, not scaled (a constant image).
MIN_STD = 1e-8
AXES = {"z": 0, "y": 1, "x": 2}


def _each_channel(image: np.ndarray, params: dict, normalise) -> tuple[np.ndarray, dict]:
    """Apply normalise((Z, Y, X) float64) -> (array, facts) to the chosen channels; other channels pass."""
    chosen = params["channels"]
    if chosen is None:
        chosen = list(range(image.shape[0]))
    elif chosen[-1] >= image.shape[0]:
        raise SegCoreError(f"{params['name']} uses channel {chosen[-1]}, but the image has {image.shape[0]} "
                           f"channel(s)", fix=f"list channels 0..{image.shape[0] - 1}, or null for every channel")
    out = image.astype(np.float32, copy=True)
    facts = []
    for c in chosen:
        array, fact = normalise(image[c].astype(np.float64))
        out[c] = array
        facts.append({"channel": c, **fact})
    return out, {"per_channel": facts}


def _scale(array: np.ndarray, low: float, high: float, out: list[float]) -> np.ndarray:
    """Clip to [low, high], then map low -> out[0] and high -> out[1] linearly."""
    return out[0] + (np.clip(array, low, high) - low) * ((out[1] - out[0]) / (high - low))


def _ct_window_forward(params, image, label, grid):
    def window(array):
        return _scale(array, params["hu_min"], params["hu_max"], params["out"]), {}
    image, facts = _each_channel(image, params, window)
    return image, label, grid, facts


def _clip_scale_forward(params, image, label, grid):
    def clip_scale(array):
        return (np.clip(array, params["low"], params["high"]) - params["mean"]) / params["std"], {}
    image, facts = _each_channel(image, params, clip_scale)
    return image, label, grid, facts


def _zscore_forward(params, image, label, grid):
    mode = params["mode"]

    def zscore(array):
        if mode == "volume":
            mean, std = float(array.mean()), float(array.std())
            return (array - mean) / max(std, MIN_STD), {"mean": mean, "std": std}
        if mode == "mask":
            mask = array > params["mask_threshold"]
            if not mask.any():
                return np.zeros_like(array), {"mean": None, "std": None, "mask_voxels": 0}
            mean, std = float(array[mask].mean()), float(array[mask].std())
            # outside the mask is set to 0, the mean of the normalised inside (nnU-Net does the same)
            return np.where(mask, (array - mean) / max(std, MIN_STD), 0.0), {
                "mean": mean, "std": std, "mask_voxels": int(mask.sum())}
        axis = AXES[params["axis"]]
        others = tuple(a for a in range(3) if a != axis)
        mean, std = array.mean(axis=others, keepdims=True), array.std(axis=others, keepdims=True)
        return (array - mean) / np.maximum(std, MIN_STD), {"mean": mean.ravel().tolist(), "std": std.ravel().tolist()}
    image, facts = _each_channel(image, params, zscore)
    return image, label, grid, facts


def _percentile_minmax_forward(params, image, label, grid):
    def percentile_minmax(array):
        low, high = (float(v) for v in np.percentile(array, [params["lower"], params["upper"]]))
        if high <= low:  # a constant channel: nothing to scale
            return np.zeros_like(array), {"low": low, "high": high}
        return _scale(array, low, high, [0.0, 1.0]), {"low": low, "high": high}
    image, facts = _each_channel(image, params, percentile_minmax)
    return image, label, grid, facts


def _ordered(low: str, high: str):
    def check(params):
        if not params[low] < params[high]:
            return f"{low} ({params[low]:g}) must be below {high} ({params[high]:g})"
        return None
    return check


_CHANNELS = Parameter(None, channels())

INTENSITY_STEPS = {
    "ct_window": StepKind({
        "hu_min": Parameter(REQUIRED, number()),
        "hu_max": Parameter(REQUIRED, number()),
        "out": Parameter([0.0, 1.0], interval()),
        "channels": _CHANNELS,
    }, _ct_window_forward, check=_ordered("hu_min", "hu_max")),
    "clip_scale": StepKind({
        "low": Parameter(REQUIRED, number()),
        "high": Parameter(REQUIRED, number()),
        "mean": Parameter(0.0, number()),
        "std": Parameter(1.0, number(positive=True)),
        "channels": _CHANNELS,
    }, _clip_scale_forward, check=_ordered("low", "high")),
    "zscore": StepKind({
        "mode": Parameter("volume", choice("volume", "slice", "mask")),
        "axis": Parameter("z", choice(*AXES)),
        "mask_threshold": Parameter(0.0, number()),
        "channels": _CHANNELS,
    }, _zscore_forward),
    "percentile_minmax": StepKind({
        "lower": Parameter(0.0, number(low=0, high=100)),
        "upper": Parameter(99.98, number(low=0, high=100)),
        "channels": _CHANNELS,
    }, _percentile_minmax_forward, check=_ordered("lower", "upper")),
}
