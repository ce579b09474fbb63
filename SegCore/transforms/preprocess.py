"""`Preprocessing`: a list of named steps that training and inference replay alike, and that map a prediction
back onto the source grid exactly.

Steps (parameters and defaults in `STEPS`; docs/training.md lists them): reorient, resample, zoom, crop_foreground,
crop_box, crop_to_label, pad (spatial, invertible) and ct_window, clip_scale, zscore, percentile_minmax
(intensity, image only). `spec` is the list with every default filled in and numbers in one canonical form, so
`digest` (sha256 of its canonical JSON) changes exactly when a parameter does: it keys the case cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.transforms.geometry import GEOMETRY_STEPS, grid_from_json, grid_to_json
from SegCore.transforms.intensity import INTENSITY_STEPS
from SegCore.transforms.parameters import StepKind, resolve_step
from SegCore.volume import Grid, Volume

STEPS: dict[str, StepKind] = {**GEOMETRY_STEPS, **INTENSITY_STEPS}
RECORD_FORMAT = "segstudies-preprocessing"


@dataclass(frozen=True, eq=False)
class Preprocessed:
    """What `Preprocessing.apply` returns.

    image: float32 (C, Z, Y, X); label: uint8 or uint16 (Z, Y, X) or None; grid: where both lie;
    record: JSON-able facts of every step (source grid, crop boxes, pads, intensity values), for the inverse.
    """

    image: np.ndarray
    label: np.ndarray | None
    grid: Grid
    record: dict


def _label_array(label: Volume, grid: Grid) -> np.ndarray:
    if label.array.ndim != 3:
        raise SegCoreError(f"a label map is (Z, Y, X), got an array of shape {label.array.shape}")
    if (problem := grid.mismatch(label.grid)) is not None:
        raise SegCoreError(f"the label map is not on the image grid: {problem}",
                           fix="resample the label onto the image grid (segcore convert) or pair the right files")
    array = label.array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.rint(array)):
        raise SegCoreError("the label map holds non-integer values", fix="give a label map, not an image")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise SegCoreError(f"label values must lie in 0..65535, found {low}..{high}", fix="relabel the map")
    return array.astype(np.uint8 if high <= 255 else np.uint16, copy=False)


def _own(array: np.ndarray, source: np.ndarray, dtype) -> np.ndarray:
    """`array` contiguous and as `dtype`, copied where it still shares memory with the caller's `source` (steps
    that only crop or reorient return views), so that changing the output never changes the input."""
    if np.shares_memory(array, source):
        return np.array(array, dtype=dtype, order="C", copy=True)
    return np.ascontiguousarray(array, dtype=dtype)


class Preprocessing:
    """steps: list of JSON-able dicts {"name": ..., parameters...}; see the module docstring and `STEPS`."""

    def __init__(self, steps: list[dict]):
        if not isinstance(steps, (list, tuple)):
            raise SegCoreError(f"preprocessing must be a list of steps, got {type(steps).__name__}",
                               fix=f"give a list of {{\"name\": ...}} dicts; steps: {', '.join(sorted(STEPS))}")
        self._spec = [resolve_step(index, step, STEPS) for index, step in enumerate(steps)]
        self._digest = hashlib.sha256(json.dumps(self._spec, sort_keys=True, separators=(",", ":"))
                                      .encode()).hexdigest()

    @property
    def spec(self) -> list[dict]:
        """The steps with every default filled in (a fresh copy: JSON for plan.json and checkpoints)."""
        return json.loads(json.dumps(self._spec))

    @property
    def digest(self) -> str:
        """sha256 (hex) of the spec's canonical JSON: equal for equal parameters, whatever their spelling."""
        return self._digest

    def __repr__(self) -> str:
        return f"Preprocessing({[step['name'] for step in self._spec]}, digest={self._digest[:12]})"

    def output_grid(self, grid: Grid) -> Grid | None:
        """The grid `apply` gives for an image on `grid`, worked out without voxels (for planning patch sizes and
        memory); None when a step's output depends on the voxels (crop_foreground, crop_to_label)."""
        for step in self._spec:
            grid = STEPS[step["name"]].grid(step, grid)
            if grid is None:
                return None
        return grid

    def apply(self, image: Volume, label: Volume | None = None, *, overwrite: bool = False) -> Preprocessed:
        """Run every step on the image (Z, Y, X) or (C, Z, Y, X) and the label (Z, Y, X, on the image grid).

        The intensity steps normalise in place, on a float32 copy made before the first of them unless a step
        before has already made a new array, so the caller's image never changes. overwrite=True: the image's
        array is the caller's to give away (the Predictor's own float32 copy of what it read), and is changed in
        place instead of copied. An array the pipeline owns (its own copy, or the caller's with overwrite=True) is
        consumed by the steps that can (`StepKind.forward_owned`: the pad), so it must not be read afterwards."""
        array = image.array if image.array.ndim == 4 else image.array[None]
        array = array.astype(np.float32, copy=False)
        labels = None if label is None else _label_array(label, image.grid)
        grid = image.grid
        steps = []
        for step in self._spec:
            owned = array.flags.writeable and (overwrite or not np.may_share_memory(array, image.array))
            if step["name"] in INTENSITY_STEPS and not owned:
                array = np.array(array, dtype=np.float32, order="C")  # the pipeline's own, to change in place
            source, kind = grid, STEPS[step["name"]]
            forward = kind.forward_owned if owned and kind.forward_owned else kind.forward
            array, labels, grid, facts = forward(step, array, labels, grid)
            steps.append({"name": step["name"], "params": step, "input_grid": grid_to_json(source),
                          "output_grid": grid_to_json(grid), **facts})
        record = {"format": RECORD_FORMAT, "digest": self._digest, "channels": int(array.shape[0]),
                  "source_grid": grid_to_json(image.grid), "grid": grid_to_json(grid), "steps": steps}
        array = np.ascontiguousarray(array) if overwrite else _own(array, image.array, np.float32)
        return Preprocessed(array, None if labels is None else _own(labels, label.array, labels.dtype), grid, record)

    def invert_label(self, label_zyx: np.ndarray, record: dict) -> Volume:
        """A label map on the preprocessed grid -> a Volume on the source image's grid (same dtype).

        Each spatial step is undone in reverse order (resample with the step's label_mode; crops and pads
        exactly, outside a crop is 0)."""
        label_zyx = np.asarray(label_zyx)
        if label_zyx.ndim != 3:
            raise SegCoreError(f"a label map to invert is (Z, Y, X), got shape {label_zyx.shape}")
        return Volume(self._invert(label_zyx, record, probabilities=False), grid_from_json(record["source_grid"]))

    def invert_probabilities(self, prob_czyx: np.ndarray, record: dict) -> Volume:
        """Class probabilities (C, Z, Y, X) on the preprocessed grid -> float32 Volume on the source grid.

        Class by class, linearly where a resample is undone; outside a crop is background (class 0 = 1)."""
        prob_czyx = np.asarray(prob_czyx, dtype=np.float32)
        if prob_czyx.ndim != 4:
            raise SegCoreError(f"probabilities to invert are (C, Z, Y, X), got shape {prob_czyx.shape}")
        array = self._invert(prob_czyx, record, probabilities=True)
        return Volume(np.ascontiguousarray(array, dtype=np.float32), grid_from_json(record["source_grid"]))

    def _invert(self, array: np.ndarray, record: dict, *, probabilities: bool) -> np.ndarray:
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise SegCoreError("this is not a preprocessing record", fix="pass the record that apply() returned")
        if record.get("digest") != self._digest:
            raise SegCoreError("the preprocessing record was made with other steps or parameters",
                               fix="invert with the Preprocessing whose spec made the record")
        expected = tuple(record["grid"]["shape_zyx"])
        if tuple(array.shape[-3:]) != expected:
            raise SegCoreError(f"the array to invert has the size {tuple(array.shape[-3:])} (z, y, x), the "
                               f"preprocessed grid has {expected}", fix="invert the prediction made on that grid")
        for step in reversed(record["steps"]):
            inverse = STEPS[step["name"]].inverse
            if inverse is not None:
                array = inverse(step, array, probabilities)
        return np.ascontiguousarray(array)
