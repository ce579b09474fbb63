"""`segcore train` as a user runs it: real subprocesses, kill -9 and resume, SIGTERM, bad configurations."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from training_runs import ENV, REPO, assert_same_weights, config, one_error_line, phantom, run_train, status, weights


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom(tmp_path_factory.mktemp("la") / "la", cases=4, size=32)


def folder_digest(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def start(*arguments):
    """A real `segcore train` in a process group of its own (its loader workers join it), as a shell starts it."""
    command = [sys.executable, "-m", "SegCore", "train", "--device", "cpu", *map(str, arguments)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO,
                            start_new_session=True)


def wait_for_step(run, process, at_least: int, timeout: float = 120) -> dict:
    """Poll status.json until a step checkpoint at or past `at_least` was written (last.pt then holds it)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert process.poll() is None, process.communicate()
        try:
            current = status(run)
        except (FileNotFoundError, json.JSONDecodeError):
            current = {}
        if current.get("state") == "training" and (current.get("step") or 0) >= at_least:
            return current
        time.sleep(0.02)
    raise AssertionError("no step checkpoint in time")


SLOW = {"training": {"epochs": 2, "steps_per_epoch": 12, "batch_size": 2, "workers": 0,
                     "checkpoint_every_steps": 1, "deterministic": True}}


def test_kill_9_mid_epoch_then_resume_is_bit_exact(tmp_path, data):
    cfg = config(tmp_path, **SLOW)
    whole = run_train("--data", data, "--out", tmp_path / "whole", "--config", cfg)
    assert whole.returncode == 0, whole.stderr
    process = start("--data", data, "--out", tmp_path / "cut", "--config", cfg)
    seen = wait_for_step(tmp_path / "cut", process, 3)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert seen["step"] < 24 and status(tmp_path / "cut")["state"] == "training"  # killed mid-run
    resumed = run_train("--data", data, "--out", tmp_path / "cut", "--config", cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    assert status(tmp_path / "cut")["state"] == "finished"


def test_sigterm_stops_cleanly_and_prints_the_resume_command(tmp_path, data):
    # With a loader worker, and SIGTERM sent to the whole process group as `timeout`, a terminal's Ctrl-C or a
    # job scheduler do: the worker must not die first and turn the clean stop into a failure.
    cfg = config(tmp_path, training={**SLOW["training"], "workers": 1})
    process = start("--data", data, "--out", tmp_path / "run", "--config", cfg)
    wait_for_step(tmp_path / "run", process, 2)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert status(tmp_path / "run")["state"] == "stopped"
    line = next(line for line in stderr.splitlines() if "resume with: " in line)
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:2] == ["segcore", "train"] and command[-1] == "--resume"
    finished = subprocess.run([sys.executable, "-m", "SegCore", *command[1:]], capture_output=True, text=True,
                              env=ENV, cwd=REPO, timeout=240)
    assert finished.returncode == 0, finished.stderr
    assert status(tmp_path / "run")["state"] == "finished"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    """One finished deterministic run (config and run folder)."""
    folder = tmp_path_factory.mktemp("finished")
    cfg = config(folder)
    result = run_train("--data", data, "--out", folder / "run", "--config", cfg)
    assert result.returncode == 0, result.stderr
    return cfg, folder / "run"


def test_plan_json_reproduces_the_run(tmp_path, finished):
    _, run = finished
    again = run_train("--plan", run / "plan.json", "--out", tmp_path / "b", progress="json")
    assert again.returncode == 0, again.stderr
    assert_same_weights(weights(run / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    events = [json.loads(line) for line in again.stdout.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["command"] == "train"
    assert events[-1]["epochs"] == 2 and os.path.isfile(events[-1]["run"] + "/best.pt")
    stages = {e.get("stage") for e in events if e["event"] == "progress"}
    assert {"train", "epoch"} <= stages
    step = next(e for e in events if e.get("stage") == "train")
    assert {"loss", "eta_s"} <= set(step["metrics"])


# name -> (arguments after --data DATA --config CFG, what the one error line must name)
BAD = {
    "unknown network": (["--set", "model.name=nonet"], "nonet"),
    "unknown loss": (["--set", "loss.name=noloss"], "noloss"),
    "unknown key": (["--set", "optim.lrr=1"], "lrr"),
    "patch larger than the image": (["--set", "sampler.size_yx=[64,64]"], "larger than the padded image"),
    "channels that do not match": (["--set", "model.arguments.in_channels=3"], "in_channels"),
    "empty training split": (["--set", "split.kind=lists", "split.train_list=EMPTY"], "training split is empty"),
    "missing data folder": (["--data", "NOWHERE"], "nowhere"),
    "unwritable output": (["--out", "FILE/run"], "a file is in the way"),
}


def test_bad_configurations_fail_fast_in_one_line(tmp_path, data, finished):
    cfg, previous = finished
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    swap = {"EMPTY": str(tmp_path / "empty.txt"), "NOWHERE": str(tmp_path / "nowhere"), "FILE": str(tmp_path / "file")}
    before, before_run = folder_digest(data), folder_digest(previous)
    cases = {**BAD, "a previous run without --resume": (["--out", str(previous)], "previous run")}
    started = {}
    for name, (arguments, _) in cases.items():  # all at once: most of each is starting Python and torch
        for token, value in swap.items():
            arguments = [a.replace(token, value) for a in arguments]
        out = tmp_path / f"run-{len(started)}"
        started[name] = (out, start("--data", data, "--out", out, "--config", cfg, *arguments))
    for name, (out, process) in started.items():
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 1, (name, stderr)
        assert cases[name][1] in one_error_line(stderr), name
        assert not out.exists(), name
    assert folder_digest(data) == before
    assert folder_digest(previous) == before_run
    assert (tmp_path / "file").read_text(encoding="utf-8") == "x"


def test_train_py_is_a_plain_script_from_any_folder(tmp_path):
    script = REPO / "SegCore" / "train.py"
    env = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--resume" in result.stdout and "--plan" in result.stdout
    source = script.read_text(encoding="utf-8")
    assert "import slicer" not in source and "from slicer" not in source


def test_train_py_runs_the_same_cli_with_json_progress(tmp_path, data):
    script = REPO / "SegCore" / "train.py"
    env = {k: v for k, v in ENV.items() if k not in ("PYTHONPATH", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, str(script), "--data", str(data), "--out", str(tmp_path / "run"),
                             "--config", str(config(tmp_path)), "--device", "cpu", "--progress", "json"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["event"] == "result"
    assert os.path.isfile(tmp_path / "run" / "best.pt")
    # set before torch loaded (the OpenMP runtime reads it then), as the log of the run says
    assert "OpenMP wait policy PASSIVE" in (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
