"""Phantoms of every study: written to disk in the study's layout, recognised, and read back through SegCore.io
with the right channels, label values and geometry (anisotropic, non-zero origin, rotated on odd cases)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SegCore.datasets import detect_layout, load_case, open_dataset
from SegCore.io import list_dicom_series, read_image, read_label
from SegCore.phantoms import write_phantom_dataset

CASES = 3
# (study, task) -> (layout name, channels, label values after conversion, modality)
STUDIES = {
    ("thalamus", None): ("thalamus", ("evalue1", "FA", "RD", "MD", "T1"), {0, 1}),
    ("atrium", None): ("atrium", ("LGE-MRI",), {0, 1}),
    ("muscle", None): ("muscle", ("CT",), {0, 1}),
    ("pancreas", None): ("pancreas", ("CT",), {0, 1}),
    ("decathlon", "BrainTumour"): ("decathlon", ("FLAIR", "T1w", "t1gd", "T2w"), {0, 1, 2, 3}),
    ("decathlon", "Heart"): ("decathlon", ("MRI",), {0, 1}),
    ("decathlon", "Prostate"): ("decathlon", ("T2", "ADC"), {0, 1, 2}),
    ("decathlon", "Spleen"): ("decathlon", ("CT",), {0, 1}),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Each study's phantom written once: (study, task) -> dataset folder."""
    root = tmp_path_factory.mktemp("phantoms")
    folders = {}
    for study, task in STUDIES:
        folder = root / f"{study}-{task or 'default'}"
        write_phantom_dataset(study, folder, cases=CASES, seed=7, task=task or "BrainTumour")
        folders[(study, task)] = folder
    return folders


def _rotation_degrees(direction: np.ndarray) -> float:
    """Angle of the smallest rotation taking the nearest axis-aligned frame to `direction`."""
    cosine = np.clip((np.trace(np.abs(direction)) - 1) / 2, -1, 1)
    return float(np.degrees(np.arccos(cosine)))


@pytest.mark.parametrize("key", list(STUDIES), ids=[f"{s}-{t or ''}" for s, t in STUDIES])
def test_phantom_is_read_back_in_its_layout(written, key):
    layout, channels, label_values = STUDIES[key]
    folder = written[key]
    assert detect_layout(folder) == layout
    dataset = open_dataset(folder)
    assert len(dataset.cases) == CASES
    assert dataset.channel_names == channels
    rotated = 0
    for case in dataset.cases:
        image, label = load_case(case)
        assert image.array.shape[0] == len(channels)
        assert image.array.dtype == np.float32 and np.isfinite(image.array).all()
        assert np.abs(np.asarray(image.grid.origin_lps)).max() > 50.0  # the table is never at the scanner origin
        spacing = np.asarray(image.grid.spacing_xyz_mm)
        assert spacing.max() / spacing.min() > 1.01  # anisotropic voxels
        rotated += _rotation_degrees(np.asarray(image.grid.direction_lps)) > 5.0
        if label is None:  # MSD imagesTs
            assert case.subset == "test" and layout == "decathlon"
            continue
        assert label.grid.same_as(image.grid)
        assert set(np.unique(label.array).tolist()) == label_values  # every label present, nothing else
    assert rotated == CASES // 2  # odd-numbered cases are acquired obliquely


def test_atrium_files_hold_0_255_masks_and_uint8_images(written):
    dataset = open_dataset(written[("atrium", None)])
    assert {case.subset for case in dataset.cases} == {"training", "test"}
    case = dataset.cases[0]
    raw = read_label(case.label_path)
    assert set(np.unique(raw.array).tolist()) == {0, 255}
    image = read_image(case.image_paths[0])
    assert image.array.dtype == np.uint8 and image.array.max() > 150
    _, converted = load_case(case)
    assert np.array_equal(converted.array == 1, raw.array == 255)


def test_pancreas_is_a_tcia_style_dicom_tree_in_hounsfield_units(written):
    root = written[("pancreas", None)]
    series_folders = sorted(p.parent for p in root.glob("Pancreas-CT/PANCREAS_*/*/*/*.dcm"))
    assert len(set(series_folders)) == CASES
    folder = series_folders[0]
    assert folder.parent.parent.name == "PANCREAS_0001"
    (series,) = list_dicom_series(folder)
    assert series.modality == "CT" and series.series_uid == folder.name  # <study uid>/<series uid> folders
    assert sorted(p.name for p in (root / "TCIA_pancreas_labels-02-05-2017").iterdir()) == [
        f"label{i:04d}.nii.gz" for i in range(1, CASES + 1)]
    image = read_image(folder)
    assert image.array.min() <= -990  # air
    body = image.array[image.array > -500]
    assert -150 < np.median(body) < 100  # fat / soft tissue
    assert image.array.max() > 500  # bone


