"""SegCore.slicer_utils.runner: real `python -m SegCore --progress json` subprocesses read without blocking,
their errors, cancelling a whole process tree, the capped log.

Oracles: the same command's stdout read by subprocess.run (the event sequence); the process table (os.kill(pid,
0), and /proc for a killed process that is not yet reaped); byte counts of what was printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from SegCore.slicer_utils.runner import CappedLog, ProcessRunner, child_environment, python_executable, segcore_command

REPO = Path(__file__).resolve().parents[1]
ENV = child_environment({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def _alive(pid: int) -> bool:
    """Whether `pid` still runs: it exists and is not a zombie (killed, waiting for its parent to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def test_python_executable_outside_slicer_is_this_python():
    assert python_executable() == sys.executable
    command = segcore_command(["phantoms", "--cases", 2])
    assert command == [sys.executable, "-m", "SegCore", "--progress", "json", "phantoms", "--cases", "2"]
    assert ENV["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)  # SegCore importable from the child


def test_events_arrive_in_order_and_finish_with_the_result(tmp_path):
    argv = ["phantoms", "--study", "atrium", "--cases", "2", "--size", "12", "--seed", "3"]
    # The oracle: the same command's JSON lines, read in one go by subprocess.run.
    direct = subprocess.run(segcore_command([*argv, "--out", tmp_path / "direct"]), capture_output=True, text=True,
                            env=ENV, cwd=REPO, timeout=120, check=True)
    expected = [json.loads(line) for line in direct.stdout.splitlines()]
    assert expected[-1]["event"] == "result" and len(expected) >= 3

    events, finished = [], []
    runner = ProcessRunner(env=ENV)
    runner.start([*argv, "--out", tmp_path / "runner"], on_event=events.append,
                 on_finished=lambda code, last: finished.append((code, last)))
    assert runner.running
    assert runner.wait(timeout=120) == 0
    assert not runner.running and runner.poll() is False
    key = [(e["event"], e.get("stage"), e.get("step"), e.get("total")) for e in expected]
    assert [(e["event"], e.get("stage"), e.get("step"), e.get("total")) for e in events] == key
    assert finished == [(0, events[-1])] and events[-1]["event"] == "result" and events[-1]["command"] == "phantoms"
    assert runner.error_message() is None
    assert (tmp_path / "runner").is_dir()
    log = runner.log_text()
    assert log.startswith("$ ") and "[exit code 0]" in log
    assert not any(line.startswith("{") for line in log.splitlines())  # events are not logged as text


def test_an_error_event_reaches_the_caller(tmp_path):
    bad = tmp_path / "case01.nii.gz"
    bad.write_text("this is not an image\n")
    finished = []
    runner = ProcessRunner(env=ENV).start(["evaluate", "--pred", bad, "--ref", bad],
                                          on_finished=lambda code, last: finished.append((code, last)))
    assert runner.wait(timeout=120) == 1
    code, last = finished[0]
    assert code == 1 and last["event"] == "error" and str(bad) in last["message"]
    assert runner.error_message() == last["message"]
    assert "\n" not in runner.error_message()  # one line for the user, no traceback
    assert "Traceback" not in runner.log_text() and f"error: {last['message']}" in runner.log_text()


CHILD = textwrap.dedent("""
    import json, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    grandchild.stdout.readline()  # it ignores SIGTERM from now on
    print(json.dumps({"event": "progress", "child": __import__("os").getpid(), "grandchild": grandchild.pid}),
          flush=True)
    time.sleep(120)
""")


@pytest.mark.skipif(os.name != "posix", reason="process groups and /proc: POSIX")
def test_cancel_kills_the_whole_process_tree():
    events, finished = [], []
    runner = ProcessRunner(env=ENV).start_command([sys.executable, "-c", CHILD], on_event=events.append,
                                                  on_finished=lambda code, last: finished.append(code))
    deadline = time.monotonic() + 60
    while not events and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    child, grandchild = events[0]["child"], events[0]["grandchild"]
    assert child == runner.pid and _alive(child) and _alive(grandchild)
    began = time.monotonic()
    runner.cancel(grace_s=0.5)  # SIGTERM to the group, SIGKILL for what ignores it
    assert time.monotonic() - began < 0.5  # returns at once: the GUI stays responsive
    code = runner.wait(timeout=30)
    assert code != 0 and finished == [code] and runner.error_message() == "cancelled"
    deadline = time.monotonic() + 10  # the grandchild is reparented and reaped by init
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child) and not _alive(grandchild)


def test_wait_with_a_timeout_cancels_and_raises():
    runner = ProcessRunner(env=ENV).start_command([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(TimeoutError, match="cancelled"):
        runner.wait(timeout=0.5)
    assert not runner.running and not _alive(runner.pid)
    with pytest.raises(RuntimeError, match="already running"):
        runner.start_command([sys.executable, "-c", "import time; time.sleep(5)"]).start_command(["true"])
    runner.cancel(grace_s=0)
    runner.wait(timeout=30)


def test_the_log_keeps_only_its_last_bytes():
    script = "import sys\nfor i in range(20000): print(f'line {i:05d}', file=sys.stderr)"
    runner = ProcessRunner(env=ENV, log_limit_bytes=4096).start_command([sys.executable, "-c", script])
    assert runner.wait(timeout=60) == 0
    text = runner.log_text()
    kept = text.split("\n", 1)[1]  # after the "[... N bytes ... dropped]" head
    assert len(kept.encode()) <= 4096 and "line 19999" in kept and "line 00000" not in text
    assert kept.endswith("line 19999\n[exit code 0]\n")
    printed = sum(len(f"line {i:05d}\n") for i in range(20000)) + len("[exit code 0]\n")
    dropped = int(text.split()[1])
    assert dropped == runner.log.dropped_bytes and dropped + len(kept.encode()) == printed + len(
        ("$ " + " ".join(runner.command) + "\n").encode())
    # stdout lines that are not events are logged; events are delivered, not logged.
    events = []
    mixed = "import json\nprint('not json')\nprint(json.dumps({'event': 'result', 'n': 1}))\nprint('{broken')"
    plain = ProcessRunner(env=ENV).start_command([sys.executable, "-c", mixed], on_event=events.append)
    assert plain.wait(60) == 0 and events == [{"event": "result", "n": 1}]
    assert "not json\n" in plain.log_text() and "{broken\n" in plain.log_text() and '"n": 1' not in plain.log_text()
    one = CappedLog(100)
    one.add("x" * 1000)  # a single huge line keeps its end
    assert len(one.text().encode()) <= 100 + 64
