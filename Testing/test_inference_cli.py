"""`segcore predict` as users run it (real subprocesses, real checkpoints, real files), and its two helpers:
SegCore.inference.outputs (where and how a prediction is written) and SegCore.inference.batch (finding cases)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_models import phantom_root, tiny_checkpoint
from training_runs import ENV, REPO

from SegCore.errors import SegCoreError
from SegCore.inference.batch import RECORD_NAME, InputCase, find_cases
from SegCore.inference.outputs import FORMATS, output_paths, write_prediction
from SegCore.io import read_image, read_segmentation, write_dicom_series, write_image
from SegCore.volume import Grid, Volume

SHAPE_ZYX = (12, 20, 24)


def segcore(*arguments, progress: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "SegCore"] + (["--progress", progress] if progress else [])
    return subprocess.run(head + ["predict", "--device", "cpu", *map(str, arguments)], capture_output=True,
                          text=True, timeout=timeout, env=ENV, cwd=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def oblique_image(seed: int, channels: int = 1) -> Volume:
    """A seeded float32 image (C, Z, Y, X) or (Z, Y, X) on a rotated, anisotropic grid with an odd origin."""
    rng = np.random.default_rng(seed)
    a = np.deg2rad(25.0)
    direction = ((np.cos(a), -np.sin(a), 0.0), (np.sin(a), np.cos(a), 0.0), (0.0, 0.0, 1.0))
    grid = Grid(SHAPE_ZYX, (0.8, 0.9, 2.5), (-12.5, 30.25, 7.0), direction)
    shape = (channels, *SHAPE_ZYX) if channels > 1 else SHAPE_ZYX
    return Volume((rng.normal(100.0, 20.0, shape)).astype(np.float32), grid)


def sitk_geometry(path: Path) -> tuple:
    """(size, spacing, origin, direction) as SimpleITK reads the file: an oracle independent of SegCore.io."""
    image = sitk.ReadImage(str(path))
    return image.GetSize()[:3], image.GetSpacing()[:3], image.GetOrigin()[:3], image.GetDirection()[:9]


def assert_same_geometry(a: Path, b: Path) -> None:
    size_a, spacing_a, origin_a, direction_a = sitk_geometry(a)
    size_b, spacing_b, origin_b, direction_b = sitk_geometry(b)
    assert size_a == size_b
    np.testing.assert_allclose(spacing_a, spacing_b, atol=1e-5)
    np.testing.assert_allclose(origin_a, origin_b, atol=1e-4)
    np.testing.assert_allclose(direction_a, direction_b, atol=1e-5)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A 1-channel (LGE-MRI) 3D U-Net checkpoint with labels background / left atrium, seeded weights."""
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "atrium.pt", "unet3d", study="atrium",
                           size_zyx=(16, 24, 24))


def checkpoint_labels(path: Path) -> list[dict]:
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]["labels"]


# --- outputs.py -----------------------------------------------------------------------------------------------

def test_output_paths_name_the_label_map_and_its_siblings(tmp_path):
    one = output_paths(tmp_path / "pred.seg.nrrd", None, None)
    assert one == {"label": tmp_path / "pred.seg.nrrd", "probabilities": tmp_path / "pred_probabilities.nii.gz",
                   "uncertainty": tmp_path / "pred_uncertainty.nii.gz"}
    assert output_paths(tmp_path / "pred", None, "nrrd")["label"] == tmp_path / "pred.nrrd"
    assert output_paths(tmp_path / "pred", None, None)["label"] == tmp_path / "pred.nii.gz"
    assert output_paths(tmp_path, "case01", None)["label"] == tmp_path / "case01.nii.gz"
    assert output_paths(tmp_path, "case01", "seg.nrrd")["uncertainty"] == tmp_path / "case01_uncertainty.nii.gz"
    with pytest.raises(SegCoreError, match="--format says nrrd"):
        output_paths(tmp_path / "pred.nii.gz", None, "nrrd")
    with pytest.raises(SegCoreError, match="cannot write predictions as '.mha'"):
        output_paths(tmp_path / "pred.mha", None, None)


def test_command_lists_the_formats_outputs_writes():
    from SegCore.commands.predict import FORMATS as COMMAND_FORMATS

    assert COMMAND_FORMATS == FORMATS


