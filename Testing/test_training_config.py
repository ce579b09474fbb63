"""The plan: configuration files (JSON and TOML), --set overrides and unknown keys, precedence, --tiny, values
derived from the network and the data for every network, and fast, named failures for bad configurations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.models import MODELS, build_model
from SegCore.training.config import (
    PLAN_KEYS,
    DataFacts,
    apply_overrides,
    data_facts,
    default_plan,
    load_config,
    make_tiny,
    preprocessed_shape,
    resolve_plan,
)
from SegCore.volume import Grid, Volume

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "SegCore" / "configs" / "example.json"
SPLEEN = DataFacts(("CT",), ((0, "background"), (1, "spleen")), (32, 48, 48), (1.0, 1.0, 2.0))


@pytest.fixture(scope="module")
def spleen(tmp_path_factory) -> Path:
    """A real phantom dataset (Decathlon Spleen layout) written by the CLI."""
    root = tmp_path_factory.mktemp("data") / "Task09_Spleen"
    subprocess.run([sys.executable, "-m", "SegCore", "phantoms", "--study", "decathlon", "--task", "Spleen",
                    "--out", str(root), "--cases", "2", "--seed", "1"], check=True, capture_output=True)
    return root


def test_default_plan_has_every_key_and_reads_back_from_json():
    plan = default_plan()
    assert tuple(plan) == PLAN_KEYS
    resolved = resolve_plan(facts=SPLEEN)
    assert json.loads(json.dumps(resolved)) == resolved
    assert resolve_plan(resolved, facts=SPLEEN) == resolved  # a plan.json resolves to itself (--plan)
    assert set(resolved["versions"]) == {"segstudies", "torch", "numpy", "python"}
    assert resolved["versions"]["torch"] == str(torch.__version__)
    assert resolved["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))


def test_example_configuration_json_and_toml_agree_and_resolve(spleen):
    json_config, toml_config = load_config(EXAMPLE), load_config(EXAMPLE.with_suffix(".toml"))
    assert json_config == toml_config
    plan = resolve_plan(EXAMPLE, flags={"data": str(spleen)})
    assert plan["data"]["channels"] == ["CT"]
    assert plan["data"]["label_set"] == [{"value": 0, "name": "background"}, {"value": 1, "name": "spleen"}]
    args = plan["model"]["arguments"]
    assert (args["in_channels"], args["out_channels"], args["resize_factor"]) == (1, 2, 16)
    model = build_model(plan["model"]["name"], **args).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, *plan["sampler"]["patch_zyx"]))
    assert out.shape == (1, 2, *plan["sampler"]["patch_zyx"])


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"name": "unet3d",}}')
    with pytest.raises(SegCoreError, match="not valid JSON.*line 1") as caught:
        load_config(bad)
    assert str(bad) in str(caught.value)
    (tmp_path / "bad.toml").write_text("model = [")
    with pytest.raises(SegCoreError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "c.yaml").write_text("a: 1")
    with pytest.raises(SegCoreError, match=r"\.json or \.toml"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SegCoreError, match="table of keys"):
        load_config(tmp_path / "list.json")
    typo = tmp_path / "typo.json"
    typo.write_text('{"trainig": {"epochs": 3}}')
    with pytest.raises(SegCoreError, match="unknown key 'trainig' in the plan; valid: data, split") as caught:
        resolve_plan(typo, facts=SPLEEN)
    assert str(typo) in str(caught.value)


def test_toml_without_tomllib_says_use_json():
    """Python 3.10 has no tomllib: simulated in a subprocess where importing it fails."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); sys.modules['tomllib'] = None\n"
            "from SegCore.training.config import load_config\n"
            f"load_config({str(EXAMPLE.with_suffix('.toml'))!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "TOML needs Python 3.11" in result.stderr and "write the configuration as JSON" in result.stderr


