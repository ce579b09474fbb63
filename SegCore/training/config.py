"""The plan: one nested dict, JSON-able, that says everything a training run does (written as RUN/plan.json).

    plan = resolve_plan(config="SegCore/configs/example.json", overrides=["optim.lr=1e-3"], flags={"epochs": 3})
    plan = resolve_plan(config="RUN/plan.json")        # a run is reproducible from its plan alone

`resolve_plan` merges, each over the previous: `default_plan()` (every key, every default) < the study preset
(`STUDY_PRESETS`: each study file's `preset`, its published settings) < the configuration file (`load_config`:
.json or .toml, the same keys as plan.json) < `make_tiny` when asked < `--set KEY=VALUE` overrides (`apply_overrides`) <
explicit CLI flags (`CLI_FLAGS`: --epochs, --batch, --fold, ...). It then derives what was left "auto" from the
network and the data (sampler kind, patch size, padding multiple, input and output channels: derive.py; resample
spacing, and patch and batch for a memory budget: autoplan.py), records the versions of SegStudies, torch, numpy
and Python, and validates names, types and sizes: every problem is a SegCoreError naming the key. A key absent
from `default_plan()` is refused, listing the valid keys at its level, except inside the open dicts `OPEN_KEYS`
(network and loss arguments, augmentation), which their builders check.
"""

from __future__ import annotations

import copy
import json
import os
import platform
from pathlib import Path

from SegCore.errors import SegCoreError
from SegCore.studies import STUDIES
from SegCore.training import autoplan
from SegCore.training.derive import (  # noqa: F401  (DataFacts, data_facts, preprocessed_shape: part of this API)
    DataFacts,
    check_values,
    data_facts,
    derive,
    jsonable,
    network_divisor,
    preprocessed_shape,
)

PLAN_KEYS = ("data", "split", "preprocessing", "model", "loss", "sampler", "augmentation", "optim", "schedule",
             "training", "mixup", "distillation", "inference", "device", "study", "versions")
OPEN_KEYS = ("data.options", "model.arguments", "loss.arguments", "augmentation")
# CLI flag -> plan key; a flag given on the command line (not None) wins over everything else.
CLI_FLAGS = {"data": "data.root", "study": "study", "fold": "split.fold", "epochs": "training.epochs",
             "steps_per_epoch": "training.steps_per_epoch", "batch": "training.batch_size", "seed": "training.seed",
             "deterministic": "training.deterministic", "device": "device", "workers": "training.workers",
             "init": "training.init", "freeze": "training.freeze", "memory_budget": "training.memory_budget_mb"}
# study name -> partial plan: the study file's `preset` (SegCore/studies/<name>.py), read there and nowhere else
STUDY_PRESETS: dict[str, dict] = {name: study.preset for name, study in STUDIES.items()}
TINY_PATCH = {3: 16, 2: 32}  # side of a --tiny patch (at least the network's divisor)
DOCS = "docs/training.md (Configuration)"


