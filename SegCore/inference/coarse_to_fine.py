"""RSTN coarse-to-fine testing (the pancreas study): a coarse pass per plane, fusion, then fine rounds until the
masks of two successive rounds agree.

    result = coarse_to_fine({"axial": rstn_z, "coronal": rstn_y, "sagittal": rstn_x}, image_zyx)
    result["probabilities"]                   # (2, Z, Y, X) float32, [1 - p, p] of the last round
    result["rounds"], result["converged"], result["inter_dice"], result["dice_at"], result["mask"]
    result["extras"]["round-at-0.95"]         # (Z, Y, X) bool: the mask the study scores at that threshold

The rules, from the study's code (OrganSegRSTN_PyTorch: coarse_testing.py, coarse2fine_testing.py,
oracle_testing.py, utils.post_processing):

- planes: one RSTN per plane, any subset of the three. "axial" cuts a (Z, Y, X) volume along z into (Y, X)
  images, "coronal" along y into (Z, X), "sagittal" along x into (Z, Y), as the training sampler does.
- stacks: stack j holds slices j - h .. j + h (h = slices // 2, the study: 3 slices), indices clamped at the
  volume's ends (the study's max(0, j - 1), min(n - 1, j + 1)). The map a stack returns for a clamped duplicate
  is dropped, so a slice's probability is the mean of the maps of the stacks that hold it at its own position
  (with 3 slices: 2 stacks at the ends, 3 inside).
- fusion: the mean of the planes' probabilities; the mask is mean >= `threshold` (the study: 0.5).
- round 0 is the coarse pass, fused, its mask not filtered. Each fine round refines every plane from the
  previous round's fused probabilities (saliency input) and mask (RSTN.refine crops to its box); a stack none
  of whose slices holds a mask voxel is not run and counts as 0 in the mean (the study's shortcut). With
  `largest_component` the round's mask keeps the 6-connected components of at least half the largest one's size
  (post_processing with threshold 0.5; the study also leaves masks of more than half the volume unfiltered,
  a speed shortcut not kept here), and the probability of a removed voxel is set to 0.
- stop: when the inter-round Dice (of two successive masks; 1 when both are empty) is >= `convergence_dice`,
  or after `max_rounds` (the study: 0.99, 10). An empty round-0 mask leaves nothing to refine: round 0 stands.
- dice_at: the study reports each case at inter-round Dice thresholds 0.90, 0.95, 0.98 and 0.99 (the first
  round reaching it, else its last); here the round (1 = the first fine round), None when never reached.
- oracle (diagnosis): with `oracle_label` one fine round runs on the label's box instead (RSTN mode "oracle":
  saliency from the model's own coarse map), stacks without label voxels skipped, fused as above; with
  `largest_component` its mask is filtered as the study's oracle_fusion filters F2P (below).
- extras (`extras=True`), the masks the study's scripts score besides the final one, each (Z, Y, X) bool:
  "<pass>-<view>" per plane (probability >= `threshold`: coarse_testing.py / oracle_testing.py), with several
  planes "<pass>-F<v>" (the planes' summed probabilities >= v - 0.5, v = 1 .. number of planes: F1, F2, F3 of
  coarse_fusion.py / oracle_fusion.py) and, with `largest_component`, "<pass>-F<v>P" (F<v> filtered, only
  components holding a seed voxel counted, the seeds the highest non-empty F: the study's S = F3, else F2, else
  F1); <pass> is "coarse" (round 0) or "oracle". Without the oracle also "round-at-<t>" for each of
  `thresholds` (the mask of the round `dice_at` names; when never reached, the last round's, which is the
  study's round max_rounds whenever `convergence_dice` is the largest threshold).
- progress(done, total), when given: one step per plane and round, total = planes x (1 + max_rounds) (the
  oracle: planes x 2); a run that converges early jumps to total at its end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from SegCore.errors import SegCoreError
from SegCore.inference.settings import VIEWS
from SegCore.models.rstn import inter_iteration_dice

COMPONENT_FRACTION = 0.5  # the study keeps components of at least this fraction of the largest one's size


def keep_large_components(mask_zyx: Tensor, fraction: float = COMPONENT_FRACTION,
                          seeds_zyx: Tensor | None = None) -> Tensor:
    """The 6-connected components of a bool (Z, Y, X) mask with at least `fraction` x the largest one's voxels
    (fraction 1: the largest only, ties kept). seeds_zyx: bool (Z, Y, X); when given, only components holding a
    seed voxel count (the others are removed, and the largest is the largest seeded one: the study's
    post_processing(F, S, ...)). Returns a bool (Z, Y, X) tensor on the CPU."""
    labels, count = ndimage.label(mask_zyx.cpu().numpy())  # scipy's default 3D structure: the 6 faces
    if count <= 1 and seeds_zyx is None:
        return mask_zyx.cpu().bool()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    candidate = np.ones(count, dtype=bool)
    if seeds_zyx is not None:
        candidate = np.zeros(count + 1, dtype=bool)
        candidate[labels[seeds_zyx.cpu().numpy().astype(bool)]] = True
        candidate = candidate[1:]
    if not candidate.any():
        return torch.zeros(mask_zyx.shape, dtype=torch.bool)
    keep = candidate & (sizes >= fraction * sizes[candidate].max())
    return torch.from_numpy(np.concatenate([[False], keep])[labels])


def fusion_masks(mean_zyx: Tensor, planes: int, prefix: str, filtered: bool) -> dict[str, Tensor]:
    """The study's fusions of `planes` planes from their mean probability (Z, Y, X): "<prefix>-F<v>" (summed
    probability >= v - 0.5) and, when `filtered`, "<prefix>-F<v>P" (seeded by the highest non-empty F<v>)."""
    votes = [mean_zyx * planes >= v - 0.5 for v in range(1, planes + 1)]
    masks = {f"{prefix}-F{v}": mask for v, mask in enumerate(votes, start=1)}
    if filtered:
        seeds = next((mask for mask in reversed(votes) if bool(mask.any())), votes[0])
        masks.update({f"{prefix}-F{v}P": keep_large_components(mask, seeds_zyx=seeds)
                      for v, mask in enumerate(votes, start=1)})
    return masks


def threshold_name(threshold: float) -> str:
    """'round-at-0.90': the extra that holds the mask at inter-round Dice `threshold` (two decimals or more)."""
    text = f"{threshold:.2f}"
    return f"round-at-{text if float(text) == float(threshold) else repr(float(threshold))}"


def stack_ids(n: int, slices: int) -> Tensor:
    """(n, slices) int64: the slice indices of every stack along an axis of n slices, clamped at the ends."""
    half = slices // 2
    return (torch.arange(n)[:, None] + torch.arange(-half, half + 1)[None]).clamp(0, n - 1)


def stack_average(run: Callable[..., Tensor], volumes: Sequence[Tensor], axis: int, out_zyx: Tensor, *,
                  weight: float = 1.0, slices: int = 3, batch: int = 8, device: str | torch.device = "cpu",
                  active: Tensor | None = None) -> None:
    """Add `weight` x the stack-averaged probability of one plane to `out_zyx` (float32 (Z, Y, X), in place).

    run: (one (B, slices, H, W) float32 tensor per volume, on `device`) -> (B, slices, H, W) probabilities.
    volumes: (Z, Y, X) tensors on the CPU, cut the same way along `axis` (0 = z, 1 = y, 2 = x) into stacks.
    active: (n,) bool, the stacks to run (default all); a stack not run counts as 0 in every mean.
    """
    n = out_zyx.shape[axis]
    half = slices // 2
    ids = stack_ids(n, slices)
    centre = torch.arange(n)
    # stacks holding slice s at their own position: j in [s - h, s + h] within the volume
    count = ((centre + half).clamp(max=n - 1) - (centre - half).clamp(min=0) + 1).float()
    planes = [v.movedim(axis, 0) for v in volumes]
    out = out_zyx.movedim(axis, 0)  # a view: index_add_ writes into out_zyx
    todo = centre if active is None else centre[active]
    cuda = torch.device(device).type == "cuda"
    for first in range(0, len(todo), batch):
        js = todo[first:first + batch]
        stacks = [p[ids[js]].float() for p in planes]  # (B, slices, H, W) each
        if cuda:
            stacks = [s.pin_memory() for s in stacks]
        maps = run(*(s.to(device, non_blocking=True) for s in stacks)).float().cpu()
        for k in range(slices):
            target = js - half + k
            inside = (target >= 0) & (target < n)
            rows = target[inside]
            out.index_add_(0, rows, maps[inside, k] * (weight / count[rows])[:, None, None])


def _precision_context(device, precision: str):
    device = torch.device(device)
    if device.type != "cuda" or precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype={"float16": torch.float16, "bfloat16": torch.bfloat16}[precision])


def _check(models, image_zyx, oracle_label, max_rounds, convergence_dice, batch, thresholds) -> Tensor:
    if not isinstance(models, Mapping) or not models or any(view not in VIEWS for view in models):
        raise SegCoreError(f"coarse-to-fine takes one RSTN per plane keyed by {', '.join(VIEWS)}, got "
                           f"{sorted(models) if isinstance(models, Mapping) else type(models).__name__}",
                           fix='pass e.g. {"axial": model}')
    if isinstance(image_zyx, Tensor) and image_zyx.dim() == 4 and image_zyx.shape[0] == 1:
        image_zyx = image_zyx[0]
    if not isinstance(image_zyx, Tensor) or image_zyx.dim() != 3:
        shape = tuple(image_zyx.shape) if isinstance(image_zyx, Tensor) else type(image_zyx).__name__
        raise SegCoreError(f"coarse-to-fine takes one CT channel (Z, Y, X) or (1, Z, Y, X), got {shape}",
                           fix="pass the preprocessed single-channel image")
    if oracle_label is not None and tuple(oracle_label.shape) != tuple(image_zyx.shape):
        raise SegCoreError(f"the oracle label has shape {tuple(oracle_label.shape)}, the image "
                           f"{tuple(image_zyx.shape)}", fix="give the label on the image's grid")
    for view, model in models.items():
        slices = getattr(model, "slices", 3)
        if slices % 2 != 1:
            raise SegCoreError(f"the {view} RSTN takes {slices} slices; stacks need an odd number",
                               fix="use a model trained on 3-slice stacks (the study's)")
    if type(max_rounds) is not int or max_rounds < 1:
        raise SegCoreError(f"coarse_to_fine.max_rounds must be a whole number >= 1, got {max_rounds!r}",
                           fix="use 10 (the study's)")
    if not 0 < convergence_dice <= 1:
        raise SegCoreError(f"coarse_to_fine.convergence_dice must be in (0, 1], got {convergence_dice!r}",
                           fix="use 0.99 (the study's)")
    if type(batch) is not int or batch < 1:
        raise SegCoreError(f"batch must be a whole number >= 1, got {batch!r}", fix="use e.g. 8")
    if not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in thresholds):
        raise SegCoreError(f"coarse_to_fine.thresholds must be numbers in (0, 1], got {list(thresholds)!r}",
                           fix="use [0.90, 0.95, 0.98, 0.99] (the study's)")
    return image_zyx.float().cpu()


@torch.inference_mode()
def coarse_to_fine(models: Mapping[str, torch.nn.Module], image_zyx: Tensor, *, max_rounds: int = 10,
                   convergence_dice: float = 0.99, thresholds: Sequence[float] = (0.90, 0.95, 0.98, 0.99),
                   largest_component: bool = True, oracle_label: Tensor | None = None, batch: int = 8,
                   threshold: float = 0.5, precision: str = "float32", device: str | torch.device = "cpu",
                   extras: bool = True, progress: Callable[[int, int], None] | None = None) -> dict:
    """The study's coarse-to-fine test of one volume (rules in the module doc).

    models: view ("axial", "coronal", "sagittal") -> RSTN-like module on `device`, in eval mode, with
        `model(stacks, mode="coarse")["coarse"]`, `model.refine(stacks, prob, mask)["fine"]` and, for the
        oracle, `model(stacks, label=..., mode="oracle")["fine"]`, all (B, slices, H, W) probabilities.
    image_zyx: float32 (Z, Y, X) (or (1, Z, Y, X)) preprocessed CT on the CPU.
    oracle_label: (Z, Y, X), organ > 0.5 (diagnosis mode). batch: stacks per forward pass.
    precision: "float32", "float16" or "bfloat16" (autocast on CUDA only).
    extras: also return the study's other masks (module doc). progress(planes run, planes x possible rounds) after
    each plane of each round, ending at the total (module doc). Returns {"probabilities": (2, Z, Y, X) float32 CPU,
    "mask": (Z, Y, X) bool (the last round's), "rounds": fine rounds run, "converged": bool, "inter_dice": [float
    per round], "dice_at": {threshold: round or None}, "extras": {name: (Z, Y, X) bool} (empty without extras)}.
    """
    image = _check(models, image_zyx, oracle_label, max_rounds, convergence_dice, batch, thresholds)
    weight = 1.0 / len(models)
    options = {"batch": batch, "device": device}
    found: dict[str, Tensor] = {}
    steps_total = len(models) * (2 if oracle_label is not None else 1 + max_rounds)
    steps_done = 0

    def step() -> None:
        nonlocal steps_done
        steps_done += 1
        if progress is not None:
            progress(steps_done, steps_total)

    def fused(make_run, volumes, skip_empty: Tensor | None = None, prefix: str | None = None) -> Tensor:
        """The planes' mean probability; with `prefix` (and extras) each plane's mask goes into `found`."""
        total = torch.zeros(image.shape, dtype=torch.float32)
        for view, model in models.items():
            axis, slices = VIEWS.index(view), getattr(model, "slices", 3)
            active = None
            if skip_empty is not None:  # run only stacks with a voxel of the mask (or label) in their slices
                has = skip_empty.movedim(axis, 0).flatten(1).any(dim=1)
                active = has[stack_ids(has.shape[0], slices)].any(dim=1)
            plane = torch.zeros(image.shape, dtype=torch.float32) if prefix and extras else total
            with _precision_context(device, precision):
                stack_average(make_run(model), volumes, axis, plane, weight=1.0 if plane is not total else weight,
                              slices=slices, active=active, **options)
            step()
            if plane is not total:
                found[f"{prefix}-{view}"] = plane >= threshold
                total.add_(plane, alpha=weight)
                del plane
        total.clamp_(0.0, 1.0)  # float rounding of the means
        if prefix and extras and len(models) > 1:
            found.update(fusion_masks(total, len(models), prefix, largest_component))
        return total

    def filtered(prob: Tensor, seeded: bool = False) -> Tensor:
        mask = prob >= threshold
        if not largest_component:
            return mask
        if seeded and len(models) > 1:  # the study's fusion: seeds from the most agreed non-empty vote count
            votes = [prob * len(models) >= v - 0.5 for v in range(len(models), 0, -1)]
            return keep_large_components(mask, seeds_zyx=next((v for v in votes if bool(v.any())), votes[-1]))
        return keep_large_components(mask)

    oracle = oracle_label is not None
    prob = fused(lambda m: lambda x: m(x, mode="coarse")["coarse"], [image], prefix=None if oracle else "coarse")
    mask = prob >= threshold
    inter_dice: list[float] = []
    at_round: dict[float, Tensor] = {}
    if oracle:
        label = (oracle_label.cpu() > 0.5).float()
        prob = fused(lambda m: lambda x, y: m(x, label=y, mode="oracle")["fine"], [image, label], label > 0,
                     prefix="oracle")
        previous, mask = mask, filtered(prob, seeded=True)
        inter_dice.append(inter_iteration_dice(previous, mask))
    else:
        while len(inter_dice) < max_rounds and bool(mask.any()):
            prob = fused(lambda m: lambda x, p, b: m.refine(x, p, b)["fine"], [image, prob, mask], mask)
            previous, mask = mask, filtered(prob)
            inter_dice.append(inter_iteration_dice(previous, mask))
            for t in thresholds:  # the study scores each case at the first round that reaches t
                if extras and t not in at_round and inter_dice[-1] >= t:
                    at_round[t] = mask
            if inter_dice[-1] >= convergence_dice:
                break
        if extras:
            found.update({threshold_name(t): at_round.get(t, mask) for t in thresholds})
    if progress is not None and steps_done < steps_total:  # converged (or nothing to refine) before max_rounds
        progress(steps_total, steps_total)
    if inter_dice and largest_component:
        prob[(prob >= threshold) & ~mask] = 0.0
    dice_at = {float(t): next((r for r, d in enumerate(inter_dice, start=1) if d >= t), None) for t in thresholds}
    return {"probabilities": torch.stack([1.0 - prob, prob]), "mask": mask, "rounds": len(inter_dice),
            "converged": bool(inter_dice) and inter_dice[-1] >= convergence_dice, "inter_dice": inter_dice,
            "dice_at": dice_at, "extras": found}