def test_overrides_parse_json_and_refuse_unknown_keys():
    plan = apply_overrides(default_plan(), ["optim.lr=1e-4", "training.amp=bf16", "training.compile=true",
                                            "model.arguments.features=[4, 8]", "preprocessing.0.mode=slice",
                                            "training.early_stopping.patience=5", "device=cuda:1"])
    assert plan["optim"]["lr"] == 1e-4 and plan["training"]["amp"] == "bf16" and plan["training"]["compile"] is True
    assert plan["model"]["arguments"]["features"] == [4, 8] and plan["preprocessing"][0]["mode"] == "slice"
    assert plan["training"]["early_stopping"]["patience"] == 5 and plan["device"] == "cuda:1"
    with pytest.raises(SegCoreError) as caught:
        apply_overrides(default_plan(), ["model.widht=8"])
    assert str(caught.value).startswith("unknown key 'widht' in 'model'; valid: name, arguments.")
    with pytest.raises(SegCoreError, match="unknown key 'lrr' in 'optim'; valid: name, lr, weight_decay"):
        apply_overrides(default_plan(), ["optim.lrr=1"])
    with pytest.raises(SegCoreError, match="unknown key 'modle' in the plan"):
        apply_overrides(default_plan(), ["modle.name=x"])
    with pytest.raises(SegCoreError, match="not KEY=VALUE"):
        apply_overrides(default_plan(), ["optim.lr"])
    with pytest.raises(SegCoreError, match="'device' is a value, not a table"):
        apply_overrides(default_plan(), ["device.x=1"])
    with pytest.raises(SegCoreError, match="no item '7'"):
        apply_overrides(default_plan(), ["preprocessing.7.mode=x"])


def test_precedence_defaults_config_tiny_set_flags():
    config = {"training": {"epochs": 5, "batch_size": 4}, "optim": {"lr": 0.01}}
    plan = resolve_plan(config, facts=SPLEEN)
    assert (plan["training"]["epochs"], plan["training"]["batch_size"], plan["optim"]["lr"]) == (5, 4, 0.01)
    assert plan["training"]["steps_per_epoch"] == default_plan()["training"]["steps_per_epoch"]
    plan = resolve_plan(config, overrides=["training.epochs=7"], facts=SPLEEN)
    assert plan["training"]["epochs"] == 7
    plan = resolve_plan(config, overrides=["training.epochs=7"], flags={"epochs": 9, "seed": 3, "fold": None},
                        facts=SPLEEN)
    assert (plan["training"]["epochs"], plan["training"]["seed"], plan["split"]["fold"]) == (9, 3, 0)
    assert resolve_plan(config, overrides=["training.clip_grad_norm=null"], facts=SPLEEN)["training"][
        "clip_grad_norm"] is None  # null switches clipping off
    plan = resolve_plan(config, tiny=True, facts=SPLEEN)
    assert (plan["training"]["epochs"], plan["training"]["batch_size"]) == (2, 2)  # tiny over the config
    plan = resolve_plan(config, tiny=True, overrides=["training.epochs=3"], flags={"batch": 1}, facts=SPLEEN)
    assert (plan["training"]["epochs"], plan["training"]["batch_size"]) == (3, 1)  # --set and flags over tiny


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_network_trains_from_a_configuration_alone(spleen, name):
    """Sampler kind, sizes, padding and channels are derived: the tiny network takes the sampler's batch."""
    facts = data_facts(spleen)
    plan = resolve_plan({"model": {"name": name}}, flags={"data": str(spleen)}, tiny=True)
    assert plan == resolve_plan({"model": {"name": name}}, tiny=True, facts=facts, flags={"data": str(spleen)})
    sampler, args = plan["sampler"], plan["model"]["arguments"]
    assert sampler["kind"] == ("patch3d" if MODELS[name].spatial_dims == 3 else
                               "stack25d" if name == "rstn" else "slice2d")
    assert (plan["training"]["epochs"], plan["training"]["steps_per_epoch"], plan["training"]["workers"]) == (2, 2, 0)
    for key, value in MODELS[name].small.items():  # the registry's small widths
        assert args[key] == (list(value) if isinstance(value, tuple) else value)
    full = build_model(name, **{**MODELS[name].defaults, **{k: args[k] for k in ("in_channels", "out_channels")
                                                             if k in args}})
    tiny = build_model(name, **args).eval()
    assert sum(p.numel() for p in tiny.parameters()) < sum(p.numel() for p in full.parameters()) / 10
    spatial = sampler.get("patch_zyx") or sampler["size_yx"]
    channels = args.get("in_channels", args.get("slices"))
    with torch.no_grad():
        batch = torch.zeros(2, channels, *spatial)
        out = tiny(batch, mode="coarse")["coarse_logits"] if name == "rstn" else tiny(batch)
    if "out_channels" in args:
        assert out.shape == (2, 2, *spatial)  # background and spleen
    shape = preprocessed_shape(plan["preprocessing"], facts)
    in_plane = (1, 2) if MODELS[name].spatial_dims == 2 else (0, 1, 2)
    assert all(side <= shape[axis] for side, axis in zip(spatial, in_plane, strict=False))


