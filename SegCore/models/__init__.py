"""The studies' networks, by name: `build_model(name, **kwargs)`; `MODELS` lists them.

One file per family; importing this package registers them all.
"""

from SegCore.models import efficientnet_unet, rstn, segresnet, unet2d, unet3d, vnet  # noqa: F401  (registration)
from SegCore.models.registry import MODELS, ModelSpec, build_model, register_model

__all__ = ["MODELS", "ModelSpec", "build_model", "register_model"]
