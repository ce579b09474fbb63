"""EfficientNet-B0..B7 encoder with a U-Net decoder: the muscle study's main 2D network.

    net = EfficientNetUNet(in_channels=1, out_channels=2, variant="b0")
    logits = net(torch.randn(2, 1, 512, 512))   # (B, C, Y, X) float32, sides multiples of 32 -> (2, 2, 512, 512)

Encoder (Tan & Le 2019): a stride-2 3x3 stem, then the seven MBConv stages of the B0 table, scaled per variant
by a width coefficient (channels, rounded to multiples of 8) and a depth coefficient (repeats, rounded up).
MBConv: 1x1 expansion (ratio 6; none for ratio 1) -> depthwise kxk -> squeeze-excitation (ratio 0.25 of the
block's input channels) -> 1x1 projection, BatchNorm after each convolution, SiLU (swish), and an identity
shortcut with stochastic depth (drop-connect, rate growing linearly to `drop_connect_rate` at the last block)
where the block keeps its size and channels. BatchNorm eps 1e-3, momentum 0.01 (the TensorFlow reference).
Padding is symmetric, k // 2 on every side (torchvision's EfficientNet), not TensorFlow's asymmetric "same"
(docs/models.md says why): for even sizes the shapes agree, and a stride-2 output j is centred on input 2j.

Decoder (as segmentation_models_pytorch's `Unet`): five blocks with (256, 128, 64, 32, 16) channels, each
x2 nearest upsampling, concatenation of the encoder feature at that stride (16, 8, 4, 2; none at stride 1),
two 3x3 conv + BatchNorm + ReLU; then a 3x3 convolution to the classes. The encoder features are smp's: the
stem's output at stride 2, then the last stage at each coarser stride.

No pretrained weights: nothing is downloaded at run time, every weight starts from PyTorch's default
initialisation (the study fine-tuned ImageNet weights; SegCore trains from scratch or from its own checkpoints).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.models.blocks import check_input, check_positive, check_probability
from SegCore.models.registry import register_model

# Variant -> (width coefficient, depth coefficient), Tan & Le 2019 (EfficientNet-B0..B7).
COEFFICIENTS = {"b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4),
                "b4": (1.4, 1.8), "b5": (1.6, 2.2), "b6": (1.8, 2.6), "b7": (2.0, 3.1)}
# The B0 stage table: (expand ratio, kernel, stride, output channels, repeats).
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS = 32
SE_RATIO = 0.25


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale `channels` by `width`, round to a multiple of `divisor`, never more than 10% down (the paper's rule)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by `depth`, rounding up."""
    return int(math.ceil(depth * repeats))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, kernel_size=1)
        self.expand = nn.Conv2d(squeeze, channels, kernel_size=1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(scale))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation. (B, C_in, Y, X) -> (B, C_out, Y/stride, X/stride)."""

    def __init__(self, in_channels: int, out_channels: int, *, expand_ratio: int, kernel_size: int, stride: int,
                 drop_connect: float):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), _bn(hidden), nn.SiLU()]
        layers += [nn.Conv2d(hidden, hidden, kernel_size, stride=stride, padding=kernel_size // 2, groups=hidden,
                             bias=False), _bn(hidden), nn.SiLU(),
                   _SqueezeExcitation(hidden, max(1, int(in_channels * SE_RATIO))),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), _bn(out_channels)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect = drop_connect

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        if not self.residual:
            return y
        if self.training and self.drop_connect > 0:
            # Stochastic depth: drop the whole branch per sample, rescale the kept ones.
            keep = 1.0 - self.drop_connect
            mask = torch.empty((y.shape[0],) + (1,) * (y.dim() - 1), dtype=y.dtype, device=y.device)
            y = y * mask.bernoulli_(keep) / keep
        return x + y


class EfficientNetEncoder(nn.Module):
    """EfficientNet feature extractor (no 1x1 head conv, no classifier).

    Args:
        in_channels: image channels (muscle study: 1 CT slice, or 3 stacked adjacent slices).
        variant: "b0" .. "b7", picks the width and depth coefficients.
        width_coefficient, depth_coefficient: override the variant's (e.g. 0.25 for a tiny test network).
        drop_connect_rate: stochastic-depth rate of the last block (default 0.2, linear from 0 at the first).

    forward: (B, in_channels, Y, X) -> features at strides 2, 4, 8, 16, 32, with `feature_channels[i]` channels
    (B0: 32, 24, 40, 112, 320): the stem's output at stride 2 (as segmentation_models_pytorch's encoder), then
    the output of the last stage at each coarser resolution. `out_channels` is the last stage's width.
    """

    def __init__(self, in_channels: int = 3, variant: str = "b0", *, width_coefficient: float | None = None,
                 depth_coefficient: float | None = None, drop_connect_rate: float = 0.2):
        super().__init__()
        check_positive("in_channels", in_channels)
        if variant not in COEFFICIENTS:
            raise SegCoreError(f"unknown EfficientNet variant {variant!r}",
                               fix=f"use one of {', '.join(COEFFICIENTS)}")
        width, depth = COEFFICIENTS[variant]
        width = width if width_coefficient is None else float(width_coefficient)
        depth = depth if depth_coefficient is None else float(depth_coefficient)
        if width <= 0 or depth <= 0:
            raise SegCoreError(f"width and depth coefficients must be > 0, got {width}, {depth}",
                               fix="pass positive coefficients, e.g. 0.25")
        check_probability("drop_connect_rate", drop_connect_rate)
        self.width, self.depth = width, depth

        stem = round_filters(STEM_CHANNELS, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False), _bn(stem),
                                  nn.SiLU())
        repeats = [round_repeats(stage[4], depth) for stage in B0_STAGES]
        total, index = sum(repeats), 0
        self.stages = nn.ModuleList()
        previous = stem
        for (expand, kernel, stride, channels, _), count in zip(B0_STAGES, repeats, strict=True):
            out = round_filters(channels, width)
            blocks = []
            for i in range(count):
                blocks.append(MBConv(previous, out, expand_ratio=expand, kernel_size=kernel,
                                     stride=stride if i == 0 else 1, drop_connect=drop_connect_rate * index / total))
                previous, index = out, index + 1
            self.stages.append(nn.Sequential(*blocks))
        self.out_channels = previous
        # Skip features: the stem at stride 2 (smp's choice, so the decoder sees the stem's wider features there
        # rather than stage 0's), then the last stage of each coarser resolution: stages 1, 2, 4, 6.
        self.feature_stages = (1, 2, 4, 6)
        self.feature_channels = (stem, *(round_filters(B0_STAGES[i][3], width) for i in self.feature_stages))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = [x]
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.feature_stages:
                features.append(x)
        return features


class _DecoderBlock(nn.Sequential):
    """Two 3x3 conv (no bias) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


