"""The `segcore` command line, run as real subprocesses the way users run it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SegCore.cli import COMMANDS


def segcore(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegCore", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_help_lists_every_subcommand():
    result = segcore("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


def test_console_script_matches_module():
    script = Path(sys.executable).parent / "segcore"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == segcore("--help").stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_each_subcommand_help_has_examples(name):
    result = segcore(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout.lower()
    assert "being written" not in result.stdout


def test_unknown_subcommand_is_a_usage_error():
    result = segcore("segment-everything")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_segcore_error_is_one_line_and_exit_1(tmp_path):
    result = segcore("inspect", str(tmp_path / "no-such-dataset"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-dataset" in lines[0]


def test_json_progress_reports_errors_as_events(tmp_path):
    result = segcore("--progress", "json", "inspect", str(tmp_path / "missing"))
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1 and events[-1]["event"] == "error" and "missing" in events[-1]["message"]


def test_label_options_take_separate_or_comma_separated_items():
    from SegCore.commands.text import parse_label_names
    from SegCore.errors import SegCoreError

    expected = {1: "liver", 2: "spleen"}
    assert parse_label_names(["1=liver", "2=spleen"], option="--names") == expected
    assert parse_label_names(["1=liver,2:spleen"], option="--names") == expected
    assert parse_label_names(["3"], option="--labels") == {3: "label_3"}
    for bad, message in ((["0=background"], "not a foreground label"), (["x=1"], "does not start with a label")):
        with pytest.raises(SegCoreError, match=message):
            parse_label_names(bad, option="--labels")
    with pytest.raises(SegCoreError, match="not VALUE=NAME"):
        parse_label_names(["3"], option="--names", require_names=True)


def test_json_mode_stdout_is_only_json_lines_ending_with_the_result(tmp_path):
    out = tmp_path / "la"
    result = segcore("--progress", "json", "phantoms", "--study", "atrium", "--out", str(out), "--cases", "2")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]  # fails on any non-JSON line
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2]
    assert events[-1] == {"event": "result", "command": "phantoms", "files": [str(out)]}
    assert "wrote 2 atrium phantom case(s)" in result.stderr  # the text for people still shows


def test_inspect_reads_sizes_in_the_spacing_order_and_explains_the_label_rule(tmp_path):
    from SegCore.io import read_image

    data = tmp_path / "LA"
    assert segcore("phantoms", "--study", "atrium", "--out", str(data), "--cases", "1").returncode == 0
    result = segcore("inspect", str(data), "--out", str(tmp_path / "fp"))
    assert result.returncode == 0, result.stderr
    image = next(data.rglob("lgemri.nrrd"))
    z, y, x = read_image(image).array.shape
    header, row = result.stdout.splitlines()[1], result.stdout.splitlines()[3]
    assert "size (x,y,z)" in header and "spacing (x,y,z mm)" in header
    assert f"{x} x {y} x {z}" in row
    laendo = np.unique(read_image(next(data.rglob("laendo.nrrd"))).array)
    assert laendo.tolist() == [0, 255]  # the file stores 0/255; the table shows what is read, and says so
    assert "stored 255 is read as 1" in result.stdout


@pytest.mark.parametrize("command", ["train", "run"])
def test_repeated_set_options_all_reach_the_plan(command):
    from SegCore.cli import build_parser

    args = build_parser().parse_args([command, "--out", "RUN", "--set", "optim.lr=1e-3", "training.epochs=2",
                                      "--set", "training.seed=4"])
    assert args.overrides == ["optim.lr=1e-3", "training.epochs=2", "training.seed=4"]
    assert build_parser().parse_args([command, "--out", "RUN"]).overrides == []  # the default is not shared
