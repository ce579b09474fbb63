"""`segcore phantoms` and `segcore inspect` as a user runs them: real subprocesses, exit codes, files, messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def segcore(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegCore", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segcore {command}: error: "), result.stderr
    return lines[0]


def test_phantoms_then_inspect_write_the_dataset_and_its_fingerprint(tmp_path):
    result = segcore("--progress", "json", "phantoms", "--study", "decathlon", "--task", "Prostate",
                     "--out", "prostate", "--cases", "3", "--seed", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert (tmp_path / "prostate" / "dataset.json").is_file()
    assert len(list((tmp_path / "prostate" / "imagesTr").glob("prostate_*.nii.gz"))) == 2

    result = segcore("inspect", "prostate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prostate_01" in result.stdout and "decathlon layout" in result.stdout
    out = tmp_path / "Prostate-fingerprint"  # ./<dataset name>-fingerprint, outside the dataset
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["num_cases"] == 3 and fingerprint["channel_names"] == ["T2", "ADC"]
    assert (out / "fingerprint.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "prostate").rglob("fingerprint*"))


def test_phantoms_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    assert segcore("phantoms", "--study", "atrium", "--out", "la", "--cases", "1", cwd=tmp_path).returncode == 0
    (tmp_path / "la" / "notes.txt").write_text("mine")
    line = one_line_error(segcore("phantoms", "--study", "atrium", "--out", "la", "--cases", "1", cwd=tmp_path),
                          "phantoms")
    assert "not empty" in line and "--overwrite" in line
    assert (tmp_path / "la" / "notes.txt").read_text() == "mine"
    result = segcore("phantoms", "--study", "atrium", "--out", "la", "--cases", "2", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "la" / "notes.txt").exists()
    assert len(list((tmp_path / "la").glob("*/*/lgemri.nrrd"))) == 2


def test_unlabelled_muscle_scans_are_written_without_a_label_and_read_as_unlabelled(tmp_path):
    from SegCore.datasets import open_dataset

    result = segcore("phantoms", "--study", "muscle", "--out", "m", "--cases", "2", "--unlabelled", "2",
                     "--size", "24", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 and 2 unlabelled" in result.stdout
    cases = open_dataset(tmp_path / "m", require_labels=False).cases
    assert sorted(case.has_label for case in cases) == [False, False, True, True]


@pytest.mark.parametrize("study, args", [("muscle", ["--size", "32", "32"]), ("muscle", ["--size", "4"]),
                                         ("muscle", ["--cases", "0"]), ("atrium", ["--unlabelled", "1"])])
def test_phantoms_bad_options_fail_in_one_line(tmp_path, study, args):
    result = segcore("phantoms", "--study", study, "--out", "m", *args, cwd=tmp_path)
    one_line_error(result, "phantoms")
    assert not (tmp_path / "m").exists()


def test_inspect_unrecognised_folder_fails_in_one_line(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("not a dataset")
    line = one_line_error(segcore("inspect", "stuff", cwd=tmp_path), "inspect")
    assert "Looked for" in line and "dataset.json" in line and "lgemri.nrrd" in line
    line = one_line_error(segcore("inspect", "missing", cwd=tmp_path), "inspect")
    assert "not found" in line


def test_inspect_refuses_to_write_inside_the_dataset(tmp_path):
    assert segcore("phantoms", "--study", "muscle", "--out", "m", "--cases", "1", cwd=tmp_path).returncode == 0
    line = one_line_error(segcore("inspect", "m", "--out", "m/fp", cwd=tmp_path), "inspect")
    assert "inside the dataset" in line
    assert not (tmp_path / "m" / "fp").exists()


def test_phantoms_offers_every_study_and_the_decathlon_tasks_that_have_a_phantom(tmp_path):
    result = segcore("phantoms", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    usage = " ".join(result.stdout.split())
    assert "{thalamus,atrium,muscle,pancreas,decathlon}" in usage and (
        "{BrainTumour,Heart,Liver,Hippocampus,Prostate,Lung,Pancreas,HepaticVessel,Spleen,Colon}" in usage)
    assert "Training Set/<ID>/lgemri.nrrd + laendo.nrrd (0/255)" in usage  # the layouts, from the study files
    result = segcore("phantoms", "--study", "decathlon", "--task", "Kidney", "--out", "x", cwd=tmp_path)
    assert result.returncode == 2 and "'Kidney'" in result.stderr and "Spleen" in result.stderr
    assert not (tmp_path / "x").exists()
