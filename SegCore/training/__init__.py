"""Training: one small loop for every study; what varies lives in the plan (SegCore/training/config.py).

    from SegCore.training import train_from_plan
    result = train_from_plan(plan, Path("RUN"), resume=False, overwrite=False, progress=callback)

Parts: `config` (the plan, with every default filled), `data` / `cache` / `samplers` (cached cases, patches,
slices, batches), `optim` (optimizers, schedules), `mixup`, `distill`, `checkpoint` / `run_folder` (the run
folder's files), `trainer` (the loop), `distributed` (DDP under torchrun). See docs/training.md.

Names load on first use, so that importing one part (or `segcore --help`) does not import torch and the rest.
"""

import importlib

_LAZY = {"Trainer": "SegCore.training.trainer", "train_from_plan": "SegCore.training.trainer"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Trainer", "train_from_plan"]
