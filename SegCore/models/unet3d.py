"""The decathlon study's 3D U-Net, in its four published variants.

The study (a Keras code base for the ten Medical Segmentation Decathlon tasks) builds a five-level 3D U-Net
(Ronneberger layout by way of zhixuhao's `unet`) with filters 64-128-256-512-1024 divided by a resize factor
(default 2), every 3x3x3 convolution with bias and ReLU, and one of four variants:

- `upsampling="interpolate"`: nearest x2 upsampling, then a 2x2x2 convolution ('same' padding) with ReLU;
  `upsampling="transpose"`: a 2x2x2 stride-2 transposed convolution (no activation).
- `regularisation="dropout"`: Dropout after the two deepest encoder levels (rate 0.3 by default), no normalisation;
  `regularisation="batchnorm"`: BatchNorm after every convolution (after its ReLU, as in Keras), no dropout.

Details kept from the study's code because they change the network: the transposed convolutions have
512, 128, 64 and 32 filters (/resize factor), so below the deepest level they have half the channels of the
interpolate variant's up-convolutions; a 3x3x3 convolution to 2 channels (+ ReLU) sits before the 1x1 head;
in the batchnorm variants the skip connections of the top three levels carry the convolution output before its
BatchNorm, the fourth level's the normalised one. Keras BatchNorm settings: eps 1e-3, momentum 0.99 (0.01 here);
Keras initialisation: he_normal kernels, glorot_uniform head, zero biases.

The study puts softmax (multi-class) or sigmoid (binary, 1 channel) in the model; here `forward` returns logits
unless `final_activation` is set, because SegCore's losses take logits. `final_activation` is stored so the
inference stage knows how the study turned logits into probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.models.blocks import check_input, check_positive, check_probability
from SegCore.models.registry import register_model

BASE_FILTERS = (64, 128, 256, 512, 1024)
# Filters of the four transposed convolutions, deepest first (the study's values, before the resize factor).
TRANSPOSE_FILTERS = (512, 128, 64, 32)
# Channels of the convolution before the 1x1 head (fixed in the study's code).
PRE_HEAD_CHANNELS = 2
UPSAMPLINGS = ("transpose", "interpolate")
REGULARISATIONS = ("dropout", "batchnorm")
ACTIVATIONS = (None, "softmax", "sigmoid")


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=1e-3, momentum=0.01)  # Keras defaults


class _ConvReLU(nn.Sequential):
    """Conv3d (odd kernel, with bias, 'same' padding) -> ReLU -> optional BatchNorm3d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, batchnorm: bool):
        layers = [nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True)]
        super().__init__(*layers, *([_bn(out_channels)] if batchnorm else []))


class _EncoderLevel(nn.Module):
    """Two 3x3x3 conv + ReLU (+ BN each), optional Dropout. forward -> (output, skip)."""

    def __init__(self, in_channels: int, out_channels: int, batchnorm: bool, dropout: float | None,
                 skip_after_norm: bool):
        super().__init__()
        self.conv1 = _ConvReLU(in_channels, out_channels, 3, batchnorm)
        self.conv2 = _ConvReLU(out_channels, out_channels, 3, batchnorm=False)
        self.norm2 = _bn(out_channels) if batchnorm else None
        self.dropout = nn.Dropout(dropout) if dropout is not None else None
        self.skip_after_norm = skip_after_norm

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        conv = self.conv2(self.conv1(x))
        out = self.norm2(conv) if self.norm2 is not None else conv
        if self.dropout is not None:
            out = self.dropout(out)
        return out, (out if self.skip_after_norm else conv)


