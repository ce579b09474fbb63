"""`segcore demo` (what `make demo` runs): a phantom dataset, its fingerprint and pictures, rerunnable."""

import json
import subprocess
import sys

import numpy as np
import pytest

from SegCore.datasets import load_case, open_dataset, write_case_preview
from SegCore.datasets.preview import crossing_voxel


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
    centre = crossing_voxel(label.array, label.grid.spacing_xyz_mm)  # the same slices, without the outline
    without = matplotlib.image.imread(write_case_preview(image, None, tmp_path / "b.png", centre_zyx=centre))
    assert with_label.shape == without.shape
    # Both carry the yellow side letters; only the outline tells them apart. It is drawn in colour (tab:orange
    # for label 1) over grey image pixels (R == G == B).
    changed = np.abs(with_label - without)[..., :3].max(axis=-1) > 0.1
    red_minus_blue = lambda rgb: rgb[..., 0] - rgb[..., 2]  # noqa: E731
    assert changed.sum() > 50
    assert np.median(red_minus_blue(with_label[changed])) > 0.3
    assert np.median(np.abs(red_minus_blue(without[changed]))) < 0.05


def run_demo_dataset(tmp_path):
    from SegCore.phantoms import write_phantom_dataset

    return write_phantom_dataset("atrium", tmp_path / "la", cases=1, size_zyx=32)