def test_write_prediction_stores_float16_probabilities_exactly_and_keeps_the_grid(tmp_path):
    image = oblique_image(0)
    rng = np.random.default_rng(1)
    label = image.with_array(rng.integers(0, 3, SHAPE_ZYX).astype(np.uint8))
    raw = rng.random((3, *SHAPE_ZYX))
    probabilities = image.with_array((raw / raw.sum(0)).astype(np.float16))
    uncertainty = image.with_array(rng.random(SHAPE_ZYX).astype(np.float32))
    prediction = SimpleNamespace(label=label, probabilities=probabilities, uncertainty=uncertainty, warnings=[])
    labels = [{"value": 0, "name": "background", "colour_rgb": [0, 0, 0]},
              {"value": 1, "name": "liver", "colour_rgb": [221, 130, 101]},
              {"value": 2, "name": "spleen", "colour_rgb": [157, 108, 162]}]
    written = write_prediction(prediction, tmp_path / "p.seg.nrrd", None, labels)
    assert [p.name for p in written] == ["p.seg.nrrd", "p_probabilities.nii.gz", "p_uncertainty.nii.gz"]
    volume, segments = read_segmentation(written[0])
    assert np.array_equal(volume.array, label.array) and volume.grid.mismatch(image.grid) is None
    assert [(s.name, s.label_value) for s in segments] == [("liver", 1), ("spleen", 2)]
    np.testing.assert_allclose(segments[0].color_rgb, np.array([221, 130, 101]) / 255, atol=1e-6)
    stored = read_image(written[1])  # float16 has no NIfTI-1 type: float32 on disk, every value exact
    assert stored.array.dtype == np.float32 and stored.array.shape == (3, *SHAPE_ZYX)
    assert np.array_equal(stored.array, probabilities.array.astype(np.float32))
    assert np.array_equal(read_image(written[2]).array, uncertainty.array)


# --- batch.find_cases -----------------------------------------------------------------------------------------

def test_find_cases_tells_one_case_from_a_batch(tmp_path):
    image = oblique_image(0)
    files = tmp_path / "files"
    for name in ("b.nii.gz", "a.nrrd", "mr_0000.nii.gz", "mr_0001.nii.gz"):
        write_image(image, files / name)
    (files / "notes.txt").write_text("not an image")
    cases, batch = find_cases([files])
    assert batch and cases == [InputCase("a", (files / "a.nrrd",)), InputCase("b", (files / "b.nii.gz",)),
                               InputCase("mr", (files / "mr_0000.nii.gz", files / "mr_0001.nii.gz"))]
    assert find_cases([files / "a.nrrd"]) == ([InputCase("a", (files / "a.nrrd",))], False)
    assert find_cases([files / "mr_0000.nii.gz", files / "mr_0001.nii.gz"])[1] is False

    series = tmp_path / "series"
    write_dicom_series(image.with_array(image.array.astype(np.int16)), series / "ct1", modality="CT")
    write_dicom_series(image.with_array(image.array.astype(np.int16)), series / "ct2", modality="CT")
    (series / "out").mkdir()
    assert find_cases([series / "ct1"]) == ([InputCase("ct1", (series / "ct1",))], False)
    assert find_cases([series], exclude=series / "out") == (
        [InputCase("ct1", (series / "ct1",)), InputCase("ct2", (series / "ct2",))], True)

    dataset = phantom_root(tmp_path, "atrium", (8, 12, 12), cases=2)
    cases, batch = find_cases([dataset])
    assert batch and len(cases) == 2 and all(c.paths[0].name == "lgemri.nrrd" for c in cases)
    with pytest.raises(SegCoreError, match="nothing|no image files"):
        find_cases([series / "out"])


# --- segcore predict ------------------------------------------------------------------------------------------

def test_one_file_gives_a_seg_nrrd_named_by_the_checkpoint_and_probabilities_on_its_grid(tmp_path, model):
    source = write_image(oblique_image(0), tmp_path / "case01.nrrd")
    result = segcore("--model", model, "--input", source, "--output", tmp_path / "out" / "case01_pred",
                     "--format", "seg.nrrd", "--probabilities", "--uncertainty", "--no-postprocess")
    assert result.returncode == 0, result.stderr
    label_path = tmp_path / "out" / "case01_pred.seg.nrrd"
    assert_same_geometry(source, label_path)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    assert label.shape == SHAPE_ZYX and np.issubdtype(label.dtype, np.integer) and set(np.unique(label)) <= {0, 1}
    _, segments = read_segmentation(label_path)
    expected = [(e["name"], e["value"]) for e in checkpoint_labels(model) if e["value"] != 0]
    assert [(s.name, s.label_value) for s in segments] == expected == [("left atrium", 1)]

    probabilities = read_image(tmp_path / "out" / "case01_pred_probabilities.nii.gz")
    assert probabilities.array.shape == (2, *SHAPE_ZYX)
    assert probabilities.grid.mismatch(read_image(source).grid) is None
    np.testing.assert_allclose(probabilities.array.sum(0), 1.0, atol=2e-3)  # float16 rounding of each class
    clear = np.abs(probabilities.array[1] - probabilities.array[0]) > 0.01  # no ties flipped by the rounding
    assert np.array_equal(label[clear], probabilities.array.argmax(0)[clear])
    uncertainty = read_image(tmp_path / "out" / "case01_pred_uncertainty.nii.gz")
    assert uncertainty.array.shape == SHAPE_ZYX and np.isfinite(uncertainty.array).all()


