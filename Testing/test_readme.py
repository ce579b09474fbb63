"""The README's command session runs as written (in a fresh folder, with this environment's `segcore`)."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_session() -> list[str]:
    """The commands of the README's bash block that starts with `source .venv/bin/activate`, comments removed."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    session = next(b for b in blocks if b.startswith("source .venv/bin/activate"))
    commands = [line.split("  #")[0].strip() for line in session.splitlines()[1:]]
    return [c for c in commands if c]


def test_readme_session_runs_as_written(tmp_path):
    commands = readme_session()
    assert any(c.startswith("segcore evaluate") for c in commands)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
    out = tmp_path / "tryout"
    assert (out / "ct_0001.nii.gz").exists() and (out / "eval" / "metrics.csv").exists()
    # Everything lands in one folder that git ignores, never loose in the repository root.
    assert [p.name for p in tmp_path.iterdir()] == ["tryout"]
    assert "tryout/" in (README.parent / ".gitignore").read_text().splitlines()
    # The label converted to .seg.nrrd is scored against its source: conversion must be exact (Dice 1).
    with open(out / "eval" / "summary.csv") as stream:
        dice = [row for row in csv.DictReader(stream) if row["metric"] == "dice"]
    assert [float(row["mean"]) for row in dice] == [1.0]
