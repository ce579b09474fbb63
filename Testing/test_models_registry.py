"""The network registry: argument checks of build_model, and every network's default output being logits."""

from __future__ import annotations

import inspect

import pytest
import torch

from SegCore import SegCoreError
from SegCore.models import MODELS, build_model

# A valid input size for every registered network's small version: 2D sides multiple of 32, 3D of 16.
SPATIAL = {2: (32, 32), 3: (16, 16, 16)}
CASES = [(name, {}) for name in sorted(MODELS)] + [("vnet", {"attention": True}),
                                                   ("segresnet", {"spatial_dims": 3})]


def constructor_arguments(name: str) -> list[str]:
    init = MODELS[name].builder.__init__
    return [p for p in inspect.signature(init).parameters if p != "self"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_an_unknown_argument_names_the_network_the_argument_and_the_valid_ones(name):
    with pytest.raises(SegCoreError) as error:
        build_model(name, out_chanels=3)
    message = str(error.value)
    assert repr(name) in message and "out_chanels" in message
    fix = message.split("Fix:")[1]
    assert all(argument in fix for argument in constructor_arguments(name))


def test_several_unknown_arguments_are_all_named():
    with pytest.raises(SegCoreError, match="'unet2d' has no arguments depth, width"):
        build_model("unet2d", depth=3, width=2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registered_defaults_and_small_versions_are_real_arguments(name):
    spec = MODELS[name]
    assert set(spec.defaults) | set(spec.small) <= set(constructor_arguments(name))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_docstring_says_what_the_network_returns(name):
    doc = MODELS[name].builder.__doc__
    assert "logits" in doc and ("Output:" in doc or "returns" in doc)


def forward_and_last_layer(model: torch.nn.Module, *args, **kwargs):
    """(the model's output, the output of the last layer module that ran)."""
    outputs = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: outputs.append(output))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return out, outputs[-1]


def is_last_layer_output(out: torch.Tensor, last: torch.Tensor) -> bool:
    """The output is the last layer's output or a crop of it (FCN-8s): no softmax or sigmoid came after it,
    since those write new memory."""
    return out.untyped_storage().data_ptr() == last.untyped_storage().data_ptr()


@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}-{'-'.join(o) or 'default'}" for n, o in CASES])
def test_every_network_returns_logits_by_default(name, overrides):
    torch.manual_seed(0)
    spec = MODELS[name]
    kwargs = {**spec.small, **overrides}
    model = build_model(name, **kwargs).eval()
    dims = kwargs.get("spatial_dims", spec.spatial_dims)
    x = torch.randn(2, spec.example_input[0], *SPATIAL[dims])
    if name == "rstn":  # a dict: each map's logits and their sigmoid
        out, last = forward_and_last_layer(model, x, mode="coarse")
        logits = out["coarse_logits"]
        with torch.no_grad():
            joint = model(x, (x > 1).float(), mode="J")
        for key in ("coarse", "fine"):
            torch.testing.assert_close(joint[key], torch.sigmoid(joint[f"{key}_logits"]))
    else:
        logits, last = forward_and_last_layer(model, x)
    assert is_last_layer_output(logits, last)
    out_channels = {**spec.defaults, **kwargs}.get("out_channels", spec.example_input[0])
    assert logits.dtype == torch.float32 and tuple(logits.shape) == (2, out_channels, *SPATIAL[dims])


def test_the_logits_check_sees_a_final_activation():
    # unet3d keeps the study's softmax/sigmoid as an explicit option; with it the check above must fail.
    x = torch.randn(1, 4, 16, 16, 16)
    for activation in ("softmax", "sigmoid"):
        model = build_model("unet3d", resize_factor=16, final_activation=activation).eval()
        assert not is_last_layer_output(*forward_and_last_layer(model, x))
