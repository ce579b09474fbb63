"""Self-distillation (the muscle study's `--add_predicted_data`): a teacher checkpoint labels unlabelled scans, and
the pseudo-labelled cases join training (or validation), marked as such and with their own loss weight.

    cases = pseudo_label_cases("RUN/supervised/best.pt", scans, Path("RUN/distill-1/pseudo"), weight=0.5)
    # each returned Case: label_path = RUN/distill-1/pseudo/<case>.nii.gz on the scan's own grid, and metadata
    # {"pseudo_label": True, "loss_weight": 0.5, "teacher": "RUN/supervised/best.pt", "joins": "training"}

Each pseudo-label is exactly what inference predicts for that scan: the `SegCore.inference.Predictor` of the
teacher's checkpoint with the teacher's own inference settings (its plan's `inference` section: strategy, views,
test-time mirroring, post-processing), so the label is on the scan's grid exactly, in the teacher's label values.
`RUN/pseudo/pseudo_labels.json` lists what was labelled, by which teacher, with which settings and weight. The
folder is written as a whole (atomic_dir): a failure on any scan leaves the previous folder, or none, and a
rerun replaces it.

`teacher_forward` is a plain whole-volume or slice-by-slice forward pass on a preprocessed volume (argmax of the
logits): the hand-written reference the tests hold the inference slice strategies against; pseudo-labels do not
use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from SegCore.atomic import atomic_dir
from SegCore.datasets.case import Case, LabelRule, load_case_image
from SegCore.errors import SegCoreError
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}  # index axis of the canonical (Z, Y, X) order, as the samplers
JOINS = ("training", "validation")
MANIFEST = "pseudo_labels.json"


def _classes(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, ...) logits -> (B, ...) int64 classes: argmax, or logit > 0 for one channel."""
    return logits.argmax(1) if logits.shape[1] > 1 else (logits[:, 0] > 0).long()


