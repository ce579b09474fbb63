"""Outputs are written atomically and never over an input; errors read as one sentence with path and fix."""

import subprocess
import sys
import time

import pytest

from SegCore.atomic import atomic_dir, atomic_file, file_suffix, process_alive, refuse_overwriting_inputs
from SegCore.errors import SegCoreError


def test_atomic_file_keeps_format_suffix_and_renames(tmp_path):
    target = tmp_path / "out" / "labels.seg.nrrd"
    with atomic_file(target) as tmp:
        assert file_suffix(tmp) == ".seg.nrrd" and tmp.parent == target.parent
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["labels.seg.nrrd"]


def test_outputs_get_the_modes_a_plain_open_gives(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.nrrd") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "series") as tmp:
            (tmp / "1.dcm").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.nrrd").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "series").stat().st_mode & 0o777 == 0o755


def test_atomic_file_failure_leaves_old_content_and_no_temp(tmp_path):
    target = tmp_path / "a.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_atomic_dir_replaces_existing_folder_only_on_success(tmp_path):
    target = tmp_path / "series"
    target.mkdir()
    (target / "old.dcm").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.dcm").write_text("new")
        raise RuntimeError("crash")
    assert [p.name for p in target.iterdir()] == ["old.dcm"]
    with atomic_dir(target) as tmp:
        (tmp / "new.dcm").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.dcm"]
    assert [p.name for p in tmp_path.iterdir()] == ["series"]


def test_refuse_overwriting_inputs_sees_through_relative_paths(tmp_path, monkeypatch):
    image = tmp_path / "ct.nrrd"
    image.write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SegCoreError, match="overwrite an input"):
        refuse_overwriting_inputs("./ct.nrrd", [image])
    refuse_overwriting_inputs("other.nrrd", [image])


def test_error_message_is_one_line_with_path_and_fix():
    error = SegCoreError("spacing is 0 mm\n along z", path="/data/ct.nii.gz", fix="repair the header.")
    assert str(error) == "/data/ct.nii.gz: spacing is 0 mm along z. Fix: repair the header."


def test_process_alive_follows_a_real_process_through_its_exit():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(child.pid)
    finally:
        child.kill()
    if sys.platform.startswith("linux"):  # killed, not yet reaped: a zombie, which runs nothing
        deadline = time.monotonic() + 10
        while process_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_alive(child.pid) and child.poll() is not None
    child.wait()
    assert not process_alive(child.pid)
    assert not any(process_alive(pid) for pid in (None, "12", 0, -1, True))  # not process ids

