"""Which stages run, and the plan of each: the study's stage plans with "@<stage>" references resolved.

    stages = select_stages(study.protocol, fold=0)          # the stages of fold 0 (and those of no fold)
    plan = train_plan(study, stage, data=Path("LA"), out=Path("RUN"), tiny=True, overrides=["optim.lr=1e-3"])

A train stage's plan is resolved as `segcore train` resolves one: defaults < the study preset < the stage's
plan < --tiny < --set < the data folder and the study (SegCore.training.config.resolve_plan). A --set line
`STAGES:KEY=VALUE` applies to the train stages whose names match the shell-style pattern STAGES only
(`--set '*-J:training.epochs=4'`: the pancreas J stages); `KEY=VALUE` applies to every one.
"""

from __future__ import annotations

import copy
import fnmatch
from pathlib import Path

from SegCore.errors import SegCoreError
from SegCore.studies.schema import STAGE_KINDS, Stage, Study

REFERENCE = "@"  # "@<stage>" in a stage plan: that train stage's best.pt


def check_protocol(study: Study) -> None:
    """Every stage name unique, every kind known, every reference and model an earlier train stage."""
    if not study.protocol:
        raise SegCoreError(f"the {study.name} study has no protocol to run", fix="train with segcore train")
    seen: dict[str, Stage] = {}
    for stage in study.protocol:
        if stage.kind not in STAGE_KINDS or stage.name in seen or not stage.name or "/" in stage.name:
            raise ValueError(f"{study.name}: bad stage {stage.name!r} ({stage.kind}) in the protocol")
        for name in (*stage.models, *references(stage.plan)):
            if name not in seen or seen[name].kind != "train":
                raise ValueError(f"{study.name}: stage {stage.name!r} uses {name!r}, not an earlier train stage")
        if stage.kind == "test" and not stage.models:
            raise ValueError(f"{study.name}: test stage {stage.name!r} names no models")
        seen[stage.name] = stage


def references(value) -> list[str]:
    """The stage names a plan refers to with "@<stage>", in order of appearance."""
    if isinstance(value, str):
        return [value[1:]] if value.startswith(REFERENCE) else []
    if isinstance(value, dict):
        return [name for item in value.values() for name in references(item)]
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in references(item)]
    return []


def resolve_references(value, out: Path):
    """A copy of `value` with every "@<stage>" replaced by the absolute path of RUN/<stage>/best.pt."""
    if isinstance(value, str) and value.startswith(REFERENCE):
        return str((out / value[1:] / "best.pt").absolute())
    if isinstance(value, dict):
        return {key: resolve_references(item, out) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve_references(item, out) for item in value]
    return copy.deepcopy(value)


def folds_of(protocol: tuple[Stage, ...]) -> list[int]:
    return sorted({stage.fold for stage in protocol if stage.fold is not None})


def select_stages(protocol: tuple[Stage, ...], fold: int | None = None) -> list[Stage]:
    """The stages to run: all, or those of `fold` and those of no fold (SegCoreError listing the folds)."""
    if fold is None:
        return list(protocol)
    folds = folds_of(protocol)
    if fold not in folds:
        raise SegCoreError(f"the protocol has no fold {fold}" + (f"; its folds are {folds}" if folds else
                                                                 ": it is not cross-validated"),
                           fix="leave out --fold" if not folds else f"use --fold {folds[0]} ... {folds[-1]}")
    return [stage for stage in protocol if stage.fold in (None, fold)]


def _scope(override: str) -> tuple[str | None, str]:
    """('*-J', 'training.epochs=4') for '*-J:training.epochs=4'; (None, line) for a line without a stage."""
    key, equals, value = override.partition("=")
    pattern, colon, rest = key.partition(":")
    return (pattern, rest + equals + value) if colon else (None, override)


def stage_overrides(stage: Stage, overrides: list[str]) -> list[str]:
    """The --set lines that apply to `stage`, without their stage patterns."""
    kept = []
    for override in overrides:
        pattern, line = _scope(override)
        if pattern is None or fnmatch.fnmatchcase(stage.name, pattern):
            kept.append(line)
    return kept


def check_scopes(stages: list[Stage], overrides: list[str]) -> None:
    """SegCoreError for a stage-scoped --set line that matches no train stage among `stages`."""
    names = [stage.name for stage in stages if stage.kind == "train"]
    for override in overrides:
        pattern, _ = _scope(override)
        if pattern is not None and not fnmatch.filter(names, pattern):
            raise SegCoreError(f"--set {override!r}: no train stage matches {pattern!r}",
                               fix=f"use one of the train stages ({', '.join(names)}) or a pattern of them")


def train_plan(study: Study, stage: Stage, *, data: Path, out: Path, tiny: bool, overrides: list[str],
               device: str | None = None) -> dict:
    """The resolved plan of train stage `stage` (SegCoreError for a bad override or data folder); `overrides`
    may hold stage-scoped lines (`stage_overrides`)."""
    from SegCore.training.config import resolve_plan

    config = {**resolve_references(stage.plan, out), "study": study.name}
    flags = {"data": str(Path(data).absolute()), "study": study.name, "device": device}
    return resolve_plan(config, overrides=stage_overrides(stage, list(overrides)), flags=flags, tiny=tiny)
