"""Locate, then segment: the atrium study's two networks at test time.

    box = locate_box(locator_fn, image_czyx)                       # Box((z0, y0, x0), (z1, y1, x1)) or None
    probabilities, info = locate_then_segment(locator_fn, segment_fn, image_czyx, progress=lambda done, total: ...)

The study (Pytorch_VNet_atriaseg2018) trains a locator on volumes scaled by 0.5 x 0.25 x 0.25 (D x H x W), takes
the start and end index of its foreground along each axis, scales them back to full resolution, adds a 30-voxel
buffer, crops a patch of one fixed size around it (96 x 144 x 224), segments the patch and pastes the result
into an empty volume of the input's size. Here:

1. the image is scaled by `scale_zyx` (trilinear; the study's code scaled with nearest neighbour, its README
   names no interpolation) to n * scale voxels per axis, rounded half up, at least 1;
2. the locator runs once on it (zero-padded to its `divisor`, logits cropped back); foreground = argmax > 0;
3. per axis the foreground's first and last index i0, i1 map back to the full-resolution voxels they cover,
   [floor(i0 * n / m), ceil((i1 + 1) * n / m)) with m the scaled size, and grow by `margin_voxels` on each side
   (clipped to the volume: a margin outside the image adds nothing);
4. an axis shorter than `crop_zyx` grows to it, centred (the odd voxel at the end), then shifts to lie inside
   the volume; where the volume itself is shorter than the crop the box is centred on the volume and the part
   outside is zero padding.

The segmenter sees the box's crop (C, *box size); its probabilities are pasted back (background 1 outside the
box), and the padding is dropped. When the locator finds nothing the whole volume is segmented instead.
Progress counts the two networks as two steps: progress(1, 2) once located, progress(2, 2) once segmented (the
crop is about one segmenter patch, so there is little to report inside a step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from SegCore.errors import SegCoreError
from SegCore.inference.network import pad_to_multiple, probabilities


@dataclass(frozen=True)
class Box:
    """A half-open voxel box [start, stop) per axis (z, y, x) of a (Z, Y, X) grid; it may reach outside it."""

    start_zyx: tuple[int, int, int]
    stop_zyx: tuple[int, int, int]

    @property
    def size_zyx(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start_zyx, self.stop_zyx, strict=True))

    def overlap(self, shape_zyx: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(slices of the grid, slices of the box) of the part of the box inside a grid of `shape_zyx`."""
        low = [max(a, 0) for a in self.start_zyx]
        high = [min(b, n) for b, n in zip(self.stop_zyx, shape_zyx, strict=True)]
        in_grid = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        in_box = tuple(slice(lo - a, hi - a) for lo, hi, a in zip(low, high, self.start_zyx, strict=True))
        return in_grid, in_box


def _check_image(image_czyx: Tensor) -> None:
    if not isinstance(image_czyx, Tensor) or image_czyx.dim() != 4:
        shape = tuple(image_czyx.shape) if isinstance(image_czyx, Tensor) else type(image_czyx).__name__
        raise SegCoreError(f"locate-then-segment takes a (C, Z, Y, X) image tensor, got {shape}",
                           fix="pass the preprocessed image with its channel axis first")


def _check_triple(name: str, values, positive_int: bool) -> tuple:
    values = tuple(values)
    ok = len(values) == 3 and all(
        (type(v) is int if positive_int else isinstance(v, (int, float))) and v > 0 for v in values)
    if not ok:
        kind, example = ("whole numbers", [96, 144, 224]) if positive_int else ("numbers", [0.5, 0.25, 0.25])
        raise SegCoreError(f"locator.{name} must be 3 positive {kind} (z, y, x), got {values!r}",
                           fix=f"e.g. {name}={example} (the study's)")
    return values