def default_plan() -> dict:
    """Every key of a plan with its default; "auto" values are derived by `resolve_plan` from network and data."""
    return {
        "data": {"root": None, "layout": "auto", "options": {}, "channels": None, "label_set": None},
        "split": {"kind": "kfold", "folds": 5, "fold": 0, "seed": 0, "train_list": None, "validation_list": None},
        "preprocessing": [{"name": "zscore", "mode": "volume"},
                          {"name": "pad", "multiple_zyx": "auto", "mode": "constant", "value": 0}],
        "model": {"name": "unet3d", "arguments": {}},
        "loss": {"name": "dice_ce", "arguments": {}},
        "sampler": {"kind": "auto", "patch_zyx": "auto", "foreground_fraction": 0.33, "axis": "axial", "k": 3,
                    "size_yx": "auto", "size_zyx": "auto",
                    "labels": "auto"},  # size_yx null: the whole plane; labels: stack25d's, samplers.py
        "augmentation": {"flip_axes": [0, 1, 2], "flip_p": 0.5, "rotate_deg": [15, 0, 0], "rotate_p": 0.2,
                         "scale": [0.9, 1.1], "scale_p": 0.2, "noise_std": 0.05, "noise_p": 0.15,
                         "gamma": [0.7, 1.5], "gamma_p": 0.3, "label_mode": "nearest"},
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "nesterov": False,
                  "betas": [0.9, 0.999], "eps": 1e-8, "amsgrad": False, "groups": [], "bias_lr_scale": 1.0,
                  "bias_weight_decay": None},
        "schedule": {"name": "constant", "patience": 10, "factor": 0.5, "mode": "max", "power": 0.9,
                     "step_epochs": 30, "gamma": 0.1, "warmup_epochs": 0, "min_lr": 0.0},
        "training": {"epochs": 100, "steps_per_epoch": 250, "batch_size": 2, "accumulate": 1, "clip_grad_norm": 12.0,
                     "amp": "auto", "compile": False, "deterministic": False, "seed": 0, "workers": "auto",
                     "even_batch": False, "checkpoint_every_steps": 50, "validate_every": 1,
                     "validation": {"max_cases": None, "overlap": 0.5},
                     "best_metric": "dice_mean", "early_stopping": {"patience": None, "min_delta": 0.0},
                     "init": None, "freeze": [], "class_weights": None,
                     "memory_budget_mb": None,  # MiB per device: the automatic plan (autoplan.py); null = off
                     "autoplan": None},  # filled by the automatic plan: where its numbers came from
        "mixup": {"mode": "off", "alpha": 0.4, "layers": None},
        "distillation": {"teacher": None, "unlabelled": None, "weight": 1.0, "subset": "training"},
        "inference": {  # SegCore/inference/settings.py resolves "auto" and checks these; docs/inference.md
            "strategy": "auto",  # sliding_window | slices | stack25d | locate_segment | coarse_to_fine
            "patch_zyx": "auto",  # sliding window: the training patch
            "overlap": 0.5, "sigma_scale": 0.125,  # window overlap; Gaussian sigma = sigma_scale * patch side
            "batch": "auto",  # windows or slices per forward pass
            "views": "auto", "fusion": "mean",  # slices: the training axis, or several views fused
            "tta": "auto", "mirror_axes": [0, 1, 2],  # mirroring: on for CUDA, off on the CPU
            "precision": "auto", "uncertainty": "entropy",
            "postprocess": {"largest_component": [], "min_component_voxels": 0, "fill_holes": []},
            "locator": {"checkpoint": None, "scale_zyx": [0.5, 0.25, 0.25], "margin_voxels": 30,
                        "crop_zyx": "auto"},  # "auto": the segmenter's training crop (sampler size_zyx / patch_zyx)
            "coarse_to_fine": {"max_rounds": 10, "convergence_dice": 0.99, "thresholds": [0.90, 0.95, 0.98, 0.99],
                               "largest_component": True},
        },
        "device": "auto",
        "study": None,
        "versions": {"segstudies": None, "torch": None, "numpy": None, "python": None},
    }


