"""Optimizers and learning-rate schedules from the plan's `optim` and `schedule` specs.

    opt = build_optimizer(model, {"name": "sgd", "lr": 1e-5, "momentum": 0.99, "weight_decay": 5e-4,
                                  "groups": [{"match": r"^(saliency1|saliency2|fine_model)\\.", "lr_scale": 10}],
                                  "bias_lr_scale": 2, "bias_weight_decay": 0})
    sched = build_scheduler(opt, {"name": "poly", "power": 0.9, "warmup_epochs": 1}, epochs=50, steps_per_epoch=250)
    for step in ...: opt.step(); sched.step_batch()          # after every optimizer step
    sched.step_epoch(validation_metric)                       # after every epoch (None when not validated)

Parameter groups: each trainable parameter (requires_grad True; frozen ones are left out) belongs to the first
`groups` entry whose regex `match` is found in its name (`re.search` on `model.named_parameters()` names), else to
the default group (scale 1). A bias (a parameter named `bias` or `*.bias`) gets its group's scale times
`bias_lr_scale`, and `bias_weight_decay` (None: the same weight decay as the rest). So the pancreas study's four
groups (RSTN training.py: coarse weights at lr, coarse biases at 2 lr, fine-stage weights at 10 lr, fine-stage
biases at 20 lr, no weight decay on biases) are the example above.

Schedules give every group lr = base_lr_of_group * warm(step) * main(step, epoch), so the groups keep their ratios:
    warm(s) = (s + 1) / W for the first W = round(warmup_epochs * steps_per_epoch) steps, then 1
    constant 1 | poly mu + (1 - mu) (1 - t / T) ** power | cosine mu + (1 - mu) (1 + cos(pi t / T)) / 2
    step max(mu, gamma ** (epoch // step_epochs)) | plateau max(mu, factor ** reductions)
with s the optimizer steps taken so far, t = s - W and T = epochs * steps_per_epoch - W (poly and cosine start after
the warm-up), mu = min_lr / lr (min_lr is the floor of the unscaled group; a group at scale k floors at k min_lr).
Plateau: after each validated epoch, a metric not better (mode min: lower, max: higher) than the best so far counts
one bad epoch; more than `patience` bad epochs in a row multiply the lr by `factor` (torch's ReduceLROnPlateau
with threshold 0 and no cool-down). The lr is a function of integer counters, so a resumed run is bit-identical.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from SegCore.errors import SegCoreError

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam")
SCHEDULES = ("constant", "poly", "cosine", "step", "plateau")
OPTIM_DEFAULTS = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "nesterov": False,
                  "betas": [0.9, 0.999], "eps": 1e-8, "amsgrad": False, "groups": [], "bias_lr_scale": 1.0,
                  "bias_weight_decay": None}
SCHEDULE_DEFAULTS = {"name": "constant", "patience": 10, "factor": 0.5, "mode": "max", "power": 0.9,
                     "step_epochs": 30, "gamma": 0.1, "warmup_epochs": 0, "min_lr": 0.0}


def _resolve(spec: dict | None, defaults: dict, what: str) -> dict:
    """`defaults` overridden by `spec`; an unknown key is a SegCoreError listing the valid ones."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(defaults))
    if unknown:
        raise SegCoreError(f"unknown {what} key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                           fix=f"use only {', '.join(defaults)}")
    return {**defaults, **spec}


def _number(spec: dict, key: str, what: str, *, low: float = 0.0, low_open: bool = False,
            high: float | None = None, high_open: bool = True) -> float:
    """spec[key] as a finite float in the given range, else a SegCoreError naming `what.key`."""
    value = spec[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + ("" if high is None else
                                                       f" and {'<' if high_open else '<='} {high}")
        raise SegCoreError(f"{what}.{key} must be a number {bound}, got {value!r}",
                           fix=f"set {what}.{key} (see docs/training.md, Optimizers and schedules)")
    return float(value)


def _flag(spec: dict, key: str, what: str) -> bool:
    if not isinstance(spec[key], bool):
        raise SegCoreError(f"{what}.{key} must be true or false, got {spec[key]!r}", fix=f"set {what}.{key}")
    return spec[key]


def resolve_optim_spec(spec: dict | None) -> dict:
    """The optimizer spec with every default filled and every value checked (SegCoreError naming the key)."""
    spec = _resolve(spec, OPTIM_DEFAULTS, "optim")
    if spec["name"] not in OPTIMIZERS:
        raise SegCoreError(f"unknown optimizer {spec['name']!r}", fix=f"use one of {', '.join(OPTIMIZERS)}")
    _number(spec, "lr", "optim", low_open=True)
    _number(spec, "weight_decay", "optim")
    _number(spec, "momentum", "optim", high=1.0)
    _number(spec, "eps", "optim", low_open=True)
    _number(spec, "bias_lr_scale", "optim", low_open=True)
    if spec["bias_weight_decay"] is not None:
        _number(spec, "bias_weight_decay", "optim")
    nesterov, amsgrad = _flag(spec, "nesterov", "optim"), _flag(spec, "amsgrad", "optim")
    betas = spec["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise SegCoreError(f"optim.betas must be two numbers in [0, 1), got {betas!r}", fix="use e.g. [0.9, 0.999]")
    spec["betas"] = [float(b) for b in betas]
    if spec["name"] == "sgd" and nesterov and spec["momentum"] == 0:
        raise SegCoreError("optim.nesterov needs momentum > 0", fix="set optim.momentum, e.g. 0.99")
    if nesterov and spec["name"] != "sgd":
        raise SegCoreError(f"optim.nesterov applies to sgd, not {spec['name']}",
                           fix="use name nadam for Nesterov momentum with Adam, or set nesterov false")
    if amsgrad and spec["name"] not in ("adam", "adamw"):
        raise SegCoreError(f"optim.amsgrad applies to adam and adamw, not {spec['name']}",
                           fix="set amsgrad false or pick adam / adamw")
    groups = spec["groups"]
    if not isinstance(groups, (list, tuple)):
        raise SegCoreError(f"optim.groups must be a list of {{match, lr_scale}}, got {groups!r}",
                           fix='use e.g. [{"match": "^fine_model\\\\.", "lr_scale": 10}]')
    checked = []
    for i, group in enumerate(groups):
        group = _resolve(group, {"match": None, "lr_scale": 1.0}, f"optim.groups[{i}]")
        if not isinstance(group["match"], str):
            raise SegCoreError(f"optim.groups[{i}].match must be a regular expression, got {group['match']!r}",
                               fix='use e.g. "^fine_model\\\\." (a regex searched in each parameter name)')
        try:
            re.compile(group["match"])
        except re.error as error:
            raise SegCoreError(f"optim.groups[{i}].match {group['match']!r} is not a regular expression: {error}",
                               fix="correct the regex") from None
        group["lr_scale"] = _number(group, "lr_scale", f"optim.groups[{i}]", low_open=True)
        checked.append(group)
    spec["groups"] = checked
    return spec


def parameter_groups(model: nn.Module, spec: dict) -> list[dict]:
    """Torch param groups for `model`: one per (spec group, bias or not) that holds a trainable parameter.

    Each dict has params, lr, weight_decay and, for the schedule and the log, base_lr (= lr), lr_scale (of the
    spec's lr), match (the regex, None for the default group), bias (bool) and names (parameter names).
    """
    spec = resolve_optim_spec(spec)
    patterns = [re.compile(g["match"]) for g in spec["groups"]]
    matched = [False] * len(patterns)
    buckets: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        index = next((i for i, p in enumerate(patterns) if p.search(name)), -1)
        if index >= 0:
            matched[index] = True
        if not parameter.requires_grad:
            continue  # frozen: no optimizer state, no weight decay, stays bit-identical
        bias = name.rsplit(".", 1)[-1] == "bias"
        scale = spec["groups"][index]["lr_scale"] if index >= 0 else 1.0
        if bias:
            scale *= spec["bias_lr_scale"]
        decay = spec["bias_weight_decay"] if bias and spec["bias_weight_decay"] is not None else spec["weight_decay"]
        bucket = buckets.setdefault((index, bias), {
            "params": [], "names": [], "lr": spec["lr"] * scale, "base_lr": spec["lr"] * scale, "lr_scale": scale,
            "weight_decay": float(decay), "match": spec["groups"][index]["match"] if index >= 0 else None,
            "bias": bias})
        bucket["params"].append(parameter)
        bucket["names"].append(name)
    for i, hit in enumerate(matched):
        if not hit:
            names = [n for n, _ in model.named_parameters()]
            raise SegCoreError(f"optim.groups[{i}].match {spec['groups'][i]['match']!r} matches no parameter of "
                               f"{type(model).__name__} (names look like {', '.join(names[:4])}, ...)",
                               fix="correct the regex; it is searched in each name of model.named_parameters()")
    if not buckets:
        raise SegCoreError(f"{type(model).__name__} has no trainable parameter (all are frozen)",
                           fix="freeze fewer parts (training.freeze)")
    # Default group first, then the spec's groups in order; weights before biases: a stable, readable order.
    return [buckets[key] for key in sorted(buckets, key=lambda k: (k[0] if k[0] >= 0 else -1, k[1]))]


def build_optimizer(model: nn.Module, spec: dict | None) -> torch.optim.Optimizer:
    """A torch optimizer (SGD, Adam, AdamW or NAdam) over `model`'s trainable parameters, grouped by `spec`."""
    spec = resolve_optim_spec(spec)
    groups = parameter_groups(model, spec)
    common = {"lr": spec["lr"], "weight_decay": spec["weight_decay"]}
    if spec["name"] == "sgd":
        return torch.optim.SGD(groups, momentum=spec["momentum"], nesterov=spec["nesterov"], **common)
    adam = {"betas": tuple(spec["betas"]), "eps": spec["eps"], **common}
    if spec["name"] == "adam":
        return torch.optim.Adam(groups, amsgrad=spec["amsgrad"], **adam)
    if spec["name"] == "adamw":
        return torch.optim.AdamW(groups, amsgrad=spec["amsgrad"], **adam)
    return torch.optim.NAdam(groups, **adam)


def resolve_schedule_spec(spec: dict | None) -> dict:
    """The schedule spec with every default filled and every value checked (SegCoreError naming the key)."""
    spec = _resolve(spec, SCHEDULE_DEFAULTS, "schedule")
    if spec["name"] not in SCHEDULES:
        raise SegCoreError(f"unknown schedule {spec['name']!r}", fix=f"use one of {', '.join(SCHEDULES)}")
    if spec["mode"] not in ("min", "max"):
        raise SegCoreError(f"schedule.mode must be min or max, got {spec['mode']!r}",
                           fix="max for a metric such as Dice, min for a loss")
    for key in ("patience", "step_epochs"):
        if not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < (0 if key == "patience"
                                                                                         else 1):
            raise SegCoreError(f"schedule.{key} must be a whole number >= {0 if key == 'patience' else 1}, "
                               f"got {spec[key]!r}", fix=f"set schedule.{key}")
    _number(spec, "factor", "schedule", low_open=True, high=1.0)
    _number(spec, "gamma", "schedule", low_open=True, high=1.0, high_open=False)
    _number(spec, "power", "schedule", low_open=True)
    _number(spec, "warmup_epochs", "schedule")
    _number(spec, "min_lr", "schedule")
    return spec


class Schedule:
    """Sets every param group's lr from integer step and epoch counters; see the module docstring.

    The lr of the next optimizer step is in `lr` from construction on; call `step_batch()` after each optimizer
    step and `step_epoch(metric)` after each epoch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: dict | None, *, epochs: int, steps_per_epoch: int):
        self.spec = resolve_schedule_spec(spec)
        if not (isinstance(epochs, int) and epochs >= 1 and isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
            raise SegCoreError(f"a schedule needs epochs >= 1 and steps_per_epoch >= 1, got {epochs}, "
                               f"{steps_per_epoch}", fix="set training.epochs and training.steps_per_epoch")
        self.optimizer = optimizer
        self.total_steps = epochs * steps_per_epoch
        self.warmup_steps = int(round(self.spec["warmup_epochs"] * steps_per_epoch))
        if self.warmup_steps >= self.total_steps:
            raise SegCoreError(f"schedule.warmup_epochs {self.spec['warmup_epochs']} covers the whole run "
                               f"({epochs} epochs)", fix="use fewer warm-up epochs than training epochs")
        self.base_lrs = [float(g.get("base_lr", g["lr"])) for g in optimizer.param_groups]
        # min_lr is the floor of the unscaled group; a group at lr_scale k floors at k * min_lr.
        self.floors = [self.spec["min_lr"] * float(g.get("lr_scale", 1.0)) / base
                       for g, base in zip(optimizer.param_groups, self.base_lrs, strict=True)]
        if any(mu >= 1 for mu in self.floors):
            raise SegCoreError(f"schedule.min_lr {self.spec['min_lr']} is not below the learning rate",
                               fix="set schedule.min_lr below optim.lr (e.g. 0)")
        self.step_count = 0
        self.epoch_count = 0
        self.best: float | None = None
        self.bad_epochs = 0
        self.reductions = 0
        self._apply()

    @property
    def lr(self) -> list[float]:
        """The learning rate of each param group for the next optimizer step."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def factor(self, mu: float) -> float:
        """lr / base_lr for a group whose floor is mu, at the current counters."""
        s, warm_steps = self.step_count, self.warmup_steps
        warm = (s + 1) / warm_steps if s < warm_steps else 1.0
        name = self.spec["name"]
        if name in ("poly", "cosine"):
            span = self.total_steps - warm_steps
            t = min(max(s - warm_steps, 0), span)
            if name == "poly":
                main = mu + (1 - mu) * (1 - t / span) ** self.spec["power"]
            else:
                main = mu + (1 - mu) * 0.5 * (1 + math.cos(math.pi * t / span))
        elif name == "step":
            main = max(mu, self.spec["gamma"] ** (self.epoch_count // self.spec["step_epochs"]))
        elif name == "plateau":
            main = max(mu, self.spec["factor"] ** self.reductions)
        else:
            main = 1.0
        return warm * main

    def _apply(self) -> None:
        for group, base, mu in zip(self.optimizer.param_groups, self.base_lrs, self.floors, strict=True):
            group["lr"] = base * self.factor(mu)

    def step_batch(self) -> None:
        """After each optimizer step: warm-up, poly and cosine advance."""
        self.step_count += 1
        self._apply()

    def step_epoch(self, metric: float | None = None) -> None:
        """After each epoch: step schedules advance; plateau judges `metric` (None: not validated, not judged)."""
        self.epoch_count += 1
        if self.spec["name"] == "plateau" and metric is not None:
            metric = float(metric)
            better = self.best is None or (metric < self.best if self.spec["mode"] == "min" else metric > self.best)
            if better:  # NaN is never better: it counts as a bad epoch
                self.best, self.bad_epochs = metric, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs > self.spec["patience"]:
                    self.reductions += 1
                    self.bad_epochs = 0
        self._apply()

    def state_dict(self) -> dict:
        """Plain data (ints, floats, strings): loads with torch.load(weights_only=True)."""
        return {"name": self.spec["name"], "step": self.step_count, "epoch": self.epoch_count, "best": self.best,
                "bad_epochs": self.bad_epochs, "reductions": self.reductions, "base_lrs": list(self.base_lrs),
                "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`: the same counters give the same learning rates, bit for bit."""
        if state.get("name") != self.spec["name"] or len(state.get("base_lrs", ())) != len(self.base_lrs):
            raise SegCoreError(f"the checkpoint's schedule ({state.get('name')!r}, "
                               f"{len(state.get('base_lrs', ()))} param groups) does not match this plan's "
                               f"({self.spec['name']!r}, {len(self.base_lrs)} groups)",
                               fix="resume with the run's own plan.json")
        self.step_count, self.epoch_count = int(state["step"]), int(state["epoch"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs, self.reductions = int(state["bad_epochs"]), int(state["reductions"])
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, spec: dict | None, *, epochs: int,
                    steps_per_epoch: int) -> Schedule:
    """The `Schedule` of `spec` over `epochs` x `steps_per_epoch` optimizer steps."""
    return Schedule(optimizer, spec, epochs=epochs, steps_per_epoch=steps_per_epoch)