def test_tta_on_in_the_plan_is_switched_off_by_no_tta_and_kept_without_a_flag(tmp_path):
    from SegCore.cli import build_parser
    from SegCore.commands.predict import requested_settings

    head = ["predict", "--model", "m.pt", "--input", "a.nii.gz", "--output", "b.nii.gz"]
    assert [requested_settings(build_parser().parse_args(head + flag)).get("tta", "plan")
            for flag in (["--tta"], ["--no-tta"], [])] == [True, False, "plan"]
    model = tiny_checkpoint(tmp_path / "tta.pt", "unet3d", study="atrium", size_zyx=(16, 24, 24),
                            plan={"inference": {"tta": True, "mirror_axes": [2]}})
    source = write_image(oblique_image(1), tmp_path / "case.nii.gz")
    passes = []
    for flag in (["--no-tta"], []):
        result = segcore("--model", model, "--input", source, "--output", tmp_path / "pred.nii.gz", *flag,
                         progress="json")
        assert result.returncode == 0, result.stderr
        passes.append(json.loads(result.stdout.splitlines()[-1])["info"]["passes"])
    assert passes == [1, 2]  # off; the plan's: unmirrored and mirrored along x


def test_a_checkpoint_for_another_number_of_channels_is_refused_in_one_line(tmp_path, model):
    source = write_image(oblique_image(2, channels=2), tmp_path / "two_channels.nii.gz")
    result = segcore("--model", model, "--input", source, "--output", tmp_path / "pred.nii.gz")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("segcore predict: error: "), result.stderr
    assert ("two_channels.nii.gz" in lines[0] or "atrium.pt" in lines[0]) and "channel" in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "pred.nii.gz").exists()


def test_a_corrupt_case_is_reported_the_batch_goes_on_and_resume_skips_finished_cases(tmp_path, model):
    cases = tmp_path / "cases"
    write_image(oblique_image(3), cases / "a.nii.gz")
    good_b = write_image(oblique_image(4), tmp_path / "b.nii.gz")
    (cases / "b.nii.gz").write_bytes(good_b.read_bytes()[:200])  # truncated: unreadable
    write_image(oblique_image(5), cases / "c.nrrd")
    for seed, name in ((6, "d"), (7, "e")):  # enough cases for reads and writes to meet (the guard's set of inputs)
        write_image(oblique_image(seed), cases / f"{name}.nii.gz")
    out = tmp_path / "pred"
    result = segcore("--model", model, "--input", cases, "--output", out, progress="json")
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]  # only JSON lines on stdout
    assert [e["message"] for e in events if e["event"] == "progress" and e["stage"] == "predict"] == [
        "a done", "b failed", "c done", "d done", "e done"]
    assert events[-1]["event"] == "error" and "1 of 5 case(s) failed (b)" in events[-1]["message"]
    record = json.loads((out / RECORD_NAME).read_text())
    status = {entry["case_id"]: entry for entry in record["cases"]}
    assert {k: v["status"] for k, v in status.items()} == {"a": "done", "b": "failed", "c": "done", "d": "done",
                                                          "e": "done"}
    assert "b.nii.gz" in status["b"]["error"] and "\n" not in status["b"]["error"]
    assert status["a"]["output"] == str(out / "a.nii.gz") and record["model_id"]
    for name, source in (("a", cases / "a.nii.gz"), ("c", cases / "c.nrrd")):
        assert_same_geometry(source, out / f"{name}.nii.gz")
    assert "b: failed:" in result.stderr

    (cases / "b.nii.gz").write_bytes(good_b.read_bytes())  # repaired: --resume predicts it, skips a and c
    before = {name: (out / f"{name}.nii.gz").stat().st_mtime_ns for name in "acde"}
    resumed = segcore("--model", model, "--input", cases, "--output", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / RECORD_NAME).read_text())
    assert {e["case_id"]: e["status"] for e in record["cases"]} == {"a": "skipped", "b": "done", "c": "skipped",
                                                                    "d": "skipped", "e": "skipped"}
    assert {name: (out / f"{name}.nii.gz").stat().st_mtime_ns for name in "acde"} == before
    assert_same_geometry(cases / "b.nii.gz", out / "b.nii.gz")


def test_torchrun_ranks_split_the_cases_and_rank_0_merges_the_record(tmp_path, model):
    cases = tmp_path / "cases"
    for index in range(4):
        write_image(oblique_image(10 + index), cases / f"case{index}.nii.gz")
    out = tmp_path / "pred"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", "SegCore", "predict", "--device", "cpu",
               "--model", str(model), "--input", str(cases), "--output", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=ENV, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / RECORD_NAME).read_text())
    ranks = {entry["case_id"]: (entry["status"], entry["rank"]) for entry in record["cases"]}
    assert ranks == {"case0": ("done", 0), "case1": ("done", 1), "case2": ("done", 0), "case3": ("done", 1)}
    assert record["world_size"] == 2 and not list(out.glob("predictions.rank*.json"))
    for index in range(4):
        assert_same_geometry(cases / f"case{index}.nii.gz", out / f"case{index}.nii.gz")
