"""The automatic plan (after nnU-Net's experiment planner): spacing, patch and batch from the data and a budget.

    plan = resolve_plan("my.json", flags={"data": "Task04_Hippocampus", "memory_budget": 8000})
    plan["sampler"]["patch_zyx"], plan["training"]["batch_size"]   # chosen for 8000 MiB
    plan["training"]["autoplan"]                                   # where the numbers came from
    values = autoplan(plan, fingerprint, budget_bytes=8000 * 2**20)  # the planner alone

What is left "auto" is derived from the geometry of every labelled case (a `Fingerprint`, or `dataset_geometry`)
and `training.memory_budget_mb` (`--memory-budget`, MiB; null = no budget):

- a `resample` step's `spacing_xyz_mm` "auto": the median spacing of the cases; where one axis is coarser than
  3x the others in mm and shorter than a third of them in voxels, that axis takes the 10th percentile of its
  spacings instead (never finer than the other axes), as nnU-Net does against interpolation artefacts;
- `sampler.patch_zyx` "auto" (3D patches, with a budget): the median image after preprocessing, at most
  MAX_PATCH_SIDE a side, scaled down as a whole (each side rounded down to the network's divisor) until a batch
  of MIN_BATCH fits in the budget; nnU-Net shrinks the side that is largest against the median image, which
  keeps the same proportions. The `pad` steps then pad every case to at least the patch;
- `training.batch_size` "auto": MIN_BATCH while the patch had to shrink; when the whole median image fits, as
  many as fit, but no more than DATASET_SHARE of the dataset's voxels per step (nnU-Net's overfitting guard).
  Without a budget, "auto" is DEFAULT_BATCH.

The memory of one step is `SegCore.models.memory.training_step_memory` on the meta device (float32, Adam, no
convolution workspace): the same numbers on every machine, so the same data and budget give the same plan.
A given patch or batch is kept and checked against the budget; a budget too small even for the smallest patch
is refused, naming the smallest budget that fits.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from SegCore.errors import SegCoreError

ANISOTROPY = 3.0  # nnU-Net's threshold: coarse axis spacing > 3x the others, and < 1/3 of their voxels
COARSE_PERCENTILE = 10
MAX_PATCH_SIDE = 256  # voxels; nnU-Net's first patch holds 256^3 voxels
MIN_BATCH = 2  # nnU-Net's smallest batch
DEFAULT_BATCH = 2  # "auto" without a budget (the default plan's batch)
DATASET_SHARE = 0.05  # a step sees at most 5% of the dataset's voxels
MIB = 2 ** 20
FIX = "--memory-budget"


@dataclass
class Pending:
    """What `begin` found "auto" (before derive), for `finish` (after derive)."""

    budget_bytes: int | None
    patch_auto: bool
    batch_auto: bool
    grids: list | None = None
    placeholders: list[int] = field(default_factory=list)  # resample steps left "auto" (no data)
    spacing_record: dict = field(default_factory=dict)


# --- geometry --------------------------------------------------------------------------------------------------
def dataset_geometry(root, layout: str = "auto", options: dict | None = None) -> dict:
    """{"cases": [{"case_id", "shape_zyx", "spacing_xyz_mm", "direction_lps"}]} of every labelled case (each image
    is read once); `autoplan` takes it where it takes a fingerprint."""
    from SegCore.datasets import load_case_image, open_dataset

    cases = []
    for case in open_dataset(root, layout, **(options or {})).labelled_cases():
        grid = load_case_image(case).grid
        cases.append({"case_id": case.case_id, "shape_zyx": list(grid.shape_zyx),
                      "spacing_xyz_mm": list(grid.spacing_xyz_mm), "direction_lps": [list(r) for r in
                                                                                   grid.direction_lps]})
    return {"cases": cases}


def _direction(case: dict) -> tuple:
    """3x3 rows; from `direction_lps` (3x3 or 9 numbers), else the orientation code ('LPS'), else the identity."""
    if case.get("direction_lps") is not None:
        flat = np.asarray(case["direction_lps"], dtype=float).reshape(3, 3)
        return tuple(tuple(row) for row in flat.tolist())
    columns = np.eye(3)
    for axis, letter in enumerate(case.get("orientation") or "LPS"):
        patient = "LPSRAI".index(letter)
        columns[:, axis] = np.eye(3)[patient % 3] * (1 if patient < 3 else -1)
    return tuple(tuple(row) for row in columns.tolist())


def case_grids(fingerprint) -> list:
    """The labelled cases of a fingerprint (`Fingerprint`, its dict, `dataset_geometry`, or a list of Grid) as Grid."""
    from SegCore.volume import Grid

    if isinstance(fingerprint, list | tuple) and all(isinstance(g, Grid) for g in fingerprint):
        grids = list(fingerprint)
    else:
        data = fingerprint if isinstance(fingerprint, dict) else fingerprint.to_dict()
        grids = [Grid(tuple(int(n) for n in c["shape_zyx"]), tuple(float(s) for s in c["spacing_xyz_mm"]),
                      (0.0, 0.0, 0.0), _direction(c))
                 for c in data.get("cases", []) if c.get("label_values", [0])]  # fingerprints list test cases too
    if not grids:
        raise SegCoreError("the dataset has no labelled case to plan from",
                           fix="add labelled cases, or set the patch, spacing and batch by hand")
    return grids


def _through(steps: list[dict], grid):
    """`grid` after resolved `steps`; a step whose output depends on the voxels (crops) keeps its input grid."""
    from SegCore.transforms import STEPS

    for step in steps:
        grid = STEPS[step["name"]].grid(step, grid) or grid
    return grid


def target_spacing(grids: list, steps: list[dict] = ()) -> tuple[list[float], str]:
    """(spacing_xyz_mm, why): the target of an "auto" resample step for cases on `grids`, seen after `steps`
    (the resolved steps before the resample step: a reorient permutes the axes)."""
    seen = [_through(list(steps), g) for g in grids]
    spacings = np.array([g.spacing_xyz_mm for g in seen], dtype=float)  # (n, 3) x, y, z
    sizes = np.array([g.shape_zyx[::-1] for g in seen], dtype=float)  # (n, 3) x, y, z
    target, size = np.median(spacings, axis=0), np.median(sizes, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(3) if a != coarse]
    why = f"median of {len(grids)} cases"
    if target[coarse] > ANISOTROPY * target[others].max() and size[coarse] * ANISOTROPY < size[others].min():
        target[coarse] = max(np.percentile(spacings[:, coarse], COARSE_PERCENTILE), target[others].max())
        why += f"; {'xyz'[coarse]} is anisotropic: the {COARSE_PERCENTILE}th percentile of its spacings"
    return [float(s) for s in target], why


# --- the planner -----------------------------------------------------------------------------------------------
class _Estimator:
    """Bytes of one training step of the plan's network for (batch, window), on the meta device, memoised."""

    def __init__(self, plan: dict):
        from SegCore.models import MODELS
        from SegCore.models.memory import build_on_meta

        self.name, self.arguments = plan["model"]["name"], plan["model"]["arguments"]
        self.builder = MODELS[self.name].builder
        self.model = build_on_meta(self.builder, self.arguments)
        self.divisor = int(getattr(self.model, "divisor", 1))
        self.channels = int(self.arguments.get("in_channels", self.arguments.get("slices", 1)))
        self.cache: dict = {}

    def __call__(self, batch: int, window) -> int:
        from SegCore.models.memory import training_step_memory

        key = (int(batch), tuple(int(n) for n in window))
        if key[0] == 1:
            # One sample: BatchNorm refuses a training forward with one value per channel (the smallest patches
            # reach the bottleneck as one voxel), so extrapolate from 2 and 3 samples: the step grows linearly.
            return max(1, 2 * self(2, window) - self(3, window))
        if key not in self.cache:
            self.cache[key] = training_step_memory(self.builder, self.arguments, (key[0], self.channels, *key[1]),
                                                   device="meta", model=self.model)[0]
        return self.cache[key]


