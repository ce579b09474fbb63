"""`segcore demo` (what `make demo` runs): a phantom dataset, its fingerprint and pictures, rerunnable."""

import json
import subprocess
import sys

import numpy as np
import pytest

from SegCore.datasets import load_case, open_dataset, write_case_preview


def run_demo(*args):
    return subprocess.run([sys.executable, "-m", "SegCore", "demo", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("study", ["atrium", "pancreas"])
def test_demo_writes_dataset_fingerprint_and_pictures_and_can_rerun(tmp_path, study):
    out = tmp_path / "demo"
    for _ in range(2):  # the second run replaces the demo's own dataset instead of failing on it
        result = run_demo("--study", study, "--out", str(out), "--cases", "2", "--size", "40")
        assert result.returncode == 0, result.stderr
    dataset = open_dataset(out / f"{study}-phantom")
    assert len(dataset.cases) == 2
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["num_cases"] == 2
    for picture in ("fingerprint.png", "case-preview.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "class frequency" in result.stdout and str(out / f"{study}-phantom") in result.stdout


def test_case_preview_draws_image_with_and_without_label(tmp_path):
    import matplotlib.image

    dataset = open_dataset(run_demo_dataset(tmp_path))
    image, label = load_case(next(c for c in dataset.cases if c.has_label))
    with_label = matplotlib.image.imread(write_case_preview(image, label, tmp_path / "a.png"))
    without = matplotlib.image.imread(write_case_preview(image, None, tmp_path / "b.png"))
    assert with_label.shape == without.shape
    # The outline is drawn in colour; a grey image alone has R == G == B everywhere.
    colourful = lambda rgb: np.abs(rgb[..., 0] - rgb[..., 2]).max()  # noqa: E731
    assert colourful(with_label) > 0.3 and colourful(without) < 0.05


def run_demo_dataset(tmp_path):
    from SegCore.phantoms import write_phantom_dataset

    return write_phantom_dataset("atrium", tmp_path / "la", cases=1, size=32)
