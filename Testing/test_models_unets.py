"""The U-Net family (unet2d, unet3d, segresnet, efficientnet_unet): published sizes, shapes, gradients, variants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from SegCore.errors import SegCoreError
from SegCore.models import MODELS, build_model
from SegCore.models.efficientnet_unet import EfficientNetEncoder, EfficientNetUNet, round_filters
from SegCore.models.segresnet import SegResNet
from SegCore.models.unet2d import UNet2D
from SegCore.models.unet3d import UNet3D

FAMILY = ("unet2d", "unet3d", "segresnet", "efficientnet_unet")

# The thalamus study's torchsummary of its U-Net with 5 input channels (README "CNN summary"): layer type and
# parameter count in forward order; the final "UNet" row (0 parameters) is the whole module.
PUBLISHED_UNET2D_SUMMARY = """
Conv2d 1440 BatchNorm2d 64 ReLU 0 Conv2d 9216 BatchNorm2d 64 ReLU 0 MaxPool2d 0
Conv2d 18432 BatchNorm2d 128 ReLU 0 Conv2d 36864 BatchNorm2d 128 ReLU 0 MaxPool2d 0
Conv2d 73728 BatchNorm2d 256 ReLU 0 Conv2d 147456 BatchNorm2d 256 ReLU 0 MaxPool2d 0
Conv2d 294912 BatchNorm2d 512 ReLU 0 Conv2d 589824 BatchNorm2d 512 ReLU 0 MaxPool2d 0
Conv2d 1179648 BatchNorm2d 1024 ReLU 0 Conv2d 2359296 BatchNorm2d 1024 ReLU 0
ConvTranspose2d 524544 Conv2d 1179648 BatchNorm2d 512 ReLU 0 Conv2d 589824 BatchNorm2d 512 ReLU 0
ConvTranspose2d 131200 Conv2d 294912 BatchNorm2d 256 ReLU 0 Conv2d 147456 BatchNorm2d 256 ReLU 0
ConvTranspose2d 32832 Conv2d 73728 BatchNorm2d 128 ReLU 0 Conv2d 36864 BatchNorm2d 128 ReLU 0
ConvTranspose2d 8224 Conv2d 18432 BatchNorm2d 64 ReLU 0 Conv2d 9216 BatchNorm2d 64 ReLU 0
Conv2d 66
""".split()  # noqa: SIM905  (kept as the study prints it)

# torchvision's published parameter counts of the full EfficientNet classifiers (1000 classes).
PUBLISHED_EFFICIENTNET = {"b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
                          "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(builder, *args, **kwargs) -> nn.Module:
    """Build without allocating weights (parameter counts of full-size networks in milliseconds)."""
    with torch.device("meta"):
        return builder(*args, **kwargs)


def small(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, **{**MODELS[name].small, **overrides})


# ---- unet2d (thalamus) ----------------------------------------------------------------------------------------

def test_unet2d_has_the_published_parameter_count_and_layers():
    model = UNet2D(in_channels=5)
    assert count(model) == 7_763_650
    leaves = [m for m in model.modules() if not list(m.children())]
    got = [(type(m).__name__, count(m)) for m in leaves]
    published = list(zip(PUBLISHED_UNET2D_SUMMARY[::2], map(int, PUBLISHED_UNET2D_SUMMARY[1::2]), strict=True))
    assert got == published


def test_unet2d_module_names_are_the_studys():
    names = dict(UNet2D(in_channels=5).named_modules())
    for name in ("encoder1.enc1conv1", "encoder4.enc4norm2", "pool4", "bottleneck.bottleneckconv2", "upconv4",
                 "decoder1.dec1relu2", "conv"):
        assert name in names
    assert names["upconv1"].bias is not None and names["encoder1.enc1conv1"].bias is None


def test_unet2d_takes_any_number_of_input_channels():
    # Only the first convolution changes: 3x3 x 32 weights per extra channel.
    assert count(on_meta(UNet2D, in_channels=1)) == 7_763_650 - 4 * 9 * 32
    out = small("unet2d", in_channels=2)(torch.randn(1, 2, 32, 48))
    assert out.shape == (1, 2, 32, 48)


def test_unet2d_names_the_nearest_valid_sizes():
    model = UNet2D(in_channels=5)  # 5 levels: sides must be multiples of 16
    with pytest.raises(SegCoreError) as info:
        model(torch.randn(1, 5, 150, 144))
    text = str(info.value)
    assert "150" in text and "144" in text and "160" in text and "multiple of 16" in text
    with pytest.raises(SegCoreError, match="5 input channel"):
        model(torch.randn(1, 3, 144, 144))


# ---- unet3d (decathlon) ---------------------------------------------------------------------------------------

def expected_unet3d_parameters(in_channels: int, out_channels: int, upsampling: str, regularisation: str,
                               resize_factor: int) -> int:
    """By hand from the study's Keras layer list (every Conv3D has a bias; BatchNorm has 2 per channel)."""
    def conv(ci, co, k):
        return k ** 3 * ci * co + co

    bn = 2 if regularisation == "batchnorm" else 0
    f = [64 // resize_factor, 128 // resize_factor, 256 // resize_factor, 512 // resize_factor,
         1024 // resize_factor]
    total, previous = 0, in_channels
    for c in f:  # conv1..conv5, two 3x3x3 convs each (+ BN each)
        total += conv(previous, c, 3) + conv(c, c, 3) + 2 * bn * c
        previous = c
    # up6..up9: Conv3DTranspose with 512, 128, 64, 32 filters, or UpSampling3D + 2x2x2 Conv3D with 512..64.
    ups = ([512 // resize_factor, 128 // resize_factor, 64 // resize_factor, 32 // resize_factor]
           if upsampling == "transpose" else [f[3], f[2], f[1], f[0]])
    for up, c in zip(ups, [f[3], f[2], f[1], f[0]], strict=True):
        total += conv(previous, up, 2) + bn * up  # a transposed 2x2x2 conv has the same count
        total += conv(c + up, c, 3) + conv(c, c, 3) + 2 * bn * c
        previous = c
    total += conv(previous, 2, 3) + bn * 2  # the study's 2-filter conv before the head
    return total + conv(2, out_channels, 1)


@pytest.mark.parametrize("upsampling", ["transpose", "interpolate"])
@pytest.mark.parametrize("regularisation", ["dropout", "batchnorm"])
@pytest.mark.parametrize(("in_channels", "out_channels", "resize_factor"), [(4, 4, 2), (1, 2, 1), (2, 3, 4)])
def test_unet3d_parameter_count_matches_the_layer_list(upsampling, regularisation, in_channels, out_channels,
                                                       resize_factor):
    model = on_meta(UNet3D, in_channels, out_channels, upsampling=upsampling, regularisation=regularisation,
                    resize_factor=resize_factor)
    assert count(model) == expected_unet3d_parameters(in_channels, out_channels, upsampling, regularisation,
                                                      resize_factor)


@pytest.mark.parametrize("upsampling", ["transpose", "interpolate"])
def test_unet3d_variants_have_the_layers_they_claim(upsampling):
    drop = on_meta(UNet3D, 1, 2, upsampling=upsampling, regularisation="dropout", dropout=0.25)
    norm = on_meta(UNet3D, 1, 2, upsampling=upsampling, regularisation="batchnorm")

    def of(model, kind):
        return [m for m in model.modules() if isinstance(m, kind)]

    assert [m.p for m in of(drop, nn.Dropout)] == [0.25, 0.25] and not of(drop, nn.BatchNorm3d)
    # BatchNorm after all 10 encoder convs, 4 up-convs, 8 decoder convs and the pre-head conv.
    assert len(of(norm, nn.BatchNorm3d)) == 23 and not of(norm, nn.Dropout)
    for model in (drop, norm):
        if upsampling == "transpose":
            assert len(of(model, nn.ConvTranspose3d)) == 4 and not of(model, nn.Upsample)
        else:
            assert len(of(model, nn.Upsample)) == 4 and not of(model, nn.ConvTranspose3d)


@torch.no_grad()
def test_unet3d_dropout_is_active_only_in_training():
    model = small("unet3d", in_channels=1, out_channels=2, regularisation="dropout", dropout=0.5)
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@torch.no_grad()
def test_unet3d_heads_logits_softmax_sigmoid():
    x = torch.randn(2, 1, 16, 16, 16)
    torch.manual_seed(0)
    logits_model = small("unet3d", in_channels=1, out_channels=3).eval()
    state = logits_model.state_dict()
    softmax_model = small("unet3d", in_channels=1, out_channels=3, final_activation="softmax").eval()
    softmax_model.load_state_dict(state)
    logits, probs = logits_model(x), softmax_model(x)
    assert torch.allclose(probs, torch.softmax(logits, dim=1), atol=1e-6)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 16, 16, 16), atol=1e-5)

    binary = small("unet3d", in_channels=1, out_channels=1, final_activation="sigmoid").eval()
    out = binary(x)
    assert out.shape == (2, 1, 16, 16, 16) and float(out.min()) > 0.0 and float(out.max()) < 1.0
    assert binary.final_activation == "sigmoid" and logits_model.final_activation is None
    with pytest.raises(SegCoreError, match="softmax"):
        UNet3D(1, 1, final_activation="softmax")
    with pytest.raises(SegCoreError, match="upsampling"):
        UNet3D(1, 2, upsampling="bilinear")


