"""Boundary loss (Kervadec et al. 2019/2021) and the hybrid region + boundary loss with its schedule."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.losses._inputs import check_inputs_kind, prepare, selected_classes
from SegCore.losses.distance_maps import DistanceMapCache, inside_shift_mm, signed_distance_map_mm
from SegCore.losses.registry import LOSSES, build_loss, register_loss
from SegCore.losses.schedule import HybridSchedule


def _as_cache(cache: DistanceMapCache | str | os.PathLike | None) -> DistanceMapCache | None:
    if cache is None or isinstance(cache, DistanceMapCache):
        return cache
    return DistanceMapCache(cache)


@register_loss("boundary")
class BoundaryLoss(nn.Module):
    """Boundary loss: mean over voxels (and the classes used) of p_k(q) * phi_k(q).

    phi_k is the signed distance map of the reference class k in mm (positive outside, zero on the reference's
    outermost voxels, negative deeper inside: Kervadec's one_hot2dist in mm; see signed_distance_map_mm), so the
    loss falls as probability moves inside the reference and grows with how far outside it lies. Its minimum is
    negative (all probability inside the reference); values are in mm.

    Args:
        spacing_xyz_mm: voxel size (x, y, z) in mm, or (x, y) for 2D inputs; None = 1 mm per axis (voxel units).
            Used when distance maps are computed here from the target, and for a foreground-only map's background.
        include_background: use class 0's map too (default False: foreground classes, as Kervadec et al.).
        inputs: "logits" or "probabilities".
        cache: a DistanceMapCache, or a folder for one, reused when maps are computed from the target here.

    forward(prediction, target, distance_maps=None, case_ids=None):
        prediction (N, C, *spatial) float (C >= 2 softmax, C == 1 sigmoid), target as the other losses.
        distance_maps: precomputed (N, K, *spatial) maps in mm (K = C, or 2 for a binary prediction; a binary
            prediction also takes (N, 1, *spatial), the foreground map: with include_background the background
            map is then h - foreground, h = min(spacing_xyz_mm), so spacing_xyz_mm must be given), e.g. from a
            DataLoader that used a DistanceMapCache on whole cases. None: computed from the target (argmax of soft
            targets) on the CPU.
        case_ids: optional N strings naming the cases, used in the cache's file names.
    Returns a float32 scalar (mm).
    """

    needs_distance_maps = True

    def __init__(self, spacing_xyz_mm: Sequence[float] | None = None, include_background: bool = False,
                 inputs: str = "logits", cache: DistanceMapCache | str | os.PathLike | None = None):
        super().__init__()
        self.spacing_xyz_mm = None if spacing_xyz_mm is None else tuple(float(s) for s in spacing_xyz_mm)
        self.include_background = include_background
        self.inputs = check_inputs_kind(inputs)
        self.cache = _as_cache(cache)

    def maps_from_target(self, hard_labels: Tensor, num_classes: int,
                         case_ids: Sequence[str] | None = None) -> Tensor:
        """(N, K, *spatial) float32 maps from (N, *spatial) integer labels, on the labels' device."""
        labels = hard_labels.detach().cpu().numpy()
        spacing = self.spacing_xyz_mm if self.spacing_xyz_mm is not None else (1.0,) * (labels.ndim - 1)
        if len(spacing) != labels.ndim - 1:
            raise SegCoreError(f"spacing_xyz_mm has {len(spacing)} values for {labels.ndim - 1}D inputs",
                               fix="give (x, y) for 2D inputs and (x, y, z) for 3D")
        if case_ids is not None and len(case_ids) != len(labels):
            raise SegCoreError(f"{len(case_ids)} case ids for a batch of {len(labels)}")
        maps = []
        for n, label in enumerate(labels):
            if self.cache is not None:
                case_id = "" if case_ids is None else str(case_ids[n])
                maps.append(self.cache.get(label, spacing, num_classes, case_id=case_id))
            else:
                maps.append(signed_distance_map_mm(label, spacing, num_classes))
        return torch.from_numpy(np.stack(maps)).to(hard_labels.device)

    def _checked_maps(self, distance_maps: Tensor, probs_shape: tuple[int, ...], spatial: tuple[int, ...],
                      binary: bool) -> Tensor:
        n, k = probs_shape[:2]
        maps = torch.as_tensor(distance_maps).float()
        if binary and tuple(maps.shape) == (n, 1, *spatial):
            maps = torch.cat([self._background_of(maps), maps], dim=1)
        if tuple(maps.shape) != (n, k, *spatial):
            raise SegCoreError(f"distance_maps shape {tuple(maps.shape)} does not fit the prediction "
                               f"(expected {(n, k, *spatial)})",
                               fix="give one map per class (background included) with the prediction's size")
        return maps

    def _background_of(self, foreground: Tensor) -> Tensor:
        """(N, 1, *spatial) background maps from foreground maps: h - phi (same boundary, sides swapped, and the
        inside shift h moved to the other side); zeros where a sample has no boundary."""
        if not self.include_background:
            return torch.zeros_like(foreground)  # not used: only the foreground map enters the loss
        if self.spacing_xyz_mm is None:
            raise SegCoreError("a foreground-only distance map gives the background map only with the spacing",
                               fix="pass spacing_xyz_mm (the maps' spacing), or give both maps (N, 2, ...)")
        has_boundary = foreground.flatten(1).ne(0).any(1).view(-1, *([1] * (foreground.dim() - 1)))
        background = inside_shift_mm(self.spacing_xyz_mm) - foreground
        return torch.where(has_boundary, background, torch.zeros_like(foreground))

    def forward(self, prediction: Tensor, target: Tensor, distance_maps: Tensor | None = None,
                case_ids: Sequence[str] | None = None) -> Tensor:
        prep = prepare(prediction, target, self.inputs)
        n, k = prep.probs.shape[:2]
        if distance_maps is None:
            hard = prep.target.argmax(1).reshape(n, *prep.spatial_shape)
            maps = self.maps_from_target(hard, k, case_ids)
        else:
            maps = self._checked_maps(distance_maps, tuple(prep.probs.shape), prep.spatial_shape, prep.binary)
        maps = maps.to(prep.probs.device).reshape(n, k, -1)
        used = selected_classes(k, self.include_background)
        if used.stop - used.start == 0:
            raise SegCoreError("no class left for the boundary loss", fix="pass include_background=True")
        return (prep.probs[:, used] * maps[:, used]).mean()


@register_loss("hybrid")
class HybridLoss(nn.Module):
    """alpha * region + (1 - alpha) * boundary, alpha from a HybridSchedule (ramp, or on at a Dice threshold).

    Args:
        region: name of the region loss ("dice", the atrium study's; or "focal", "log_dice", "neg_log_dice",
            "generalized_dice", "dice_ce", "cross_entropy").
        region_kwargs: arguments of the region loss (its `inputs` is set from `inputs`).
        schedule: a HybridSchedule, or its arguments as a dict; None = HybridSchedule() (Kervadec's ramp).
        spacing_xyz_mm, include_background, cache: passed to BoundaryLoss.
        inputs: "logits" or "probabilities", for both terms.

    forward(prediction, target, distance_maps=None, case_ids=None): as BoundaryLoss. When alpha is 1 the
    boundary term is skipped (no distance maps computed); when 0, the region term. `last_terms` holds the latest
    region and boundary values and alpha (detached) for logging.

    Training calls `step_epoch(epoch, val_dice)` after each epoch. The schedule's state travels in the module's
    state_dict() (as `_extra_state`), so saving and loading the loss with the checkpoint resumes it.
    """

    needs_distance_maps = True

    def __init__(self, region: str = "dice", region_kwargs: dict | None = None,
                 schedule: HybridSchedule | dict | None = None, spacing_xyz_mm: Sequence[float] | None = None,
                 include_background: bool = False, cache: DistanceMapCache | str | os.PathLike | None = None,
                 inputs: str = "logits"):
        super().__init__()
        self.inputs = check_inputs_kind(inputs)
        if region not in LOSSES or getattr(LOSSES[region], "needs_distance_maps", False):
            usable = sorted(n for n, c in LOSSES.items() if not getattr(c, "needs_distance_maps", False))
            raise SegCoreError(f"hybrid loss: {region!r} is not a region loss", fix=f"use one of {', '.join(usable)}")
        kwargs = dict(region_kwargs or {})
        if kwargs.get("inputs", self.inputs) != self.inputs:
            raise SegCoreError("region_kwargs['inputs'] differs from the hybrid loss's inputs",
                               fix="set inputs once, on the hybrid loss")
        kwargs["inputs"] = self.inputs
        self.region = build_loss(region, **kwargs)
        self.boundary = BoundaryLoss(spacing_xyz_mm, include_background, inputs, cache)
        if schedule is None:
            schedule = HybridSchedule()
        elif isinstance(schedule, dict):
            schedule = HybridSchedule(**schedule)
        self.schedule = schedule
        self.last_terms: dict[str, Tensor | float] = {}

    @property
    def alpha(self) -> float:
        return self.schedule.alpha

    def step_epoch(self, epoch: int, val_dice: float | None = None) -> float:
        """See HybridSchedule.step_epoch."""
        return self.schedule.step_epoch(epoch, val_dice)

    def forward(self, prediction: Tensor, target: Tensor, distance_maps: Tensor | None = None,
                case_ids: Sequence[str] | None = None) -> Tensor:
        alpha = self.schedule.alpha
        zero = prediction.new_zeros((), dtype=torch.float32)
        region = self.region(prediction, target) if alpha > 0.0 else zero
        boundary = self.boundary(prediction, target, distance_maps, case_ids) if alpha < 1.0 else zero
        self.last_terms = {"region": region.detach(), "boundary": boundary.detach(), "alpha": alpha}
        return alpha * region + (1.0 - alpha) * boundary

    def get_extra_state(self) -> dict:
        return self.schedule.state_dict()

    def set_extra_state(self, state: dict) -> None:
        self.schedule.load_state_dict(state)
