"""The study modules' headless parts: sample data, the self-test body, and what the panels display, against the
real slicer-core MRML classes and real `segcore --progress json` runs (only the Qt widgets stay untested here).

Oracles: SimpleITK reading the phantom's own DICOM series; SegCore's readers on the written files; strings and
fractions computed by hand from the events and the status the real writers produce.
"""

from __future__ import annotations

import importlib.util
import time
import unittest
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("slicer") is None:
    pytest.skip("slicer-core is not installed (pip install -e '.[test]')", allow_module_level=True)

import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402

from SegCore.devices import DeviceInfo  # noqa: E402
from SegCore.io import read_image, read_label, read_segmentation  # noqa: E402
from SegCore.slicer_utils.display import (  # noqa: E402
    AUTO_LABEL,
    available_devices,
    device_choices,
    event_progress,
    train_summary,
)
from SegCore.slicer_utils.runner import ProcessRunner  # noqa: E402
from SegCore.slicer_utils.sample_data import MARKER, load_sample_case, sample_name, write_sample_case  # noqa: E402
from SegCore.slicer_utils.segmentations import segmentation_grid, segments_of_node, study_segments  # noqa: E402
from SegCore.slicer_utils.selftest import run_self_test  # noqa: E402
from SegCore.slicer_utils.volumes import grid_from_node, volume_from_node  # noqa: E402
from SegCore.studies import get_study  # noqa: E402
from SegCore.volume import from_sitk  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The keys of one progress line, as the widget reads them (event_progress): written out by hand, not imported.
PROGRESS_KEYS = {"event", "stage", "step", "total", "message", "metrics"}


