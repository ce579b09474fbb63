"""FCN-8s (Long, Shelhamer & Darrell 2015) on a VGG-16 backbone, the network inside the pancreas study's RSTN.

Layout (module names as in the study's PyTorch code and pytorch-fcn, so their state dicts load by key):

    conv1_1..conv5_3   VGG-16: 3x3 convs + ReLU in blocks of 2, 2, 3, 3, 3 with 64-128-256-512-512 channels,
                       each block ending in a 2x2 max-pool (ceil mode); conv1_1 zero-pads by 100 pixels
    fc6, fc7           VGG's fully connected layers as convolutions: 7x7 conv to 4096, 1x1 conv 4096 -> 4096,
                       each with ReLU and channel dropout
    score_fr           1x1 conv fc7 -> out_channels (stride 32)
    upscore2           x2 transposed conv, + score_pool4 (1x1 conv on pool4, cropped at offset 5)   (stride 16)
    upscore_pool4      x2 transposed conv, + score_pool3 (1x1 conv on pool3, cropped at offset 9)   (stride 8)
    upscore8           x8 transposed conv, cropped at offset 31 to the input size                   (stride 1)

Any input size works: the 100-pixel padding makes the feature maps large enough for fc6's 7x7 window even for
a 1 x 1 input, and the crops at offsets 5, 9 and 31 are FCN's own bookkeeping of where that padding went, so the
output is aligned with the input pixel for pixel. The transposed convolutions start as per-channel bilinear
interpolation; with upsampling="bilinear" they stay fixed (the study never trains them), with "learned" they are
trained. No pretrained weights: nothing is downloaded. The VGG and fc layers start from He (Kaiming) normal
initialisation and the score layers from N(0, 0.01^2) (FCN zeroes its score layers, which only works on top of
pretrained features: with a random backbone zero scores would block every gradient to it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.models.blocks import check_positive, check_probability
from SegCore.models.registry import register_model

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (channels, 3x3 convs) per block
FC_CHANNELS = 4096
UPSAMPLING = ("bilinear", "learned")


def scaled_channels(channels: int, width_multiplier: float) -> int:
    """channels * width_multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width_multiplier)))


def bilinear_kernel(size: int) -> Tensor:
    """(size, size) float32 bilinear interpolation kernel of a transposed convolution with stride size // 2."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    return ramp[:, None] * ramp[None, :]


class _Upsample(nn.Module):
    """Transposed conv (C -> C, kernel 2f, stride f, no bias) started as per-channel bilinear upsampling by f."""

    def __init__(self, channels: int, factor: int, learned: bool):
        super().__init__()
        weight = torch.zeros(channels, channels, 2 * factor, 2 * factor)
        weight[range(channels), range(channels)] = bilinear_kernel(2 * factor)
        if learned:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)  # saved with the weights, never trained
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.weight, stride=self.factor)


@register_model("fcn8s", study="pancreas", spatial_dims=2,
                defaults={"in_channels": 3, "out_channels": 3, "width_multiplier": 1.0, "upsampling": "bilinear",
                          "dropout": 0.5},
                small={"width_multiplier": 1 / 16}, example_input=(3, 512, 512),
                summary="FCN-8s on VGG-16, 3 adjacent slices in, one logit map per slice out; pancreas study")
class FCN8s(nn.Module):
    """FCN-8s on a VGG-16 backbone for any 2D input size (no pretrained weights).

    Args:
        in_channels: input channels (pancreas study: 3 adjacent slices).
        out_channels: output logit maps (study: 3, one per input slice, each read through a sigmoid).
        width_multiplier: scales every VGG and fc width (1 = the published 64 ... 512, 4096; 1/16 gives a tiny
            network for tests). At 1 with 3 in / 3 out the network has 134,275,145 trainable parameters
            (134,277,737 with upsampling="learned").
        upsampling: "bilinear" (transposed convs fixed at bilinear interpolation, as the study trains it) or
            "learned" (the same transposed convs, started bilinear, trained).
        dropout: channel dropout rate after fc6 and fc7 (FCN: 0.5).

    Input:  (N, in_channels, Y, X) float32, any Y, X >= 1.
    Output: (N, out_channels, Y, X) float32 logits.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width_multiplier: float = 1.0,
                 upsampling: str = "bilinear", dropout: float = 0.5):
        super().__init__()
        check_positive("in_channels", in_channels)
        check_positive("out_channels", out_channels)
        check_probability("dropout", dropout)
        if not float(width_multiplier) > 0:
            raise SegCoreError(f"width_multiplier must be > 0, got {width_multiplier!r}",
                               fix="use 1 for the published FCN-8s or e.g. 1/16 for a tiny one")
        if upsampling not in UPSAMPLING:
            raise SegCoreError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {upsampling!r}",
                               fix='use "bilinear" (fixed, as the study) or "learned"')
        self.in_channels = in_channels
        previous = in_channels
        for block, (channels, convs) in enumerate(VGG16_BLOCKS, start=1):
            width = scaled_channels(channels, width_multiplier)
            for i in range(1, convs + 1):
                padding = 100 if (block, i) == (1, 1) else 1
                setattr(self, f"conv{block}_{i}", nn.Conv2d(previous, width, 3, padding=padding))
                previous = width
        fc = scaled_channels(FC_CHANNELS, width_multiplier)
        self.fc6 = nn.Conv2d(previous, fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.drop = nn.Dropout2d(dropout)
        self.score_fr = nn.Conv2d(fc, out_channels, 1)
        self.score_pool3 = nn.Conv2d(scaled_channels(VGG16_BLOCKS[2][0], width_multiplier), out_channels, 1)
        self.score_pool4 = nn.Conv2d(scaled_channels(VGG16_BLOCKS[3][0], width_multiplier), out_channels, 1)
        learned = upsampling == "learned"
        self.upscore2 = _Upsample(out_channels, 2, learned)
        self.upscore_pool4 = _Upsample(out_channels, 2, learned)
        self.upscore8 = _Upsample(out_channels, 8, learned)
        for name, module in self.named_children():
            if isinstance(module, nn.Conv2d):
                if name.startswith("score"):
                    nn.init.normal_(module.weight, std=0.01)
                else:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise SegCoreError(f"fcn8s takes (N, {self.in_channels}, Y, X), got shape {tuple(x.shape)}",
                               fix=f"stack {self.in_channels} adjacent slices as channels")
        h = x
        pooled = {}
        for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, convs + 1):
                h = F.relu(getattr(self, f"conv{block}_{i}")(h), inplace=True)
            h = pooled[block] = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
        h = self.drop(F.relu(self.fc6(h), inplace=True))
        h = self.drop(F.relu(self.fc7(h), inplace=True))
        h = self.upscore2(self.score_fr(h))  # stride 16
        h = h + _crop(self.score_pool4(pooled[4]), 5, h.shape[2:])
        h = self.upscore_pool4(h)  # stride 8
        h = h + _crop(self.score_pool3(pooled[3]), 9, h.shape[2:])
        return _crop(self.upscore8(h), 31, x.shape[2:])


def _crop(x: Tensor, offset: int, size_yx: tuple[int, ...]) -> Tensor:
    """x[:, :, offset:offset + Y, offset:offset + X]: FCN's alignment of a padded map with a smaller one."""
    return x[:, :, offset:offset + size_yx[0], offset:offset + size_yx[1]]