# ---- segresnet (muscle) ---------------------------------------------------------------------------------------

def expected_segresnet_parameters(in_channels, out_channels, dims, f=8, down=(1, 2, 2, 4), up=(1, 1, 1)) -> int:
    """By hand: convolutions without bias except the head; GroupNorm has 2 per channel."""
    k = 3 ** dims
    res = lambda c: 2 * (2 * c) + 2 * k * c * c  # noqa: E731  (two GroupNorms, two 3^d convs)
    total = k * in_channels * f
    for i, n in enumerate(down):
        c = f * 2 ** i
        total += (k * (c // 2) * c if i else 0) + n * res(c)
    for i, n in enumerate(up):
        c = f * 2 ** (len(up) - i)
        total += c * (c // 2) + n * res(c // 2)
    return total + 2 * f + f * out_channels + out_channels


@pytest.mark.parametrize("dims", [2, 3])
def test_segresnet_parameter_count_matches_the_layer_list(dims):
    assert count(on_meta(SegResNet, 1, 2, spatial_dims=dims)) == expected_segresnet_parameters(1, 2, dims)
    assert count(on_meta(SegResNet, 3, 4, spatial_dims=dims, init_filters=16)) == \
        expected_segresnet_parameters(3, 4, dims, f=16)


def test_segresnet_checks_its_arguments():
    with pytest.raises(SegCoreError, match="num_groups"):
        SegResNet(1, 2, init_filters=6, num_groups=4)
    with pytest.raises(SegCoreError, match="blocks_up"):
        SegResNet(1, 2, blocks_down=(1, 2, 2), blocks_up=(1, 1, 1))
    with pytest.raises(SegCoreError, match="spatial_dims"):
        SegResNet(1, 2, spatial_dims=4)


# ---- efficientnet_unet (muscle) -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(PUBLISHED_EFFICIENTNET))
def test_efficientnet_encoder_plus_classifier_has_the_published_size(variant):
    encoder = on_meta(EfficientNetEncoder, 3, variant)
    head = round_filters(1280, encoder.width)  # 1x1 conv (no bias) + BatchNorm, then a 1000-class Linear
    total = count(encoder) + encoder.out_channels * head + 2 * head + head * 1000 + 1000
    assert total == PUBLISHED_EFFICIENTNET[variant]


# segmentation_models_pytorch's EfficientNetEncoder (efficientnet-b0..b7): channels of its five features, strides 2..32
# (its `out_channels` less the input's). Its stride-2 feature is the stem's output.
SMP_FEATURE_CHANNELS = {"b0": (32, 24, 40, 112, 320), "b1": (32, 24, 40, 112, 320), "b2": (32, 24, 48, 120, 352),
                        "b3": (40, 32, 48, 136, 384), "b4": (48, 32, 56, 160, 448), "b5": (48, 40, 64, 176, 512),
                        "b6": (56, 40, 72, 200, 576), "b7": (64, 48, 80, 224, 640)}


@pytest.mark.parametrize("variant", sorted(SMP_FEATURE_CHANNELS))
def test_efficientnet_features_are_smp_s(variant):
    encoder = on_meta(EfficientNetEncoder, 3, variant)
    assert encoder.feature_channels == SMP_FEATURE_CHANNELS[variant]


def test_efficientnet_stride_2_skip_is_the_stem_output():
    torch.manual_seed(0)
    encoder = EfficientNetEncoder(1, "b0", width_coefficient=0.25, depth_coefficient=0.34).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        features = encoder(x)
        stem = encoder.stem(x)
    assert [tuple(f.shape[2:]) for f in features] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert torch.equal(features[0], stem)


def test_efficientnet_b0_encoder_and_unet_sizes():
    encoder = on_meta(EfficientNetEncoder, 3, "b0")
    assert count(encoder) == 5_288_548 - (320 * 1280 + 2 * 1280 + 1280 * 1000 + 1000)
    # The smp-style decoder on top: two 3x3 conv + BN per block, skips 112, 40, 24, 32 (the stem), none; 3x3 head.
    decoder = 0
    for ci, co in ((320 + 112, 256), (256 + 40, 128), (128 + 24, 64), (64 + 32, 32), (32, 16)):
        decoder += 9 * ci * co + 2 * co + 9 * co * co + 2 * co
    unet = on_meta(EfficientNetUNet, 3, 2, variant="b0")
    assert count(unet) == count(encoder) + decoder + 9 * 16 * 2 + 2
    assert count(on_meta(EfficientNetUNet, 1, 2, variant="b0")) == 5_838_878  # the figure in docs/models.md


def test_efficientnet_pads_symmetrically_not_like_tensorflow_same():
    """Stride-2 convolutions pad k // 2 on both sides (torchvision), not TensorFlow / MONAI's asymmetric 'same'
    (nothing before, the rest after). For an even input both give the same shape; with a kernel that keeps only
    its centre tap, ours samples the even input positions 2j and TensorFlow's the odd ones 2j + 1."""
    model = small("efficientnet_unet")
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert strided and all(m.padding == (m.kernel_size[0] // 2,) * 2 for m in strided)
    conv = strided[0]  # the stem: 3x3, stride 2, padding 1
    x = torch.arange(8 * 8, dtype=torch.float32).view(1, 1, 8, 8)
    centre = torch.zeros(1, 1, 3, 3)
    centre[0, 0, 1, 1] = 1.0
    ours = nn.functional.conv2d(x, centre, stride=2, padding=conv.padding)
    tf_same = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), centre, stride=2)  # total pad 1: after
    assert ours.shape == tf_same.shape == (1, 1, 4, 4)
    assert torch.equal(ours[0, 0], x[0, 0, ::2, ::2])
    assert torch.equal(tf_same[0, 0], x[0, 0, 1::2, 1::2])


@torch.no_grad()
def test_efficientnet_takes_one_or_three_channels_and_checks_variant():
    for channels in (1, 3):
        out = small("efficientnet_unet", in_channels=channels)(torch.randn(1, channels, 64, 32))
        assert out.shape == (1, 2, 64, 32)
    with pytest.raises(SegCoreError, match="b0"):
        EfficientNetUNet(1, 2, variant="b9")


@torch.no_grad()
def test_efficientnet_stochastic_depth_only_in_training():
    model = small("efficientnet_unet", drop_connect_rate=0.9)
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    first = model(x)
    assert not torch.equal(first, model(x))


# ---- every network of the family ------------------------------------------------------------------------------

CASES = [  # (name, overrides, good spatial size, odd size that must be refused)
    ("unet2d", {}, (32, 48), (33, 48)),           # small: 3 levels, multiples of 4
    ("unet3d", {"in_channels": 1}, (16, 32, 16), (16, 17, 16)),
    ("unet3d", {"in_channels": 1, "upsampling": "interpolate", "regularisation": "dropout"}, (16, 16, 32),
     (24, 16, 16)),
    ("segresnet", {}, (24, 40), (25, 40)),         # small: 3 levels, multiples of 4
    ("segresnet", {"spatial_dims": 3}, (8, 12, 16), (8, 12, 15)),
    ("efficientnet_unet", {}, (64, 96), (64, 80)),  # multiples of 32
]


@pytest.mark.parametrize(("name", "overrides", "good", "bad"), CASES)
def test_output_shape_and_refused_sizes(name, overrides, good, bad):
    model = small(name, **overrides)
    channels = overrides.get("in_channels", MODELS[name].defaults["in_channels"])
    out = model(torch.randn(2, channels, *good))
    assert out.shape == (2, model.out_channels, *good) and out.dtype == torch.float32
    with pytest.raises(SegCoreError, match="multiple of") as info:
        model(torch.randn(2, channels, *bad))
    assert str(max(s for s in bad if s % model.divisor)) in str(info.value)


@pytest.mark.parametrize(("name", "overrides", "good", "bad"), CASES)
def test_every_parameter_receives_a_gradient(name, overrides, good, bad):
    model = small(name, **overrides).train()
    channels = overrides.get("in_channels", MODELS[name].defaults["in_channels"])
    torch.manual_seed(0)
    out = model(torch.randn(2, channels, *good))
    (out.float() ** 2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if float(p.grad.abs().sum()) == 0.0]
    assert not zero


def test_registry_entries_of_the_family():
    for name in FAMILY:
        spec = MODELS[name]
        assert len(spec.example_input) == spec.spatial_dims + 1 and spec.small and spec.summary
        tiny, full = count(small(name)), count(on_meta(spec.builder, **spec.defaults))
        assert tiny < full / 10
    assert MODELS["unet2d"].example_input == (5, 144, 144)
    assert count(on_meta(build_model, "unet2d")) == 7_763_650
