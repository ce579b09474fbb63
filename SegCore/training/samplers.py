"""Where a training sample lies in a cached case: 3D patches, 2D slices, 2.5D stacks, whole volumes, fixed crops.

    sampler = Sampler({"kind": "patch3d", "patch_zyx": [64, 96, 96], "foreground_fraction": 0.33})
    image, label, info = sampler.sample(cached_case, augmentation, rng)

Every kind chooses a window on the volume (its integer start and size, (z, y, x)) and hands it to
`augmentation.sample_patch`, which crops first and resamples the patch once; outside the volume the image is 0
and the label 0. Kinds (all randomness from `rng`):
- patch3d: `patch_zyx`; with probability `foreground_fraction` (default 0.33) the patch is centred on a random
  stored voxel of a class chosen uniformly among the classes present in the case (voxel at patch index
  `patch_zyx // 2`), else its start is uniform with the patch inside the volume.
- slice2d: one slice along `axis` ('axial' = z, 'coronal' = y, 'sagittal' = x: index axes of the canonical
  orientation that preprocessing's reorient step gives), of in-plane size `size_yx` (rows, columns of the slice:
  (y, x) axial, (z, x) coronal, (z, y) sagittal; default the whole plane), any slice equally likely.
- stack25d: `k` adjacent slices (k odd) centred on a slice; image (C * k, H, W) with channel c * k + j holding
  channel c of slice j, and the centre slice's label (H, W) (`"labels": "centre"`, the default) or the k
  slices' labels (k, H, W) (`"labels": "stack"`: networks with one output map per slice, the RSTN). Slices
  beyond the volume's ends are 0.
- slice2d and stack25d take `foreground_fraction` too (default 0): the slice through a random label voxel. The
  window is centred on that voxel in-plane too, except along a side the window spans whole (`size_yx` None, or
  the plane's own size): there it is the whole plane, unshifted (no position prior: inference sees it so).
- whole: the whole volume. crop: a `size_zyx` window at the centre of the label's bounding box (`"centre":
  "foreground"`, the default: the atrium study's crop around the located atrium; a case without foreground
  falls back to the volume's centre), or at the volume's centre (`"centre": "volume"`), kept inside the volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from SegCore.errors import SegCoreError

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
KINDS = {
    "patch3d": {"patch_zyx": None, "foreground_fraction": 0.33},
    "slice2d": {"axis": "axial", "size_yx": None, "foreground_fraction": 0.0},
    "stack25d": {"axis": "axial", "k": 3, "size_yx": None, "foreground_fraction": 0.0, "labels": "centre"},
    "whole": {},
    # centred on the label by default: a training crop at the volume's centre would miss an off-centre structure
    "crop": {"size_zyx": None, "centre": "foreground"},
}
CROP_CENTRES = ("foreground", "volume")
STACK_LABELS = ("centre", "stack")  # stack25d: the centre slice's label, or every slice's


def _sizes(value, count: int, name: str, kind: str) -> list[int] | None:
    if value is None:
        return None
    if (not isinstance(value, Sequence) or len(value) != count
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise SegCoreError(f"sampler {kind}: {name} must be {count} positive whole numbers, got {value!r}",
                           fix=f"e.g. \"{name}\": {[64] * count}")
    return [int(v) for v in value]


def _resolve(spec: dict) -> dict:
    """The spec with defaults filled and every value checked (one SegCoreError naming the key otherwise)."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        kind = spec.get("kind") if isinstance(spec, dict) else spec
        raise SegCoreError(f"unknown sampler kind {kind!r}", fix=f"use one of {', '.join(KINDS)}")
    kind = spec["kind"]
    unknown = sorted(set(spec) - set(KINDS[kind]) - {"kind"})
    if unknown:
        raise SegCoreError(f"sampler {kind}: unknown key(s) {unknown}",
                           fix=f"valid keys are kind, {', '.join(KINDS[kind]) or '(none)'}")
    out = {"kind": kind, **KINDS[kind], **spec}
    if kind == "patch3d":
        if out["patch_zyx"] is None:
            raise SegCoreError("sampler patch3d needs patch_zyx", fix='e.g. "patch_zyx": [64, 96, 96]')
        out["patch_zyx"] = _sizes(out["patch_zyx"], 3, "patch_zyx", kind)
    if kind == "crop":
        if out["size_zyx"] is None:
            raise SegCoreError("sampler crop needs size_zyx", fix='e.g. "size_zyx": [96, 144, 224]')
        out["size_zyx"] = _sizes(out["size_zyx"], 3, "size_zyx", kind)
        if out["centre"] not in CROP_CENTRES:
            raise SegCoreError(f"sampler crop: unknown centre {out['centre']!r}", fix=f"use one of {CROP_CENTRES}")
    if kind in ("slice2d", "stack25d"):
        if out["axis"] not in AXES:
            raise SegCoreError(f"sampler {kind}: unknown axis {out['axis']!r}", fix=f"use one of {', '.join(AXES)}")
        out["size_yx"] = _sizes(out["size_yx"], 2, "size_yx", kind)
    if kind == "stack25d":
        k = out["k"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise SegCoreError(f"sampler stack25d: k must be an odd whole number >= 1, got {k!r}",
                               fix="e.g. \"k\": 3 (the slice and one neighbour on each side)")
        if out["labels"] not in STACK_LABELS:
            raise SegCoreError(f"sampler stack25d: unknown labels {out['labels']!r}",
                               fix=f"use one of {STACK_LABELS} (stack: one label map per slice)")
    if "foreground_fraction" in out:
        f = out["foreground_fraction"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise SegCoreError(f"sampler {kind}: foreground_fraction must be a number in [0, 1], got {f!r}",
                               fix="e.g. 0.33 (a third of the patches centred on a label voxel)")
        out["foreground_fraction"] = float(f)
    return out


class Sampler:
    """Chooses and cuts one training sample from a cached case (see the module docstring for the kinds).

    spec: JSON-able dict; `self.spec` is the resolved spec (defaults filled) that goes into plan.json.
    """

    def __init__(self, spec: dict):
        self.spec = _resolve(spec)
        self.kind = self.spec["kind"]
        self.axis = AXES.get(self.spec.get("axis"))  # the slicing index axis of 2D kinds, else None

    @property
    def spatial_dims(self) -> int:
        """2 for slice2d / stack25d (samples (C, H, W)), else 3."""
        return 2 if self.axis is not None else 3

    def input_channels(self, image_channels: int) -> int:
        """Channels the network sees: the image's, times k for 2.5D stacks."""
        return image_channels * (self.spec["k"] if self.kind == "stack25d" else 1)

    def window_zyx(self, shape_zyx: Sequence[int]) -> tuple[int, int, int]:
        """The window cut from a volume of `shape_zyx`, as (z, y, x) sizes (1 or k along a slicing axis)."""
        if self.kind == "patch3d":
            return tuple(self.spec["patch_zyx"])
        if self.kind == "crop":
            return tuple(self.spec["size_zyx"])
        if self.kind == "whole":
            return tuple(int(n) for n in shape_zyx)
        window = [int(n) for n in shape_zyx]
        in_plane = [a for a in range(3) if a != self.axis]
        if self.spec["size_yx"] is not None:
            for a, size in zip(in_plane, self.spec["size_yx"], strict=True):
                window[a] = size
        window[self.axis] = self.spec["k"] if self.kind == "stack25d" else 1
        return tuple(window)

    def check(self, cases) -> None:
        """Refuse cases the sampler cannot use: no label, or smaller than the window (slicing axis excepted)."""
        for case in cases:
            if case.label is None:
                raise SegCoreError(f"case {case.case_id} has no label, so it cannot be a training sample",
                                   fix="train on labelled cases only (or pseudo-label it first)")
            window = self.window_zyx(case.shape_zyx)
            too_big = [a for a in range(3) if a != self.axis and window[a] > case.shape_zyx[a]]
            if too_big:
                raise SegCoreError(
                    f"the {self.kind} sampler's window {list(window)} (z, y, x) is larger than case "
                    f"{case.case_id} after preprocessing {list(case.shape_zyx)}",
                    fix="choose a smaller patch/size, or add a preprocessing pad step with min_zyx at least the "
                        "window")

    def choose(self, case, rng: np.random.Generator) -> tuple[tuple[int, int, int], int | None]:
        """(start (z, y, x) of the window, the class it is centred on or None for a random / fixed window)."""
        shape = case.shape_zyx
        window = self.window_zyx(shape)
        if self.kind == "whole":
            return (0, 0, 0), None
        if self.kind == "crop":
            centre = [(n - 1) // 2 for n in shape]
            if self.spec["centre"] == "foreground" and case.foreground_box_zyx is not None:
                low, high = case.foreground_box_zyx
                centre = [(a + b - 1) // 2 for a, b in zip(low, high, strict=True)]
            start = [min(max(c - w // 2, 0), n - w) for c, w, n in zip(centre, window, shape, strict=True)]
            return tuple(start), None
        if rng.random() < self.spec["foreground_fraction"]:
            classes = sorted(v for v, locations in case.class_locations.items() if len(locations))
            if classes:
                value = classes[int(rng.integers(len(classes)))]
                locations = case.class_locations[value]
                voxel = locations[int(rng.integers(len(locations)))]
                start = [int(v) - w // 2 for v, w in zip(voxel, window, strict=True)]
                if self.axis is not None:  # a side spanned whole stays whole: only the slice comes from the voxel
                    start = [0 if a != self.axis and window[a] >= shape[a] else v for a, v in enumerate(start)]
                return tuple(start), value
        start = []
        for a in range(3):
            if a == self.axis:  # any slice may be the centre one; neighbours past the ends are padding
                start.append(int(rng.integers(shape[a])) - window[a] // 2)
            else:
                start.append(int(rng.integers(shape[a] - window[a] + 1)))
        return tuple(start), None

    def shapes(self, case) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(image, label) shapes of one sample of `case`: (C, *spatial) (C * k for 2.5D) and (*spatial)."""
        window = self.window_zyx(case.shape_zyx)
        if self.axis is None:
            return (case.num_channels, *window), window
        plane = tuple(n for a, n in enumerate(window) if a != self.axis)
        slices = window[self.axis]
        label = (slices, *plane) if self.spec.get("labels") == "stack" else plane
        return (case.num_channels * slices, *plane), label

    def sample(self, case, augmentation, rng: np.random.Generator, out: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, dict]:
        """One sample: image float32 (C, *spatial) (C * k for 2.5D), label (*spatial) in the case's label dtype
        ((k, H, W) for a stack25d with labels "stack"), info {case_id, start_zyx, class (the class it is centred
        on, or None)}. out: optional float32 array of the image's shape (`shapes`) that receives the image (a
        batch's slot: no copy of the sample in between)."""
        window = self.window_zyx(case.shape_zyx)
        start, value = self.choose(case, rng)
        centre = [s + (w - 1) / 2 for s, w in zip(start, window, strict=True)]
        patch_out = out
        if out is not None and self.axis is not None:  # the (C, *window) patch as a view of the (C * k, H, W) slot
            patch_out = np.moveaxis(out.reshape(case.num_channels, window[self.axis], *out.shape[1:]), 1,
                                    self.axis + 1)
        image, label = augmentation.sample_patch(case.image, case.label, centre, window, rng, out=patch_out)
        if self.axis is not None:
            image = np.moveaxis(image, self.axis + 1, 1)  # (C, slices, H, W)
            label = np.moveaxis(label, self.axis, 0)  # (slices, H, W)
            if self.spec.get("labels") != "stack":
                label = label[label.shape[0] // 2]
            image = out if out is not None else image.reshape(image.shape[0] * image.shape[1], *image.shape[2:])
        return image, label, {"case_id": case.case_id, "start_zyx": start, "class": value}