class _DecoderLevel(nn.Module):
    """Upsample x2 (transposed conv, or nearest + 2x2x2 conv + ReLU) (+ BN), concat [skip, up], two conv + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, up_channels: int, out_channels: int,
                 upsampling: str, batchnorm: bool):
        super().__init__()
        if upsampling == "transpose":
            self.up = nn.ConvTranspose3d(in_channels, up_channels, kernel_size=2, stride=2)
        else:
            # Keras 'same' padding for an even kernel pads one voxel after, none before.
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ConstantPad3d((0, 1) * 3, 0.0),
                                    nn.Conv3d(in_channels, up_channels, kernel_size=2), nn.ReLU(inplace=True))
        self.up_norm = _bn(up_channels) if batchnorm else None
        self.conv1 = _ConvReLU(skip_channels + up_channels, out_channels, 3, batchnorm)
        self.conv2 = _ConvReLU(out_channels, out_channels, 3, batchnorm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.up(x)
        if self.up_norm is not None:
            up = self.up_norm(up)
        return self.conv2(self.conv1(torch.cat((skip, up), dim=1)))


@register_model("unet3d", study="decathlon", spatial_dims=3,
                defaults={"in_channels": 4, "out_channels": 4, "upsampling": "transpose",
                          "regularisation": "batchnorm", "dropout": 0.3, "resize_factor": 2,
                          "final_activation": None},
                small={"resize_factor": 16}, example_input=(4, 160, 240, 240))
class UNet3D(nn.Module):
    """3D U-Net of the decathlon study (four variants: transpose/interpolate x dropout/batchnorm).

    Args:
        in_channels: image channels (modalities): BrainTumour 4, Prostate 2, the other tasks 1.
        out_channels: classes including background for softmax (BrainTumour 4, Heart 2, Liver 3, ...),
            or 1 for the study's binary sigmoid model.
        upsampling: "transpose" (Conv3DTranspose) or "interpolate" (UpSampling3D + 2x2x2 Conv3D).
        regularisation: "batchnorm" (BatchNorm after every conv) or "dropout" (Dropout at the two deepest levels).
        dropout: dropout rate of the "dropout" variants, in [0, 1) (study default 0.3); unused with batchnorm.
        resize_factor: filters are 64, 128, 256, 512, 1024 floor-divided by this (study default 2).
        final_activation: None (logits, the default: SegCore's losses take logits), "softmax" or "sigmoid"
            (what the study's Keras model applied; the inference stage reads it from here).

    Input:  (B, in_channels, Z, Y, X) float32, every side a multiple of 16.
    Output: (B, out_channels, Z, Y, X) float32 logits (probabilities if final_activation is set).
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 4, *, upsampling: str = "transpose",
                 regularisation: str = "batchnorm", dropout: float = 0.3, resize_factor: int = 2,
                 final_activation: str | None = None):
        super().__init__()
        check_positive("in_channels", in_channels)
        check_positive("out_channels", out_channels)
        check_positive("resize_factor", resize_factor)
        if upsampling not in UPSAMPLINGS:
            raise SegCoreError(f"unknown upsampling {upsampling!r}", fix=f"use one of {', '.join(UPSAMPLINGS)}")
        if regularisation not in REGULARISATIONS:
            raise SegCoreError(f"unknown regularisation {regularisation!r}",
                               fix=f"use one of {', '.join(REGULARISATIONS)}")
        if final_activation not in ACTIVATIONS:
            raise SegCoreError(f"unknown final_activation {final_activation!r}",
                               fix="use None (logits), 'softmax' or 'sigmoid'")
        if final_activation == "softmax" and out_channels < 2:
            raise SegCoreError("a softmax head needs out_channels >= 2 (softmax over one channel is always 1)",
                               fix="use final_activation='sigmoid' for a one-channel binary model")
        if min(TRANSPOSE_FILTERS) // resize_factor < 1:
            raise SegCoreError(f"resize_factor {resize_factor} leaves layers without filters "
                               f"(the smallest layer has {min(TRANSPOSE_FILTERS)})",
                               fix=f"use a resize_factor of at most {min(TRANSPOSE_FILTERS)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.upsampling, self.regularisation, self.resize_factor = upsampling, regularisation, resize_factor
        self.final_activation = final_activation
        self.dropout_rate = check_probability("dropout", dropout) if regularisation == "dropout" else None
        self.divisor = 2 ** (len(BASE_FILTERS) - 1)

        batchnorm = regularisation == "batchnorm"
        filters = [f // resize_factor for f in BASE_FILTERS]
        up_filters = ([f // resize_factor for f in TRANSPOSE_FILTERS] if upsampling == "transpose"
                      else filters[-2::-1])
        deepest = len(filters) - 1
        self.encoders = nn.ModuleList()
        previous = in_channels
        for level, f in enumerate(filters):
            # Dropout and the normalised skip belong to the two deepest levels (drop4/drop5, bn4 in the study).
            self.encoders.append(_EncoderLevel(previous, f, batchnorm,
                                               self.dropout_rate if level >= deepest - 1 else None,
                                               skip_after_norm=level == deepest - 1))
            previous = f
        self.decoders = nn.ModuleList()
        for step, level in enumerate(range(deepest - 1, -1, -1)):
            self.decoders.append(_DecoderLevel(previous, filters[level], up_filters[step], filters[level],
                                               upsampling, batchnorm))
            previous = filters[level]
        self.pool = nn.MaxPool3d(kernel_size=2)
        self.pre_head = _ConvReLU(previous, PRE_HEAD_CHANNELS, 3, batchnorm)
        self.head = nn.Conv3d(PRE_HEAD_CHANNELS, out_channels, kernel_size=1)
        self._keras_init()

    @torch.no_grad()
    def _keras_init(self) -> None:
        """The study's initialisation: he_normal kernels (Keras: normal truncated at 2 sd, sd corrected for the
        truncation), a glorot_uniform 1x1 head, zero biases. PyTorch's default leaves the 2-channel ReLU before
        the head dead far more often."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                if module is self.head:
                    nn.init.xavier_uniform_(module.weight)
                else:
                    # fan_in as Keras counts it, also for transposed kernels (PyTorch's weight.size(1) there).
                    fan_in = module.weight.size(1) * module.weight[0, 0].numel()
                    std = (2.0 / fan_in) ** 0.5 / 0.87962566103423978
                    nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, in_channels, Z, Y, X) -> (B, out_channels, Z, Y, X) logits (or probabilities, see above)."""
        check_input(x, model="unet3d", in_channels=self.in_channels, spatial_dims=3, divisor=self.divisor)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level:
                x = self.pool(x)
            x, skip = encoder(x)
            skips.append(skip)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(x, skip)
        x = self.head(self.pre_head(x))
        if self.final_activation == "softmax":
            return torch.softmax(x, dim=1)
        if self.final_activation == "sigmoid":
            return torch.sigmoid(x)
        return x
