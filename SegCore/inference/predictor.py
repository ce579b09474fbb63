"""The `Predictor`: checkpoint(s) + an image -> a label `Volume` on the image's own grid (what Segment runs).

    predictor = Predictor(["fold0.pt", "fold1.pt"], device="auto", settings={"overlap": 0.5, "tta": True})
    prediction = predictor.predict(read_input([Path("scan.nii.gz")]))
    prediction = predictor.predict_files(["scan.nii.gz"])   # the same, reading the file itself (less memory)
    prediction.label              # (Z, Y, X) uint8 Volume on the input grid exactly (size, spacing, origin, direction)
    prediction.probabilities      # (K, Z, Y, X) float16 Volume, only with probabilities=True
    prediction.uncertainty        # (Z, Y, X) float32 Volume, only with uncertainty=True
    prediction.info               # strategy, device, passes, seconds per stage, what the memory fallback did
    prediction.extras             # name -> further label Volumes a strategy gives (RSTN: "round-at-0.90", ...)

One case: the input is checked against the checkpoint (channels, dimensionality, a modality hint); the
training preprocessing recorded in the checkpoint is replayed (`SegCore.transforms.Preprocessing`, the code path
training uses); each model runs its strategy (settings.py: sliding window, slices in one or several views,
2.5D, locate then segment, RSTN coarse to fine), optionally over every mirroring of `mirror_axes`; the models of
an ensemble are streamed one at a time and averaged in probability space; the argmax is taken on the network's
grid, then the label map is mapped back onto the input grid (nearest or one-hot linear per class, as the
preprocessing says), post-processed there, and given the input grid exactly. Full-resolution probabilities of
all classes exist only when asked for. An ensemble's models must share labels, channels and preprocessing.

Memory (the CT of benchmarks/RESULTS.md "Inference": under 3x the float32 input, imports included): what
`predict_files` reads is converted to float32 once and dropped, the preprocessing normalises that copy in place,
the preprocessed image is dropped after the networks, and one pass of a sliding window (one model, no mirroring,
no probabilities or uncertainty asked for) takes its argmax band by band along z instead of holding the
probabilities of the whole volume (windows.py; one channel for two classes) and, in `predict_files`, releases the
preprocessed image behind its windows; several passes need the float32 (K', Z, Y, X) sum. A 3D network on the
CPU runs channels-last (`_cpu_layout`: less working memory per window, and faster).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from SegCore.errors import SegCoreError
from SegCore.inference.inputs import check_input
from SegCore.inference.network import class_indices, network_function
from SegCore.inference.settings import inference_settings
from SegCore.progress import ProgressEvent, no_progress
from SegCore.volume import Volume


@dataclass
class Prediction:
    """What `Predictor.predict` returns (see the module docstring); info is JSON-able."""

    label: Volume
    probabilities: Volume | None = None
    uncertainty: Volume | None = None
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    extras: dict[str, Volume] = field(default_factory=dict)  # coarse_to_fine: the study's other masks, input grid


class _Member:
    """One checkpoint of the ensemble: its network (on the device only while it runs) and resolved settings."""

    def __init__(self, checkpoint, settings: dict):
        self.checkpoint, self.settings = checkpoint, settings
        self.window = None  # the SlidingWindow, kept across cases (it remembers the memory fallback)

    @property
    def meta(self) -> dict:
        return self.checkpoint.meta


def _same(members: list[_Member], key: str) -> None:
    first = members[0].meta[key]
    for member in members[1:]:
        if member.meta[key] != first:
            raise SegCoreError(f"the checkpoints of an ensemble must share their {key}; these differ",
                               path=member.checkpoint.path, fix="ensemble only the folds of one training plan")


def _cpu_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A 3D network on the CPU in channels-last 3D: oneDNN's default blocked layout pads a layer of few channels
    up to 8 or 16, so the atrium V-Net (`small`) took 206 MB per 64x128x128 window instead of 123, and 20 % longer
    (benchmarks/RESULTS.md "Inference"). The weights change layout, not values; the logits move by float rounding."""
    dims = {p.ndim for p in model.parameters()}
    if device.type != "cpu" or 5 not in dims or 4 in dims:  # to(memory_format) refuses 4D weights for 3D layout
        return model
    return model.to(memory_format=torch.channels_last_3d)


