"""The run folder: plan, status, history, curves and log written and read back; refusal of a previous run,
resume requirements, overwrite, inputs, the write probe and the free-space check."""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os

import numpy as np
import pytest
from matplotlib.image import imread

from SegCore.atomic import guard_outputs
from SegCore.errors import SegCoreError
from SegCore.training.run_folder import FILES, PROBE_NAME, RunFolder


def _rows(n: int) -> list[dict]:
    """Epoch rows with losses going down and Dice going up; the second row adds a column."""
    rows = []
    for epoch in range(1, n + 1):
        row = {"epoch": epoch, "loss": 1.0 / epoch, "val_loss": 1.2 / epoch, "dice_spleen": 1 - 0.5 / epoch,
               "lr": 1e-3, "epoch_time_s": 2.5}
        if epoch >= 2:
            row["dice_mean"] = 1 - 0.4 / epoch
        rows.append(row)
    return rows


def test_files_are_written_and_read_back(tmp_path):
    out = tmp_path / "runs" / "RUN"
    plan = {"model": {"name": "unet3d", "arguments": {"in_channels": 1}}, "training": {"epochs": 3}}
    with RunFolder.open(out, resume=False, overwrite=False, parameters=1000) as run:
        assert out.is_dir() and not (out / PROBE_NAME).exists()
        run.write_plan(plan)
        assert json.loads((out / "plan.json").read_text()) == plan == run.read_plan()
        run.write_status("starting", epochs=3, message="preparing the data")
        status = run.write_status("training", epoch=1, step=4, steps=10, loss=float("nan"), eta_s=90.0)
        on_disk = json.loads((out / "status.json").read_text())
        assert on_disk == status
        assert on_disk["state"] == "training" and on_disk["pid"] == os.getpid()
        assert on_disk["epochs"] == 3 and on_disk["message"] == "preparing the data"  # kept from the last event
        assert on_disk["loss"] is None  # NaN is not JSON: written as null
        assert on_disk["log"] == str(out / "train.log")
        updated = datetime.datetime.fromisoformat(on_disk["updated"])
        eta = datetime.datetime.fromisoformat(on_disk["eta"])
        assert abs((datetime.datetime.now(datetime.timezone.utc) - updated).total_seconds()) < 60
        assert 89 <= (eta - updated).total_seconds() <= 91
        ended = run.write_status("stopped", message="resume with --resume")
        assert ended["eta_s"] is None and ended["eta"] is None and ended["epoch"] == 1
        for row in _rows(3):
            run.append_history(row)
            run.draw_curves()
        run.logger.info("epoch %d done", 3)
    with open(out / "history.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["epoch", "loss", "val_loss", "dice_spleen", "lr", "epoch_time_s", "dice_mean"]
    assert len(table) == 4 and table[1][-1] == ""  # epoch 1 has no dice_mean
    assert [float(v) for v in table[3][:4]] == [3.0, 1.0 / 3, 1.2 / 3, 1 - 0.5 / 3]  # full precision, as written
    image = imread(out / "curves.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 500
    assert np.ptp(image[..., :3]) > 0.5  # something is drawn
    log = (out / "train.log").read_text()
    assert "epoch 3 done" in log
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES[k] for k in ("plan", "status", "history",
                                                                               "curves", "log"))


def test_log_keeps_tracebacks_and_the_handler_is_closed(tmp_path):
    with pytest.raises(ZeroDivisionError), RunFolder.open(tmp_path / "RUN") as run:
        logger = run.logger
        1 / 0  # noqa: B018
    assert logger.handlers == [] and not any(isinstance(h, logging.FileHandler) for h in logger.handlers)
    log = (tmp_path / "RUN" / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "ZeroDivisionError" in log


def test_a_previous_run_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "RUN"
    with RunFolder.open(out) as run:
        run.write_plan({"a": 1})
        for row in _rows(2):
            run.append_history(row)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SegCoreError) as caught:
        RunFolder.open(out)
    assert str(out) in str(caught.value) and "previous run (plan.json, history.csv)" in str(caught.value)
    assert "--resume" in str(caught.value) and "--overwrite" in str(caught.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(SegCoreError, match="cannot resume: the run folder has no last.pt") as caught:
        RunFolder.open(out, resume=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "last.pt").write_bytes(b"weights")
    with RunFolder.open(out, resume=True) as run:
        assert run.history == _rows(2)  # read back from history.csv
        assert run.last == out / "last.pt" and run.best == out / "best.pt"
    with RunFolder.open(out, overwrite=True) as run:
        assert run.history == []
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train.log"]  # the run's files only, log new
    assert (out / "train.log").read_text() == ""


def test_resume_of_nothing_and_conflicting_flags(tmp_path):
    with pytest.raises(SegCoreError, match="no last.pt and no plan.json"):
        RunFolder.open(tmp_path / "absent", resume=True)
    assert not (tmp_path / "absent").exists()
    with pytest.raises(SegCoreError, match="exclude each other"):
        RunFolder.open(tmp_path / "RUN", resume=True, overwrite=True)


def test_a_folder_holding_an_input_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    image = data / "case.nii.gz"
    image.write_bytes(b"input bytes")
    for out in (data, tmp_path):  # the input's folder, and a folder above it
        with guard_outputs([image]), pytest.raises(SegCoreError, match="holds an input") as caught:
            RunFolder.open(out, overwrite=True)
        assert str(out) in str(caught.value)
    assert image.read_bytes() == b"input bytes" and sorted(p.name for p in data.iterdir()) == ["case.nii.gz"]


def test_a_file_in_the_way_and_too_little_space(tmp_path):
    (tmp_path / "RUN").write_text("a file")
    with pytest.raises(SegCoreError, match="file is in the way"):
        RunFolder.open(tmp_path / "RUN")
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(SegCoreError, match="not enough free space") as caught:
        RunFolder.open(tmp_path / "BIG", parameters=free // 12 + 1)  # 12 bytes a parameter: one checkpoint fits
    assert str(tmp_path / "BIG") in str(caught.value)
    assert list((tmp_path / "BIG").iterdir()) == []  # the probe was removed


def test_unknown_state_is_a_bug(tmp_path):
    with RunFolder.open(tmp_path / "RUN") as run, pytest.raises(ValueError, match="unknown run state"):
        run.write_status("running")
