"""No command ever loses or changes an input; interrupted or killed writers leave nothing behind.

Everything runs as real `segcore` subprocesses on real files; each check looks at the exit code, the one stderr
line, what is left on disk, and the input's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from unprivileged import as_another_user

from SegCore.atomic import atomic_file, guard_outputs
from SegCore.errors import SegCoreError
from SegCore.io import write_dicom_series, write_image
from SegCore.volume import Volume


def segcore(*args: str, cwd=None, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegCore", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, **options)


def digest(root: Path) -> dict[str, str]:
    """Every file below `root` (or `root` itself) with the SHA-256 of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def series(tmp_path, rng) -> Path:
    """A real six-slice DICOM series in tmp_path/dcm."""
    ct = Volume.create(rng.integers(-1000, 1000, size=(6, 8, 9)).astype(np.int16), (0.7, 0.7, 2.5))
    return write_dicom_series(ct, tmp_path / "dcm")


def test_convert_into_the_folder_of_its_own_series_is_refused(series, tmp_path):
    before = digest(series)
    first = sorted(series.iterdir())[2]
    result = segcore("convert", str(first), str(series))
    one_error_line(result, str(series), "input")
    assert digest(series) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcm"]


@pytest.mark.parametrize("spelling", ["relative", "dotdot", "absolute", "symlink", "trailing-slash"])
def test_every_spelling_of_an_input_folder_is_refused(series, tmp_path, spelling):
    first = sorted(series.iterdir())[0]
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(series, target_is_directory=True)
    output = {"relative": "dcm", "dotdot": "sub/../dcm", "absolute": str(series), "symlink": "link",
              "trailing-slash": "dcm/"}[spelling]
    before = digest(series)
    result = segcore("convert", str(first), output, cwd=tmp_path)
    one_error_line(result, "input")
    assert digest(series) == before


def test_an_output_file_may_not_be_the_input_through_a_link(tmp_path, rng):
    image = write_image(Volume.create(rng.normal(size=(4, 5, 6)).astype(np.float32)), tmp_path / "ct.nrrd")
    (tmp_path / "alias.nrrd").symlink_to(image)
    before = digest(image)
    one_error_line(segcore("convert", str(image), "alias.nrrd", cwd=tmp_path), "overwrite an input")
    one_error_line(segcore("convert", "ct.nrrd", "./x/../ct.nrrd", cwd=tmp_path), "overwrite an input")
    assert digest(image) == before


def test_an_output_folder_that_contains_the_inputs_deep_down_is_refused(tmp_path):
    label = np.zeros((4, 5, 6), np.uint8)
    label[1:3, 1:4, 2:5] = 1
    ref = write_image(Volume.create(label), tmp_path / "a/b/ref.nrrd")
    pred = write_image(Volume.create(np.roll(label, 1, axis=2)), tmp_path / "a/b/pred.nrrd")
    before = digest(tmp_path / "a")
    result = segcore("evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "a"))
    one_error_line(result, str(tmp_path / "a"), "holds an input")
    assert digest(tmp_path / "a") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_writing_a_file_beside_the_input_is_fine_and_new_folders_are_reported(series, tmp_path):
    result = segcore("--progress", "json", "convert", str(series), str(series / "new" / "deeper" / "ct.nii.gz"))
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout.splitlines()[-1])
    assert event["created_folders"] == [str(series / "new")]  # the top-most missing folder (deeper is in it)
    assert "created folder(s)" in result.stderr and str(series / "new") in result.stderr


def test_reading_registers_inputs_for_library_writers_too(tmp_path, rng):
    from SegCore.io import read_image

    image = write_image(Volume.create(rng.normal(size=(4, 5, 6)).astype(np.float32)), tmp_path / "ct.nrrd")
    with guard_outputs():
        read_image(image)
        with pytest.raises(SegCoreError, match="overwrite an input"), atomic_file(image):
            pass
    with atomic_file(image) as tmp:  # outside a guarded scope, library code may replace its own files
        tmp.write_bytes(b"x")


def test_an_output_whose_parent_is_a_file_gives_one_line(tmp_path, rng):
    image = write_image(Volume.create(rng.normal(size=(4, 5, 6)).astype(np.float32)), tmp_path / "ct.nrrd")
    (tmp_path / "plain").write_text("not a folder")
    result = segcore("convert", str(image), str(tmp_path / "plain" / "sub" / "ct.nii.gz"))
    one_error_line(result, str(tmp_path / "plain"), "a file is in the way")
    assert (tmp_path / "plain").read_text() == "not a folder"


def test_a_symlink_loop_on_the_output_gives_one_line(tmp_path, rng):
    image = write_image(Volume.create(rng.normal(size=(4, 5, 6)).astype(np.float32)), tmp_path / "ct.nrrd")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    result = segcore("convert", str(image), str(tmp_path / "loop_a" / "ct.nii.gz"))
    one_error_line(result, "loop_a", "loop of symbolic links")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to change the user of a child")
