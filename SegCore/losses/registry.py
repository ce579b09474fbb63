"""Losses by name: `build_loss(name, **kwargs)`; `LOSSES` maps each name to its class."""

from __future__ import annotations

import inspect

from torch import nn

from SegCore.errors import SegCoreError

LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str):
    """Class decorator adding a loss class to `LOSSES` under `name`."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        LOSSES[name] = cls
        cls.registry_name = name
        return cls

    return decorate


def build_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate loss `name` with `kwargs` (its constructor arguments; see docs/losses.md).

    Raises SegCoreError for an unknown name or an argument the loss does not take.
    """
    if name not in LOSSES:
        raise SegCoreError(f"unknown loss {name!r}", fix=f"use one of {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    signature = inspect.signature(cls.__init__)
    try:
        signature.bind(None, **kwargs)
    except TypeError as error:
        accepted = [p for p in signature.parameters if p != "self"]
        raise SegCoreError(f"loss {name!r}: {error}", fix=f"its arguments are {', '.join(accepted)}") from None
    return cls(**kwargs)
