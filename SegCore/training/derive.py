"""What a plan derives from its network and its data, and the checks of its values (used by config.resolve_plan).

`derive` fills what a configuration leaves "auto": the sampler kind from the network's dimensionality (3D
patches, 2D slices, 2.5D stacks for networks that take `slices`), the padding multiple from the network's
divisor (every side of its input must be a multiple of it), the network's input and output channels from the
data's channels and labels, and patch or slice sizes from the image after preprocessing (`preprocessed_shape`,
computed from one case's header facts, `DataFacts`, without reading voxels twice). `check_values` refuses
ranges, choices and sizes that cannot work, naming the plan key.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass

from SegCore.errors import SegCoreError

SPLIT_KINDS = ("kfold", "lists", "pancreas")
SAMPLER_KINDS = ("auto", "patch3d", "slice2d", "stack25d", "whole", "crop")
# The keys each sampler kind takes (besides "kind"); resolve_plan keeps only these in the resolved plan.
SAMPLER_FIELDS = {"patch3d": ("patch_zyx", "foreground_fraction"),
                  "slice2d": ("axis", "size_yx", "foreground_fraction"),
                  "stack25d": ("axis", "k", "size_yx", "foreground_fraction", "labels"), "whole": (),
                  "crop": ("size_zyx",)}
STACK_LABELS = ("auto", "centre", "stack")  # stack25d: "auto" is "stack" for a network with one map per slice
AXES = ("axial", "coronal", "sagittal")
AMP_MODES = ("auto", "bf16", "fp16", "off")
MIXUP_MODES = ("off", "input", "manifold")

AUTO_PATCH_MAX = {3: 128, 2: 256}  # largest side of an "auto" patch (3D) or slice (2D), in voxels


def network_divisor(name: str, arguments: dict) -> int:
    """What every spatial side of the network's input must be a multiple of (built on the meta device)."""
    import torch

    from SegCore.models import build_model

    with torch.device("meta"):
        model = build_model(name, **arguments)
    return int(getattr(model, "divisor", 1))


def _model_arguments(name: str, arguments: dict, values: dict) -> dict:
    """The network's full arguments: registry defaults < `values` derived from the data < the plan's own."""
    from SegCore.models import MODELS

    spec = MODELS[name]
    accepted = inspect.signature(spec.builder).parameters
    derived = {k: v for k, v in values.items() if k in accepted}
    return jsonable({**spec.defaults, **derived, **arguments})


def jsonable(value):
    """Tuples (registry defaults) as lists, so that the plan reads back from JSON equal to itself."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class DataFacts:
    """What the plan needs to know of the data: channel names, labels (value, name), and the grid of one case."""

    channels: tuple[str, ...]
    labels: tuple[tuple[int, str], ...]
    shape_zyx: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    direction_lps: tuple[float, ...] | None = None  # 9 numbers, row-major 3x3, columns the LPS axes of i, j, k


def data_facts(root: str | os.PathLike, layout: str = "auto", options: dict | None = None) -> DataFacts:
    """Open the dataset at `root` (its reader given `options`, the plan's data.options) and read its first
    labelled case (the header facts of a whole dataset)."""
    from SegCore.datasets import load_case_image, open_dataset

    dataset = open_dataset(root, layout, **(options or {}))
    cases = dataset.labelled_cases()
    if not cases:
        raise SegCoreError("the dataset has no labelled case to train on", path=root,
                           fix="add label files, or check the dataset layout (segcore inspect)")
    image = load_case_image(cases[0])
    channels = dataset.channel_names or tuple(f"channel{i}" for i in range(image.array.shape[0]))
    grid = image.grid
    return DataFacts(tuple(channels), tuple(sorted(dataset.label_names.items())), tuple(grid.shape_zyx),
                     tuple(grid.spacing_xyz_mm), tuple(float(v) for row in grid.direction_lps for v in row))


def preprocessed_shape(steps: list[dict], facts: DataFacts) -> tuple[int, int, int] | None:
    """(Z, Y, X) of the case in `facts` after `steps`, or None when a step's size depends on the voxels (crops to
    the foreground or the label): the preprocessing's own grid arithmetic, without reading voxels."""
    from SegCore.transforms import Preprocessing
    from SegCore.volume import Grid

    flat = facts.direction_lps or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    direction = tuple(tuple(float(v) for v in flat[3 * r: 3 * r + 3]) for r in range(3))
    grid = Grid(tuple(facts.shape_zyx), tuple(facts.spacing_xyz_mm), (0.0, 0.0, 0.0), direction)
    out = Preprocessing(steps).output_grid(grid)
    return None if out is None else tuple(int(n) for n in out.shape_zyx)


