"""BAM, the bottleneck attention module (Park et al., BMVC 2018), in 3D, as the atrium study adds it to its V-Net.

Two gates read the same feature map x (N, C, Z, Y, X) and are added before one sigmoid (the paper's parallel
form, not the atrium code's sequential one):

- channel gate: global average pool -> Linear(C, C/r) -> BatchNorm -> ReLU -> Linear(C/r, C)   -> (N, C, 1, 1, 1)
- spatial gate: 1x1x1 conv C -> C/r, BatchNorm, ReLU, then two 3x3x3 convs C/r -> C/r with dilation d (each with
  BatchNorm and ReLU), then 1x1x1 conv C/r -> 1                                                -> (N, 1, Z, Y, X)

attention = sigmoid(channel + spatial), broadcast to (N, C, Z, Y, X); output = x + x * attention, so the module
only rescales x by a factor in (1, 2) and the identity path always survives.

The layers followed by BatchNorm have no bias: BatchNorm subtracts the batch mean, so such a bias never receives a
gradient (the study's and BAM's code keep them: 4h parameters more per module, none of which learn). With hidden
width h = max(1, C // r) the module has 3*C*h + 54*h**2 + 9*h + C + 1 parameters (channel gate: Linear C*h,
BatchNorm 2h, Linear h*C + C; spatial gate: conv C*h, BatchNorm 2h, 2 x (conv 27*h*h, BatchNorm 2h), conv h + 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from SegCore.errors import SegCoreError
from SegCore.models.blocks import check_positive


class BAM(nn.Module):
    """Bottleneck attention module for 5D feature maps.

    Args:
        channels: C, the channels of the feature map it attends to.
        reduction: r, the channel reduction ratio of both gates (study: 4); hidden width max(1, C // r).
        dilation: dilation of the spatial gate's two 3x3x3 convolutions (study: 3 or 4).

    Input:  (N, C, Z, Y, X) float.  Output: (N, C, Z, Y, X) float, x * (1 + attention).
    The channel gate's BatchNorm normalises over the batch, so training needs N >= 2 (the study used 3).
    """

    def __init__(self, channels: int, reduction: int = 4, dilation: int = 4):
        super().__init__()
        check_positive("BAM channels", channels)
        check_positive("bam_reduction", reduction)
        check_positive("bam_dilation", dilation)
        hidden = max(1, channels // reduction)
        self.channel_gate = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels))
        spatial: list[nn.Module] = [nn.Conv3d(channels, hidden, 1, bias=False), nn.BatchNorm3d(hidden),
                                    nn.ReLU(inplace=True)]
        for _ in range(2):
            spatial += [nn.Conv3d(hidden, hidden, 3, padding=dilation, dilation=dilation, bias=False),
                        nn.BatchNorm3d(hidden), nn.ReLU(inplace=True)]
        spatial.append(nn.Conv3d(hidden, 1, 1))
        self.spatial_gate = nn.Sequential(*spatial)

    def attention(self, x: Tensor) -> Tensor:
        """sigmoid(channel gate + spatial gate), (N, C, Z, Y, X) in (0, 1)."""
        if self.training and x.shape[0] < 2:
            raise SegCoreError("BAM attention normalises its channel gate over the batch (BatchNorm), so training "
                               f"needs at least 2 samples per batch, got input shape {tuple(x.shape)}",
                               fix="train with batch size >= 2 (the atrium study used 3) or set attention=False")
        channel = self.channel_gate(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]
        return torch.sigmoid(channel + self.spatial_gate(x))

    def forward(self, x: Tensor) -> Tensor:
        return x + x * self.attention(x)
