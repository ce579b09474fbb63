"""From a resolved plan to the parts the Trainer runs: the split, cached cases, the loader, network, fine-tuning.

Each function reads its own part of the plan (docs/training.md lists the keys) and raises a SegCoreError naming
the key or file for anything wrong, before the first step.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from SegCore.errors import SegCoreError


def split_cases(dataset, split: dict) -> tuple[list, list]:
    """(training cases, validation cases) of `dataset` for the plan's `split` ({kind, folds, fold, seed, lists}).

    Only the layout's training subset is split: labelled cases it files as test (the LA 2018 'Testing Set', the
    thalamus testing_subjects.txt) are never trained or validated on; a protocol's test stage with
    `"cases": "test"` scores them (`labelled_test_cases`). Raises SegCoreError for a fold out of range or an empty
    training split."""
    from SegCore.datasets import kfold_splits, pancreas_folds, split_from_lists

    labelled = dataset.labelled_cases()
    cases = [case for case in labelled if case.subset != "test"]
    by_id = {case.case_id: case for case in cases}
    ids = sorted(by_id)
    if not ids:
        kept = f" ({len(labelled)} labelled case(s), all in the layout's test subset)" if labelled else ""
        raise SegCoreError(f"the dataset has no labelled training case to train on{kept}", path=dataset.root,
                           fix="add label files to the training subset, or check the dataset layout "
                               "(segcore inspect)")
    kind = split["kind"]
    if kind == "lists":
        lists = {"train": split["train_list"]}
        if split.get("validation_list"):
            lists["val"] = split["validation_list"]
        chosen = split_from_lists(ids, **lists)
        train, val = chosen.get("train", []), chosen.get("val", [])
    else:
        folds = split_from_kind(kind, ids, split, kfold_splits, pancreas_folds)
        fold = int(split["fold"])
        if not 0 <= fold < len(folds):
            raise SegCoreError(f"fold {fold} does not exist: the split has folds 0 to {len(folds) - 1}",
                               fix=f"use --fold 0 ... {len(folds) - 1} (split.fold)")
        train, val = folds[fold]["train"], folds[fold]["val"]
    if not train:
        raise SegCoreError(f"the training split is empty ({len(ids)} labelled case(s), split {kind})",
                           path=dataset.root, fix="add cases, or use fewer folds (split.folds)")
    return [by_id[i] for i in train], [by_id[i] for i in val]


def labelled_test_cases(dataset) -> list:
    """The labelled cases the layout files as its test subset (never in a training split: `split_cases`)."""
    return [case for case in dataset.labelled_cases() if case.subset == "test"]


def split_from_kind(kind: str, ids: list[str], split: dict, kfold_splits, pancreas_folds) -> list[dict]:
    folds = int(split["folds"])
    if len(ids) < 2:
        # One case: train on it, validate on it (a smoke test; a real study has many cases).
        return [{"fold": 0, "train": ids, "val": ids}]
    folds = min(folds, len(ids))
    if kind == "pancreas":
        return pancreas_folds(ids, folds)
    return kfold_splits(ids, folds, seed=int(split["seed"]))


def build_training_loader(plan: dict, train_cached: list, dist, *, pin_memory: bool = False):
    """The training loader (augmented, `steps_per_epoch * accumulate` batches an epoch, this rank's share).
    Validation needs none: it predicts whole cases (`SegCore.training.validation`)."""
    from SegCore.training.data import Sampler, build_loader, default_workers
    from SegCore.transforms import Augmentation

    training = plan["training"]
    workers = default_workers() if training["workers"] == "auto" else int(training["workers"])
    return build_loader(train_cached, Sampler(plan["sampler"]), Augmentation(plan["augmentation"]),
                        steps_per_epoch=int(training["steps_per_epoch"]) * int(training["accumulate"]),
                        seed=int(training["seed"]), even_batch=bool(training.get("even_batch", False)),
                        batch_size=int(training["batch_size"]), rank=dist.rank, world_size=dist.world_size,
                        workers=workers, pin_memory=pin_memory)


def pseudo_labels(plan: dict, dataset, out: Path, dist, device, log, progress) -> list:
    """Self-distillation (distillation.teacher): the teacher labels the unlabelled scans; rank 0 writes
    RUN/pseudo, every rank gets the marked cases (with their loss weight in metadata). [] when off.

    The scans: those of `distillation.unlabelled` (a folder in the dataset's layout, read without requiring
    labels; any labels there are ignored), or, when it is null, the dataset's own scans without a label."""
    from SegCore.training import distributed as ddp

    spec = plan["distillation"]
    if not spec.get("teacher"):
        return []
    from SegCore.training.distill import pseudo_label_cases

    cases = None
    if dist.is_main:
        scans = unlabelled_scans(plan, dataset)
        if not scans:
            raise SegCoreError("distillation.teacher is set, but there are no unlabelled scans to label",
                               path=spec.get("unlabelled") or plan["data"]["root"],
                               fix="set distillation.unlabelled to a folder of scans (or add scans without labels "
                                   "to the dataset), or distillation.teacher to null")
        cases = pseudo_label_cases(spec["teacher"], scans, Path(out) / "pseudo", weight=spec["weight"],
                                   joins=spec["subset"], device=device, progress=progress)
        # The scans keep their ids; a prefix keeps them apart from labelled cases of the same name.
        log.info("self-distillation: %d pseudo-labelled case(s) from %s join %s (weight %s)", len(cases),
                 spec["teacher"], spec["subset"], spec["weight"])
    cases = ddp.broadcast_object(cases, dist)
    import dataclasses

    return [dataclasses.replace(case, case_id=f"pseudo-{case.case_id}") for case in cases]


def unlabelled_scans(plan: dict, dataset) -> list:
    """The scans self-distillation labels (see `pseudo_labels`)."""
    import inspect

    from SegCore.datasets import open_dataset
    from SegCore.datasets.registry import LAYOUTS

    folder = plan["distillation"].get("unlabelled")
    if not folder:
        return [case for case in dataset.cases if not case.has_label]
    options = dict(plan["data"]["options"])
    if "require_labels" in inspect.signature(LAYOUTS[dataset.layout].read).parameters:
        options["require_labels"] = False  # a folder of scans alone (the muscle study's clean_CT_scans)
    return open_dataset(folder, dataset.layout, **options).cases


def class_weighted_loss(plan: dict, spec, train_cached: list, log):
    """training.class_weights: the plan's loss with class weights from the training cases' label frequencies."""
    import inspect

    from SegCore.losses import LOSSES, build_loss
    from SegCore.training.data import class_weights_for

    name, arguments = plan["loss"]["name"], dict(plan["loss"]["arguments"])
    if "class_weights" not in inspect.signature(LOSSES[name]).parameters:
        raise SegCoreError(f"training.class_weights is set, but the loss {name!r} takes no class weights",
                           fix="use a loss with class_weights (cross_entropy, dice, dice_ce, ...) or set "
                               "training.class_weights to null")
    weights = class_weights_for(train_cached, spec, num_classes=len(plan["data"]["label_set"]))
    log.info("class weights %s", [round(w, 4) for w in weights])
    return build_loss(name, **{**arguments, "class_weights": weights})


def frozen_names(model, prefixes: list[str]) -> set[str]:
    """Names of the parameters that start with one of `prefixes`; an unmatched prefix is a SegCoreError."""
    names = [name for name, _ in model.named_parameters()]
    frozen: set[str] = set()
    for prefix in prefixes:
        matched = {name for name in names if name.startswith(prefix)}
        if not matched:
            parts = sorted({name.split(".")[0] for name in names})
            raise SegCoreError(f"--freeze {prefix}: no parameter of the network starts with it",
                               fix=f"use a prefix of the parameter names, e.g. one of {', '.join(parts[:12])}")
        frozen |= matched
    return frozen


def freeze(model, prefixes: list[str]) -> list:
    """Stop gradients for parameters under `prefixes`; returns their BatchNorm modules, which the Trainer keeps
    in eval mode so that their running statistics stay fixed too."""
    from torch import nn

    names = frozen_names(model, prefixes)
    for name, parameter in model.named_parameters():
        if name in names:
            parameter.requires_grad_(False)
    norms = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name and any(
                f"{name}.".startswith(p) or name.startswith(p) for p in prefixes):
            norms.append(module)
    return norms


def load_initial_weights(model, path: str | Path, meta: dict, log) -> str:
    """Start from the weights of checkpoint `path`. Same study and labels: every tensor must fit. Otherwise the
    tensors whose shape differs (the head) keep their fresh initialisation, and the returned message says so."""
    from SegCore.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    state = checkpoint.model_state
    own = model.state_dict()
    same = (checkpoint.meta.get("study") == meta.get("study")
            and _label_values(checkpoint.meta.get("labels")) == _label_values(meta.get("labels")))
    unknown = sorted(set(state) - set(own))
    if same and not unknown and all(own[k].shape == v.shape for k, v in state.items()):
        model.load_state_dict(state, strict=False)
        message = f"initialised from {path} ({len(state)} tensors)"
    else:
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fitting:
            raise SegCoreError("no tensor of the checkpoint fits this network", path=path,
                               fix="--init a checkpoint of the same network (model.name and arguments)")
        model.load_state_dict(fitting, strict=False)
        fresh = sorted(k for k in own if k not in fitting)
        why = ("its study or labels differ from this run's" if not same else "some of its tensors do not fit")
        message = (f"initialised from {path}, but {why}: {len(fresh)} tensor(s) keep a fresh initialisation "
                   f"(the head: {', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''})")
    log.info(message)
    return message


def _label_values(labels) -> list:
    return [(int(item["value"]), str(item["name"])) for item in labels or []]


@contextmanager
def stop_requests():
    """While training, SIGINT/SIGTERM only set a flag, so that the loop stops between steps (an optimizer step
    is never cut in half); yields a list holding the interrupt class to raise. Outside the main thread: no-op."""
    requested: list = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    from SegCore.cli import Terminated

    def handler(signum, frame):
        if requested:  # a second Ctrl-C: stop now
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        requested.append(Terminated if signum == signal.SIGTERM else KeyboardInterrupt)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def amp_dtype(plan_amp: str, device_info) -> str | None:
    """The autocast dtype name, or None for float32 (always on CPU/MPS)."""
    if device_info.kind != "cuda" or plan_amp == "off":
        return None
    if plan_amp == "auto":
        return device_info.amp_dtype
    if plan_amp == "bf16" and not device_info.supports_bf16:
        raise SegCoreError(f"training.amp=bf16, but {device_info.summary()} has no native bfloat16",
                           fix="use training.amp=fp16 or auto")
    return {"bf16": "bfloat16", "fp16": "float16"}[plan_amp]


def tensorboard(out: Path):
    """A SummaryWriter into RUN/tensorboard where the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