def _in_plane(axis: str) -> tuple[int, int]:
    """The (Z, Y, X) axes a slice along `axis` spans."""
    return {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[axis]


def _fit(side: int, divisor: int, cap: int) -> int:
    """The largest multiple of `divisor` not above min(side, cap), at least `divisor`."""
    return max(divisor, min(side, cap) // divisor * divisor)


LOSS_FORMS = ("decathlon",)


def loss_form(plan: dict, num_labels: int | None) -> None:
    """Resolve `loss.arguments.form` (a study's own form of its loss) into plain loss arguments, in place.

    "decathlon": the decathlon author's Dice (SegCore.losses.decathlon_dice_arguments); its two-label tasks have
    ONE sigmoid output channel, so model.arguments.out_channels becomes 1 where the data have 2 labels and the
    plan gives none. The plan's own loss arguments win over the form's. num_labels: the data's labels (None: not
    known, the network's default output channels decide)."""
    arguments = plan["loss"]["arguments"]
    form = arguments.pop("form", None)
    if form is None:
        return
    from SegCore.losses import LOSSES, decathlon_dice_arguments
    from SegCore.models import MODELS

    if form not in LOSS_FORMS:
        raise SegCoreError(f"unknown loss.arguments.form {form!r}", fix=f"use one of {', '.join(LOSS_FORMS)}, or null")
    if "squared_denominator" not in inspect.signature(LOSSES[plan["loss"]["name"]]).parameters:
        raise SegCoreError(f"loss.arguments.form {form!r} is a form of the Dice losses, not of "
                           f"{plan['loss']['name']!r}",
                           fix="use loss.name dice or log_dice, or --set loss.arguments.form=null")
    model = plan["model"]["arguments"]
    if num_labels == 2 and "out_channels" not in model:
        model["out_channels"] = 1
    out = model.get("out_channels", num_labels or MODELS[plan["model"]["name"]].defaults.get("out_channels", 2))
    plan["loss"]["arguments"] = {**decathlon_dice_arguments(int(out)), **arguments}


def derive(plan: dict, facts: DataFacts | None) -> tuple[tuple[int, int, int] | None, int]:
    """Fill what was left "auto" (or null) from the network and the data; refuses what contradicts the data.

    Returns the preprocessed (padded) image shape (Z, Y, X) where it is known, and the network's size divisor."""
    from SegCore.losses import LOSSES
    from SegCore.models import MODELS

    name, sampler = plan["model"]["name"], plan["sampler"]
    if name not in MODELS:
        raise SegCoreError(f"unknown network {name!r} (model.name)", fix=f"use one of {', '.join(sorted(MODELS))}")
    if plan["loss"]["name"] not in LOSSES:
        raise SegCoreError(f"unknown loss {plan['loss']['name']!r} (loss.name)",
                           fix=f"use one of {', '.join(sorted(LOSSES))}")
    dims = MODELS[name].spatial_dims
    takes = inspect.signature(MODELS[name].builder).parameters
    if sampler["kind"] == "auto":
        sampler["kind"] = "patch3d" if dims == 3 else "stack25d" if "slices" in takes else "slice2d"
    kind = sampler["kind"]
    if kind not in SAMPLER_FIELDS:
        raise SegCoreError(f"unknown sampler kind {kind!r} (sampler.kind)", fix=f"use one of {SAMPLER_KINDS}")
    if (dims == 3) != (kind in ("patch3d", "whole", "crop")):
        raise SegCoreError(f"sampler.kind {kind!r} does not feed the {dims}D network {name!r}",
                           fix=f"use {'patch3d, whole or crop' if dims == 3 else 'slice2d or stack25d'}, or 'auto'")
    if kind == "stack25d":
        _stack_labels(sampler, name, per_slice="slices" in takes and "in_channels" not in takes)
    derived = {}
    if facts is not None:
        data = plan["data"]
        if data["channels"] is None:
            data["channels"] = list(facts.channels)
        if not (isinstance(data["channels"], list) and all(isinstance(c, str) for c in data["channels"])):
            raise SegCoreError(f"data.channels must be a list of channel names, got {json.dumps(data['channels'])}",
                               fix=f"e.g. --set data.channels='{json.dumps(list(facts.channels))}' (or null for all)")
        missing = [c for c in data["channels"] if c not in facts.channels]
        if missing:
            raise SegCoreError(f"data.channels {missing} are not in the data, which has {list(facts.channels)}",
                               path=data["root"], fix="list channels of the data (or null for all of them)")
        if data["label_set"] is None:
            data["label_set"] = [{"value": int(v), "name": n} for v, n in facts.labels]
        stack = sampler["k"] if kind == "stack25d" else 1
        derived = {"in_channels": len(data["channels"]) * stack, "out_channels": len(data["label_set"]),
                   "slices": stack}
        for key in ("in_channels", "out_channels"):
            given = plan["model"]["arguments"].get(key)
            sigmoid = key == "out_channels" and given == 1 and derived[key] == 2  # one logit for two labels
            if given is not None and given != derived[key] and key in takes and not sigmoid:
                what = "input channels" if key == "in_channels" else "labels (background included)"
                raise SegCoreError(f"model.arguments.{key} is {given} but the data give {derived[key]} {what}",
                                   path=data["root"], fix=f"remove model.arguments.{key} (it is derived from the data)")
    loss_form(plan, derived.get("out_channels"))
    arguments = _model_arguments(name, plan["model"]["arguments"], derived)
    base, channels = arguments.get("base_channels"), arguments.get("in_channels")
    if base in (MODELS[name].defaults.get("base_channels"), MODELS[name].small.get("base_channels")) and (
            isinstance(base, int) and isinstance(channels, int) and base % channels):
        # V-Net tiles the image to base_channels: its registry width, not chosen by the user, follows the data.
        arguments["base_channels"] = math.ceil(base / channels) * channels
    if "slices" in takes and "in_channels" not in takes and facts is not None and len(plan["data"]["channels"]) != 1:
        raise SegCoreError(f"{name} takes one image channel (as {arguments['slices']} adjacent slices); the plan has "
                           f"{len(plan['data']['channels'])}: {plan['data']['channels']}", path=plan["data"]["root"],
                           fix="choose one channel with --set data.channels='[\"NAME\"]'")
    plan["model"]["arguments"] = arguments
    divisor = network_divisor(name, arguments)
    multiple = [divisor] * 3
    if dims == 2:
        multiple = [divisor if axis in _in_plane(sampler["axis"]) else 1 for axis in range(3)]
    steps = plan["preprocessing"]
    for step in steps:
        if step.get("name") == "pad" and step.get("multiple_zyx") == "auto":
            step["multiple_zyx"] = multiple
    try:  # helper T's and A's modules fill their own defaults; until they exist the plan keeps what it has
        from SegCore.transforms import Augmentation, Preprocessing
    except ImportError:
        pass
    else:
        plan["preprocessing"] = Preprocessing(steps).spec
        plan["augmentation"] = Augmentation(plan["augmentation"]).spec
    padded = preprocessed_shape(plan["preprocessing"], facts) if facts is not None else None
    cap = AUTO_PATCH_MAX[dims]
    if sampler["patch_zyx"] == "auto":
        sampler["patch_zyx"] = [_fit(padded[a] if padded else cap, divisor, cap) for a in range(3)]
    if sampler["size_yx"] == "auto":
        sampler["size_yx"] = [_fit(padded[a] if padded else cap, divisor, cap) for a in _in_plane(sampler["axis"])]
    if sampler["size_zyx"] == "auto":
        sampler["size_zyx"] = [_fit(padded[a] if padded else cap, divisor, cap) for a in range(3)]
    plan["sampler"] = {"kind": kind, **{key: sampler[key] for key in SAMPLER_FIELDS[kind]}}
    return padded, divisor


def _stack_labels(sampler: dict, name: str, per_slice: bool) -> None:
    """Resolve stack25d's `labels`: every slice's label ("stack") for a network that returns one map per input
    slice (`per_slice`: the RSTN), the centre slice's ("centre") for the others; refuses the other pairing."""
    labels = sampler["labels"]
    if labels not in STACK_LABELS:
        raise SegCoreError(f"unknown sampler.labels {json.dumps(labels)}", fix=f"use one of {', '.join(STACK_LABELS)}")
    if labels == "auto":
        sampler["labels"] = labels = "stack" if per_slice else "centre"
    if (labels == "stack") != per_slice:
        what = "one map per slice, so it trains on every slice's label" if per_slice else "one map per stack"
        raise SegCoreError(f"sampler.labels {labels!r} does not suit {name}, which returns {what}",
                           fix="--set sampler.labels=auto")


def _choice(plan: dict, path: str, choices) -> None:
    node = plan
    for part in path.split("."):
        node = node[part]
    if node not in choices:
        raise SegCoreError(f"plan key '{path}' is {json.dumps(node)}; valid: {', '.join(map(str, choices))}",
                           fix=f"set {path} to one of them")


def check_values(plan: dict, padded: tuple[int, int, int] | None, divisor: int) -> None:
    """Ranges and choices, and that the sampler's sizes suit the network (multiples of `divisor`) and the image
    after preprocessing (`padded`, where known)."""
    training, split, sampler = plan["training"], plan["split"], plan["sampler"]
    for path, minimum in (("epochs", 1), ("steps_per_epoch", 1), ("batch_size", 1), ("accumulate", 1),
                          ("validate_every", 1), ("checkpoint_every_steps", 0)):
        if training[path] < minimum:
            raise SegCoreError(f"plan key 'training.{path}' is {training[path]}; it must be at least {minimum}",
                               fix=f"--set training.{path}={max(minimum, 1)}")
    workers = training["workers"]
    if workers != "auto" and not (type(workers) is int and workers >= 0):
        raise SegCoreError(f"plan key 'training.workers' must be \"auto\" or a whole number >= 0, got "
                           f"{json.dumps(workers)}", fix="--set training.workers=auto")
    _choice(plan, "training.amp", AMP_MODES)
    _choice(plan, "mixup.mode", MIXUP_MODES)
    _choice(plan, "split.kind", SPLIT_KINDS)
    if split["kind"] == "kfold" and not 0 <= split["fold"] < split["folds"]:
        raise SegCoreError(f"split.fold {split['fold']} is not one of the {split['folds']} folds (0 to "
                           f"{split['folds'] - 1})", fix=f"use --fold between 0 and {split['folds'] - 1}")
    if not plan["optim"]["lr"] > 0:
        raise SegCoreError(f"optim.lr must be positive, got {plan['optim']['lr']}", fix="e.g. --set optim.lr=1e-3")
    if "axis" in sampler:
        _choice(plan, "sampler.axis", AXES)
    if not 0 <= sampler.get("foreground_fraction", 0) <= 1:
        raise SegCoreError(f"sampler.foreground_fraction must lie in [0, 1], got {sampler['foreground_fraction']}",
                           fix="e.g. --set sampler.foreground_fraction=0.33")
    for key, axes in (("patch_zyx", range(3)), ("size_zyx", range(3)), ("size_yx", _in_plane(sampler.get("axis",
                                                                                                      "axial")))):
        if key not in sampler:
            continue
        size = sampler[key]
        if key == "size_yx" and size is None:  # null: each case's whole plane
            plane = [padded[a] for a in axes] if padded is not None else []
            if any(n % divisor for n in plane):
                raise SegCoreError(f"sampler.size_yx null takes the whole plane {plane}, whose sides are not "
                                   f"multiples of {divisor}, which {plan['model']['name']} needs",
                                   path=plan["data"]["root"], fix="add a preprocessing pad step with multiple_zyx auto")
            continue
        if not (isinstance(size, list) and len(size) == len(axes) and all(isinstance(n, int) and n > 0 for n in size)):
            raise SegCoreError(f"sampler.{key} must be {len(axes)} positive whole numbers, got {json.dumps(size)}",
                               fix=f"e.g. --set sampler.{key}={json.dumps([divisor * 4] * len(axes))}")
        if any(n % divisor for n in size):
            raise SegCoreError(f"sampler.{key} {size} has sides that are not multiples of {divisor}, which "
                               f"{plan['model']['name']} needs", fix=f"use multiples of {divisor}")
        if padded is not None and any(n > padded[a] for n, a in zip(size, axes, strict=True)):
            image = [padded[a] for a in axes]
            raise SegCoreError(f"sampler.{key} {size} is larger than the padded image {image} (after "
                               "preprocessing)", path=plan["data"]["root"],
                               fix=f"use a size of at most {image}, or pad more (a pad step with min_zyx)")