@register_model("efficientnet_unet", study="muscle", spatial_dims=2,
                defaults={"in_channels": 1, "out_channels": 2, "variant": "b0",
                          "decoder_channels": (256, 128, 64, 32, 16)},
                small={"width_coefficient": 0.25, "depth_coefficient": 0.34, "decoder_channels": (16, 8, 8, 4, 4)},
                example_input=(1, 512, 512))
class EfficientNetUNet(nn.Module):
    """U-Net with an EfficientNet-B0..B7 encoder (muscle study; no pretrained weights).

    Args:
        in_channels: 1 (a CT slice) or 3 (stacked adjacent slices, the study's `channel_3d`); any >= 1 works.
        out_channels: classes including background.
        variant: "b0" .. "b7" (the study's `--backbone efficientnet-bN`).
        decoder_channels: five decoder widths, deepest first (default (256, 128, 64, 32, 16)).
        width_coefficient, depth_coefficient: override the variant's scaling (tiny networks for tests).
        drop_connect_rate: encoder stochastic depth (default 0.2).

    Input:  (B, in_channels, Y, X) float32, Y and X multiples of 32.
    Output: (B, out_channels, Y, X) float32 logits.
    """

    # Manifold mixup layers (SegCore.training.mixup): outputs every later tensor is computed from. "encoder"
    # returns all five skip features, which are mixed together (as the muscle study mixes its encoder features);
    # decoder.3 takes the last skip, so after it the state is one tensor again. encoder.stages.0 is not one:
    # the stem's output, the stride-2 skip, would reach the decoder unmixed.
    MIXUP_LAYERS = ("encoder.stem", "encoder", "decoder.3", "decoder.4")

    def __init__(self, in_channels: int = 1, out_channels: int = 2, *, variant: str = "b0",
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16), width_coefficient: float | None = None,
                 depth_coefficient: float | None = None, drop_connect_rate: float = 0.2):
        super().__init__()
        check_positive("out_channels", out_channels)
        decoder_channels = tuple(decoder_channels)
        if len(decoder_channels) != 5:
            raise SegCoreError(f"decoder_channels needs 5 widths (strides 16, 8, 4, 2, 1), got {decoder_channels}",
                               fix="pass e.g. decoder_channels=(256, 128, 64, 32, 16)")
        for c in decoder_channels:
            check_positive("each of decoder_channels", c)
        self.in_channels, self.out_channels, self.variant = in_channels, out_channels, variant
        self.divisor = 32
        self.encoder = EfficientNetEncoder(in_channels, variant, width_coefficient=width_coefficient,
                                           depth_coefficient=depth_coefficient, drop_connect_rate=drop_connect_rate)
        skips = self.encoder.feature_channels[-2::-1] + (0,)
        previous = self.encoder.feature_channels[-1]
        self.decoder = nn.ModuleList()
        for skip, channels in zip(skips, decoder_channels, strict=True):
            self.decoder.append(_DecoderBlock(previous + skip, channels))
            previous = channels
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(previous, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, Y, X) -> logits (B, out_channels, Y, X)."""
        check_input(x, model="efficientnet_unet", in_channels=self.in_channels, spatial_dims=2,
                    divisor=self.divisor)
        features = self.encoder(x)
        x = features[-1]
        skips = features[-2::-1] + [None]
        for block, skip in zip(self.decoder, skips, strict=True):
            x = self.upsample(x)
            x = block(x if skip is None else torch.cat((x, skip), dim=1))
        return self.head(x)