@pytest.fixture
def scene():
    """A scene as the application sets it up (colour tables, segmentation converter rules; see test_slicer_mrml)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLColorLogic().SetMRMLScene(scene)
    yield scene
    scene.Clear(1)


class _Case(unittest.TestCase):
    """What a ScriptedLoadableModuleTest gives run_self_test: assertions and delayDisplay."""

    def runTest(self):  # noqa: N802 (unittest's name)
        pass

    def delayDisplay(self, message, msec=None):  # noqa: N802 (Slicer's name)
        self.messages = [*getattr(self, "messages", []), message]


# -- sample data ----------------------------------------------------------------------------------------------
def test_sample_case_is_the_phantom_written_once(tmp_path):
    case = write_sample_case("muscle", tmp_path)
    (name, path), = case.channels
    assert name == "CT" and path.parent == tmp_path / "muscle"
    image = read_image(path)
    assert image.array.dtype == np.int16  # Hounsfield units as the scanner stores them
    # The oracle: SimpleITK's own DICOM series reader on the phantom case the sample came from.
    folders = sorted(p for p in case.dataset.iterdir() if p.is_dir())
    reader = sitk.ImageSeriesReader()
    matches = []
    for folder in folders:
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        series = from_sitk(reader.Execute())
        if series.grid.same_as(image.grid) and np.array_equal(series.array, image.array):
            matches.append(folder)
    assert len(matches) == 1
    labels, segments = read_segmentation(case.reference)
    expected = study_segments(get_study("muscle").labels)
    assert [(s.name, s.label_value) for s in segments] == [(s.name, s.label_value) for s in expected]
    np.testing.assert_allclose(segments[0].color_rgb, expected[0].color_rgb, atol=1e-6)
    reference = read_label(case.dataset / f"{matches[0].name}.nii.gz")
    assert labels.grid.same_as(image.grid) and np.array_equal(labels.array, reference.array)
    # Written once: a second call reuses the files; an interrupted case (no marker) is written again.
    stamp = path.stat().st_mtime_ns
    assert write_sample_case("muscle", tmp_path) == case and path.stat().st_mtime_ns == stamp
    (case.folder / MARKER).unlink()
    write_sample_case("muscle", tmp_path)
    assert (case.folder / MARKER).is_file() and path.stat().st_mtime_ns != stamp


def test_sample_case_loads_into_a_scene_in_channel_order(scene, tmp_path):
    volumes, reference = load_sample_case("thalamus", scene, folder=tmp_path)
    study = get_study("thalamus")
    assert [v.GetName() for v in volumes] == [f"ThalamusSegPhantom_{c}" for c in study.channel_names]
    case = write_sample_case("thalamus", tmp_path)
    for node, (_, path) in zip(volumes, case.channels, strict=True):
        written = read_image(path)
        loaded = volume_from_node(node)
        assert loaded.grid.same_as(written.grid) and np.array_equal(loaded.array, written.array)
    assert reference.GetName() == f"{sample_name('thalamus')}_reference"
    assert [s.name for s in segments_of_node(reference)] == ["thalamus"]
    assert segmentation_grid(reference).same_as(grid_from_node(volumes[0]))


# -- the self-test, headless --------------------------------------------------------------------------------------
def _module_constant(study: str, name: str):
    """A literal the study's module file assigns (the module itself imports Slicer's Qt, absent here)."""
    import ast

    module = get_study(study).module
    tree = ast.parse((REPO / module / f"{module}.py").read_text(encoding="utf-8"))
    (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)]
    return ast.literal_eval(value)


@pytest.mark.parametrize(("study", "task", "names"), [
    ("decathlon", "BrainTumour", ["edema", "non-enhancing tumor", "enhancing tumour"]),  # 4 MR channels, 3D
    ("thalamus", None, ["thalamus"]),  # five channels, 2D U-Nets slice by slice: progress from the slices
    ("atrium", None, ["left atrium"]),  # the V-Net over the whole (small) sample, as AtriumSegTest runs it
    ("muscle", None, ["muscle"]),  # CT from DICOM, 2D
    ("pancreas", None, ["pancreas"]),  # three RSTN planes, coarse to fine
])
def test_self_test_segments_and_reviews_the_sample_case(scene, tmp_path, monkeypatch, study, task, names):
    """A module's self-test on slicer-core: the sample channels in, the real predict subprocess, its segments."""
    monkeypatch.setenv("SEGSTUDIES_CACHE", str(tmp_path))
    case = _Case()
    result = run_self_test(case, study, scene=scene, overrides=_module_constant(study, "SELF_TEST_OVERRIDES"),
                           **({"task": task} if task else {}))
    assert case.messages[-1] == f"{get_study(study).module} self-test passed"
    assert [s.name for s in segments_of_node(result["segmentation"])] == names
    assert result["table"].GetNumberOfRows() == len(names)
    # What the Segment panel shows for this real event stream: fractions in [0, 1], never going back within a
    # stage, the stage named in the text, and 'done' at the one result event that ends it.
    events = result["events"]
    assert [e["event"] for e in events].count("result") == 1 and events[-1]["event"] == "result"
    last = {}
    for event in events[:-1]:
        assert event["event"] == "progress" and set(event) == PROGRESS_KEYS
        fraction, text = event_progress(event)
        assert text.startswith(event["stage"])
        if fraction is not None:
            assert 0.0 <= fraction <= 1.0 and fraction >= last.get(event["stage"], 0.0)
            assert fraction == pytest.approx(event["step"] / event["total"])
            last[event["stage"]] = fraction
    assert last.get("infer") == 1.0  # the network's progress reaches its end before the result
    assert event_progress(events[-1]) == (1.0, "done")


def test_train_panel_text_follows_a_real_training_run(tmp_path):
    """What the Train panel shows, from a real `segcore --progress json train` (TrainLogic, as the panel starts it)."""
    from training_runs import config, phantom

    from SegCore.slicer_utils.train import TrainLogic

    data, out = phantom(tmp_path / "LA", cases=3), tmp_path / "run"
    events, shown = [], []
    logic = TrainLogic()
    # The atrium preset pads every image to 96 x 640 x 640 voxels; the small configuration keeps the phantom's size.
    small = config(tmp_path, preprocessing=[{"name": "zscore", "mode": "volume"}])
    logic.start("atrium", data, out, epochs=2, device="cpu", config=small, on_event=events.append)
    while logic.poll():  # the panel's timer, faster
        shown.append(train_summary(TrainLogic.status(out), "dice_mean"))
        time.sleep(0.1)
    assert logic.runner.returncode == 0, logic.runner.log_text()
    final = train_summary(TrainLogic.find_run(out), "dice_mean")
    assert final["state"] == "finished" and final["epoch"] == "2 / 2" and final["fraction"] == 1.0
    assert final["loss"] != "-" and final["best"].endswith("(dice_mean)")
    assert all(s["state"].split(",")[0] in ("no run", "starting", "training", "validating", "finished")
               for s in shown)
    assert events[-1]["event"] == "result" and [e["event"] for e in events].count("result") == 1
    fractions = {}
    for event in events[:-1]:
        fraction, text = event_progress(event)
        assert event["event"] == "progress" and set(event) == PROGRESS_KEYS and text.startswith(event["stage"])
        if fraction is not None:
            assert fraction == pytest.approx(event["step"] / event["total"])
            assert fraction >= fractions.get(event["stage"], 0.0)
            fractions[event["stage"]] = fraction
    assert fractions.get("train") == 1.0 and fractions.get("epoch") == 1.0


