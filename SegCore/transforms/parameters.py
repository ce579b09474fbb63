"""Checking and resolving preprocessing step parameters: each checker turns a JSON value into its one canonical
form (floats as floats, triples as lists) or raises a SegCoreError saying what was expected.

A checker is `check(value) -> canonical value`; it raises `ValueError(expected)` and `resolve_step` turns that
into one SegCoreError naming the step, its position and the parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from SegCore.errors import SegCoreError

REQUIRED = object()


@dataclass(frozen=True)
class Parameter:
    """One step parameter: its default (`REQUIRED` when the user must give it) and its checker."""

    default: Any
    check: Callable[[Any], Any]


@dataclass(frozen=True)
class StepKind:
    """What a preprocessing step is.

    forward(params, image (C, Z, Y, X) float32, label (Z, Y, X) int | None, grid) -> (image, label, grid, facts):
        facts is a JSON-able dict of what the step did (crop box, pads, intensity values), enough to invert it.
    inverse(step_record, array, probabilities: bool) -> array on the step's input grid, for spatial steps (None
        for intensity steps, which a label or probability map does not go back through). array is a (Z, Y, X)
        label map, or (C, Z, Y, X) float32 class probabilities when `probabilities`.
    check(resolved params) -> None, or a sentence saying which parameters contradict each other.
    grid(params, grid) -> the output grid from the input grid alone, without voxels; None when it depends on the
        voxels (a crop to the foreground or the label). The default keeps the grid (intensity steps).
    forward_owned: `forward` for an image the pipeline owns and nobody reads again, which it may consume as it
        goes (the pad hands back each slab of its source once copied: one full-size array at the peak, not two);
        the same output. None: `forward` serves.
    """

    parameters: dict[str, Parameter]
    forward: Callable
    inverse: Callable | None = None
    check: Callable[[dict], str | None] | None = None
    grid: Callable = lambda params, grid: grid
    forward_owned: Callable | None = None


def on_voxels(params: dict, grid):
    """`StepKind.grid` of a step whose output grid depends on the voxels: unknown before they are read."""
    return None


def _real(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError
    return float(value)


def number(*, low: float | None = None, positive: bool = False, high: float | None = None) -> Callable:
    """A finite float, optionally >= low (> 0 with positive) and <= high."""
    words = "a number" + (" > 0" if positive else f" >= {low:g}" if low is not None else "") + (
        f" <= {high:g}" if high is not None else "")

    def check(value):
        try:
            real = _real(value)
        except ValueError:
            raise ValueError(words) from None
        if (positive and real <= 0) or (low is not None and real < low) or (high is not None and real > high):
            raise ValueError(words)
        return real
    return check


def integer(*, low: int = 0, high: int | None = None) -> Callable:
    words = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")

    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise ValueError(words)
        return int(value)
    return check


def choice(*names) -> Callable:
    def check(value):
        # the same type too: True == 1 and 1.0 == 1 in Python, but neither is the order 1
        if not any(value == name and type(value) is type(name) for name in names):
            raise ValueError(f"one of {', '.join(repr(n) for n in names)}")
        return value
    return check


def triple(item: Callable, words: str, *, allow_none: bool = False) -> Callable:
    """A list of three values, each checked by `item` (None allowed where `allow_none`)."""
    expected = f"a list of three {words}" + (" (null keeps that axis)" if allow_none else "")

    def check(value):
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(expected)
        try:
            return [None if (allow_none and v is None) else item(v) for v in value]
        except ValueError:
            raise ValueError(expected) from None
    return check


def interval() -> Callable:
    """[low, high] with low < high (a window, an output range)."""
    def check(value):
        try:
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError
            low, high = _real(value[0]), _real(value[1])
        except ValueError:
            raise ValueError("a list [low, high] of two numbers") from None
        if not low < high:
            raise ValueError("a list [low, high] with low < high")
        return [low, high]
    return check


def channels() -> Callable:
    """null (every channel) or a list of distinct channel indices >= 0."""
    def check(value):
        if value is None:
            return None
        if (not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value)
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value)):
            raise ValueError("null (every channel) or a list of distinct channel indices >= 0")
        return sorted(int(v) for v in value)
    return check


def resolve_step(index: int, step: Any, kinds: dict[str, StepKind]) -> dict:
    """One step's dict with every parameter checked and every default filled, keys in a fixed order."""
    names = sorted(kinds)
    if not isinstance(step, dict) or "name" not in step:
        raise SegCoreError(f"preprocessing step {index} must be a dict with a 'name', got {step!r}",
                           fix=f"use one of the steps {', '.join(names)}")
    name = step["name"]
    if not isinstance(name, str) or name not in kinds:
        raise SegCoreError(f"preprocessing step {index} has an unknown name {name!r}",
                           fix=f"use one of the steps {', '.join(names)}")
    parameters = kinds[name].parameters
    unknown = sorted(set(step) - set(parameters) - {"name"})
    if unknown:
        valid = ", ".join(sorted(parameters)) or "none"
        raise SegCoreError(f"preprocessing step {index} ({name}) has unknown parameter(s) {', '.join(unknown)}",
                           fix=f"its parameters are: {valid}")
    resolved: dict[str, Any] = {"name": name}
    for key, parameter in parameters.items():
        if key not in step:
            if parameter.default is REQUIRED:
                raise SegCoreError(f"preprocessing step {index} ({name}) needs the parameter {key!r}",
                                   fix=f"add \"{key}\" to the step")
            resolved[key] = parameter.default
            continue
        try:
            resolved[key] = parameter.check(step[key])
        except ValueError as error:
            raise SegCoreError(f"preprocessing step {index} ({name}): {key} must be {error}, got {step[key]!r}",
                               fix=f"correct \"{key}\" in the step") from None
    problem = kinds[name].check(resolved) if kinds[name].check else None
    if problem:
        raise SegCoreError(f"preprocessing step {index} ({name}): {problem}", fix="correct the step's parameters")
    return resolved
