"""Intensity preprocessing steps: CT window, clip-and-scale in HU, z-score and percentile clip plus min-max.

    image_czyx, label, grid, facts = INTENSITY_STEPS["zscore"].forward(params, image_czyx, None, grid)

Each works on the image only, channel by channel (`channels`: null = every channel), and normalises the float32
(C, Z, Y, X) image IN PLACE: `Preprocessing.apply` hands the steps a copy it owns, never the caller's array. The
arithmetic is float64, a few z-slices at a time (`SLAB_VOXELS`), so a CT needs no whole-volume float64 copy and
no full-size temporaries, and each voxel gets the value that float64 arithmetic on the whole volume gives; sums
(mean, variance) are float64 too. Labels never go through these steps, so they have no inverse; their facts (the
window, the mean and standard deviation, the percentile values actually found) go into the record so that a run
can be audited.
"""

from __future__ import annotations

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.transforms.parameters import REQUIRED, Parameter, StepKind, channels, choice, interval, number

# A channel whose standard deviation is below this is only centred, not scaled (a constant image).
MIN_STD = 1e-8
AXES = {"z": 0, "y": 1, "x": 2}
# Voxels per float64 temporary (16 MB): small beside a CT, large enough that numpy's per-call cost vanishes.
SLAB_VOXELS = 1 << 21


def _slabs(channel: np.ndarray):
    """Slices of axis 0 of a (Z, Y, X) channel, each about SLAB_VOXELS voxels (at least one z-slice)."""
    step = max(1, SLAB_VOXELS // max(1, channel[0].size)) if len(channel) else 1
    return [slice(z, z + step) for z in range(0, len(channel), step)]


def _map(channel: np.ndarray, function) -> None:
    """channel[...] = function(channel as float64), slab by slab, in place (float32 (Z, Y, X))."""
    for z in _slabs(channel):
        channel[z] = function(channel[z].astype(np.float64))


def _mean_std(channel: np.ndarray, inside=None) -> tuple[float, float, int]:
    """(mean, standard deviation, count) in float64 of the channel's voxels (where inside(slab) is True), two
    passes over slabs (the deviations from the mean, as numpy's std: no cancellation)."""
    total, count = 0.0, 0
    for z in _slabs(channel):
        values = channel[z] if inside is None else channel[z][inside(channel[z])]
        total, count = total + float(values.sum(dtype=np.float64)), count + values.size
    mean = total / count if count else float("nan")
    squares = 0.0
    for z in _slabs(channel):
        values = channel[z] if inside is None else channel[z][inside(channel[z])]
        squares += float(np.square(values.astype(np.float64) - mean).sum())
    return mean, float(np.sqrt(squares / count)) if count else float("nan"), count


def _each_channel(image: np.ndarray, params: dict, normalise) -> tuple[np.ndarray, dict]:
    """normalise((Z, Y, X) float32 channel, changed in place) -> facts on the chosen channels of the float32
    (C, Z, Y, X) image (changed in place, returned); other channels pass."""
    chosen = params["channels"]
    if chosen is None:
        chosen = list(range(image.shape[0]))
    elif chosen[-1] >= image.shape[0]:
        raise SegCoreError(f"{params['name']} uses channel {chosen[-1]}, but the image has {image.shape[0]} "
                           f"channel(s)", fix=f"list channels 0..{image.shape[0] - 1}, or null for every channel")
    if image.dtype != np.float32 or not image.flags.writeable:
        raise SegCoreError(f"{params['name']} normalises a writable float32 image in place, got "
                           f"{image.dtype}{'' if image.flags.writeable else ' (read-only)'}",
                           fix="run the step through SegCore.transforms.Preprocessing, which gives it its own copy")
    facts = [{"channel": c, **normalise(image[c])} for c in chosen]
    return image, {"per_channel": facts}


def _scale(array: np.ndarray, low: float, high: float, out: list[float]) -> np.ndarray:
    """Clip to [low, high], then map low -> out[0] and high -> out[1] linearly."""
    return out[0] + (np.clip(array, low, high) - low) * ((out[1] - out[0]) / (high - low))


def _ct_window_forward(params, image, label, grid):
    def window(channel):
        _map(channel, lambda x: _scale(x, params["hu_min"], params["hu_max"], params["out"]))
        return {}
    image, facts = _each_channel(image, params, window)
    return image, label, grid, facts


def _clip_scale_forward(params, image, label, grid):
    def clip_scale(channel):
        _map(channel, lambda x: (np.clip(x, params["low"], params["high"]) - params["mean"]) / params["std"])
        return {}
    image, facts = _each_channel(image, params, clip_scale)
    return image, label, grid, facts


def _zscore_forward(params, image, label, grid):
    mode = params["mode"]

    def zscore(channel):
        if mode == "volume":
            mean, std, _ = _mean_std(channel)
            _map(channel, lambda x: (x - mean) / max(std, MIN_STD))
            return {"mean": mean, "std": std}
        if mode == "mask":
            def inside(x):
                return x > params["mask_threshold"]
            mean, std, count = _mean_std(channel, inside)
            if not count:
                channel[...] = 0
                return {"mean": None, "std": None, "mask_voxels": 0}
            # outside the mask is set to 0, the mean of the normalised inside (nnU-Net does the same)
            _map(channel, lambda x: np.where(inside(x), (x - mean) / max(std, MIN_STD), 0.0))
            return {"mean": mean, "std": std, "mask_voxels": count}
        axis = AXES[params["axis"]]
        means, stds = [], []
        for index in range(channel.shape[axis]):  # one plane at a time: a plane-sized float64 temporary
            plane = channel[(slice(None),) * axis + (index,)]
            values = plane.astype(np.float64)
            mean, std = float(values.mean()), float(values.std())
            plane[...] = (values - mean) / max(std, MIN_STD)
            means.append(mean)
            stds.append(std)
        return {"mean": means, "std": stds}
    image, facts = _each_channel(image, params, zscore)
    return image, label, grid, facts


def _percentile_minmax_forward(params, image, label, grid):
    def percentile_minmax(channel):
        # numpy partitions a copy of the channel: a float32 one, half the size of a float64 copy; the order
        # statistics are the same, the interpolation between two of them may differ in the last bit
        low, high = (float(v) for v in np.percentile(channel, [params["lower"], params["upper"]]))
        if high <= low:  # a constant channel: nothing to scale
            channel[...] = 0
        else:
            _map(channel, lambda x: _scale(x, low, high, [0.0, 1.0]))
        return {"low": low, "high": high}
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