def load_config(path: str | os.PathLike) -> dict:
    """A configuration (or plan.json) file as a dict: .json via json, .toml via tomllib (Python 3.11 on)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise SegCoreError(f"a configuration file must be .json or .toml, not {suffix or 'without a suffix'}",
                           path=path, fix="write it as JSON (or TOML) with the keys of plan.json")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        from SegCore.failures import os_error

        raise os_error(error, path) from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SegCoreError(f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
                               path=path, fix="repair the file (a JSON validator shows where)") from None
    else:
        try:
            import tomllib
        except ImportError:
            raise SegCoreError("TOML needs Python 3.11 or later (tomllib); this is Python "
                               f"{platform.python_version()}", path=path,
                               fix="write the configuration as JSON (same keys)") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise SegCoreError(f"not valid TOML: {error}", path=path, fix="repair the file") from None
    if not isinstance(data, dict):
        raise SegCoreError(f"a configuration must be a table of keys, not a {type(data).__name__}", path=path,
                           fix="start the file with {...} (JSON) or key = value lines (TOML)")
    return data


def _is_open(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in OPEN_KEYS)


def _unknown(key: str, where: str, valid) -> SegCoreError:
    level = f"'{where}'" if where else "the plan"
    return SegCoreError(f"unknown key '{key}' in {level}; valid: {', '.join(valid)}",
                        fix=f"check the spelling (the keys are listed in {DOCS})")


def merge(base: dict, update: dict, where: str = "") -> dict:
    """`update` merged into a copy of `base`, dicts key by key; a key `base` lacks is refused (except in OPEN_KEYS)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in merged and not _is_open(path):
            raise _unknown(key, where, merged)
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not _is_open(path):
            merged[key] = merge(merged[key], value, path)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(plan: dict, overrides) -> dict:
    """A copy of `plan` with each "dotted.key=value" set; the value is parsed as JSON, else kept as a string.

    List items are addressed by index ("preprocessing.0.mode=slice"). An unknown key is a SegCoreError listing
    the valid keys at its level: "unknown key 'widht' in 'model'; valid: name, arguments".
    """
    plan = copy.deepcopy(plan)
    for item in overrides:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise SegCoreError(f"--set {item!r} is not KEY=VALUE", fix="write e.g. --set optim.lr=1e-3")
        parts = key.strip().split(".")
        node, where = plan, ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            path = f"{where}.{part}" if where else part
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SegCoreError(f"'{where}' has {len(node)} items; no item '{part}'",
                                       fix=f"use an index from 0 to {len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise SegCoreError(f"'{where}' is a value, not a table: cannot set '{key}'",
                                   fix=f"set '{where}' itself")
            elif part not in node:
                if not _is_open(path):
                    raise _unknown(part, where, node)
                if not last:
                    node[part] = {}
            if last:
                node[part] = _parse_value(text)
            else:
                node = node[part]
            where = path
    return plan


def set_key(plan: dict, dotted: str, value) -> None:
    """Set one key given as a dotted path (used for CLI flags; the key must exist)."""
    *parents, last = dotted.split(".")
    node = plan
    for part in parents:
        node = node[part]
    node[last] = value


def make_tiny(plan: dict) -> dict:
    """A copy of `plan` small enough to train in a minute on a CPU: the network's `small` widths, small patches
    or slices (and crops; pad steps lose their minimum size), 2 epochs of 2 steps, batch 2 without
    accumulation, no workers, a checkpoint every step."""
    from SegCore.models import MODELS

    plan = copy.deepcopy(plan)
    name = plan["model"]["name"]
    if name not in MODELS:
        raise SegCoreError(f"unknown network {name!r} (model.name)", fix=f"use one of {', '.join(sorted(MODELS))}")
    plan["model"]["arguments"] = {**plan["model"]["arguments"], **jsonable(MODELS[name].small)}
    divisor = network_divisor(name, {**MODELS[name].defaults, **plan["model"]["arguments"]})
    dims = MODELS[name].spatial_dims
    side = max(divisor, TINY_PATCH[dims])
    plan["sampler"].update({"patch_zyx": [side] * 3, "size_yx": [side] * 2, "size_zyx": [side] * 3})
    # a study's fixed image size (the atrium's 96x640x640 pad) shrinks with the patch
    for step in plan["preprocessing"]:
        if step.get("name") == "pad" and "min_zyx" in step:
            step["min_zyx"] = [1, 1, 1]
    plan["training"].update({"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "accumulate": 1, "workers": 0,
                             "checkpoint_every_steps": 1})
    plan["training"]["validation"]["max_cases"] = 2
    return plan


