"""Random augmentation of training patches: `Augmentation(spec).sample_patch(image, label, centre, patch, rng)`.

Spatial parts (flips, rotation, scaling, translation, elastic deformation) are drawn first and composed into one
map from output patch voxels to input voxels; the patch is then read from the needed region of the volume only
(a memory-mapped volume stays on disk elsewhere) and interpolated once: a map that keeps depth apart from the
plane (rotation about z, flips, scaling, translation: the default augmentation) through one in-plane lookup
shared by every slice and channel (SegCore/transforms/planes.py), any other (rotations about y or x, elastic
deformation, cubic images) voxel by voxel (SegCore/transforms/spatial.py). Intensity parts (Gaussian noise,
brightness, contrast, gamma) follow on the patch, in float32 and in place. Every part has its own probability
"p"; all randomness comes from the numpy Generator passed in, so a seed gives the same patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.transforms import planes, spatial
from SegCore.transforms.parameters import choice, number

# Defaults follow nnU-Net's: flips, moderate in-plane rotation and scaling, intensity jitter; translation and
# elastic deformation are off unless asked for (the atrium study asks for both).
DEFAULTS: dict[str, Any] = {
    "flip_axes": [0, 1, 2], "flip_p": 0.5,
    "rotate_deg": [[-15.0, 15.0], [0.0, 0.0], [0.0, 0.0]], "rotate_p": 0.2,
    "scale": [0.85, 1.25], "scale_p": 0.2,
    "translate_vox": [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], "translate_p": 0.0,
    "elastic_sigma_vox": 16.0, "elastic_magnitude_vox": 4.0, "elastic_p": 0.0,
    "noise_std": [0.0, 0.1], "noise_p": 0.1,
    "brightness": [0.75, 1.25], "brightness_p": 0.15,
    "contrast": [0.75, 1.25], "contrast_p": 0.15,
    "gamma": [0.7, 1.5], "gamma_p": 0.3,
    "label_mode": "nearest", "image_order": 1, "pad_value": 0.0,
}
PROBABILITIES = [key for key in DEFAULTS if key.endswith("_p")]


def _range(symmetric: bool, *, positive: bool = False):
    """A number a (-> [-a, a] where symmetric, else [a, a]) or [low, high] with low <= high."""
    words = ("a number a (for [-a, a]) or " if symmetric else "a number or ") + "a list [low, high], low <= high" + (
        ", both > 0" if positive else "")

    def check(value):
        item = number(positive=positive)
        try:
            if isinstance(value, (list, tuple)):
                if len(value) != 2:
                    raise ValueError
                low, high = item(value[0]), item(value[1])
            else:
                high = item(value)
                low = -abs(high) if symmetric else high
                high = abs(high) if symmetric else high
        except ValueError:
            raise ValueError(words) from None
        if low > high:
            raise ValueError(words)
        return [low, high]
    return check


def _per_axis(value):
    """Three ranges (z, y, x), each a number a (for [-a, a]) or [low, high]."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError("a list of three (z, y, x) entries, each a number a (for [-a, a]) or [low, high]")
    return [_range(True)(v) for v in value]


def _axes(value):
    if (not isinstance(value, (list, tuple)) or len(set(value)) != len(value)
            or any(isinstance(v, bool) or v not in (0, 1, 2) for v in value)):
        raise ValueError("a list of distinct spatial axes among 0 (z), 1 (y), 2 (x)")
    return sorted(int(v) for v in value)


def _order(value):
    if isinstance(value, bool) or value not in (0, 1, 3):
        raise ValueError("0 (nearest), 1 (linear) or 3 (cubic spline)")
    return int(value)


