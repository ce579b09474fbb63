"""`segcore run`'s engine (SegCore/protocol) on a toy protocol of the atrium study: stages, test, report, status,
kill -9 and resume. The studies' own protocols are tested in test_study_<study>.py."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from training_runs import ENV, REPO, phantom

import SegCore.studies as studies
from SegCore.errors import SegCoreError
from SegCore.studies.schema import Stage

SLICES = {"model": {"name": "unet2d", "arguments": {"features": [4, 8]}},
          "sampler": {"kind": "slice2d", "size_yx": [32, 32], "foreground_fraction": 0.5},
          "optim": {"lr": 0.01}, "split": {"kind": "kfold", "folds": 3},
          "training": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "workers": 0,
                       "checkpoint_every_steps": 1}}
TOY = (Stage("first", "train", SLICES),
       Stage("second", "train", {**SLICES, "training": {**SLICES["training"], "init": "@first", "epochs": 40}}),
       Stage("test", "test", {"inference": {"tta": False}}, models=("first", "second")))
# Runs a toy protocol in its own process: the atrium study with TOY as its protocol.
SCRIPT = textwrap.dedent("""
    import dataclasses, sys
    import SegCore.studies as studies
    from SegCore.cli import main
    from SegCore.training import config
    from test_protocol import TOY, TOY_PRESET
    studies.STUDIES["atrium"] = dataclasses.replace(studies.STUDIES["atrium"], protocol=TOY)
    config.STUDY_PRESETS["atrium"] = TOY_PRESET
    sys.exit(main(sys.argv[1:]))
""")
TOY_PRESET = {"data": {"layout": "atrium"}}  # the atrium's layout without its published settings


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return phantom(tmp_path_factory.mktemp("protocol") / "LA", cases=4, size=32)


@pytest.fixture
def toy(monkeypatch):
    from SegCore.training import config

    monkeypatch.setitem(studies.STUDIES, "atrium", dataclasses.replace(studies.STUDIES["atrium"], protocol=TOY))
    monkeypatch.setitem(config.STUDY_PRESETS, "atrium", TOY_PRESET)


def _cli(*args: str) -> subprocess.Popen:
    env = {**ENV, "PYTHONPATH": f"{REPO}:{REPO / 'Testing'}"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_every_stage_runs_then_the_report_pools_the_held_out_cases(tmp_path, data, toy):
    from SegCore.io import read_image
    from SegCore.protocol import read_status, run_protocol
    from SegCore.training.run_folder import RunFolder

    run = tmp_path / "run"
    result = run_protocol("atrium", data, run, tiny=False, overrides=["training.epochs=1"], device="cpu")
    assert [row["state"] for row in result["status"]["stages"]] == ["finished"] * 3
    # "@first" became first's best.pt, the initial weights of the second stage
    assert RunFolder(run / "second").read_plan()["training"]["init"] == str((run / "first" / "best.pt").absolute())
    report = json.loads((run / "report.json").read_text())
    record = report["tests"][0]
    assert record["cases"] and sorted(p.name for p in (run / "test" / "predictions").iterdir()) == \
        sorted(f"{c}.nii.gz" for c in record["cases"])
    # the pooled Dice against a brute-force Dice of the written files
    dice = []
    for case in record["cases"]:
        predicted = read_image(run / "test" / "predictions" / f"{case}.nii.gz")
        reference = read_image(run / "test" / "references" / "reference" / f"{case}.nii.gz")
        assert predicted.grid.shape_zyx == reference.grid.shape_zyx
        dice.append(_dice(predicted.array == 1, reference.array == 1))
    overall = report["overall"]["test"]["reference"]["model/left atrium"]
    assert overall["n"] == len(dice) and overall["mean"] == pytest.approx(np.mean(dice), abs=1e-6)
    assert "| reference | model/left atrium |" in (run / "report.md").read_text()
    assert read_status(run)["next"] is None


def test_a_different_request_into_the_same_folder_is_refused(tmp_path, data, toy):
    from SegCore.protocol import run_protocol

    run = tmp_path / "run"
    (run).mkdir()
    (run / "note.txt").write_text("mine")
    with pytest.raises(SegCoreError, match="not empty and holds no protocol run"):
        run_protocol("atrium", data, run, overrides=["training.epochs=1"], device="cpu")
    (run / "note.txt").unlink()
    with pytest.raises(SegCoreError, match="unknown key 'epoch'"):  # a bad --set fails before anything is written
        run_protocol("atrium", data, run, overrides=["training.epoch=1"], device="cpu")
    assert not any(run.iterdir())
    with pytest.raises(SegCoreError, match="not cross-validated"):
        run_protocol("atrium", data, run, fold=1, device="cpu")


def test_a_stage_scoped_set_reaches_the_matching_stages_only(tmp_path, data, toy):
    from SegCore.protocol import run_protocol
    from SegCore.protocol.stages import train_plan

    lines = ["training.batch_size=4", "sec*:optim.lr=0.5", "first:training.epochs=3"]
    first, second = (train_plan(studies.STUDIES["atrium"], TOY[i], data=data, out=tmp_path, tiny=False,
                                overrides=lines) for i in (0, 1))
    assert (first["optim"]["lr"], first["training"]["epochs"], first["training"]["batch_size"]) == (0.01, 3, 4)
    assert (second["optim"]["lr"], second["training"]["epochs"], second["training"]["batch_size"]) == (0.5, 40, 4)
    run = tmp_path / "run"
    with pytest.raises(SegCoreError, match="no train stage matches 'test'"):  # a test stage trains nothing
        run_protocol("atrium", data, run, overrides=["test:optim.lr=1"], device="cpu")
    with pytest.raises(SegCoreError, match="unknown key 'epoch'"):  # the scoped key is checked as any other
        run_protocol("atrium", data, run, overrides=["first:training.epoch=1"], device="cpu")
    assert not run.exists()


def test_kill_9_then_the_same_command_resumes_without_redoing_finished_stages(tmp_path, data):
    run = tmp_path / "run"
    args = ["run", "--study", "atrium", "--data", str(data), "--out", str(run), "--device", "cpu"]
    process = _cli(*args)
    deadline = time.time() + 240
    second = run / "second"
    # kill once the first stage is done and the second has written a checkpoint
    while time.time() < deadline and not ((second / "last.pt").is_file()
                                          and json.loads((second / "status.json").read_text()).get("step", 0) >= 3):
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    first_log = (run / "first" / "train.log").read_text()
    first_best = (run / "first" / "best.pt").stat().st_mtime_ns
    status = subprocess.run([sys.executable, "-m", "SegCore", "run", "--status", str(run)], env=ENV, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    lines = {line.split()[0]: line.split()[2] for line in status.stdout.splitlines()[1:] if line.startswith("  ")}
    assert lines == {"first": "finished", "second": "stopped", "test": "pending"}
    assert "next: second" in status.stdout
    again = _cli(*args)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert (run / "first" / "train.log").read_text() == first_log  # not trained again
    assert (run / "first" / "best.pt").stat().st_mtime_ns == first_best
    assert "resumed from last.pt" in (second / "train.log").read_text()
    assert json.loads((run / "test" / "test.json").read_text())["cases"]
