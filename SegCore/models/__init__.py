"""The studies' networks, by name: `build_model(name, **kwargs)`; `MODELS` lists them.

One file per family; importing this package registers them all. Every network returns logits by default (see
each class's docstring for the output's shape). `training_step_memory` (SegCore.models.memory) says how much
memory one training step of a network needs.
"""

from SegCore.models import efficientnet_unet, rstn, segresnet, unet2d, unet3d, vnet  # noqa: F401  (registration)
from SegCore.models.memory import training_step_memory
from SegCore.models.registry import MODELS, ModelSpec, build_model, register_model

__all__ = ["MODELS", "ModelSpec", "build_model", "register_model", "training_step_memory"]
