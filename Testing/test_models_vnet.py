"""V-Net of the atrium study and its BAM attention: sizes, shapes, gradients, attention algebra, checkpoints."""

from __future__ import annotations

import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.models import MODELS, build_model
from SegCore.models.bam import BAM
from SegCore.models.vnet import VNet


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(**kwargs) -> VNet:
    """Build without allocating weights: parameter counts only."""
    with torch.device("meta"):
        return VNet(**kwargs)


def expected_vnet_parameters(n: int, out_channels: int = 2, c: int = 8) -> int:
    """By hand from the layer list: conv k^3 ci->co has ci*co*k^3 + co weights, PReLU(ch) has ch."""
    def conv(ci, co, k):
        return ci * co * k ** 3 + co

    total = conv(1, c, 5) + c  # input stage: 5x5x5 conv + PReLU
    for ci, layers in ((c, n), (2 * c, n), (4 * c, n + 1), (8 * c, n + 1)):  # down: 2x2x2 conv, PReLU, 5x5x5 stack
        total += conv(ci, 2 * ci, 2) + 2 * ci + layers * (conv(2 * ci, 2 * ci, 5) + 2 * ci)
    for ci, co, layers in ((16 * c, 16 * c, n + 1), (16 * c, 8 * c, n + 1), (8 * c, 4 * c, n), (4 * c, 2 * c, n)):
        total += conv(ci, co // 2, 2) + co // 2 + layers * (conv(co, co, 5) + co)  # up: transposed conv + stack
    return total + conv(2 * c, out_channels, 1)


def expected_bam_parameters(channels: int, reduction: int) -> int:
    """By hand: channel gate Linear(C, h, no bias), BN(h), Linear(h, C); spatial gate 1x1x1 conv C -> h (no bias),
    BN(h), two 3x3x3 convs h -> h (no bias) each with BN(h), 1x1x1 conv h -> 1."""
    c, h = channels, max(1, channels // reduction)
    channel_gate = c * h + 2 * h + (h * c + c)
    spatial_gate = c * h + 2 * h + 2 * (27 * h * h + 2 * h) + (h + 1)
    return channel_gate + spatial_gate


@pytest.mark.parametrize(("num_layers", "published"), [(1, 10.75e6), (2, 16.2e6)])
def test_parameter_counts_match_the_study(num_layers, published):
    n_params = count(on_meta(num_layers=num_layers))
    assert n_params == expected_vnet_parameters(num_layers)
    assert abs(n_params - published) / published < 0.01


@pytest.mark.parametrize(("base_channels", "reduction"), [(8, 4), (4, 2), (2, 4)])
def test_bam_adds_the_hand_counted_parameters(base_channels, reduction):
    plain = on_meta(base_channels=base_channels)
    with_bam = on_meta(base_channels=base_channels, attention=True, bam_reduction=reduction)
    widths = [base_channels * 2 ** level for level in range(5)]  # input stage and four down stages
    assert count(with_bam) - count(plain) == sum(expected_bam_parameters(w, reduction) for w in widths)


def test_bam_output_is_input_plus_gated_input(rng):
    bam = BAM(8, reduction=4, dilation=3)
    x = torch.from_numpy(rng.normal(size=(2, 8, 6, 7, 5)).astype("float32"))
    out = bam(x)
    attention = torch.sigmoid(bam.channel_gate(x.mean(dim=(2, 3, 4)))[:, :, None, None, None] + bam.spatial_gate(x))
    torch.testing.assert_close(out, x + x * attention)
    ratio = out / x
    assert ratio.min() > 1.0 and ratio.max() < 2.0  # the identity path survives, the gate adds at most x
    with torch.no_grad():  # last layers of both gates at zero: attention is sigmoid(0) = 0.5 everywhere
        for layer in (bam.channel_gate[-1], bam.spatial_gate[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
    torch.testing.assert_close(bam(x), 1.5 * x)


def test_bam_refuses_to_train_on_a_batch_of_one():
    with pytest.raises(SegCoreError, match="batch size >= 2"):
        BAM(8)(torch.zeros(1, 8, 4, 4, 4))
    assert BAM(8).eval()(torch.ones(1, 8, 4, 4, 4)).shape == (1, 8, 4, 4, 4)  # inference on one image is fine


@pytest.mark.parametrize("kwargs", [{}, {"attention": True, "dilation": 2, "num_layers": 2}, {"in_channels": 2}])
def test_output_shape_at_valid_sizes(kwargs):
    model = VNet(base_channels=2, out_channels=3, **kwargs)
    out = model(torch.randn(2, model.in_channels, 16, 32, 48))
    assert out.shape == (2, 3, 16, 32, 48)
    assert out.dtype == torch.float32


def test_sizes_not_divisible_by_16_are_refused_with_the_nearest_valid_sides():
    model = VNet(base_channels=2)
    with pytest.raises(SegCoreError) as error:
        model(torch.zeros(1, 1, 17, 32, 40))
    message = str(error.value)
    assert "(16, 32)" in message and "(32, 48)" in message  # 17 -> 16 or 32, 40 -> 32 or 48
    with pytest.raises(SegCoreError, match="input channel"):
        model(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(SegCoreError, match="multiple"):
        VNet(in_channels=3, base_channels=8)


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = VNet(base_channels=2, attention=True, num_layers=1)
    out = model(torch.randn(2, 1, 16, 16, 16))
    (out ** 2).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_weights_survive_a_checkpoint_on_disk(tmp_path):
    torch.manual_seed(1)
    model = VNet(base_channels=2, attention=True).eval()
    path = tmp_path / "vnet.pt"
    torch.save(model.state_dict(), path)
    again = VNet(base_channels=2, attention=True).eval()
    again.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(1, 1, 16, 16, 32)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_registered_with_the_published_defaults():
    spec = MODELS["vnet"]
    assert spec.study == "atrium" and spec.spatial_dims == 3
    with torch.device("meta"):
        assert count(build_model("vnet")) == expected_vnet_parameters(1)
    small = build_model("vnet", **spec.small)
    assert small(torch.zeros(1, *spec.example_input[:1], 16, 16, 16)).shape == (1, 2, 16, 16, 16)