def test_muscle_scans_are_dicom_series_with_a_nifti_label_of_the_same_name(written):
    root = written[("muscle", None)]
    labels = sorted(p.name[:-7] for p in root.glob("*.nii.gz"))
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert labels == folders and len(folders) == CASES
    (series,) = list_dicom_series(root / folders[0])
    assert series.modality == "CT"


def test_thalamus_has_one_file_per_channel_and_freesurfer_labels(written):
    root = written[("thalamus", None)]
    dataset = open_dataset(root)
    subject = dataset.cases[0]
    files = {p.relative_to(root / subject.case_id).as_posix() for p in (root / subject.case_id).rglob("*.nii.gz")}
    fine_tuning = (root / "fine_tuning_subjects.txt").read_text().split()
    assert files == {"diffusion/evalue1.nii.gz", "diffusion/FA.nii.gz", "diffusion/RD.nii.gz", "diffusion/MD.nii.gz",
                     "T1w_acpc_dc_restore_1.25.nii.gz", "FreeSurfer/aparc+aseg_1.25_nearest.nii.gz",
                     "STAPLE/STAPLE_th0.5_thalamus_1.25.nii.gz", "FSL/T1_first_all_fast_firstseg_1.25_nearest.nii.gz",
                     "QuickNAT/segmentation_acpc_dc_restore_1.25_nearest.nii.gz"} | (
        {"manual/manual.nii.gz"} if subject.case_id in fine_tuning else set())
    aseg = read_label(subject.label_path)
    values = set(np.unique(aseg.array).tolist())
    assert {10, 49, 2, 41, 3, 42} <= values  # thalami, white matter, cortex
    image, label = load_case(subject)
    assert np.array_equal(label.array == 1, np.isin(aseg.array, [10, 49]))
    # Left thalamus (10) lies at larger LPS x (patient's left) than the right one (49).
    xs = {v: image.grid.index_to_lps(np.argwhere(aseg.array == v)[:, ::-1])[:, 0].mean() for v in (10, 49)}
    assert xs[10] > xs[49]
    fa, md = image.array[1], image.array[3]
    white = aseg.array == 2
    assert 0.45 < np.median(fa[white]) < 0.8 and 0.5e-3 < np.median(md[white]) < 1.0e-3
    lists = {p.name: p.read_text().split() for p in root.glob("*_subjects.txt")}
    assert sorted(lists["training_subjects.txt"] + lists["testing_subjects.txt"]) == [c.case_id for c in dataset.cases]


def test_decathlon_dataset_json_follows_the_msd_format(written):
    root = written[("decathlon", "BrainTumour")]
    description = json.loads((root / "dataset.json").read_text())
    assert description["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert description["labels"]["3"] == "enhancing tumour"
    assert description["numTraining"] + description["numTest"] == CASES
    first = description["training"][0]
    assert first == {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
    image = read_image(root / first["image"])
    assert image.array.shape[0] == 4  # one 4D NIfTI holds the four modalities
    assert description["test"] == [f"./imagesTs/BRATS_{CASES:03d}.nii.gz"]


@pytest.mark.parametrize("study", ["atrium", "pancreas"])
def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path, study):
    arrays = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_phantom_dataset(study, tmp_path / name, cases=2, size_zyx=24, seed=seed)
        dataset = open_dataset(tmp_path / name)
        arrays[name] = [(c.case_id, *load_case(c)) for c in dataset.cases]
    for (id_a, image_a, label_a), (id_b, image_b, label_b) in zip(arrays["a"], arrays["b"], strict=True):
        assert id_a == id_b
        assert np.array_equal(image_a.array, image_b.array) and np.array_equal(label_a.array, label_b.array)
        assert image_a.grid.same_as(image_b.grid)
    assert not np.array_equal(arrays["a"][0][1].array, arrays["c"][0][1].array)


def test_size_option_scales_the_default_shape_and_takes_z_y_x(tmp_path):
    write_phantom_dataset("atrium", tmp_path / "n", cases=1, size_zyx=24)
    (case,) = open_dataset(tmp_path / "n").cases
    assert read_image(case.image_paths[0]).shape_zyx == (16, 24, 24)  # default 32x48x48 scaled to 24
    write_phantom_dataset("atrium", tmp_path / "zyx", cases=1, size_zyx=(12, 20, 28))
    (case,) = open_dataset(tmp_path / "zyx").cases
    assert read_image(case.image_paths[0]).shape_zyx == (12, 20, 28)