def scaled_patches(base_zyx, divisor: int) -> list[list[int]]:
    """Every patch s * base_zyx (s in (0, 1]) with sides rounded down to `divisor` (at least `divisor`), smallest
    first: the candidates of the search, each at least as large as the one before along every axis."""
    base = [Fraction(float(b)) for b in base_zyx]
    top = [max(1, int(b // divisor)) for b in base]
    # side a becomes k * divisor where s reaches k * divisor / base[a]; exact fractions keep ties deterministic
    events = sorted({Fraction(k * divisor) / base[a] for a in range(3) for k in range(2, top[a] + 1)})
    patches = [[divisor] * 3]
    for s in events:
        patches.append([divisor * max(1, min(top[a], int(s * base[a] // divisor))) for a in range(3)])
    return patches


def _refuse(need: int, what: str, batch: int, budget_bytes: int, smaller: str) -> SegCoreError:
    need_mb = math.ceil(need / MIB)
    return SegCoreError(f"{FIX} {budget_bytes / MIB:g} MB cannot hold one training step: {what} with batch {batch} "
                        f"needs {need_mb} MB (estimated)", fix=f"give {FIX} {need_mb} or more, or {smaller}")


def _largest_patch(estimate: _Estimator, base_zyx, batch: int, budget_bytes: int) -> tuple[list[int], bool]:
    """The largest of `scaled_patches(base_zyx)` that fits `batch` in the budget (bisection: the memory grows
    along the list), and whether it is the last (all of the base image)."""
    candidates = scaled_patches(base_zyx, estimate.divisor)
    if estimate(batch, candidates[0]) > budget_bytes:
        raise _refuse(estimate(batch, candidates[0]), f"{estimate.name}'s smallest patch {candidates[0]}", batch,
                      budget_bytes, "a smaller network (model.arguments)")
    low, high = 0, len(candidates) - 1
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if estimate(batch, candidates[middle]) <= budget_bytes else (low, middle - 1)
    return candidates[low], low == len(candidates) - 1


def _largest_batch(estimate: _Estimator, window, smallest: int, cap: int | None, budget_bytes: int) -> int:
    """The largest batch from `smallest` to `cap` (None: no cap) that fits: predicted from the step's growth per
    sample (the estimate is linear in the batch), then confirmed by the estimator."""
    first = estimate(smallest, window)
    per_sample = max(1, estimate(smallest + 1, window) - first)
    batch = smallest + max(0, (budget_bytes - first) // per_sample)
    batch = batch if cap is None else min(batch, cap)
    while batch > smallest and estimate(batch, window) > budget_bytes:
        batch -= 1
    while (cap is None or batch < cap) and estimate(batch + 1, window) <= budget_bytes:
        batch += 1
    return batch


def autoplan(plan: dict, fingerprint, budget_bytes: int, *, patch_zyx=None, batch_size=None) -> dict:
    """The spacing, patch and batch for `plan` on the cases of `fingerprint` within `budget_bytes` per step.

    plan: a resolved plan (network arguments complete); its "auto" resample spacings are derived here. patch_zyx,
    batch_size: given values to keep (None: derive them; a patch is derived for the patch3d sampler only, other
    samplers keep their window). fingerprint: see `case_grids`; None when nothing needs the data (given values).
    Returns {"spacing_xyz_mm" (None when no resample step was "auto"), "patch_zyx" (the window: patch, crop or
    slice size), "batch_size", "estimate_bytes", "record"}: record is the JSON-able why, written into plan.json.
    """
    from SegCore.transforms import Preprocessing

    kind, training = plan["sampler"]["kind"], plan["training"]
    if kind == "whole":
        raise SegCoreError(f"{FIX} plans patches and slices; sampler.kind 'whole' feeds each whole image",
                           fix=f"use sampler.kind patch3d, or leave out {FIX}")
    grids = None if fingerprint is None else case_grids(fingerprint)
    steps, record = copy.deepcopy(plan["preprocessing"]), {"budget_mb": budget_bytes / MIB}
    auto = [i for i, s in enumerate(steps) if s.get("name") == "resample" and s.get("spacing_xyz_mm") == "auto"]
    spacing = None
    if (auto or (kind == "patch3d" and patch_zyx is None)) and grids is None:
        raise SegCoreError("the automatic plan needs the data's geometry", fix="give --data DIR (or a fingerprint)")
    if auto:
        spacing, record["spacing_why"] = target_spacing(grids, Preprocessing(steps[:auto[0]]).spec)
        for i in auto:
            steps[i]["spacing_xyz_mm"] = record["spacing_xyz_mm"] = spacing
    shapes = None
    if grids is not None:
        resolved = Preprocessing(steps).spec
        shapes = np.array([_through(resolved, g).shape_zyx for g in grids], dtype=float)  # (n, 3)
        record.update(cases=len(grids), median_shape_zyx=[float(n) for n in np.median(shapes, axis=0)])
    estimate = _Estimator(plan)
    smallest = int(batch_size) if batch_size is not None else MIN_BATCH
    full = True  # the patch is all of the median image: only then does a larger budget buy a larger batch
    if kind == "patch3d" and patch_zyx is None:
        # without a pad step a case smaller than the patch is refused by the sampler: plan on the smallest case
        padded = any(s.get("name") == "pad" for s in steps)
        base = np.minimum(np.median(shapes, axis=0) if padded else shapes.min(axis=0), MAX_PATCH_SIDE)
        window, full = _largest_patch(estimate, base, smallest, budget_bytes)
        record["patch_why"] = (f"the median image (at most {MAX_PATCH_SIDE} a side)" if full else
                               f"the median image scaled down until a batch of {smallest} fits")
    else:
        key = {"patch3d": "patch_zyx", "crop": "size_zyx"}.get(kind, "size_yx")
        window = patch_zyx if kind == "patch3d" else plan["sampler"][key]
        if estimate(smallest, window) > budget_bytes:
            raise _refuse(estimate(smallest, window), f"sampler.{key} {list(window)}", smallest, budget_bytes,
                          f"a smaller sampler.{key} or batch")
    batch = smallest
    if batch_size is None and full:
        cap = None if shapes is None else max(smallest, int(DATASET_SHARE * shapes.prod(axis=1).sum()
                                                            // math.prod(window)))
        batch = _largest_batch(estimate, window, smallest, cap, budget_bytes)
        batch -= batch % 2 if training.get("even_batch") else 0
        record["batch_why"] = "as many as fit" + ("" if cap is None else
                                                  f", at most {DATASET_SHARE:.0%} of the dataset's voxels per step")
    elif batch_size is None:
        record["batch_why"] = f"the minimum ({MIN_BATCH}): the patch took the budget"
    used = estimate(batch, window)
    record.update(patch_zyx=list(window), batch_size=batch, estimate_mb=round(used / MIB, 1),
                  method="training_step_memory on the meta device (float32 Adam step, no workspace)")
    return {"spacing_xyz_mm": spacing, "patch_zyx": list(window), "batch_size": batch, "estimate_bytes": used,
            "record": record}


# --- in resolve_plan -------------------------------------------------------------------------------------------
def _budget_bytes(plan: dict) -> int | None:
    value = plan["training"].get("memory_budget_mb")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise SegCoreError(f"plan key 'training.memory_budget_mb' must be a number of MB > 0 or null, got {value!r}",
                           fix=f"e.g. {FIX} 8000 (MiB per device), or null for no budget")
    return int(value * MIB)


def begin(plan: dict, facts, fingerprint=None) -> Pending:
    """Before derive: note what is "auto", read the cases' geometry where needed (from `fingerprint`, else the
    dataset at data.root, else the one case of `facts`) and fill "auto" resample spacings (a placeholder, put
    back by `finish`, when there is no data)."""
    from SegCore.transforms import Preprocessing

    budget = _budget_bytes(plan)
    steps = plan["preprocessing"]
    auto = [i for i, s in enumerate(steps) if isinstance(s, dict) and s.get("name") == "resample"
            and s.get("spacing_xyz_mm") == "auto"]
    pending = Pending(budget, plan["sampler"].get("patch_zyx") == "auto", plan["training"]["batch_size"] == "auto")
    if auto or (budget is not None and (pending.patch_auto or pending.batch_auto)):
        if fingerprint is not None:
            pending.grids = case_grids(fingerprint)
        elif facts is not None and plan["data"]["root"] is not None:
            data = plan["data"]
            pending.grids = case_grids(dataset_geometry(data["root"], data["layout"], data.get("options")))
        elif facts is not None:
            pending.grids = case_grids({"cases": [{"shape_zyx": facts.shape_zyx, "spacing_xyz_mm":
                                                   facts.spacing_xyz_mm, "direction_lps": facts.direction_lps}]})
    if auto and pending.grids is not None:
        spacing, why = target_spacing(pending.grids, Preprocessing(steps[:auto[0]]).spec)
        pending.spacing_record = {"spacing_xyz_mm": spacing, "spacing_why": why}
    for i in auto:
        steps[i]["spacing_xyz_mm"] = pending.spacing_record.get("spacing_xyz_mm", [None, None, None])
    pending.placeholders = [] if pending.grids is not None else auto
    return pending


def finish(plan: dict, pending: Pending, facts, padded):
    """After derive: fill the patch and batch from the budget (or check given ones against it), write the record
    into plan["training"]["autoplan"]; returns the padded image shape of `facts` after the (new) preprocessing."""
    from SegCore.training.derive import preprocessed_shape

    for i in pending.placeholders:
        plan["preprocessing"][i]["spacing_xyz_mm"] = "auto"
    training, sampler = plan["training"], plan["sampler"]
    if pending.budget_bytes is None or (facts is None and pending.grids is None):
        # no budget, or no data to plan on (the budget is checked once the data is given): the default batch
        if pending.batch_auto:
            training["batch_size"] = DEFAULT_BATCH
        if pending.spacing_record:
            training["autoplan"] = dict(pending.spacing_record)
        return padded
    derive_patch = pending.patch_auto and sampler["kind"] == "patch3d"
    values = autoplan(plan, pending.grids, pending.budget_bytes,
                      patch_zyx=None if derive_patch else sampler.get("patch_zyx"),
                      batch_size=None if pending.batch_auto else training["batch_size"])
    if sampler["kind"] == "patch3d":
        sampler["patch_zyx"] = values["patch_zyx"]
    training["batch_size"] = values["batch_size"]
    if derive_patch:  # cases smaller than the median image are padded up to the patch (the sampler needs it)
        for step in plan["preprocessing"]:
            if step["name"] == "pad":
                step["min_zyx"] = [max(a, b) for a, b in zip(step["min_zyx"], values["patch_zyx"], strict=True)]
    if derive_patch or pending.batch_auto or pending.spacing_record:
        training["autoplan"] = {**pending.spacing_record, **values["record"]}
    return preprocessed_shape(plan["preprocessing"], facts) if facts is not None else padded
