"""The Train logic of the Slicer modules: a real tiny `segcore train --study atrium --tiny --progress json` run,
its status.json polled as the panel's timer does, stopped with SIGTERM, resumed to the end, found from its
folder, its history drawn as a plot chart node (real MRML from the `slicer-core` wheel).

Oracles: the run folder's own files (status.json, history.csv, last.pt) and the CLI's exit codes.
"""

from __future__ import annotations

import csv
import importlib.util
import time

import pytest

if importlib.util.find_spec("slicer") is None:
    pytest.skip("slicer-core is not installed (pip install -e '.[test]')", allow_module_level=True)

import slicer  # noqa: E402

from SegCore.errors import SegCoreError  # noqa: E402
from SegCore.slicer_utils.logic import TrainLogic, train_arguments  # noqa: E402


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    yield scene
    scene.Clear(1)


def test_train_arguments_for_a_new_and_a_resumed_run():
    assert train_arguments("atrium", "LA", "runs/la", fold=1, epochs=5, overrides=["optim.lr=0.001"],
                           device="cuda:0") == ["train", "--data", "LA", "--out", "runs/la", "--study", "atrium",
                                                "--fold", "1", "--epochs", "5", "--device", "cuda:0", "--set",
                                                "optim.lr=0.001"]
    # A resumed run takes its own plan.json: only where it runs may change.
    assert train_arguments("atrium", "LA", "runs/la", epochs=5, device="cpu", resume=True) == [
        "train", "--out", "runs/la", "--resume", "--device", "cpu"]
    with pytest.raises(SegCoreError, match="KEY=VALUE"):
        train_arguments("atrium", "LA", "runs/la", overrides=["optim.lr"])


def test_train_logic_stops_cleanly_and_resumes_to_the_end(scene, tmp_path):
    from SegCore.phantoms import write_phantom_dataset

    data = write_phantom_dataset("atrium", tmp_path / "LA", cases=4, size_zyx=16, seed=0)
    out = tmp_path / "run"
    assert TrainLogic.find_run(out) is None
    logic = TrainLogic(scene)
    overrides = ["preprocessing.0.min_zyx=[16,16,16]", "training.epochs=6"]
    runner = logic.start("atrium", data, out, fold=0, overrides=overrides, device="cpu", tiny=True)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:  # poll as the panel's timer does, until the first step checkpoint
        assert logic.poll(), runner.log_text()
        state = logic.status(out)
        if state.get("state") == "training" and (out / "last.pt").is_file():
            break
        time.sleep(0.1)
    assert state["running"] and state["epochs"] == 6 and state["pid"] == runner.pid
    logic.stop()
    assert logic.wait(timeout=120) == 143, runner.log_text()  # SIGTERM: the CLI's exit code for it
    stopped = TrainLogic.find_run(out)
    assert stopped["state"] == "stopped" and not stopped["running"] and stopped["can_resume"]
    assert stopped["epoch"] < 6 and (out / "last.pt").is_file() and "--resume" in stopped["message"]
    assert stopped["plan"]["study"] == "atrium" and stopped["plan"]["training"]["epochs"] == 6

    finished = []
    logic.start(None, None, out, resume=True, device="cpu", on_done=lambda code, error: finished.append((code, error)))
    assert logic.wait(timeout=150) == 0, logic.runner.log_text()
    assert finished == [(0, None)]
    final = logic.status(out)
    assert final["state"] == "finished" and final["epoch"] == 6 and not final["running"]
    with open(out / "history.csv", newline="") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(1, 7))
    assert [row["epoch"] for row in final["history"]] == list(range(1, 7))
    table, chart = logic.update_curves()
    assert table.GetNumberOfRows() == 6 and table.GetTable().GetColumnByName("loss") is not None
    names = [chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert "loss" in names and "dice_mean" in names
    assert logic.update_curves() == (table, chart)  # refilled, not duplicated
    assert chart.GetNumberOfPlotSeriesNodes() == len(names)
    with pytest.raises(SegCoreError, match="choose the dataset folder"):
        logic.start("atrium", None, tmp_path / "other")
