"""Networks by name. Each family file registers its classes with `register_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from SegCore.errors import SegCoreError


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of a network.

    name: registry key; study: the study that uses it; spatial_dims: 2 or 3;
    defaults: constructor kwargs of the published size; small: kwargs overriding defaults for a tiny CPU version;
    example_input: one sample's input shape (C, *spatial) at a typical training size, for `segcore models`.
    """

    name: str
    builder: Callable[..., nn.Module]
    study: str
    spatial_dims: int
    defaults: dict = field(default_factory=dict)
    small: dict = field(default_factory=dict)
    example_input: tuple[int, ...] = ()
    summary: str = ""


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, study: str, spatial_dims: int, defaults: dict, example_input: tuple[int, ...],
                   small: dict | None = None, summary: str = ""):
    """Class decorator adding a network to `MODELS` under `name`."""

    def decorate(builder):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = ModelSpec(name, builder, study, spatial_dims, dict(defaults), dict(small or {}),
                                 tuple(example_input), summary or (builder.__doc__ or "").strip().splitlines()[0])
        return builder

    return decorate


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate network `name` with its published defaults, overridden by `kwargs`.

    Raises SegCoreError for an unknown name, or for an argument the network does not take (naming the network,
    the argument and the arguments it does take); the network's own checks raise SegCoreError for bad values.
    """
    if name not in MODELS:
        raise SegCoreError(f"unknown model {name!r}", fix=f"use one of {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    arguments = {**spec.defaults, **kwargs}
    check_arguments(name, spec.builder, arguments)
    return spec.builder(**arguments)


def check_arguments(name: str, builder: Callable[..., nn.Module], arguments: dict) -> None:
    """Refuse constructor arguments `builder` does not take (a typo would otherwise be a bare TypeError)."""
    signature = inspect.signature(builder)
    accepted = [p for p, v in signature.parameters.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    unknown = [key for key in arguments if key not in accepted]
    if unknown and not any(v.kind == v.VAR_KEYWORD for v in signature.parameters.values()):
        raise SegCoreError(f"network {name!r} has no argument{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(unknown)}", fix=f"its arguments are {', '.join(accepted)}")
    try:
        signature.bind(**arguments)
    except TypeError as error:
        raise SegCoreError(f"network {name!r}: {error}", fix=f"its arguments are {', '.join(accepted)}") from None