CHECKS = {
    "flip_axes": _axes, "rotate_deg": _per_axis, "scale": _range(False, positive=True),
    "translate_vox": _per_axis, "elastic_sigma_vox": number(positive=True), "elastic_magnitude_vox": number(low=0),
    "noise_std": _range(False), "brightness": _range(False, positive=True), "contrast": _range(False, positive=True),
    "gamma": _range(False, positive=True), "label_mode": choice("nearest", "one_hot_linear"), "image_order": _order,
    "pad_value": number(), **{key: number(low=0, high=1) for key in PROBABILITIES},
}


@dataclass(frozen=True)
class Draw:
    """The random choices for one patch (None: that part is not applied)."""

    flips: tuple[bool, bool, bool]
    angles_deg: tuple[float, float, float] | None
    scale: float | None
    translation_vox: tuple[float, float, float] | None
    elastic: bool
    noise_std: float | None
    brightness: float | None
    contrast: float | None
    gamma: float | None

    @property
    def interpolates(self) -> bool:
        """Whether the patch needs resampling (flips alone are an exact reordering of the crop)."""
        return self.angles_deg is not None or self.scale is not None or self.translation_vox is not None \
            or self.elastic


class Augmentation:
    """Random flips, rotation, scaling, translation, elastic deformation, noise, brightness, contrast and gamma.

    Args:
        spec: JSON-able dict; missing keys take `DEFAULTS`, unknown keys are refused (see docs/training.md).
    """

    def __init__(self, spec: dict | None = None):
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise SegCoreError(f"the augmentation must be a dict of settings, got {spec!r}",
                               fix=f"use keys among {', '.join(DEFAULTS)}")
        unknown = sorted(set(spec) - set(DEFAULTS))
        if unknown:
            raise SegCoreError(f"unknown augmentation setting(s) {', '.join(unknown)}",
                               fix=f"the settings are: {', '.join(DEFAULTS)}")
        resolved = {}
        for key, default in DEFAULTS.items():
            value = spec.get(key, default)
            try:
                resolved[key] = CHECKS[key](value)
            except ValueError as error:
                raise SegCoreError(f"augmentation setting {key} must be {error}, got {value!r}",
                                   fix=f"correct \"{key}\" in the augmentation settings") from None
        self._spec = resolved

    @classmethod
    def off(cls) -> Augmentation:
        """The no-op augmentation: every probability 0, so a patch is exactly the crop."""
        return cls({key: 0.0 for key in PROBABILITIES})

    @property
    def spec(self) -> dict:
        """Every setting, defaults filled, in canonical form (ranges as [low, high]); JSON-able."""
        return {key: (list(map(list, v)) if key in ("rotate_deg", "translate_vox") else
                      list(v) if isinstance(v, list) else v) for key, v in self._spec.items()}

    def __repr__(self) -> str:
        return f"Augmentation({self.spec!r})"

    def draw(self, rng: np.random.Generator) -> Draw:
        """The random choices for one patch. Each part draws its coin in a fixed order, then its parameters."""
        s = self._spec

        def coin(key: str) -> bool:
            return bool(rng.random() < s[key])  # random() is in [0, 1): p = 0 never, p = 1 always

        def uniform(bounds) -> float:
            return float(rng.uniform(bounds[0], bounds[1]))

        flips = tuple(coin("flip_p") and axis in s["flip_axes"] for axis in range(3))
        angles = tuple(uniform(b) for b in s["rotate_deg"]) if coin("rotate_p") else None
        scale = uniform(s["scale"]) if coin("scale_p") else None
        translation = tuple(uniform(b) for b in s["translate_vox"]) if coin("translate_p") else None
        elastic = coin("elastic_p") and s["elastic_magnitude_vox"] > 0
        noise = uniform(s["noise_std"]) if coin("noise_p") else None
        brightness = uniform(s["brightness"]) if coin("brightness_p") else None
        contrast = uniform(s["contrast"]) if coin("contrast_p") else None
        gamma = uniform(s["gamma"]) if coin("gamma_p") else None
        return Draw(flips, angles, scale, translation, elastic, noise, brightness, contrast, gamma)

    def sample_patch(self, image_czyx: np.ndarray, label_zyx: np.ndarray | None, centre_zyx, patch_zyx,
                     rng: np.random.Generator, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """One augmented patch.

        Args:
            image_czyx: (C, Z, Y, X) float32 (may be an np.memmap: only the needed region is read).
            label_zyx: (Z, Y, X) integer labels, or None.
            centre_zyx: the patch centre in voxels; the patch starts at round(centre - (patch - 1) / 2), so that
                with no spatial part applied it is exactly that crop of the volume.
            patch_zyx: output size (z, y, x); 1 along an axis for 2D slices.
            rng: the source of every random choice.
            out: optional (C, *patch_zyx) float32 array (a view is fine, e.g. a batch's slot) that receives the
                image: a plain crop is copied straight into it, with no patch in between.
        Returns:
            (C, *patch_zyx) float32 and the label (*patch_zyx) in the input's dtype (None without a label);
            outside the volume the image holds the pad value and the label 0.
        """
        patch, start = _check_inputs(image_czyx, label_zyx, centre_zyx, patch_zyx)
        draw = self.draw(rng)
        if draw.interpolates:
            image, label = self._resample(image_czyx, label_zyx, start, patch, draw, rng)
        else:
            flipped = tuple(axis for axis in range(3) if draw.flips[axis])  # flips alone: one exact copy
            image = spatial.crop_patch(image_czyx, start, patch, self._spec["pad_value"], flipped, out=out).astype(
                np.float32, copy=False)
            label = None if label_zyx is None else spatial.crop_patch(label_zyx, start, patch, 0, flipped)
        if out is not None and image is not out:
            out[...] = image
            image = out
        return _intensity(image, draw, rng), label

    def _resample(self, image_czyx, label_zyx, start, patch, draw: Draw, rng: np.random.Generator):
        s = self._spec
        matrix = np.diag([-1.0 if flip else 1.0 for flip in draw.flips])
        if draw.scale is not None:  # scale > 1 magnifies: the patch samples a smaller region
            matrix = np.diag([1 / draw.scale] * 3) @ matrix
        if draw.angles_deg is not None:
            matrix = spatial.rotation_matrix([math.radians(a) for a in draw.angles_deg]) @ matrix
        translation = draw.translation_vox or (0.0, 0.0, 0.0)
        if not draw.elastic and s["image_order"] <= 1 and planes.keeps_slices(matrix):
            # a rotation about depth, flips, scaling: one in-plane lookup shared by every slice (the same values)
            z, yx = planes.plane_coordinates(start, patch, matrix, translation)
            return planes.resample_planes(image_czyx, label_zyx, z, yx, image_order=s["image_order"],
                                          label_mode=s["label_mode"], pad_value=s["pad_value"])
        field = (spatial.elastic_field(patch, s["elastic_sigma_vox"], s["elastic_magnitude_vox"], rng)
                 if draw.elastic else None)
        coordinates = spatial.sample_coordinates(start, patch, matrix, translation, field)
        return spatial.resample_patch(image_czyx, label_zyx, coordinates, image_order=s["image_order"],
                                      label_mode=s["label_mode"], pad_value=s["pad_value"])


def _check_inputs(image_czyx, label_zyx, centre_zyx, patch_zyx):
    """(patch size, patch start) as int tuples, or a SegCoreError saying which argument is wrong."""
    if getattr(image_czyx, "ndim", None) != 4:
        raise SegCoreError(f"an augmented image must be (C, Z, Y, X), got shape {getattr(image_czyx, 'shape', None)}",
                           fix="add a channel axis: image[None]")
    if label_zyx is not None and tuple(label_zyx.shape) != tuple(image_czyx.shape[1:]):
        raise SegCoreError(f"label shape {tuple(label_zyx.shape)} does not match the image's (Z, Y, X) "
                           f"{tuple(image_czyx.shape[1:])}", fix="give the label of the same case and grid")
    if label_zyx is not None and not np.issubdtype(label_zyx.dtype, np.integer):
        raise SegCoreError(f"labels must be integers, got {label_zyx.dtype}", fix="cast the label map to uint8")
    if (len(patch_zyx) != 3 or any(isinstance(p, bool) or int(p) != p or p < 1 for p in patch_zyx)
            or len(centre_zyx) != 3 or not all(math.isfinite(c) for c in centre_zyx)):
        raise SegCoreError(f"patch size {list(patch_zyx)} and centre {list(centre_zyx)} must be three positive "
                           "integers and three finite numbers (z, y, x)", fix="check the sampler settings")
    patch = tuple(int(p) for p in patch_zyx)
    start = tuple(int(math.floor(c - (p - 1) / 2 + 0.5)) for c, p in zip(centre_zyx, patch, strict=True))
    return patch, start


def _intensity(image: np.ndarray, draw: Draw, rng: np.random.Generator) -> np.ndarray:
    """Noise, brightness, contrast, gamma (nnU-Net's order) on the (C, ...) float32 patch, in place (float32 all
    through, one scratch array: no temporaries of the patch's size)."""
    if draw.noise_std:
        image += normal_float32(rng, image.shape, draw.noise_std)
    if draw.brightness is not None:
        image *= np.float32(draw.brightness)
    scratch = None if draw.gamma is None else np.empty_like(image[0])
    for channel in image:
        if draw.contrast is not None:  # about the mean, clipped to the patch's range as nnU-Net does
            low, high, mean = channel.min(), channel.max(), channel.mean()
            channel -= mean
            channel *= np.float32(draw.contrast)
            channel += mean
            np.clip(channel, low, high, out=channel)
        if draw.gamma is not None:  # on the patch's range mapped to [0, 1], then mapped back
            low, high = channel.min(), channel.max()
            if high > low:
                # span * ((x - low) / span) ** gamma = exp(gamma * log(x - low) + (1 - gamma) * log(span)):
                # float32 log and exp are vectorised where numpy's float32 power is one libm powf per voxel;
                # x = low gives log 0 = -inf and exp(-inf) = 0, as 0 ** gamma (gamma > 0)
                gamma = np.float32(draw.gamma)
                np.subtract(channel, low, out=scratch)
                with np.errstate(divide="ignore"):
                    np.log(scratch, out=scratch)
                scratch *= gamma
                scratch += np.float32((1 - draw.gamma) * math.log(float(high - low)))
                np.exp(scratch, out=scratch)
                np.add(scratch, low, out=channel)
    return image


def normal_float32(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Gaussian noise of mean 0 and standard deviation `std`, float32 of `shape`, by the Box-Muller transform of
    float32 uniforms: sqrt(-2 log u) * (cos, sin)(2 pi v) are two independent standard normals. Vectorised float32
    log, sqrt, cos and sin take ~1/4 of the time of `rng.standard_normal(dtype=np.float32)` (a scalar ziggurat);
    u = 1 - uniform lies in (0, 1] on a grid of 2^-24, so |values| stop at std * sqrt(48 log 2) (5.8 std: the
    normal's tail beyond holds 7e-9 of it)."""
    size = math.prod(shape)
    half = (size + 1) // 2
    uniforms = rng.random((2, half), dtype=np.float32)
    radius, angle = uniforms
    np.subtract(np.float32(1), radius, out=radius)
    np.log(radius, out=radius)
    radius *= np.float32(-2 * std * std)
    np.sqrt(radius, out=radius)
    angle *= np.float32(2 * math.pi)
    out = np.empty(2 * half, dtype=np.float32)
    np.cos(angle, out=out[:half])
    np.sin(angle, out=out[half:])
    out[:half] *= radius
    out[half:] *= radius
    return out[:size].reshape(shape)