def test_an_output_folder_an_unprivileged_user_cannot_write_gives_one_line(open_folder, rng, monkeypatch):
    from SegCore.cli import main

    image = write_image(Volume.create(rng.normal(size=(4, 5, 6)).astype(np.float32)), open_folder / "ct.nrrd")
    locked = open_folder / "locked"
    locked.mkdir(mode=0o755)  # root's: another user may look inside but not write
    if os.geteuid() != 0:
        locked.chmod(0o555)
    monkeypatch.setenv("SEGCORE_LOG_DIR", str(open_folder / "logs"))
    assert main(["convert", str(image), str(open_folder / "as-root.nii.gz")]) == 0  # imports all the child needs
    code, stderr = as_another_user(lambda: main(["convert", str(image), str(locked / "ct.nii.gz")]))
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert str(locked) in lines[0] and "permission denied" in lines[0]
    assert list(locked.iterdir()) == []


def _start_phantoms(out: Path, *extra: str) -> subprocess.Popen:
    """A real `segcore phantoms` run too long to finish during a test, writing into a temporary beside `out`."""
    return subprocess.Popen([sys.executable, "-m", "SegCore", *extra, "phantoms", "--study", "decathlon", "--task",
                             "BrainTumour", "--cases", "2000", "--size", "48", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_temporary(parent: Path, name: str, process: subprocess.Popen) -> list[Path]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        found = [p for p in parent.iterdir() if p.name.startswith(f".{name}.segcore-") and any(p.rglob("*.nii.gz"))]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no temporary of {name} appeared; the run ended with {process.poll()}")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_remove_temporaries_and_end_with_an_error_event(tmp_path, signum, code):
    out = tmp_path / "task"
    process = _start_phantoms(out, "--progress", "json")
    _wait_for_temporary(tmp_path, "task", process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    last = json.loads(stdout.splitlines()[-1])
    assert last["event"] == "error" and last["kind"] == "interrupted"
    assert len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr
    assert list(tmp_path.iterdir()) == []


def test_after_kill_9_the_next_run_of_the_same_output_removes_the_stale_temporaries(tmp_path):
    out = tmp_path / "task"
    process = _start_phantoms(out)
    stale = _wait_for_temporary(tmp_path, "task", process)
    process.kill()
    process.wait(timeout=60)
    assert all(p.exists() for p in stale)  # SIGKILL: no clean-up could run
    other = tmp_path / ".other.segcore-1.abc.tmp"  # another output's temporary is not ours to remove
    other.mkdir()
    result = segcore("phantoms", "--study", "atrium", "--cases", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.segcore-1.abc.tmp", "task"]


def test_an_unexpected_error_is_one_line_with_a_log_and_a_json_error_event(tmp_path):
    # A bug injected into a real command (there is no real bug to trigger on purpose).
    script = ("import sys, SegCore.commands.models as m\n"
              "def broken(args, progress):\n    return {}['missing-key']\n"
              "m.run = broken\nfrom SegCore.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "SEGCORE_LOG_DIR": str(tmp_path / "logs")}
    result = subprocess.run([sys.executable, "-c", script, "--progress", "json", "models"], capture_output=True,
                            text=True, env=env, timeout=120)
    line = one_error_line(result, "internal error KeyError", "missing-key")
    log = next((tmp_path / "logs").iterdir())
    assert str(log) in line and "Traceback" in log.read_text() and "broken" in log.read_text()
    event = json.loads(result.stdout.strip().splitlines()[-1])
    assert event["event"] == "error" and event["kind"] == "internal" and event["log"] == str(log)
    debug = subprocess.run([sys.executable, "-c", script, "--debug", "models"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "KeyError" in debug.stderr.splitlines()[-1]


def test_usage_errors_are_one_line_listing_the_choices():
    result = segcore("phantoms", "--study", "liver", "--out", "x")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    for study in ("thalamus", "atrium", "muscle", "pancreas", "decathlon"):
        assert study in lines[0]
    missing = segcore("--progress", "json")
    assert missing.returncode == 2 and "demo" in missing.stderr and "evaluate" in missing.stderr
    assert json.loads(missing.stdout.splitlines()[-1])["event"] == "error"


def test_a_bare_segcore_lists_its_commands():
    result = segcore()
    assert result.returncode == 0
    for name in ("demo", "phantoms", "inspect", "convert", "evaluate", "models"):
        assert name in result.stdout


def test_outputs_are_checked_while_another_thread_adds_inputs(tmp_path):
    """segcore predict reads the next case in one thread while it writes the previous one in another."""
    import contextvars
    import threading

    from SegCore.atomic import add_inputs, check_output, guard_outputs

    errors = []
    with guard_outputs([tmp_path / f"early{i}.nii.gz" for i in range(500)]):
        stop = threading.Event()

        def reader():
            i = 0
            while not stop.is_set() and i < 20000:
                add_inputs([tmp_path / f"in{i}.nii.gz"])
                i += 1

        thread = threading.Thread(target=contextvars.copy_context().run, args=(reader,))  # as batch.py starts it
        thread.start()
        try:
            for _ in range(20):
                check_output(tmp_path / "out" / "case.nii.gz")
        except RuntimeError as error:  # "Set changed size during iteration"
            errors.append(error)
        finally:
            stop.set()
            thread.join()
    assert errors == []