def _axis_range(first: int, last: int, scaled: int, full: int, margin: int, crop: int) -> tuple[int, int]:
    """Full-resolution [start, stop) along one axis from the foreground's first/last index on the scaled grid."""
    start = math.floor(first * full / scaled) - margin
    stop = math.ceil((last + 1) * full / scaled) + margin
    start, stop = max(start, 0), min(stop, full)
    if stop - start < crop:
        extra = crop - (stop - start)
        start -= extra // 2
        stop = start + crop
        # shift inside the volume when it is long enough, else centre the box on it (padding both ends)
        start = min(max(start, 0), full - crop) if crop <= full else -((crop - full) // 2)
        stop = start + crop
    return start, stop


@torch.no_grad()
def locate_box(locator_fn: Callable[[Tensor], Tensor], image_czyx: Tensor, *,
               scale_zyx: Sequence[float] = (0.5, 0.25, 0.25), margin_voxels: int = 30,
               crop_zyx: Sequence[int] = (96, 144, 224), divisor: int = 1,
               device: str | torch.device = "cpu") -> Box | None:
    """Where the locator puts the structure, as the box to crop (see the module doc for the rule).

    locator_fn: network function, x float32 (1, C, z, y, x) on `device` -> logits (1, K, z, y, x).
    image_czyx: float32 (C, Z, Y, X) on the CPU. scale_zyx: the locator's training scale per axis.
    margin_voxels: voxels added on each side (full resolution). crop_zyx: the smallest box size.
    divisor: the locator's input sizes must be multiples of it. Returns None when no voxel is foreground.
    """
    _check_image(image_czyx)
    scale_zyx = _check_triple("scale_zyx", scale_zyx, positive_int=False)
    crop_zyx = _check_triple("crop_zyx", crop_zyx, positive_int=True)
    if type(margin_voxels) is not int or margin_voxels < 0:
        raise SegCoreError(f"locator.margin_voxels must be a whole number >= 0, got {margin_voxels!r}",
                           fix="use 30 (the study's)")
    full_zyx = tuple(image_czyx.shape[1:])
    scaled_zyx = tuple(max(1, math.floor(n * s + 0.5)) for n, s in zip(full_zyx, scale_zyx, strict=True))
    x = image_czyx.to(device=device, dtype=torch.float32)[None]
    x = F.interpolate(x, size=scaled_zyx, mode="trilinear", align_corners=False)
    padded, sizes = pad_to_multiple(x, divisor, 3)
    logits = locator_fn(padded)[..., :sizes[0], :sizes[1], :sizes[2]].float()
    foreground = probabilities(logits)[0].argmax(dim=0) > 0
    if not bool(foreground.any()):
        return None
    ranges = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(foreground.any(dim=other[1]).any(dim=other[0])).flatten().cpu()
        ranges.append(_axis_range(int(hits[0]), int(hits[-1]), scaled_zyx[axis], full_zyx[axis],
                                  margin_voxels, crop_zyx[axis]))
    return Box(tuple(r[0] for r in ranges), tuple(r[1] for r in ranges))


def crop_box(image_czyx: Tensor, box: Box) -> Tensor:
    """The (C, *box.size_zyx) crop of a (C, Z, Y, X) tensor; voxels outside the image are 0."""
    crop = image_czyx.new_zeros((image_czyx.shape[0], *box.size_zyx))
    in_grid, in_box = box.overlap(image_czyx.shape[1:])
    crop[(slice(None), *in_box)] = image_czyx[(slice(None), *in_grid)]
    return crop


def paste_box(probabilities_kzyx: Tensor, box: Box, shape_zyx: Sequence[int]) -> Tensor:
    """Class probabilities (K', *box size) of a crop put back on a (Z, Y, X) grid: (K', Z, Y, X) float32 on the
    CPU, background (class 0) = 1 outside the box; the part of the box outside the grid is dropped."""
    classes = probabilities_kzyx.shape[0]
    out = torch.zeros((classes, *shape_zyx), dtype=torch.float32)
    out[0] = 1.0
    in_grid, in_box = box.overlap(shape_zyx)
    out[(slice(None), *in_grid)] = probabilities_kzyx[(slice(None), *in_box)].float().cpu()
    return out


def locate_then_segment(locator_fn: Callable[[Tensor], Tensor], segment_fn: Callable[[Tensor], Tensor],
                        image_czyx: Tensor, *, scale_zyx: Sequence[float] = (0.5, 0.25, 0.25),
                        margin_voxels: int = 30, crop_zyx: Sequence[int] = (96, 144, 224), divisor: int = 1,
                        device: str | torch.device = "cpu",
                        progress: Callable[[int, int], None] | None = None) -> tuple[Tensor, dict]:
    """Locate the structure, segment the crop around it, paste the result back into the whole volume.

    locator_fn, scale_zyx, margin_voxels, crop_zyx, divisor, device: as `locate_box`.
    segment_fn: crop float32 (C, z, y, x) on the CPU -> class probabilities (K', z, y, x) (one forward of the
        segmenter, or its sliding window); it also gets the whole image when the locator finds nothing.
    progress(done, 2): called with 1 after the locator, 2 after the segmenter.
    Returns (probabilities (K', Z, Y, X) float32 on the CPU, info {"box_start_zyx", "box_stop_zyx": lists of
    3 ints (the whole volume when nothing was found), "found": bool}).
    """
    _check_image(image_czyx)
    shape_zyx = tuple(image_czyx.shape[1:])
    box = locate_box(locator_fn, image_czyx, scale_zyx=scale_zyx, margin_voxels=margin_voxels,
                     crop_zyx=crop_zyx, divisor=divisor, device=device)
    found = box is not None
    if progress is not None:
        progress(1, 2)
    if not found:  # nothing located: the segmenter sees everything rather than nothing
        box = Box((0, 0, 0), shape_zyx)
    crop_probabilities = segment_fn(crop_box(image_czyx, box) if found else image_czyx)
    if tuple(crop_probabilities.shape[1:]) != box.size_zyx:
        raise SegCoreError(f"the segmenter returned shape {tuple(crop_probabilities.shape)} for a crop of "
                           f"{list(box.size_zyx)} voxels", fix="return (K, *crop size) class probabilities")
    info = {"box_start_zyx": list(box.start_zyx), "box_stop_zyx": list(box.stop_zyx), "found": found}
    if progress is not None:
        progress(2, 2)
    if not found:
        return crop_probabilities.float().cpu(), info
    return paste_box(crop_probabilities, box, shape_zyx), info
