"""`segcore demo` (what `make demo` runs): phantom data, a short training, a held-out segmentation, its metrics."""

import subprocess
import sys

import numpy as np

from SegCore.datasets import load_case, open_dataset, write_case_preview
from SegCore.datasets.preview import crossing_voxel


def run_demo(*args):
    return subprocess.run([sys.executable, "-m", "SegCore", "demo", *args], capture_output=True, text=True,
                          timeout=300)


def test_demo_runs_the_protocol_segments_a_held_out_case_evaluates_and_can_rerun(tmp_path):
    import json

    import SimpleITK as sitk

    from SegCore.io import read_image, read_segmentation
    from SegCore.studies import get_study

    out = tmp_path / "demo"
    for _ in range(2):  # the second run replaces the demo's own files instead of failing on them
        result = run_demo("--out", str(out), "--cases", "3", "--size", "12", "16", "20", "--epochs", "1")
        assert result.returncode == 0, result.stderr
    # the default study's phantom, in the size asked for (x, y, z as ITK reads the file)
    image_file = next((out / "atrium-phantom").rglob("lgemri.nrrd"))
    assert sitk.ReadImage(str(image_file)).GetSize() == (20, 16, 12)
    assert "class frequency" in result.stdout
    # every stage of the study's protocol ran, and the report names the test's held-out cases
    stages = [stage.name for stage in get_study("atrium").protocol]
    assert all((out / "run" / name).is_dir() for name in stages)
    record = json.loads((out / "run" / "test" / "test.json").read_text())
    dataset = open_dataset(out / "atrium-phantom")
    held_out = next(c for c in dataset.cases if c.case_id == record["cases"][0])
    image, reference = load_case(held_out)
    # The segmentation lies on the held-out scan's own grid, in both formats, with the study's segment names.
    label = read_image(out / "segmentation.nii.gz")
    assert label.grid.same_as(image.grid) and label.array.shape == reference.array.shape
    seg, segments = read_segmentation(out / "segmentation.seg.nrrd")
    assert np.array_equal(seg.array, label.array) and [s.name for s in segments] in ([], [dataset.label_names[1]])
    # The printed Dice is the one an independent count on the written files gives.
    truth, guess = reference.array > 0, label.array > 0
    dice = 2 * np.sum(truth & guess) / max(1, truth.sum() + guess.sum())
    assert f"mean Dice {dice:.3f}" in result.stdout, result.stdout
    for picture in ("fingerprint.png", "case-preview.png", "segmentation.png", "run/segmenter/curves.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "evaluation" / "metrics.csv").exists() and (out / "run" / "report.md").exists()


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
