"""`segcore evaluate` on awkward inputs: an image given as a label map, a case empty in both files, labels that
miss the files, a prediction on another extent of the lattice, segment names from either file, and the plots
for one case and for a cohort."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SegCore.io import read_image, write_image, write_segmentation
from SegCore.io.segmentation import Segment
from SegCore.metrics import compare_label_maps, evaluate
from SegCore.metrics.definitions import METRICS_BY_KEY
from SegCore.metrics.plots import PLOT_METRICS, figures_for
from SegCore.volume import Volume

SPACING = (0.8, 0.8, 2.0)
SHAPE = (12, 20, 20)


def segcore(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SegCore", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def write(array: np.ndarray, path: Path, origin=(0.0, 0.0, 0.0)) -> Path:
    return write_image(Volume.create(array, SPACING, origin), path)


def ball(centre, radius: float, shape=SHAPE) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = ((z - centre[0]) * 2.5) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2
    return inside.astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """The oracle: Dice from voxel counts."""
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_an_image_given_as_a_label_map_is_refused_naming_the_file(tmp_path, rng):
    label = ball((6, 10, 10), 5)
    label_path = write(label, tmp_path / "label.nii.gz")
    many_labels = np.zeros(SHAPE, np.uint16)
    many_labels.reshape(-1)[:300] = np.arange(1, 301)  # 300 one-voxel labels: a strided sample sees few of them
    images = {
        "ct.nii.gz": ((rng.normal(0, 30, SHAPE) + 300.0 * label - 1000).astype(np.int16), "negative values"),
        "mr.nrrd": ((rng.random(SHAPE) * 400).astype(np.float32), "non-integer values"),
        "mr16.nii.gz": (rng.integers(0, 4000, SHAPE).astype(np.uint16), "distinct values"),
        "many.nii.gz": (many_labels, "300 distinct values"),
    }
    assert len(np.unique(images["mr16.nii.gz"][0])) > 255  # the test image has what the check looks for
    for name, (array, sign) in images.items():
        path = write(array, tmp_path / name)
        before = path.read_bytes(), label_path.read_bytes()
        for role, args in (("prediction", ("--pred", path, "--ref", label_path)),
                           ("reference", ("--pred", label_path, "--ref", path))):
            out = tmp_path / f"report_{role}_{name}"
            result = segcore("evaluate", *args, "--out", out)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 1 and len(lines) == 1, result.stderr
            assert str(path) in lines[0] and f"the {role} looks like an image, not a label map" in lines[0]
            assert sign in lines[0] and not out.exists()
        assert (path.read_bytes(), label_path.read_bytes()) == before


def test_label_maps_with_wide_types_or_large_codes_are_scored(tmp_path):
    codes = np.zeros(SHAPE, np.uint16)  # FreeSurfer-style codes: few values, spread wide
    for code, centre in ((10, (3, 5, 5)), (49, (8, 14, 14)), (2035, (6, 5, 15))):
        codes[ball(centre, 3) == 1] = code
    whole = ball((6, 10, 10), 5).astype(np.float32) * 2  # a float label map holding whole numbers
    for array in (codes, whole):
        pred, ref = write(array, tmp_path / "pred.nii.gz"), write(array, tmp_path / "ref.nii.gz")
        rows = evaluate(pred, ref).rows
        assert [r["label"] for r in rows] == [int(v) for v in np.unique(array) if v != 0]
        assert all(r["dice"] == 1.0 for r in rows)


def test_a_case_empty_in_both_files_stays_in_the_cohort(tmp_path):
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    arrays = {}
    for case, radius in (("case1", 4.0), ("case2", 0.0), ("case3", 5.0)):
        ref = ball((6, 10, 10), radius) if radius else np.zeros(SHAPE, np.uint8)
        pred = np.roll(ref, 1, axis=2)
        write(ref, refs / f"{case}.nii.gz"), write(pred, preds / f"{case}.nrrd")
        arrays[case] = (pred.astype(bool), ref.astype(bool))
    result = segcore("evaluate", "--pred", preds, "--ref", refs, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "report" / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["case"], r["status"]) for r in rows] == [("case1", "ok"), ("case2", "both_empty"), ("case3", "ok")]
    with open(tmp_path / "report" / "summary.csv") as stream:
        summary = next(r for r in csv.DictReader(stream) if r["metric"] == "dice")
    assert int(summary["n_cases"]) == 3 and int(summary["n_both_empty"]) == 1
    expected = np.mean([dice(*arrays["case1"]), 1.0, dice(*arrays["case3"])])
    assert float(summary["mean"]) == pytest.approx(expected, abs=1e-12)
    assert "label_1            3" in result.stdout  # the printed n


def test_requested_labels_that_miss_the_files_are_noted(tmp_path):
    mask = ball((6, 10, 10), 5)
    pred, ref = write(mask * 255, tmp_path / "pred.nii.gz"), write(np.roll(mask, 1, 0) * 255, tmp_path / "ref.nii.gz")
    result = segcore("evaluate", "--pred", pred, "--ref", ref, "--labels", "1", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    notes = json.loads((tmp_path / "report" / "metrics.json").read_text())["notes"]
    assert len(notes) == 2
    assert notes[0].startswith("value 255 is in the prediction and reference of 1 case(s) but is not scored")
    assert notes[1].startswith("requested label 1 (label_1) is in neither the prediction nor the reference")
    assert all(f"note: {note}" in result.stdout for note in notes)
    (row,) = evaluate(pred, ref, labels=[1]).rows
    assert row["status"] == "both_empty" and row["dice"] == 1.0  # still the documented score, now with a note
    # Files that hold what is asked for, or a label absent from files holding only requested ones: no note.
    pred, ref = write(mask, tmp_path / "pred.nii.gz"), write(np.roll(mask, 1, 0), tmp_path / "ref.nii.gz")
    evaluation = evaluate(pred, ref, labels={1: "organ", 2: "tumour"})
    assert evaluation.notes == [] and [r["status"] for r in evaluation.rows] == ["ok", "both_empty"]


def test_a_prediction_on_another_extent_of_the_lattice_is_compared_and_noted(tmp_path):
    ref = ball((6, 10, 10), 5)
    pred = np.roll(ref, 2, axis=2)
    z, y, x = (slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(pred))
    origin = (x.start * SPACING[0], y.start * SPACING[1], z.start * SPACING[2])
    cropped = write(pred[z, y, x], tmp_path / "cropped.nii.gz", origin)
    ref_path = write(ref, tmp_path / "ref.nii.gz")
    evaluation = evaluate(cropped, ref_path)
    expected = compare_label_maps(pred, ref, read_image(ref_path).grid.spacing_xyz_mm)  # NIfTI: float32 spacing
    assert [r["dice"] for r in evaluation.rows] == pytest.approx([e["dice"] for e in expected], abs=1e-12)
    assert [r["hd95_mm"] for r in evaluation.rows] == pytest.approx([e["hd95_mm"] for e in expected], abs=1e-12)
    (note,) = evaluation.notes
    assert "another extent of the reference's voxel lattice" in note and "without resampling" in note
    assert evaluate(write(pred, tmp_path / "full.nii.gz"), ref_path).notes == []  # same grid: nothing to say


def test_segment_names_come_from_the_reference_then_the_prediction(tmp_path):
    label = write(ball((6, 10, 10), 5), tmp_path / "label.nii.gz")
    result = segcore("convert", label, tmp_path / "label.seg.nrrd", "--labels", "--names", "1=pancreas")
    assert result.returncode == 0, result.stderr
    for pred, ref in (("label.seg.nrrd", "label.nii.gz"), ("label.nii.gz", "label.seg.nrrd")):
        result = segcore("evaluate", "--pred", pred, "--ref", ref, cwd=tmp_path)
        assert result.returncode == 0 and "pancreas" in result.stdout and "label_1" not in result.stdout
    # Both files name the label: the reference's name is used.
    organ = Volume.create(ball((6, 10, 10), 5), SPACING)
    write_segmentation(organ, [Segment("liver", 1, (1.0, 0.0, 0.0))], tmp_path / "ref.seg.nrrd")
    write_segmentation(organ, [Segment("organ", 1, (0.0, 1.0, 0.0))], tmp_path / "pred.seg.nrrd")
    rows = evaluate(tmp_path / "pred.seg.nrrd", tmp_path / "ref.seg.nrrd").rows
    assert [(r["label_name"], r["dice"]) for r in rows] == [("liver", 1.0)]


def bar_heights(axes) -> list[float]:
    return [patch.get_height() for patch in axes.patches]


def test_plots_show_bars_for_one_case_and_boxes_with_points_for_a_cohort(tmp_path):
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    for case, shift in (("case1", 1), ("case2", 2), ("case3", 3)):
        ref = ball((6, 10, 7), 4)
        ref[ball((6, 10, 15), 3) == 1] = 2
        write(ref, refs / f"{case}.nii.gz"), write(np.roll(ref, shift, axis=2), preds / f"{case}.nii.gz")
    single = evaluate(preds / "case1.nii.gz", refs / "case1.nii.gz").rows
    (name, figure), = figures_for(single).items()
    assert name == "metrics.png" and len(figure.axes) == len(PLOT_METRICS)
    for axes, key in zip(figure.axes, PLOT_METRICS, strict=True):
        assert axes.get_ylabel().startswith(METRICS_BY_KEY[key].title)
        assert axes.get_ylabel().endswith(f"({METRICS_BY_KEY[key].unit})") == bool(METRICS_BY_KEY[key].unit)
        assert bar_heights(axes) == pytest.approx([r[key] for r in single])  # one bar per label: its value
    cohort = evaluate(preds, refs).rows
    figures = figures_for(cohort)
    assert list(figures) == ["boxplots.png", "cases_dice.png", "cases_hd95_mm.png"]
    for axes, key in zip(figures["boxplots.png"].axes, PLOT_METRICS, strict=True):
        points = np.concatenate([c.get_offsets()[:, 1] for c in axes.collections])
        assert sorted(points) == pytest.approx(sorted(r[key] for r in cohort))  # every case is a point
    cases = figures["cases_hd95_mm.png"].axes
    assert [a.get_title() for a in cases] == ["label_1", "label_2"] and cases[0].get_xlabel() == "case"
    assert bar_heights(cases[0]) == pytest.approx([r["hd95_mm"] for r in cohort if r["label"] == 1])
    # A metric undefined in every case (the relative volume difference without a reference) gets no panel.
    for case in ("case1", "case2", "case3"):
        write(np.zeros(SHAPE, np.uint8), tmp_path / "empty_refs" / f"{case}.nii.gz")
    empty_refs = evaluate(preds, tmp_path / "empty_refs", labels=[1]).rows
    assert {r["status"] for r in empty_refs} == {"reference_empty"}
    titles = [a.get_ylabel() for a in figures_for(empty_refs)["boxplots.png"].axes]
    assert len(titles) == len(PLOT_METRICS) - 1 and not any(t.startswith("Relative volume") for t in titles)
