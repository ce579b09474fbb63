"""`segcore models`: the table and JSON of every registered network, and its memory estimate."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from SegCore.cli import main
from SegCore.commands.models import describe_model
from SegCore.models import MODELS, build_model, training_step_memory
from SegCore.models.memory import estimate_training_step


def segcore(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegCore", "models", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The same CLI entry point without a new interpreter (torch is imported once): (exit code, stdout, stderr)."""
    code = main(["models", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_json_lists_every_registered_model(tmp_path):
    result = segcore("--json", "--small", "--batch", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "models.json"  # as a user would keep it, and read back
    path.write_text(result.stdout)
    rows = json.loads(path.read_text())
    assert sorted(row["name"] for row in rows) == sorted(MODELS)
    for row in rows:
        spec = MODELS[row["name"]]
        assert row["error"] is None
        assert row["parameters"] == count(build_model(row["name"], **spec.small))
        assert row["input_shape"] == [1, *spec.example_input]
        assert row["memory_method"].startswith("estimated") and row["memory_bytes"] > 16 * row["parameters"]
        assert row["study"] == spec.study and row["spatial_dims"] == spec.spatial_dims


def test_table_shows_published_sizes_and_method(capsys):
    code, out, err = in_process(capsys, "--model", "unet2d", "--model", "unet3d", "--device", "cpu")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["network", "study", "dims", "parameters"]
    unet2d = next(line for line in lines if line.startswith("unet2d"))
    assert "7,763,650" in unet2d and "2x5x144x144" in unet2d and "(estimated)" in unet2d
    assert any(line.startswith("unet3d") and "3D" in line for line in lines)
    assert not any(line.startswith("segresnet") for line in lines)


def test_input_size_per_dimensionality(capsys):
    code, out, err = in_process(capsys, "--json", "--input-size", "64", "64", "--input-size", "32", "48", "64",
                                "--batch", "3", "--model", "unet2d", "--model", "unet3d", "--device", "cpu")
    assert code == 0, err
    shapes = {row["name"]: row["input_shape"] for row in json.loads(out)}
    assert shapes == {"unet2d": [3, 5, 64, 64], "unet3d": [3, 4, 32, 48, 64]}


def test_bad_input_size_and_unknown_model_are_errors(capsys):
    code, out, err = in_process(capsys, "--model", "unet2d", "--input-size", "100", "--device", "cpu")
    assert code == 1
    assert "100" in err and "96" in err and "112" in err
    assert "unet2d" in out  # the table is still printed, with the reason under it
    code, _, err = in_process(capsys, "--model", "unet9d")
    assert code == 1 and "unet9d" in err and "unet2d" in err
    code, _, err = in_process(capsys, "--input-size", "1", "2", "3", "4")
    assert code == 1 and "--input-size" in err
    code, _, err = in_process(capsys, "--batch", "0")
    assert code == 1 and "--batch" in err


def test_estimate_is_the_documented_arithmetic():
    # Small unet2d (features 4, 8, 16), one 5x16x16 input: every layer output that owns memory, by hand
    # (in-place ReLUs share their input's), then 4 bytes x (4 copies of the parameters + 2 x activations).
    level1 = 4 * (4 * 16 * 16)           # conv, bn, conv, bn at 16x16 with 4 channels
    level2 = 4 * 8 * 8 + 4 * (8 * 8 * 8)  # pool1, then conv/bn/conv/bn at 8x8 with 8 channels
    bottom = 8 * 4 * 4 + 4 * (16 * 4 * 4)
    up2 = 8 * 8 * 8 + 4 * (8 * 8 * 8)    # transposed conv, decoder at 8x8
    up1 = 4 * 16 * 16 + 4 * (4 * 16 * 16)
    activations = 5 * 16 * 16 + level1 + level2 + bottom + up2 + up1 + 2 * 16 * 16
    spec = MODELS["unet2d"]
    kwargs = {**spec.defaults, **spec.small}
    parameters = count(build_model("unet2d", **spec.small))
    estimate, method = estimate_training_step(spec.builder, kwargs, (1, 5, 16, 16))
    assert method == "estimated"
    assert estimate == 4 * (4 * parameters + 2 * activations)


class _Cropping(torch.nn.Module):
    """Crops around its own output, like RSTN: its forward cannot run on the meta device."""

    def __init__(self):
        super().__init__()
        self.coarse = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.fine = torch.nn.Conv2d(1, 3, 1)

    def forward(self, x):
        rows = int((self.coarse(x)[0, 0].sum(dim=1) > 0).sum())  # data-dependent size
        return self.fine(x[:, :, : max(rows, 1)])


def test_a_network_that_crops_is_estimated_by_parts():
    estimate, method = estimate_training_step(_Cropping, {}, (1, 1, 8, 8))
    assert method == "estimated-by-parts"
    parameters = (2 * 9 + 2) + (3 + 3)
    activations = 64 + 2 * 64 + 3 * 64  # the input once, then each part on the full 8x8 input
    assert estimate == 4 * (4 * parameters + 2 * activations)


def test_the_command_reports_what_the_models_stage_computes(capsys):
    # The Trainer imports training_step_memory from SegCore.models; the command must print the same numbers.
    code, out, err = in_process(capsys, "--json", "--model", "vnet", "--model", "rstn", "--small", "--batch", "2",
                                "--device", "cpu")
    assert code == 0, err
    for row in json.loads(out):
        spec = MODELS[row["name"]]
        expected = training_step_memory(spec.builder, {**spec.defaults, **spec.small}, tuple(row["input_shape"]))
        assert (row["memory_bytes"], row["memory_method"]) == expected
    assert [row["memory_method"] for row in json.loads(out)] == ["estimated", "estimated-by-parts"]


def test_full_size_3d_estimates_are_quick():
    start = time.monotonic()
    row = describe_model("unet3d", batch=2, device="cpu")  # 2 x 4 x 160 x 240 x 240, 22 M parameters
    assert time.monotonic() - start < 20
    assert row["error"] is None and row["parameters"] > 20_000_000
    # The two first-level activations alone (2 x 32 x 160 x 240 x 240 floats, conv and BN) bound it from below.
    assert row["memory_bytes"] > 2 * 4 * (2 * 32 * 160 * 240 * 240)


@pytest.mark.gpu
def test_cuda_measures_a_training_step():
    row = describe_model("unet2d", batch=2, device="cuda", small=True)
    assert row["memory_method"] == "measured-cuda" and row["error"] is None
    # At least the weights, their gradients and Adam's two moments (float32).
    assert row["memory_bytes"] >= 16 * row["parameters"]
    result = segcore("--small", "--device", "cuda", "--json")
    assert result.returncode == 0, result.stderr
    assert {row["memory_method"] for row in json.loads(result.stdout)} == {"measured-cuda"}
