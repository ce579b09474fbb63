"""The thalamus study's 2D U-Net (one network per view: axial, coronal, sagittal).

Reproduces the study's published module printout layer for layer (same module names, so its state dicts load):
per level two 3x3 convolutions without bias, each followed by BatchNorm and ReLU; 2x2 max-pooling down;
2x2 stride-2 transposed convolution (with bias) up; skip connections by concatenation; a 1x1 convolution head.
Features 32-64-128-256-512; with 5 input channels the network has 7,763,650 parameters, as the study's
torchsummary reports.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.models.blocks import check_input, check_positive
from SegCore.models.registry import register_model


def _double_conv(in_channels: int, out_channels: int, name: str) -> nn.Sequential:
    """Two (3x3 conv without bias -> BatchNorm -> ReLU); module names as in the study (enc1conv1, ...)."""
    return nn.Sequential(OrderedDict([
        (f"{name}conv1", nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)),
        (f"{name}norm1", nn.BatchNorm2d(out_channels)),
        (f"{name}relu1", nn.ReLU(inplace=True)),
        (f"{name}conv2", nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)),
        (f"{name}norm2", nn.BatchNorm2d(out_channels)),
        (f"{name}relu2", nn.ReLU(inplace=True)),
    ]))


@register_model("unet2d", study="thalamus", spatial_dims=2,
                defaults={"in_channels": 5, "out_channels": 2, "features": (32, 64, 128, 256, 512)},
                small={"features": (4, 8, 16)}, example_input=(5, 144, 144))
class UNet2D(nn.Module):
    """2D U-Net of the thalamus study (Ronneberger 2015 layout, BatchNorm, transposed-conv upsampling).

    Args:
        in_channels: input channels (the study stacks 1-5 diffusion/T1 maps; any number >= 1 works).
        out_channels: output channels of the 1x1 head (the study: 2, background and thalamus).
        features: channels per level, encoder top to bottleneck (study: 32, 64, 128, 256, 512).
            len(features) - 1 poolings, so every input side must be a multiple of 2 ** (len(features) - 1).

    Input:  (B, in_channels, Y, X) float32, Y and X multiples of 16 for the study's 5 levels.
    Output: (B, out_channels, Y, X) float32 logits (no softmax; the losses take logits).
    """

    # Manifold mixup layers (SegCore.training.mixup): outputs every later tensor is computed from. encoder1 feeds
    # both the first skip and the rest of the network; decoder1 comes after the last skip. Inner levels do not
    # qualify: the skips above them would pass to the decoder unmixed.
    MIXUP_LAYERS = ("encoder1", "decoder1")

    def __init__(self, in_channels: int = 5, out_channels: int = 2,
                 features: tuple[int, ...] = (32, 64, 128, 256, 512)):
        super().__init__()
        check_positive("in_channels", in_channels)
        check_positive("out_channels", out_channels)
        features = tuple(features)
        if len(features) < 2:
            raise SegCoreError(f"features needs at least two levels, got {features}",
                               fix="pass e.g. features=(32, 64, 128, 256, 512)")
        for f in features:
            check_positive("each of features", f)
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, features
        self.levels = len(features) - 1
        self.divisor = 2 ** self.levels
        # Registered in the study's order (encoders and pools, bottleneck, then upconv/decoder pairs) so that
        # printing the module reproduces the published printout.
        previous = in_channels
        for level in range(1, self.levels + 1):
            self.add_module(f"encoder{level}", _double_conv(previous, features[level - 1], f"enc{level}"))
            self.add_module(f"pool{level}", nn.MaxPool2d(kernel_size=2, stride=2))
            previous = features[level - 1]
        self.bottleneck = _double_conv(previous, features[-1], "bottleneck")
        for level in range(self.levels, 0, -1):
            self.add_module(f"upconv{level}",
                            nn.ConvTranspose2d(features[level], features[level - 1], kernel_size=2, stride=2))
            self.add_module(f"decoder{level}",
                            _double_conv(2 * features[level - 1], features[level - 1], f"dec{level}"))
        self.conv = nn.Conv2d(features[0], out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, Y, X) -> logits (B, out_channels, Y, X)."""
        check_input(x, model="unet2d", in_channels=self.in_channels, spatial_dims=2, divisor=self.divisor)
        skips = []
        for level in range(1, self.levels + 1):
            x = getattr(self, f"encoder{level}")(x)
            skips.append(x)
            x = getattr(self, f"pool{level}")(x)
        x = self.bottleneck(x)
        for level in range(self.levels, 0, -1):
            x = getattr(self, f"upconv{level}")(x)
            x = getattr(self, f"decoder{level}")(torch.cat((x, skips[level - 1]), dim=1))
        return self.conv(x)
