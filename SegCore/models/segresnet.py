"""SegResNet (Myronenko 2018, "3D MRI brain tumor segmentation using autoencoder regularization"), 2D or 3D.

The encoder-decoder of the paper without its variational auto-encoder branch, laid out as MONAI's `SegResNet`
(which the muscle study trained), written here without a MONAI dependency:

- initial 3x3(x3) convolution to `init_filters` channels (no bias), optional dropout;
- encoder level i (i = 0..len(blocks_down)-1) at init_filters * 2**i channels: a stride-2 3x3 convolution
  (levels > 0), then blocks_down[i] residual blocks (GroupNorm -> ReLU -> 3x3 conv, twice, + identity);
- decoder: per level a 1x1 convolution halving the channels, x2 linear upsampling, addition of the encoder
  feature of that level, then blocks_up[i] residual blocks;
- head: GroupNorm -> ReLU -> 1x1 convolution (with bias).
"""

from __future__ import annotations

from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.models.blocks import check_input, check_positive, check_probability, check_spatial_dims, conv_type
from SegCore.models.registry import register_model


class _ResBlock(nn.Module):
    """x + conv(relu(norm(conv(relu(norm(x)))))), channels and size unchanged."""

    def __init__(self, channels: int, spatial_dims: int, num_groups: int):
        super().__init__()
        conv = conv_type(spatial_dims)
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.act = nn.ReLU()
        self.conv1 = conv(channels, channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = conv(channels, channels, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(self.act(self.norm1(x)))
        return x + self.conv2(self.act(self.norm2(y)))


@register_model("segresnet", study="muscle", spatial_dims=2,
                defaults={"in_channels": 1, "out_channels": 2, "spatial_dims": 2, "init_filters": 8,
                          "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1), "num_groups": 8, "dropout": 0.0},
                small={"init_filters": 4, "num_groups": 2, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
                example_input=(1, 512, 512))
class SegResNet(nn.Module):
    """SegResNet encoder-decoder (Myronenko 2018) with residual GroupNorm blocks, 2D or 3D.

    Args:
        in_channels: input channels (muscle study: 1 CT slice, or 3 stacked adjacent slices).
        out_channels: output channels (classes including background).
        spatial_dims: 2 (slices, as the muscle study) or 3 (volumes).
        init_filters: channels of the first level; level i has init_filters * 2**i (default 8).
        blocks_down: residual blocks per encoder level (default (1, 2, 2, 4): 4 levels, 3 downsamplings).
        blocks_up: residual blocks per decoder level, len(blocks_down) - 1 entries (default (1, 1, 1)).
        num_groups: GroupNorm groups; must divide init_filters (default 8).
        dropout: dropout rate after the initial convolution, in [0, 1) (0 = none, the default).

    Input:  (B, in_channels, *spatial) float32, every side a multiple of 2 ** (len(blocks_down) - 1) (8 by default).
    Output: (B, out_channels, *spatial) float32 logits.
    """

    # Manifold mixup layers (SegCore.training.mixup): outputs every later tensor is computed from (down_layers.0
    # is the first skip and the input of the next level). Deeper levels would leave the skips above them unmixed.
    MIXUP_LAYERS = ("conv_init", "down_layers.0")

    def __init__(self, in_channels: int = 1, out_channels: int = 2, *, spatial_dims: int = 2, init_filters: int = 8,
                 blocks_down: tuple[int, ...] = (1, 2, 2, 4), blocks_up: tuple[int, ...] = (1, 1, 1),
                 num_groups: int = 8, dropout: float = 0.0):
        super().__init__()
        check_spatial_dims(spatial_dims)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("init_filters", init_filters), ("num_groups", num_groups)):
            check_positive(name, value)
        blocks_down, blocks_up = tuple(blocks_down), tuple(blocks_up)
        if not blocks_down or any(b < 1 for b in blocks_down):
            raise SegCoreError(f"blocks_down needs at least one level with >= 1 block each, got {blocks_down}",
                               fix="pass e.g. blocks_down=(1, 2, 2, 4)")
        if len(blocks_up) != len(blocks_down) - 1 or any(b < 0 for b in blocks_up):
            raise SegCoreError(f"blocks_up needs {len(blocks_down) - 1} entries >= 0 (one per decoder level, "
                               f"len(blocks_down) - 1), got {blocks_up}",
                               fix=f"pass blocks_up with {len(blocks_down) - 1} entries, e.g. all ones")
        if init_filters % num_groups:
            raise SegCoreError(f"num_groups {num_groups} does not divide init_filters {init_filters} "
                               "(GroupNorm needs whole groups)", fix="pick num_groups dividing init_filters")
        self.in_channels, self.out_channels, self.spatial_dims = in_channels, out_channels, spatial_dims
        self.divisor = 2 ** (len(blocks_down) - 1)
        conv = conv_type(spatial_dims)

        self.conv_init = conv(in_channels, init_filters, kernel_size=3, padding=1, bias=False)
        rate = check_probability("dropout", dropout)
        self.dropout = nn.Dropout(rate) if rate > 0 else None
        self.down_layers = nn.ModuleList()
        for level, count in enumerate(blocks_down):
            channels = init_filters * 2 ** level
            downsample = ([conv(channels // 2, channels, kernel_size=3, stride=2, padding=1, bias=False)]
                          if level else [])
            self.down_layers.append(nn.Sequential(
                *downsample, *[_ResBlock(channels, spatial_dims, num_groups) for _ in range(count)]))
        self.up_layers, self.up_samples = nn.ModuleList(), nn.ModuleList()
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        for step, count in enumerate(blocks_up):
            channels = init_filters * 2 ** (len(blocks_up) - step)
            self.up_samples.append(nn.Sequential(
                conv(channels, channels // 2, kernel_size=1, bias=False),
                nn.Upsample(scale_factor=2, mode=mode, align_corners=False)))
            self.up_layers.append(nn.Sequential(
                *[_ResBlock(channels // 2, spatial_dims, num_groups) for _ in range(count)]))
        self.conv_final = nn.Sequential(nn.GroupNorm(num_groups, init_filters), nn.ReLU(),
                                        conv(init_filters, out_channels, kernel_size=1, bias=True))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, *spatial) -> logits (B, out_channels, *spatial)."""
        check_input(x, model="segresnet", in_channels=self.in_channels, spatial_dims=self.spatial_dims,
                    divisor=self.divisor)
        x = self.conv_init(x)
        if self.dropout is not None:
            x = self.dropout(x)
        skips = []
        for down in self.down_layers:
            x = down(x)
            skips.append(x)
        for up, layers, skip in zip(self.up_samples, self.up_layers, reversed(skips[:-1]), strict=True):
            x = layers(up(x) + skip)
        return self.conv_final(x)
