"""The dataset fingerprint, checked against numpy on the files as SegCore.io reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SegCore.datasets import compute_fingerprint, open_dataset, orientation_code, write_fingerprint
from SegCore.io import read_image, read_label
from SegCore.phantoms import write_phantom_dataset


@pytest.fixture(scope="module")
def brain_tumour(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprint") / "Task01_BrainTumour"
    write_phantom_dataset("decathlon", root, cases=4, size_zyx=24, seed=21, task="BrainTumour")
    return root


def _files(root):
    """(image (C, Z, Y, X), label or None, image volume) per case, straight from the files in dataset.json."""
    description = json.loads((root / "dataset.json").read_text())
    entries = [(e["image"], e["label"]) for e in description["training"]] + [(t, None) for t in description["test"]]
    cases = []
    for image_name, label_name in entries:
        image = read_image(root / image_name)
        label = read_label(root / label_name).array if label_name else None
        cases.append((image.array.astype(np.float64), label, image))
    return cases


def test_intensity_statistics_match_numpy(brain_tumour):
    fingerprint = compute_fingerprint(open_dataset(brain_tumour))
    cases = _files(brain_tumour)
    assert fingerprint.num_cases == 4 and fingerprint.num_labelled == 3
    assert fingerprint.sampling["exact"]
    for channel in range(4):
        every = np.concatenate([image[channel].ravel() for image, _, _ in cases])
        foreground = np.concatenate([image[channel][label > 0] for image, label, _ in cases if label is not None])
        for stats, values in ((fingerprint.intensity_all[channel], every),
                              (fingerprint.intensity_foreground[channel], foreground)):
            assert stats["voxels"] == values.size
            assert stats["mean"] == pytest.approx(values.mean(), rel=1e-6)
            assert stats["std"] == pytest.approx(values.std(), rel=1e-6)
            assert stats["min"] == pytest.approx(values.min()) and stats["max"] == pytest.approx(values.max())
            expected = np.percentile(values, [0.5, 50, 99.5])
            got = [stats["percentile_00_5"], stats["percentile_50_0"], stats["percentile_99_5"]]
            assert got == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-5)
        histogram = fingerprint.histograms[channel]
        # The histogram range spans the 0.1-99.9 percentiles of all and of foreground voxels.
        assert 0.99 * foreground.size <= sum(histogram["foreground"]) <= foreground.size


def test_labels_geometry_and_class_frequencies_match_numpy(brain_tumour):
    fingerprint = compute_fingerprint(open_dataset(brain_tumour))
    cases = _files(brain_tumour)
    labels = np.concatenate([label.ravel() for _, label, _ in cases if label is not None])
    counts = np.bincount(labels)
    assert fingerprint.label_values == [v for v in range(len(counts)) if counts[v]] == [0, 1, 2, 3]
    for value, fraction in fingerprint.class_fraction.items():
        assert fraction == pytest.approx(counts[int(value)] / labels.size)
    by_id = {c["case_id"]: c for c in fingerprint.cases}
    for name, (_, label, volume) in zip(sorted(by_id), cases, strict=True):
        summary = by_id[name]
        assert summary["shape_zyx"] == list(volume.shape_zyx)
        assert summary["spacing_xyz_mm"] == pytest.approx(list(volume.grid.spacing_xyz_mm))
        direction = np.ravel(volume.grid.direction_lps).tolist()
        assert summary["orientation"] == sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(direction)
        assert summary["label_values"] == ([] if label is None else np.unique(label).tolist())
    spacings = np.array([volume.grid.spacing_xyz_mm for _, _, volume in cases])
    assert fingerprint.spacing_xyz_mm["median"] == pytest.approx(np.median(spacings, axis=0).tolist())
    assert sum(fingerprint.orientations.values()) == 4


def test_orientation_codes_agree_with_simpleitk(oblique_direction):
    for direction in (np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0.0]]),
                      oblique_direction):
        expected = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(direction.flatten().tolist())
        assert orientation_code(direction) == expected


def test_sampled_percentiles_stay_close_and_moments_stay_exact(brain_tumour):
    dataset = open_dataset(brain_tumour)
    exact = compute_fingerprint(dataset)
    sampled = compute_fingerprint(dataset, max_voxels_per_case=3000, seed=5)
    assert not sampled.sampling["exact"]
    for full, part in zip(exact.intensity_all, sampled.intensity_all, strict=True):
        assert part["mean"] == pytest.approx(full["mean"]) and part["std"] == pytest.approx(full["std"])
        assert part["max"] == full["max"]
        spread = full["percentile_99_5"] - full["percentile_00_5"]
        assert abs(part["percentile_50_0"] - full["percentile_50_0"]) < 0.05 * spread


def test_fingerprint_json_and_png_are_written(brain_tumour, tmp_path):
    fingerprint = compute_fingerprint(open_dataset(brain_tumour))
    json_path, png_path = write_fingerprint(fingerprint, tmp_path / "fp")
    data = json.loads(json_path.read_text())
    assert data == json.loads(json.dumps(fingerprint.to_dict()))
    assert data["channel_names"] == ["FLAIR", "T1w", "t1gd", "T2w"] and data["layout"] == "decathlon"
    png = png_path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert sorted(p.name for p in (tmp_path / "fp").iterdir()) == ["fingerprint.json", "fingerprint.png"]


def test_fingerprint_of_an_oblique_dicom_dataset(tmp_path):
    write_phantom_dataset("pancreas", tmp_path / "nih", cases=2, size_zyx=20, seed=2)
    fingerprint = compute_fingerprint(open_dataset(tmp_path / "nih"))
    assert [c["oblique"] for c in fingerprint.cases] == [False, True]
    series = sorted((tmp_path / "nih").glob("Pancreas-CT/PANCREAS_*/*/*"))
    hu = np.concatenate([read_image(s).array.ravel() for s in series]).astype(np.float64)
    assert fingerprint.intensity_all[0]["mean"] == pytest.approx(hu.mean())
    assert fingerprint.intensity_all[0]["min"] == hu.min() <= -990


@pytest.mark.parametrize("labelled", [True, False])
def test_fingerprint_figure_has_no_empty_or_unlabelled_panels(brain_tumour, labelled):
    from SegCore.datasets import Fingerprint
    from SegCore.datasets.fingerprint_plot import plot_fingerprint

    data = compute_fingerprint(open_dataset(brain_tumour)).to_dict()
    # Sizes one voxel apart: a default tick locator would label 32.2, 32.4, ... voxels here.
    for number, case in enumerate(data["cases"]):
        case["shape_zyx"] = [32, 32 + number % 2, 33 - number % 2]
    if not labelled:
        data.update(num_labelled=0, class_fraction={}, label_values=[],
                    histograms=[dict(h, foreground=[0] * len(h["foreground"])) for h in data["histograms"]])
    figure = plot_fingerprint(Fingerprint.from_dict(data))
    figure.canvas.draw()
    titles = [axis.get_title() for axis in figure.axes]
    # spacing, size, (class frequency), one histogram per channel: FLAIR, T1w, t1gd, T2w.
    assert len(figure.axes) == 2 + labelled + 4 and ("class frequency" in titles) == labelled
    for axis in figure.axes:
        assert axis.has_data() and axis.get_xlabel() and axis.get_ylabel() and axis.get_title()
    size_axis = next(axis for axis in figure.axes if axis.get_ylabel() == "size (voxels)")
    low, high = size_axis.get_ylim()
    ticks = [t for t in size_axis.get_yticks() if low <= t <= high]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    for channel, name in enumerate(data["channel_names"]):
        axis = next(axis for axis in figure.axes if axis.get_title() == f"intensity: {name}")
        assert axis.get_xlabel() == "intensity (stored value)"  # MRI; CT would say HU
        steps = [patch for patch in axis.patches if hasattr(patch, "get_data")]
        assert len(steps) == 1 + labelled
        for patch, key in zip(steps, ["all", "foreground"], strict=False):
            counts = np.asarray(data["histograms"][channel][key], dtype=float)
            drawn = patch.get_data().values
            # Empty bins are gaps, not a line at some floor; the others are the counts themselves.
            assert np.array_equal(np.isnan(drawn), counts == 0)
            assert np.array_equal(drawn[counts > 0], counts[counts > 0])
        assert axis.get_ylim()[0] < 1  # a bin of one voxel shows