def _model_id(paths: list[Path], settings: dict) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _check_locator_scale(locator, scale_zyx) -> None:
    """SegCoreError when the locator was trained on volumes zoomed otherwise than inference.locator.scale_zyx
    says (its checkpoint's zoom step): locate_box would feed it volumes of another scale than it learnt."""
    zooms = [step for step in locator.meta["preprocessing"] if step.get("name") == "zoom"]
    trained = [float(v) for v in zooms[-1]["scale_zyx"]] if zooms else None
    if trained is not None and trained != [float(v) for v in scale_zyx]:
        raise SegCoreError(f"the locator was trained on volumes zoomed by {trained} (z, y, x), but "
                           f"inference.locator.scale_zyx is {list(scale_zyx)}", path=locator.path,
                           fix=f"set inference.locator.scale_zyx={json.dumps(trained)}, or give the locator "
                               "trained for this scale")


class Predictor:
    """checkpoints: one path or several (an ensemble; RSTN: one per plane). device: auto | cpu | cuda[:N] | mps.
    settings: overrides of the checkpoint's inference settings (settings.py; None values are ignored).
    postprocess: False skips the study's post-processing. locator: the locator checkpoint of a locate-then-
    segment model (default: settings["locator"]["checkpoint"], relative to the first checkpoint's folder).
    progress: ProgressEvent callback (stage "infer": windows or slices done)."""

    def __init__(self, checkpoints, *, device: str = "auto", settings: dict | None = None, postprocess: bool = True,
                 locator: str | os.PathLike | None = None, progress=no_progress):
        from SegCore.devices import resolve_device
        from SegCore.training.checkpoint import load_checkpoint

        paths = [Path(p) for p in ([checkpoints] if isinstance(checkpoints, (str, os.PathLike)) else checkpoints)]
        if not paths:
            raise SegCoreError("no model was given", fix="give --model CKPT (RUN/best.pt)")
        self.device_info = resolve_device(device)
        self.device = torch.device(self.device_info.name)
        overrides = dict(settings or {})
        if locator is not None and overrides.get("strategy") in (None, "auto"):
            overrides["strategy"] = "locate_segment"  # a locator given is a locator used
        kind = self.device_info.kind
        self.members = [_Member(ck, inference_settings(ck.meta, overrides, device_type=kind))
                        for ck in (load_checkpoint(p) for p in paths)]
        for key in ("labels", "channels", "preprocessing"):
            _same(self.members, key)
        self.settings = self.members[0].settings
        self.postprocess = bool(postprocess)
        self.progress = progress
        self._pass = (0, 1)  # (pass index, passes) of the running prediction, for _progress
        locator = locator or self.settings["locator"]["checkpoint"]
        if self.settings["strategy"] == "locate_segment":
            if not locator:
                raise SegCoreError("this model segments a crop found by a locator, but no locator was given",
                                   path=paths[0], fix="pass --locator CKPT (the locator's checkpoint)")
            path = Path(locator) if Path(locator).is_absolute() else paths[0].parent / locator
            self.locator = load_checkpoint(path if path.exists() else Path(locator))
            _check_locator_scale(self.locator, self.settings["locator"]["scale_zyx"])
        else:
            self.locator = None
        self.model_id = _model_id(paths + ([self.locator.path] if self.locator else []),
                                  {**self.settings, "postprocess_on": self.postprocess})
        if kind == "cpu" and hasattr(os, "sched_getaffinity"):
            # In a container torch may count the host's cores; more threads than cores we may run on only thrash.
            torch.set_num_threads(max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)))))
        from SegCore.transforms import Preprocessing

        self.preprocessing = Preprocessing(self.meta["preprocessing"])

    @property
    def meta(self) -> dict:
        """The first checkpoint's meta: labels, channels, study, model, preprocessing, plan."""
        return self.members[0].meta

    @property
    def labels(self) -> list[dict]:
        return self.meta["labels"]

    @property
    def channels(self) -> list[str]:
        return list(self.meta["channels"])

    # --- one case ----------------------------------------------------------------------------------------------
    def predict(self, image: Volume, *, probabilities: bool = False, uncertainty: bool = False,
                path: str | os.PathLike | None = None, reference: Volume | None = None) -> Prediction:
        """Segment one image (Z, Y, X) or (C, Z, Y, X); see the module docstring. path: named in messages.
        reference: a label map on the image grid, only for the RSTN oracle (its box instead of the coarse one).
        The image is never changed."""
        return self._predict([image], probabilities=probabilities, uncertainty=uncertainty, path=path,
                             reference=reference, owned=False)

    def predict_files(self, paths, *, resample: bool = False, probabilities: bool = False,
                      uncertainty: bool = False) -> Prediction:
        """Read one case and segment it: `read_input(paths)` (an image file, a DICOM folder, or one file per
        channel in the checkpoint's order; resample: channel files on other grids are resampled onto the first
        one's). Only the Predictor holds what it read, so that array is released as soon as its float32 copy
        exists, before the preprocessing pads or resamples the copy (in place where it can)."""
        from SegCore.inference.inputs import read_input

        paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        return self._predict([read_input(paths, channels=self.channels, resample=resample)],
                             probabilities=probabilities, uncertainty=uncertainty, path=paths[0], reference=None,
                             owned=True)

    def _predict(self, given: list[Volume], *, probabilities: bool, uncertainty: bool, path, reference,
                 owned: bool) -> Prediction:
        """`predict`; owned: `given` holds the only reference to the image, which may be changed and dropped."""
        image = given.pop()
        warnings = check_input(image, self.meta, path=path)
        grid, seconds = image.grid, {}
        start = time.perf_counter()
        if owned:  # rebinding frees what was read (int16 for a CT) before the steps allocate
            image = Volume(image.array.astype(np.float32, copy=False), grid)
        pre = self.preprocessing.apply(image, reference, overwrite=owned)
        del image
        seconds["preprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        record, grid_zyx = pre.record, list(pre.grid.shape_zyx)
        image_czyx, reference_zyx = torch.from_numpy(pre.image), pre.label
        del pre  # the preprocessed image lives on only as long as the networks need it
        # one pass of a sliding window, labels only: the window reduces its probabilities to labels band by band
        banded = (not (probabilities or uncertainty) and len(self.members) == 1
                  and self.settings["strategy"] == "sliding_window" and self._mirrorings(self.settings) == [()])
        mean, square, passes, info = self._run_models(image_czyx, reference_zyx, want_variance=uncertainty and
                                                      self.settings["uncertainty"] == "variance", argmax=banded,
                                                      discard_image=banded and owned)
        del image_czyx
        masks = info.pop("extras", {})  # label maps on the network grid (coarse_to_fine), mapped back below
        seconds["network"] = time.perf_counter() - start
        start = time.perf_counter()
        if banded:
            label = self._label_values(mean, self.members[0].window.classes)
        else:
            label = self._label_values(class_indices(mean), mean.shape[0])
        label_volume = self.preprocessing.invert_label(label, record)
        extras = {name: Volume(np.ascontiguousarray(self.preprocessing.invert_label(mask, record).array), grid)
                  for name, mask in masks.items()}
        probabilities_volume = uncertainty_volume = None
        if probabilities:
            probabilities_volume = self.preprocessing.invert_probabilities(mean.numpy(), record)
            probabilities_volume = Volume(probabilities_volume.array.astype(np.float16), grid)
        if uncertainty:
            uncertainty_volume = self._uncertainty(mean, square, passes, record, grid)
        seconds["to_input_grid"] = time.perf_counter() - start
        start = time.perf_counter()
        array = label_volume.array
        if self.postprocess:
            from SegCore.inference.postprocess import postprocess_labels

            post = self.settings["postprocess"]
            array = postprocess_labels(array, largest_component=post["largest_component"],
                                       min_component_voxels=post["min_component_voxels"],
                                       fill_holes=post["fill_holes"])
        seconds["postprocess"] = time.perf_counter() - start
        info.update(passes=passes, seconds={k: round(v, 4) for k, v in seconds.items()},
                    device=self.device_info.name, precision=self.settings["precision"],
                    network_grid_zyx=grid_zyx, labels_in_bands=banded)
        return Prediction(Volume(np.ascontiguousarray(array), grid), probabilities_volume, uncertainty_volume,
                          warnings, info, extras)

    def _label_values(self, index: torch.Tensor, classes: int) -> np.ndarray:
        """Class indices (Z, Y, X) of `classes` classes -> label values (class i is the i-th label of the
        checkpoint), uint8/uint16."""
        values = [int(label["value"]) for label in self.labels]
        dtype = np.uint8 if max(values + [classes - 1]) <= 255 else np.uint16
        index = index.numpy()
        if len(values) == classes and values != list(range(len(values))):
            return np.asarray(values, dtype=dtype)[index]
        return index.astype(dtype, copy=False)

    def _uncertainty(self, mean, square, passes, record, grid) -> Volume:
        """Entropy (nats) of the mean probabilities, or the variance over the passes averaged over the classes;
        computed on the network grid and mapped (linearly) onto the input grid."""
        if self.settings["uncertainty"] == "variance":
            values = (square / passes - mean.double() ** 2).clamp_min(0).mean(0).float()
        else:
            p = mean.clamp_min(1e-8)
            values = -(p * p.log()).sum(0)
        mapped = self.preprocessing.invert_probabilities(values.numpy()[None], record)
        return Volume(mapped.array[0].astype(np.float32), grid)

    # --- the networks ------------------------------------------------------------------------------------------
    def _run_models(self, image_czyx: torch.Tensor, reference, *, want_variance: bool, argmax: bool = False,
                    discard_image: bool = False):
        """Mean probabilities (K', Z, Y, X) float32 CPU over models and mirrorings, the sum of squares (float64,
        only for the variance), the number of passes, and info. argmax (one sliding-window pass): the class
        indices (Z, Y, X) instead of the probabilities. discard_image (with argmax, an image only the Predictor
        holds): the window releases the image's slices behind it (windows.py), so it is unusable afterwards."""
        if self.settings["strategy"] == "coarse_to_fine":
            return self._coarse_to_fine(image_czyx, reference)
        total = square = None
        passes = 0
        info = {"strategy": self.settings["strategy"], "models": len(self.members), "events": []}
        count = sum(len(self._mirrorings(member.settings)) for member in self.members)
        for member in self.members:
            model = _cpu_layout(member.checkpoint.build_model(self.device), self.device)
            try:
                for flips in self._mirrorings(member.settings):
                    self._pass = (passes, count)
                    probs = self._strategy(member, model, image_czyx.flip(flips) if flips else image_czyx, info,
                                           argmax=argmax, discard_image=discard_image)
                    probs = probs.flip(flips) if flips else probs
                    total = probs if total is None else total.add_(probs)
                    if want_variance:
                        square = probs.double() ** 2 if square is None else square.add_(probs.double() ** 2)
                    passes += 1
            finally:
                del model
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return (total if argmax else total.div_(passes)), square, passes, info

    @staticmethod
    def _mirrorings(settings: dict) -> list[tuple[int, ...]]:
        """() and, with TTA, every non-empty combination of the mirror axes as dims of a (C, Z, Y, X) tensor."""
        if not settings["tta"]:
            return [()]
        axes = [a + 1 for a in sorted(set(settings["mirror_axes"]))]
        return [()] + [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]

    def _progress(self, done: int, total: int) -> None:
        """One "infer" event over every pass (models x mirrorings): the bar rises once, not once per pass."""
        index, count = self._pass
        message = f"pass {index + 1} of {count}" if count > 1 else ""
        self.progress(ProgressEvent("infer", index * total + done, count * total, message))

    def _strategy(self, member: _Member, model, image_czyx: torch.Tensor, info: dict, *,
                  argmax: bool = False, discard_image: bool = False) -> torch.Tensor:
        s = member.settings
        net_fn = network_function(model, self.device, self.settings["precision"])
        divisor = int(getattr(model, "divisor", 1))
        if s["strategy"] in ("slices", "stack25d"):
            from SegCore.inference.slices import predict_views

            return predict_views(net_fn, image_czyx, views=s["views"], fusion=s["fusion"], k=s["k"],
                                 batch=s["batch"], divisor=divisor, device=self.device, progress=self._progress)
        window = self._window(member, image_czyx, divisor)
        if s["strategy"] == "locate_segment":
            from SegCore.inference.cascade import locate_then_segment

            locator = self.locator.build_model(self.device)
            loc = s["locator"]
            probs, box = locate_then_segment(
                network_function(locator, self.device, self.settings["precision"]),
                lambda crop: self._window(member, crop, divisor)(net_fn, crop, device=self.device, divisor=divisor),
                image_czyx, scale_zyx=loc["scale_zyx"], margin_voxels=loc["margin_voxels"],
                crop_zyx=loc["crop_zyx"], divisor=int(getattr(locator, "divisor", 1)), device=self.device,
                progress=self._progress)
            info["box"] = box
            return probs
        probs = window(net_fn, image_czyx, device=self.device, divisor=divisor, progress=self._progress,
                       argmax=argmax, discard_image=discard_image)
        info["events"] += [e for e in window.events if e not in info["events"]]
        return probs

    def _window(self, member: _Member, image_czyx: torch.Tensor, divisor: int):
        """The member's SlidingWindow; without a patch (a whole-volume network) one window of the whole image."""
        from SegCore.inference.windows import SlidingWindow

        s = member.settings
        patch = s["patch_zyx"] or [math.ceil(n / divisor) * divisor for n in image_czyx.shape[1:]]
        if member.window is None or list(member.window.patch_zyx) != list(patch):
            previous = member.window
            member.window = SlidingWindow(patch, overlap=s["overlap"], sigma_scale=s["sigma_scale"],
                                          batch=previous.batch if previous else s["batch"],
                                          stitch=previous.stitch if previous else "auto")
        return member.window

    def _coarse_to_fine(self, image_czyx: torch.Tensor, reference):
        from SegCore.inference.coarse_to_fine import coarse_to_fine

        if image_czyx.shape[0] != 1:
            raise SegCoreError(f"the coarse-to-fine test takes one CT channel, the image has {image_czyx.shape[0]}")
        models = {}
        for member in self.members:
            view = member.meta["sampler"].get("axis", "axial")
            if view in models:
                raise SegCoreError(f"two RSTN checkpoints were trained on the {view} plane",
                                   path=member.checkpoint.path, fix="give one checkpoint per plane")
            models[view] = member.checkpoint.build_model(self.device)
        c2f = self.settings["coarse_to_fine"]
        oracle = None if reference is None else torch.from_numpy(np.asarray(reference > 0))
        result = coarse_to_fine(models, image_czyx[0], max_rounds=c2f["max_rounds"],
                                convergence_dice=c2f["convergence_dice"], thresholds=c2f["thresholds"],
                                largest_component=c2f["largest_component"], oracle_label=oracle,
                                batch=self.settings["batch"], precision=self.settings["precision"],
                                device=self.device, progress=self._progress)
        info = {"strategy": "coarse_to_fine", "models": len(models), "planes": sorted(models),
                **{k: result[k] for k in ("rounds", "converged", "inter_dice", "dice_at") if k in result}}
        values = np.asarray([int(label["value"]) for label in self.labels][:2], dtype=np.uint8)
        info["extras"] = {name: values[mask.numpy().astype(np.uint8)] for name, mask in result["extras"].items()}
        return result["probabilities"], None, 1, info
