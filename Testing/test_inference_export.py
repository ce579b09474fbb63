"""Exported networks (TorchScript, ONNX) against the checkpoint's own network, and `segcore export` end to end."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_models import tiny_checkpoint

from SegCore.errors import SegCoreError
from SegCore.inference.export import META_FILE, example_shape_for, export_model, read_export_meta
from SegCore.training.checkpoint import load_checkpoint

# Loading a TorchScript file is what a user without SegCore does; torch 2.13 calls the format deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

# (model, plan, an input of another batch and spatial size than the training patch/slice, multiples of the divisor)
CASES = {"unet3d": (None, (1, 1, 16, 32, 16)), "vnet": (None, (1, 1, 16, 16, 32)),
         "unet2d": (None, (3, 1, 20, 44)), "stack25d": ({"sampler": {"kind": "stack25d", "k": 3}}, (2, 3, 12, 8))}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    return {name: tiny_checkpoint(folder / f"{name}.pt", "unet2d" if name == "stack25d" else name, plan=plan,
                                  study="atrium", size_zyx=(16, 32, 32))
            for name, (plan, _) in CASES.items()}


def reference_logits(checkpoint: Path, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_checkpoint(checkpoint).build_model().eval()(x).numpy()


def seeded_input(shape) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(shape)


@pytest.mark.parametrize("name", ["unet3d", "vnet", "unet2d", "stack25d"])
def test_torchscript_gives_the_checkpoints_logits_at_another_size(checkpoints, tmp_path, name):
    path = export_model(checkpoints[name], "torchscript", tmp_path / f"{name}.ts")
    x = seeded_input(CASES[name][1])
    files = {META_FILE: ""}
    loaded = torch.jit.load(str(path), _extra_files=files)  # plain torch, no SegCore
    got = loaded(x).detach().numpy()
    np.testing.assert_allclose(got, reference_logits(checkpoints[name], x), rtol=1e-5, atol=1e-6)
    meta = json.loads(files[META_FILE])
    assert {k: v for k, v in meta.items() if k != "export"} == load_checkpoint(checkpoints[name]).meta
    assert meta["export"]["input"]["shape"][1] == x.shape[1] and meta["export"]["output"]["values"] == "logits"
    assert read_export_meta(path) == meta


def test_onnx_round_trip_with_onnxruntime(checkpoints, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    for name in ("unet3d", "unet2d"):
        path = export_model(checkpoints[name], "onnx", tmp_path / f"{name}.onnx")
        x = seeded_input(CASES[name][1])
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"image": x.numpy()})[0]
        np.testing.assert_allclose(got, reference_logits(checkpoints[name], x), rtol=1e-4, atol=1e-5)
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        meta = json.loads(props[META_FILE])
        assert meta["labels"] == load_checkpoint(checkpoints[name]).meta["labels"]
        assert meta["export"]["checked_shape"] is not None and read_export_meta(path) == meta
        dims = [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] == "batch" and dims[1] == x.shape[1] and all(isinstance(d, str) for d in dims[2:])


def test_example_shape_comes_from_the_sampler_or_the_caller(checkpoints):
    meta = load_checkpoint(checkpoints["unet3d"]).meta
    assert example_shape_for(meta, 16) == (1, 1, 16, 16, 16)
    assert example_shape_for(dict(meta, sampler={"kind": "patch3d", "patch_zyx": [20, 16, 33]}), 16) == \
        (1, 1, 32, 16, 48)  # rounded up to the divisor
    assert example_shape_for(load_checkpoint(checkpoints["stack25d"]).meta, 4) == (1, 3, 32, 32)  # C x k
    assert example_shape_for(meta, 16, [32, 16, 48]) == (1, 1, 32, 16, 48)
    for bad, message in (([16, 16], "3 positive sides"), ([16, 16, 20], "not multiples of 16.*20 -> 16/32")):
        with pytest.raises(SegCoreError, match=message):
            example_shape_for(meta, 16, bad)


def test_rstn_is_refused_and_nothing_is_written(checkpoints, tmp_path):
    checkpoint = tiny_checkpoint(checkpoints["unet2d"].parent / "rstn.pt", "rstn", study="atrium",
                                 size_zyx=(16, 32, 32))
    with pytest.raises(SegCoreError, match="rstn cannot be exported.*segcore predict"):
        export_model(checkpoint, "torchscript", tmp_path / "rstn.ts")
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_the_onnx_package_says_how_to_install_it(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError, as when not installed
    with pytest.raises(SegCoreError, match=r"pip install 'segstudies\[onnx\]'"):
        export_model(checkpoints["unet2d"], "onnx", tmp_path / "m.onnx")
    with pytest.raises(SegCoreError, match="unknown export format 'tflite'"):
        export_model(checkpoints["unet2d"], "tflite", tmp_path / "m.tflite")
    assert not (tmp_path / "m.onnx").exists()


def segcore(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegCore", *args], capture_output=True, text=True, timeout=300)


def test_cli_exports_with_json_progress(checkpoints, tmp_path):
    output = tmp_path / "out" / "unet2d.ts"
    result = segcore("--progress", "json", "export", "--model", str(checkpoints["unet2d"]), "--format",
                     "torchscript", "--output", str(output))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    final = events[-1]
    assert final["event"] == "result" and final["files"] == [str(output)] and output.is_file()
    assert final["input"]["shape"] == ["batch", 1, "y", "x"] and final["input"]["spatial_multiple_of"] == 4
    assert "wrote" in result.stderr


def test_cli_failures_are_one_line_and_never_touch_the_checkpoint(checkpoints, tmp_path, capsys):
    from SegCore.cli import main

    checkpoint = checkpoints["unet2d"]
    before = checkpoint.read_bytes()
    bad_format = segcore("export", "--model", str(checkpoint), "--format", "tflite", "--output", "m.tflite")
    assert bad_format.returncode == 2 and "invalid choice 'tflite'" in bad_format.stderr
    # the same main() as `python -m SegCore`, in this process: torch is imported once
    for args, message in (((tmp_path / "missing.pt", tmp_path / "m.ts"), "no checkpoint file here"),
                          ((checkpoint, checkpoint), "would overwrite an input")):
        code = main(["export", "--model", str(args[0]), "--format", "torchscript", "--output", str(args[1])])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and message in lines[0], lines
    assert checkpoint.read_bytes() == before and not (tmp_path / "m.ts").exists()


@pytest.mark.gpu
def test_torchscript_runs_on_cuda(checkpoints, tmp_path):
    path = export_model(checkpoints["unet3d"], "torchscript", tmp_path / "unet3d.ts")
    x = seeded_input(CASES["unet3d"][1])
    loaded = torch.jit.load(str(path), map_location="cuda")
    with torch.no_grad():
        got = loaded(x.cuda(non_blocking=True)).float().cpu().numpy()
    np.testing.assert_allclose(got, reference_logits(checkpoints["unet3d"], x), rtol=1e-3, atol=1e-4)


def test_the_command_spells_out_the_same_formats():
    from SegCore.commands import export as command
    from SegCore.inference import export

    assert command.FORMATS == export.FORMATS