def _pad_to(array: torch.Tensor, divisor: int, dims: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the last `dims` axes up to multiples of `divisor`; returns the padded tensor and the old sizes."""
    sizes = tuple(array.shape[-dims:])
    pads = []
    for size in reversed(sizes):
        pads += [0, (-size) % divisor]
    return torch.nn.functional.pad(array, pads), sizes


@torch.no_grad()
def teacher_forward(model: torch.nn.Module, image_czyx: np.ndarray, *, spatial_dims: int, sampler: dict | None = None,
                    device: str | torch.device = "cpu", batch_size: int = 8) -> np.ndarray:
    """A label map for one preprocessed volume by a plain forward pass (a reference for tests; see the module).

    image_czyx: float32 (C, Z, Y, X) as preprocessing gives it. spatial_dims 3: one forward of the whole volume;
    2: slice by slice along sampler["axis"] (axial z, coronal y, sagittal x), `batch_size` slices at a time, with
    a stack25d sampler's k adjacent slices as channels (channel c * k + j = channel c of slice j; beyond the ends 0).
    Spatial sizes are zero-padded to the network's `divisor` and cropped back. Returns (Z, Y, X) uint8 (uint16
    past 255 classes).
    """
    model.eval()
    divisor = int(getattr(model, "divisor", 1))
    volume = torch.as_tensor(np.asarray(image_czyx, dtype=np.float32))
    if volume.ndim != 4:
        raise SegCoreError(f"the teacher takes a (C, Z, Y, X) volume, got shape {tuple(volume.shape)}")
    if spatial_dims == 3:
        padded, sizes = _pad_to(volume[None], divisor, 3)
        logits = _logits(model, padded.to(device))
        classes = _classes(logits)[0, :sizes[0], :sizes[1], :sizes[2]].cpu()
    else:
        sampler = sampler or {}
        axis = AXES.get(sampler.get("axis", "axial"))
        if axis is None:
            raise SegCoreError(f"unknown slicing axis {sampler.get('axis')!r} in the teacher's sampler",
                               fix=f"use one of {', '.join(AXES)}")
        k = int(sampler.get("k", 3)) if sampler.get("kind") == "stack25d" else 1
        slices = volume.movedim(axis + 1, 1)  # (C, S, H, W): S slices along the axis
        channels, count = slices.shape[:2]
        padded_ends = torch.nn.functional.pad(slices, (0, 0, 0, 0, k // 2, k // 2))  # zero slices past the ends
        out = []
        for start in range(0, count, batch_size):
            centres = range(start, min(start + batch_size, count))
            # Window j of centre i is slice i - k//2 + j, i.e. padded index i + j: (B, C, k, H, W) -> (B, C*k, H, W)
            stack = torch.stack([padded_ends[:, i:i + k] for i in centres]).reshape(len(centres), channels * k,
                                                                                   *slices.shape[2:])
            padded, sizes = _pad_to(stack, divisor, 2)
            out.append(_classes(_logits(model, padded.to(device)))[:, :sizes[0], :sizes[1]].cpu())
        classes = torch.cat(out).movedim(0, axis)
    top = int(classes.max()) if classes.numel() else 0
    return classes.numpy().astype(np.uint8 if top < 256 else np.uint16)


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    if isinstance(logits, (list, tuple)):  # deep supervision: the full-resolution output comes first
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise SegCoreError(f"the teacher network {type(model).__name__} returns a {type(logits).__name__}, not "
                           "logits", fix="use a teacher whose network returns a logits tensor (B, K, ...)")
    return logits


def _file_name(case_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id).lstrip(".") or "case"
    return f"{safe}.nii.gz"


def pseudo_label_cases(teacher_checkpoint: str | os.PathLike, cases: Sequence[Case], out_folder: str | os.PathLike,
                       *, weight: float = 1.0, joins: str = "training", device: str | torch.device = "cpu",
                       batch_size: int | None = None, progress: ProgressCallback = no_progress) -> list[Case]:
    """Label `cases` with the teacher; returns them as labelled, marked Cases (see the module docstring).

    teacher_checkpoint: a checkpoint of `segcore train` (loaded with weights_only=True). cases: scans (a label of
    their own is ignored and replaced). out_folder: where the pseudo-label files and the manifest go (created).
    weight: the loss weight of these cases (> 0). joins: 'training' or 'validation', recorded in the metadata.
    device: where the teacher runs. batch_size: windows or slices per forward pass (None: the teacher's setting;
    it changes speed, not the labels).
    """
    from SegCore.inference import Predictor
    from SegCore.io import write_image

    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
        raise SegCoreError(f"distillation.weight must be a number > 0, got {weight!r}",
                           fix="use e.g. 1.0 (as the labelled cases) or 0.5 (trust the teacher less)")
    if joins not in JOINS:
        raise SegCoreError(f"distillation.subset must be one of {', '.join(JOINS)}, got {joins!r}",
                           fix="use training or validation")
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids) or len({_file_name(i) for i in ids}) != len(ids):
        raise SegCoreError("two unlabelled cases share an id (or a file name)", fix="give every scan its own name")
    predictor = Predictor([teacher_checkpoint], device=str(device),
                          settings={"batch": batch_size} if batch_size else None)
    channels = predictor.channels
    for case in cases:  # before anything is computed or written
        if channels and case.channel_names and list(case.channel_names) != channels:
            raise SegCoreError(f"case {case.case_id} has the channels {list(case.channel_names)}, the teacher was "
                               f"trained on {channels}", path=case.image_paths[0] if case.images else None,
                               fix="pseudo-label scans of the teacher's kind, with the channels in its order")
    out_folder = Path(out_folder)
    if out_folder.is_dir() and any(out_folder.iterdir()) and not (out_folder / MANIFEST).is_file():
        raise SegCoreError(f"the folder holds other files than pseudo-labels (no {MANIFEST}); it would be replaced",
                           path=out_folder, fix="give an empty or new folder for the pseudo-labels")
    marks = {"pseudo_label": True, "loss_weight": float(weight), "teacher": os.fspath(teacher_checkpoint),
             "joins": joins}
    labelled, rows = [], []
    with atomic_dir(out_folder) as staging:  # all or nothing: a failure leaves the previous folder as it was
        for index, case in enumerate(cases):
            prediction = predictor.predict(load_case_image(case), path=case.image_paths[0])
            name = _file_name(case.case_id)
            write_image(prediction.label, staging / name)
            labelled.append(dataclasses.replace(case, label_path=out_folder / name, label_rule=LabelRule((), "keep"),
                                                metadata={**case.metadata, **marks}))
            voxels = np.bincount(prediction.label.array.ravel())
            rows.append({"case_id": case.case_id, "label": name, "images": [os.fspath(p) for p in case.image_paths],
                         "voxels_per_label": {str(v): int(n) for v, n in enumerate(voxels) if n},
                         "warnings": prediction.warnings})
            progress(ProgressEvent("pseudo-label", index + 1, len(cases), case.case_id))
        meta = predictor.meta
        manifest = {"teacher": os.fspath(teacher_checkpoint), "weight": float(weight), "joins": joins,
                    "study": meta.get("study"), "model": meta["model"], "inference": predictor.settings,
                    "cases": rows}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    return labelled
