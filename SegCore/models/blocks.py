"""Small pieces shared by the U-Net family files (unet2d, unet3d, segresnet, efficientnet_unet).

Only what more than one network needs: the input-size check every fully convolutional encoder-decoder makes,
and the choice of a 2D or 3D layer type.
"""

from __future__ import annotations

from torch import Tensor, nn

from SegCore.errors import SegCoreError


def check_input(x: Tensor, *, model: str, in_channels: int, spatial_dims: int, divisor: int) -> None:
    """Refuse an input the network cannot take, naming the size and the nearest sizes it can.

    x: (B, C, *spatial) with len(spatial) == spatial_dims; every side must be a multiple of `divisor`
    (2 ** number of poolings) so that skip connections line up. The inference stage pads to such sizes.
    """
    if x.dim() != spatial_dims + 2:
        axes = "(B, C, Y, X)" if spatial_dims == 2 else "(B, C, Z, Y, X)"
        raise SegCoreError(f"{model} takes a {spatial_dims + 2}D tensor {axes}, got shape {tuple(x.shape)}",
                           fix="add the batch and channel axes, or pick a network with the right dimensionality")
    if x.shape[1] != in_channels:
        raise SegCoreError(f"{model} was built for {in_channels} input channel(s), got {x.shape[1]} "
                           f"(input shape {tuple(x.shape)})",
                           fix=f"build it with in_channels={x.shape[1]} or give it {in_channels} channel(s)")
    spatial = tuple(int(s) for s in x.shape[2:])
    bad = [s for s in spatial if s % divisor or s == 0]
    if bad:
        nearest = ", ".join(f"{s} -> ({', '.join(map(str, nearest_valid_sizes(s, divisor)))})"
                            for s in sorted(set(bad)))
        raise SegCoreError(f"{model} needs every spatial side to be a multiple of {divisor}, got {spatial} "
                           f"(nearest valid sides: {nearest})",
                           fix=f"crop or pad the input to multiples of {divisor} (the inference stage pads)")


def nearest_valid_sizes(side: int, divisor: int) -> tuple[int, ...]:
    """The multiples of `divisor` just below and above `side` (one value when `side` is below `divisor`)."""
    below, above = (side // divisor) * divisor, (side // divisor + 1) * divisor
    return (above,) if below == 0 else (below, above)


def conv_type(spatial_dims: int) -> type[nn.Module]:
    """nn.Conv2d or nn.Conv3d."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[check_spatial_dims(spatial_dims)]


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise SegCoreError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}", fix="use spatial_dims=2 or 3")
    return spatial_dims


def check_positive(name: str, value: int) -> int:
    """Constructor argument check: a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SegCoreError(f"{name} must be a whole number >= 1, got {value!r}", fix=f"pass a positive {name}")
    return value


def check_probability(name: str, value: float) -> float:
    """Constructor argument check: a rate in [0, 1)."""
    if not 0.0 <= float(value) < 1.0:
        raise SegCoreError(f"{name} must be in [0, 1), got {value!r}", fix=f"pass a {name} such as 0.2")
    return float(value)
