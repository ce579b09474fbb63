"""V-Net (Milletari et al. 2016) as the left-atrium study builds it, with optional BAM attention.

Layout (the study's `LASC18/model.py`, c = base_channels = 8, n = num_layers):

    input stage   5x5x5 conv in -> c, PReLU; + the input tiled to c channels (residual)       full size, c
    down stages   2x2x2 stride-2 conv (doubling channels), PReLU; then k x (5x5x5 conv, PReLU);
                  + the down-convolution's output (residual); k = n, n, n+1, n+1             2c 4c 8c 16c
    up stages     2x2x2 stride-2 transposed conv to half the stage's channels, PReLU; concatenated with the
                  skip of the same level; k x (5x5x5 conv, PReLU); + the concatenation (residual);
                  k = n+1, n+1, n, n; stage channels 16c, 8c, 4c, 2c
    head          1x1x1 conv 2c -> out_channels (logits)

No normalisation layers (the study has none; with BatchNorm after every convolution the counts below would be
2,464 higher for n = 1). Parameters with out_channels=2: 10,759,082 for num_layers=1 and 16,200,042 for
num_layers=2 (the study reports 10.75 M and 16.2 M). Two differences from the study's code, neither of which
changes what the network computes beyond the head: its output stage puts a PReLU on the logits (dropped here:
logits go straight to the loss) and its up stages hold a second PReLU that forward never uses (not created here).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.models.bam import BAM
from SegCore.models.blocks import check_input, check_positive
from SegCore.models.registry import register_model

DIVISOR = 16  # four stride-2 down convolutions


def _conv_stack(channels: int, num_layers: int, dilation: int) -> nn.Sequential:
    """num_layers x (5x5x5 conv, PReLU); 'same' padding for any dilation."""
    layers: list[nn.Module] = []
    for _ in range(num_layers):
        layers += [nn.Conv3d(channels, channels, 5, padding=2 * dilation, dilation=dilation), nn.PReLU(channels)]
    return nn.Sequential(*layers)


class _InputStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 5, padding=2 * dilation, dilation=dilation)
        self.act = nn.PReLU(out_channels)
        self.repeats = out_channels // in_channels

    def forward(self, x: Tensor) -> Tensor:
        # V-Net's residual needs the input at the stage's width: a 1-channel image broadcasts (as in the study),
        # more channels are tiled
        residual = x if x.shape[1] == 1 else x.repeat(1, self.repeats, 1, 1, 1)
        return self.act(self.conv(x)) + residual


class _DownStage(nn.Module):
    def __init__(self, in_channels: int, num_layers: int, dilation: int):
        super().__init__()
        self.down = nn.Conv3d(in_channels, 2 * in_channels, 2, stride=2)
        self.act = nn.PReLU(2 * in_channels)
        self.convs = _conv_stack(2 * in_channels, num_layers, dilation)

    def forward(self, x: Tensor) -> Tensor:
        down = self.act(self.down(x))
        return self.convs(down) + down


class _UpStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels // 2, 2, stride=2)
        self.act = nn.PReLU(out_channels // 2)
        self.convs = _conv_stack(out_channels, num_layers, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        joined = torch.cat((self.act(self.up(x)), skip), dim=1)
        return self.convs(joined) + joined


@register_model("vnet", study="atrium", spatial_dims=3,
                defaults={"in_channels": 1, "out_channels": 2, "num_layers": 1, "base_channels": 8, "dilation": 1,
                          "attention": False, "bam_reduction": 4, "bam_dilation": 4},
                small={"base_channels": 2}, example_input=(1, 96, 144, 224),
                summary="V-Net (5x5x5 convs, PReLU, residual stages) with optional BAM attention; atrium study")
class VNet(nn.Module):
    """V-Net of the atrium study: 5x5x5 convolutions, PReLU, residual stages, channels 8-16-32-64-128.

    Args:
        in_channels: image channels (study: 1); must divide base_channels (the input residual tiles the image).
        out_channels: output channels (2 for softmax over background / left atrium; the study's locator is the
            same network on an image downsampled by 0.5 x 0.25 x 0.25).
        num_layers: n; 5x5x5 convolutions per stage are n, n, n+1, n+1 down and n+1, n+1, n, n up
            (study: 1 -> 10.76 M parameters, 2 -> 16.2 M, "increased conv. filters").
        base_channels: channels of the input stage, doubled at each down stage (study: 8).
        dilation: dilation of the input and down stages' 5x5x5 convolutions (study: 1); up stages stay at 1.
        attention: add BAM after the input stage and after each down stage (on the stage's output).
        bam_reduction, bam_dilation: BAM's reduction ratio and spatial dilation (study: 4, and 3 or 4).

    Input:  (N, in_channels, Z, Y, X) float32; every side a multiple of 16 (SegCoreError otherwise, naming the
            nearest valid sides; the study zero-pads to 96 x 640 x 640, the inference stage pads for you).
    Output: (N, out_channels, Z, Y, X) float32 logits.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, num_layers: int = 1, base_channels: int = 8,
                 dilation: int = 1, attention: bool = False, bam_reduction: int = 4, bam_dilation: int = 4):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("num_layers", num_layers), ("base_channels", base_channels), ("dilation", dilation)):
            check_positive(name, value)
        if base_channels % in_channels:
            raise SegCoreError(f"V-Net's input residual tiles the {in_channels}-channel image to base_channels="
                               f"{base_channels}, which is not a multiple of it",
                               fix=f"use base_channels a multiple of {in_channels}")
        self.in_channels = in_channels
        self.divisor = DIVISOR  # every input side must be a multiple of it, as in the other networks
        c, n = base_channels, num_layers
        self.input_stage = _InputStage(in_channels, c, dilation)
        self.down_stages = nn.ModuleList([_DownStage(c, n, dilation), _DownStage(2 * c, n, dilation),
                                          _DownStage(4 * c, n + 1, dilation), _DownStage(8 * c, n + 1, dilation)])
        self.up_stages = nn.ModuleList([_UpStage(16 * c, 16 * c, n + 1), _UpStage(16 * c, 8 * c, n + 1),
                                        _UpStage(8 * c, 4 * c, n), _UpStage(4 * c, 2 * c, n)])
        self.attention = (nn.ModuleList([BAM(width, bam_reduction, bam_dilation) for width in (c, 2 * c, 4 * c,
                                                                                              8 * c, 16 * c)])
                          if attention else None)
        self.head = nn.Conv3d(2 * c, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, model="vnet", in_channels=self.in_channels, spatial_dims=3, divisor=DIVISOR)
        h = self.input_stage(x)
        levels = [h if self.attention is None else self.attention[0](h)]
        for i, stage in enumerate(self.down_stages):
            h = stage(levels[-1])
            levels.append(h if self.attention is None else self.attention[i + 1](h))
        h = levels.pop()  # the bottom stage feeds the first up stage, it is no skip
        for stage in self.up_stages:
            h = stage(h, levels.pop())
        return self.head(h)
