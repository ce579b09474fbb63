"""Input mixup and manifold mixup for one training step (the muscle study's `--mixup no|input|manifold`).

    mix = Mixup({"mode": "manifold", "alpha": 1.0}, model)
    with mix.step(images, labels, rng) as mixed:
        logits = model(mixed.images)
        loss = mixed.loss(loss_fn, logits, labels)      # lam * loss(logits, y) + (1 - lam) * loss(logits, y[perm])

Each step draws, from the numpy Generator `rng` and in this order, lam ~ Beta(alpha, alpha), a permutation `perm`
of the batch, and (manifold mode) one layer uniformly among `layers`. Input mixup gives the network
lam * images + (1 - lam) * images[perm]. Manifold mixup gives it the images unchanged and, through a forward hook
on the chosen submodule, replaces that module's output by lam * out + (1 - lam) * out[perm] (every tensor of a list
or tuple output with the same lam and perm, as the study mixes all encoder features); the hook fires once and is
removed when the `with` block ends, also on an exception.

`layers` default to the network's `MIXUP_LAYERS` (class attribute: names of submodules, as `named_modules()` spells
them). A network lists there only layers whose output is the network's whole hidden state at that depth: every
later tensor is computed from it. A U-Net's inner encoder blocks are not such layers, because the skip connections
of the levels above would pass unmixed to the decoder and the mixed target would no longer describe the output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError

MIXUP_MODES = ("off", "input", "manifold")
MIXUP_DEFAULTS = {"mode": "off", "alpha": 0.4, "layers": None}


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / DataParallel (`.module`) or torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _mix(value, lam: float, perm: Tensor):
    """lam * value + (1 - lam) * value[perm] for a tensor, or for each tensor in a list / tuple."""
    if isinstance(value, Tensor):
        return lam * value + (1.0 - lam) * value[perm.to(value.device)]
    if isinstance(value, (list, tuple)):
        return type(value)(_mix(v, lam, perm) for v in value)
    raise SegCoreError(f"manifold mixup cannot mix a layer output of type {type(value).__name__}",
                       fix="pick a layer whose output is a tensor or a list of tensors")


@dataclass
class Mixed:
    """One step's mixing: the images to feed, lam, perm (None when off), the layer (manifold) and how often the
    hook fired."""

    images: Tensor
    labels: Tensor | None
    lam: float = 1.0
    perm: Tensor | None = None
    layer: str | None = None
    fired: int = 0

    def loss(self, loss_fn: Callable[[Tensor, Tensor], Tensor], logits, labels: Tensor | None = None) -> Tensor:
        """lam * loss_fn(logits, labels) + (1 - lam) * loss_fn(logits, labels[perm]); labels default to the step's.

        labels: class indices (B, *spatial) or one-hot / probabilities (B, C, *spatial): permuted along the batch.
        """
        labels = self.labels if labels is None else labels
        if labels is None:
            raise SegCoreError("mixup needs the labels to mix the loss", fix="pass labels to mixed.loss")
        if self.perm is None:
            return loss_fn(logits, labels)
        return (self.lam * loss_fn(logits, labels)
                + (1.0 - self.lam) * loss_fn(logits, labels[self.perm.to(labels.device)]))


class Mixup:
    """Mixup of a plan's `mixup` spec {"mode": off|input|manifold, "alpha": > 0, "layers": [names] or None}.

    model: the network (wrapped or not, see `unwrap`); manifold mode checks its layers here, so a bad name fails
    before training starts.
    """

    def __init__(self, spec: dict | None, model: nn.Module):
        spec = dict(spec or {})
        unknown = sorted(set(spec) - set(MIXUP_DEFAULTS))
        if unknown:
            raise SegCoreError(f"unknown mixup key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                               fix=f"use only {', '.join(MIXUP_DEFAULTS)}")
        self.spec = {**MIXUP_DEFAULTS, **spec}
        self.mode, alpha = self.spec["mode"], self.spec["alpha"]
        if self.mode not in MIXUP_MODES:
            raise SegCoreError(f"unknown mixup mode {self.mode!r}", fix=f"use one of {', '.join(MIXUP_MODES)}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or alpha == float("inf"):
            raise SegCoreError(f"mixup.alpha must be a number > 0, got {alpha!r}",
                               fix="use e.g. 0.4, or 1 as the muscle study (lam ~ Beta(alpha, alpha))")
        self.alpha = float(alpha)
        self.network = unwrap(model)
        self.modules: dict[str, nn.Module] = {}
        if self.mode == "manifold":
            self.modules = self._layers(self.spec["layers"])
        self.layers = tuple(self.modules)

    def _layers(self, names) -> dict[str, nn.Module]:
        kind = type(self.network).__name__
        declared = tuple(getattr(type(self.network), "MIXUP_LAYERS", ()))
        if names is None:
            if not declared:
                raise SegCoreError(f"{kind} declares no MIXUP_LAYERS for manifold mixup",
                                   fix="name the layers in mixup.layers, or use mixup.mode input")
            names = declared
        if isinstance(names, str) or not names:
            raise SegCoreError(f"mixup.layers must be a non-empty list of submodule names, got {names!r}",
                               fix=f"use e.g. {list(declared) or ['encoder1']}")
        available = dict(self.network.named_modules())
        missing = [n for n in names if not isinstance(n, str) or not n or n not in available]
        if missing:
            raise SegCoreError(f"{kind} has no submodule {', '.join(map(repr, missing))} for manifold mixup",
                               fix=f"use names from named_modules(), e.g. {', '.join(declared) or 'its children'}")
        return {n: available[n] for n in names}

    @contextlib.contextmanager
    def step(self, images: Tensor, labels: Tensor | None, rng: np.random.Generator) -> Iterator[Mixed]:
        """Mix one batch: images (B, C, *spatial); labels (B, ...) or None; rng: the step's numpy Generator."""
        if self.mode == "off":
            yield Mixed(images, labels)
            return
        batch = int(images.shape[0])
        if labels is not None and int(labels.shape[0]) != batch:
            raise SegCoreError(f"mixup got {batch} images but {int(labels.shape[0])} labels",
                               fix="pass the batch's images and labels together")
        lam = float(rng.beta(self.alpha, self.alpha))
        perm = torch.from_numpy(rng.permutation(batch)).to(images.device)
        if self.mode == "input":
            yield Mixed(_mix(images, lam, perm), labels, lam, perm)
            return
        layer = self.layers[int(rng.integers(len(self.layers)))]
        mixed = Mixed(images, labels, lam, perm, layer)

        def hook(module, inputs, output):
            mixed.fired += 1
            if mixed.fired == 1:  # one mixing per step, even if the module runs again
                return _mix(output, lam, perm)
            return None

        handle = self.modules[layer].register_forward_hook(hook)
        try:
            yield mixed
        finally:
            handle.remove()
        if mixed.fired == 0:
            raise SegCoreError(f"manifold mixup layer {layer!r} of {type(self.network).__name__} never ran",
                               fix="run the forward pass inside the `with mix.step(...)` block, or list layers "
                                   "that the forward pass uses")