def test_preprocessed_shape_matches_the_real_preprocessing():
    """The shape estimate used to check patch sizes, against helper T's Preprocessing run on a real volume."""
    from SegCore.transforms import Preprocessing

    direction = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # the index axes permuted
    grid = Grid((20, 30, 24), (0.8, 1.5, 2.5), (0.0, 0.0, 0.0), direction)
    volume = Volume(np.random.default_rng(0).normal(size=(1, 20, 30, 24)).astype(np.float32), grid)
    steps = [{"name": "reorient"}, {"name": "resample", "spacing_xyz_mm": [1.0, 1.0, 2.0]},
             {"name": "pad", "multiple_zyx": [16, 16, 16], "min_zyx": [40, 8, 8]}]
    pre = Preprocessing(steps)
    facts = DataFacts(("x",), ((0, "bg"),), grid.shape_zyx, grid.spacing_xyz_mm,
                      tuple(v for row in direction for v in row))
    assert preprocessed_shape(pre.spec, facts) == pre.apply(volume).image.shape[1:]
    assert preprocessed_shape([{"name": "crop_foreground"}], facts) is None


@pytest.mark.parametrize(("config", "overrides", "words"), [
    ({"model": {"name": "unet9d"}}, [], "unknown network 'unet9d'.*use one of efficientnet_unet"),
    ({"loss": {"name": "dicey"}}, [], "unknown loss 'dicey'.*use one of"),
    ({}, ["training.epochs=ten"], "'training.epochs' must be a whole number, got \"ten\""),
    ({}, ["training.epochs=2.5"], "'training.epochs' must be a whole number"),
    ({}, ["training.deterministic=1"], "must be a boolean"),
    ({}, ["training.epochs=0"], "at least 1"),
    ({}, ["split.fold=5"], "split.fold 5 is not one of the 5 folds"),
    ({}, ["training.amp=fp8"], "'training.amp' is \"fp8\"; valid: auto, bf16, fp16, off"),
    ({}, ["sampler.patch_zyx=[64, 64, 64]"], r"\[64, 64, 64\] is larger than the padded image \[32, 48, 48\]"),
    ({}, ["sampler.patch_zyx=[16, 24, 16]"], "not multiples of 16, which unet3d needs"),
    ({}, ["sampler.kind=slice2d"], "does not feed the 3D network 'unet3d'"),
    ({}, ["data.channels=[\"T2\"]"], r"data.channels \['T2'\] are not in the data, which has \['CT'\]"),
    ({}, ["model.arguments.in_channels=3"], "in_channels is 3 but the data give 1 input channels"),
    ({}, ["model.arguments.widht=3"], "network 'unet3d' has no argument widht"),
    ({}, ["data.channels=CT"], "data.channels must be a list of channel names, got \"CT\""),
    ({}, ["training.workers=-1"], "'training.workers' must be \"auto\" or a whole number >= 0"),
])
def test_bad_configurations_fail_fast_with_the_key_named(config, overrides, words):
    with pytest.raises(SegCoreError, match=words):
        resolve_plan(config, overrides=overrides, facts=SPLEEN)


def test_one_sigmoid_logit_for_two_labels_is_accepted():
    plan = resolve_plan({"model": {"arguments": {"out_channels": 1}}}, facts=SPLEEN)
    assert plan["model"]["arguments"]["out_channels"] == 1
    with pytest.raises(SegCoreError, match="out_channels is 3 but the data give 2 labels"):
        resolve_plan({"model": {"arguments": {"out_channels": 3}}}, facts=SPLEEN)


def test_a_missing_data_folder_is_named(tmp_path):
    with pytest.raises(SegCoreError) as caught:
        resolve_plan({}, flags={"data": str(tmp_path / "nowhere")})
    assert str(tmp_path / "nowhere") in str(caught.value)


def test_make_tiny_keeps_the_plan_it_was_given():
    plan = default_plan()
    tiny = make_tiny(plan)
    assert plan == default_plan()
    assert tiny["training"]["batch_size"] == 2 and tiny["sampler"]["patch_zyx"] == [16, 16, 16]
    assert tiny["model"]["arguments"] == {"resize_factor": MODELS["unet3d"].small["resize_factor"]}