def resolve_plan(config: str | os.PathLike | dict | None = None, *, overrides=(), flags: dict | None = None,
                 tiny: bool = False, facts: DataFacts | None = None, inspect_data: bool = True,
                 fingerprint=None) -> dict:
    """The complete, validated plan: defaults < study preset < `config` (a file or a dict) < `make_tiny` (when
    `tiny`) < `overrides` ("key=value") < `flags` (CLI flag name -> value, see CLI_FLAGS; None = not given).

    facts: the data's channels, labels and grid; read from `data.root` when None and `inspect_data` (a missing
    or unreadable data folder is then a SegCoreError). Without facts, channel counts keep the network's defaults
    and sizes that depend on the image are not checked.
    fingerprint: the cases' geometry for the automatic plan (a `Fingerprint`, its dict, or autoplan.dataset_geometry);
    read from `data.root` when None and something is left to plan (training/autoplan.py).
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown_flags = [k for k in flags if k not in CLI_FLAGS]
    if unknown_flags:
        raise ValueError(f"unknown CLI flags {unknown_flags}; known: {list(CLI_FLAGS)}")
    source = None
    if config is not None and not isinstance(config, dict):
        source, config = Path(config), load_config(config)
    config = config or {}
    plan = default_plan()
    study = flags.get("study", config.get("study"))
    if study is not None:
        from SegCore.studies import get_study

        get_study(study)
        plan = merge(plan, STUDY_PRESETS.get(study, {}))
    try:
        plan = merge(plan, config)
    except SegCoreError as error:
        raise SegCoreError(error.problem, path=source, fix=error.fix) from None
    if tiny:
        plan = make_tiny(plan)
    plan = apply_overrides(plan, overrides)
    for flag, value in flags.items():
        set_key(plan, CLI_FLAGS[flag], value)
    check_types(plan)
    if facts is None and inspect_data and plan["data"]["root"] is not None:
        facts = data_facts(plan["data"]["root"], plan["data"]["layout"], plan["data"]["options"])
    pending = autoplan.begin(plan, facts, fingerprint)  # "auto" spacing, patch and batch: training/autoplan.py
    padded, divisor = derive(plan, facts)
    padded = autoplan.finish(plan, pending, facts, padded)
    check_values(plan, padded, divisor)
    plan["versions"] = versions()
    return plan


def versions() -> dict:
    """Versions of SegStudies, torch, numpy and Python, as plan.json and checkpoints record them."""
    import numpy
    import torch

    import SegCore

    return {"segstudies": SegCore.__version__, "torch": str(torch.__version__), "numpy": numpy.__version__,
            "python": platform.python_version()}


AUTO_VALUES = ("training.batch_size",)  # may also be "auto" (the automatic plan)
NULLABLE = ("training.clip_grad_norm", "training.early_stopping.patience", "training.validation.max_cases")


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def check_types(plan: dict, defaults: dict | None = None, where: str = "") -> None:
    """Each value of `plan` of the kind its default has (numbers, booleans, strings, lists, tables); defaults
    of None or "auto" take any value (checked where they are derived)."""
    defaults = default_plan() if defaults is None else defaults
    for key, default in defaults.items():
        path = f"{where}.{key}" if where else key
        value = plan.get(key)
        if default is None or default == "auto" or _is_open(path) or (value is None and path in NULLABLE) or (
                value == "auto" and path in AUTO_VALUES):
            continue
        if isinstance(default, dict) and isinstance(value, dict):
            check_types(value, default, path)
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            continue
        if _kind(default) != _kind(value) or (isinstance(default, int) and isinstance(value, float)
                                              and not isinstance(default, bool)):
            wanted = "a whole number" if isinstance(default, int) and not isinstance(default, bool) else _kind(default)
            raise SegCoreError(f"plan key '{path}' must be {wanted}, got {json.dumps(value)}",
                               fix=f"e.g. --set {path}={json.dumps(default)}")