def test_an_error_shows_the_cli_line_not_a_traceback(tmp_path):
    runner = ProcessRunner()
    runner.start(["predict", "--model", tmp_path / "missing.pt", "--input", tmp_path / "missing.nrrd",
                  "--output", tmp_path / "out.nrrd", "--device", "cpu"])
    assert runner.wait(timeout=120) != 0
    event = runner.last_event
    assert event["event"] == "error"
    fraction, text = event_progress(event)
    assert fraction is None and text == event["message"]
    assert "\n" not in text and "Traceback" not in text and "missing" in text


# -- what the panels display, by hand -----------------------------------------------------------------------------
def test_event_progress_by_hand():
    assert event_progress({"event": "progress", "stage": "predict", "step": 3, "total": 8, "message": "",
                           "metrics": {}}) == (0.375, "predict 3/8")
    assert event_progress({"event": "progress", "stage": "train", "step": 10, "total": 40,
                           "message": "epoch 2/8", "metrics": {"loss": 0.123456, "eta_s": 90}}) == (
        0.25, "train 10/40 epoch 2/8 loss 0.1235, about 1 min 30 s left")
    assert event_progress({"event": "progress", "stage": "load", "step": 2, "total": None}) == (None, "load 2")
    assert event_progress({"event": "result", "command": "predict"}) == (1.0, "done")
    assert event_progress({"event": "error", "message": "x.nrrd: no such file. Fix: choose one."}) == (
        None, "x.nrrd: no such file. Fix: choose one.")
    assert event_progress({"event": "other"}) == (None, "")


def test_device_choices_name_every_gpu_with_its_memory():
    cpu = DeviceInfo("cpu", "cpu", None, "AMD EPYC, 2 cores", 24 * 2 ** 30, None)
    gpus = [DeviceInfo(f"cuda:{i}", "cuda", i, name, memory, None, (8, 6))
            for i, (name, memory) in enumerate((("NVIDIA A10", 22 * 2 ** 30), ("NVIDIA T4", 15 * 2 ** 30 + 2 ** 29)))]
    mps = DeviceInfo("mps", "mps", None, "Apple GPU (arm64)", 16 * 2 ** 30, None)
    assert device_choices([cpu, *gpus, mps]) == [
        (AUTO_LABEL, "auto"), ("CPU", "cpu"), ("GPU 0: NVIDIA A10 (22.0 GiB)", "cuda:0"),
        ("GPU 1: NVIDIA T4 (15.5 GiB)", "cuda:1"), ("Apple GPU (MPS, 16.0 GiB shared)", "mps")]
    here = device_choices(available_devices())  # this machine, through SegCore.devices.list_devices
    assert here[:2] == [(AUTO_LABEL, "auto"), ("CPU", "cpu")]
    assert all(label.startswith("GPU ") for label, value in here if value.startswith("cuda"))


def test_train_summary_of_a_status_the_run_folder_wrote(tmp_path):
    from SegCore.slicer_utils.train import TrainLogic
    from SegCore.training.run_folder import RunFolder

    with RunFolder.open(tmp_path / "run") as run:
        run.write_status("training", epoch=3, epochs=200, step=30, steps=2000, loss=0.412345, best_metric=0.81234,
                         eta_s=750.0)
        training = train_summary(TrainLogic.status(tmp_path / "run"), "dice_mean")
        run.write_status("stopped", message="stopped by SIGTERM")
        stopped = train_summary(TrainLogic.status(tmp_path / "run"), "dice_mean")
    assert training == {"state": "training, about 12 min 30 s left", "epoch": "3 / 200", "loss": "0.4123",
                        "best": "0.8123 (dice_mean)", "fraction": 0.015, "message": ""}
    assert stopped["state"] == "stopped" and stopped["message"] == "stopped by SIGTERM"
    assert train_summary({}) == {"state": "no run", "epoch": "-", "loss": "-", "best": "-", "fraction": None,
                                 "message": ""}
