"""Layout readers: what they find, the label conversions they apply, and the errors for broken datasets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from SegCore.datasets import (
    LabelRule,
    apply_label_rule,
    detect_layout,
    load_case,
    load_case_image,
    load_case_label,
    open_dataset,
)
from SegCore.errors import SegCoreError
from SegCore.io import read_image, read_label, write_image
from SegCore.phantoms import write_phantom_dataset
from SegCore.volume import Volume


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Small phantoms of each layout, written once; tests work on copies."""
    root = tmp_path_factory.mktemp("layouts")
    for study in ("thalamus", "atrium", "pancreas", "muscle", "decathlon"):
        write_phantom_dataset(study, root / study, cases=3, size_zyx=16, seed=11)
    return root


@pytest.fixture
def copy_of(originals, tmp_path):
    def copy(study: str):
        return shutil.copytree(originals / study, tmp_path / study)
    return copy


def error_text(call) -> str:
    with pytest.raises(SegCoreError) as caught:
        call()
    return str(caught.value)


# --- label conversions -------------------------------------------------------------------------------------------


def test_thalamus_freesurfer_10_49_become_one_label_or_left_right(copy_of):
    root = copy_of("thalamus")
    case = open_dataset(root).cases[0]
    aseg = read_label(case.label_path).array
    single = load_case_label(case).array
    assert np.array_equal(single == 1, (aseg == 10) | (aseg == 49)) and set(np.unique(single).tolist()) == {0, 1}
    left_right = open_dataset(root, left_right=True)
    assert left_right.label_names == {0: "background", 1: "left thalamus", 2: "right thalamus"}
    both = load_case_label(left_right.cases[0]).array
    assert np.array_equal(both == 1, aseg == 10) and np.array_equal(both == 2, aseg == 49)


def test_thalamus_manual_mask_channels_and_subject_lists(copy_of):
    root = copy_of("thalamus")
    dataset = open_dataset(root, channels=("FA", "T1"))
    assert dataset.channel_names == ("FA", "T1")
    case = dataset.cases[0]
    image = load_case_image(case)
    assert image.array.shape[0] == 2
    assert np.array_equal(image.array[1], read_image(root / case.case_id / "T1w_acpc_dc_restore_1.25.nii.gz").array)
    # A manual mask in the study's manual/manual.nii.gz, with FreeSurfer's 10 / 49 values.
    manual = np.zeros(image.shape_zyx, dtype=np.uint8)
    manual[2:5, 3:6, 4:6], manual[8:10, 3:6, 4:6] = 10, 49
    write_image(Volume(manual, image.grid), root / case.case_id / "manual" / "manual.nii.gz")
    # Only some subjects have manual labels (this one, the phantom's fine-tuning subjects): the others are
    # unlabelled, not an error
    manual_cases = open_dataset(root, label_source="manual").cases
    labelled = {c.case_id: c for c in manual_cases if c.label_path is not None}
    assert set(labelled) == set((root / "fine_tuning_subjects.txt").read_text().split()) | {case.case_id}
    assert int(load_case_label(labelled[case.case_id]).array.sum()) == int((manual > 0).sum())
    # Only the subjects of a list file; the phantom's lists file the last subject as 'test'.
    listed = open_dataset(root, subjects_file=root / "testing_subjects.txt")
    assert [c.case_id for c in listed.cases] == (root / "testing_subjects.txt").read_text().split()
    assert all(c.subset == "test" for c in listed.cases)


def test_atrium_255_becomes_1_and_other_values_are_refused(copy_of):
    root = copy_of("atrium")
    case = open_dataset(root).cases[0]
    raw = read_label(case.label_path)
    converted = load_case_label(case)
    assert np.array_equal(converted.array == 1, raw.array == 255)
    bad = raw.array.copy()
    bad[0, 0, 0] = 7
    write_image(raw.with_array(bad), case.label_path)
    text = error_text(lambda: load_case_label(case))
    assert "laendo.nrrd" in text and "[7]" in text


def test_label_rule_policies():
    stored = np.array([[[0, 3, 10, 49]]])
    assert apply_label_rule(stored, LabelRule(((10, 1), (49, 1)), "background")).tolist() == [[[0, 0, 1, 1]]]
    assert apply_label_rule(stored, LabelRule(((0, 0),), "foreground")).tolist() == [[[0, 1, 1, 1]]]
    assert apply_label_rule(stored, LabelRule((), "keep")).tolist() == [[[0, 3, 10, 49]]]
    with pytest.raises(SegCoreError, match=r"\[3, 49\]"):
        apply_label_rule(stored, LabelRule(((0, 0), (10, 1)), "error"), path="x.nii.gz")
    assert apply_label_rule(np.array([[[300, 0]]]), LabelRule()).dtype == np.uint16


def test_pancreas_cases_are_numbered_and_series_found(copy_of):
    dataset = open_dataset(copy_of("pancreas"))
    assert [c.case_id for c in dataset.cases] == ["PANCREAS_0001", "PANCREAS_0002", "PANCREAS_0003"]
    assert [c.metadata["case_number"] for c in dataset.cases] == [1, 2, 3]
    assert all(c.label_path.name == f"label{n:04d}.nii.gz" for n, c in enumerate(dataset.cases, 1))
    assert dataset.cases[0].images[0].path.parent.parent.name == "PANCREAS_0001"  # <study>/<series> folders


def test_generic_layout_pairs_by_name_and_groups_nnunet_channels(tmp_path):
    rng = np.random.default_rng(0)
    grid_volume = Volume.create(rng.normal(size=(6, 7, 8)).astype(np.float32), (1.0, 1.0, 2.0), (5.0, 6.0, 7.0))
    label = np.zeros((6, 7, 8), dtype=np.uint8)
    label[2:4, 2:5, 3:6] = 2
    for name in ("a", "b"):
        for channel in range(2):
            write_image(grid_volume.with_array(grid_volume.array + channel),
                        tmp_path / "images" / f"{name}_{channel:04d}.nii.gz")
        write_image(grid_volume.with_array(label), tmp_path / "labels" / f"{name}.nrrd")
    write_image(grid_volume, tmp_path / "images" / "c.mha")
    write_image(grid_volume.with_array(label), tmp_path / "labels" / "c.nii.gz")
    # nnU-Net v2 writes a dataset.json without the MSD 'training' list: still the generic layout.
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}')
    assert detect_layout(tmp_path) == "generic"
    dataset = open_dataset(tmp_path)
    assert [c.case_id for c in dataset.cases] == ["a", "b", "c"]
    image, loaded = load_case(dataset.cases[0])
    assert image.array.shape == (2, 6, 7, 8)
    assert np.allclose(image.array[1] - image.array[0], 1.0)
    assert np.array_equal(loaded.array, label)  # generic labels are used as stored


def test_muscle_single_slice_dcm_files_are_read_as_one_slice_scans(copy_of):
    root = copy_of("muscle")
    scan = open_dataset(root).cases[0]
    assert scan.metadata["form"] == "series"
    series_image = load_case_image(scan)
    first_slice = sorted(scan.image_paths[0].glob("*.dcm"))[0]  # IM000001.dcm: k = 0
    shutil.copy(first_slice, root / "Slice01.dcm")  # the study's own form: <id>.dcm + <id>.nii.gz
    flat = open_dataset(root, require_labels=False).case("Slice01")
    assert flat.metadata["form"] == "slice" and flat.image_paths[0].name == "Slice01.dcm" and flat.label_path is None
    image = load_case_image(flat)
    assert image.array.shape == (1, 1, *series_image.shape_zyx[1:])
    assert np.array_equal(image.array[0, 0], series_image.array[0, 0])
    mask = np.zeros(image.shape_zyx, dtype=np.uint8)
    mask[0, 3:9, 4:12] = 1
    write_image(Volume(mask, image.grid), root / "Slice01.nii.gz")
    _, label = load_case(open_dataset(root).case("Slice01"))
    assert np.array_equal(label.array, mask)
    (root / "Broken.dcm").write_text("not dicom")
    (root / "Broken.nii.gz").write_bytes((root / "Slice01.nii.gz").read_bytes())
    assert "Broken.dcm" in error_text(lambda: open_dataset(root))


# --- errors ------------------------------------------------------------------------------------------------------


def test_msd_dataset_json_listing_missing_files(copy_of):
    root = copy_of("decathlon")
    description = json.loads((root / "dataset.json").read_text())
    (root / description["training"][0]["label"]).unlink()
    description["training"].append({"image": "./imagesTr/BRATS_099.nii.gz", "label": "./labelsTr/BRATS_099.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(description))
    text = error_text(lambda: open_dataset(root))
    assert "dataset.json" in text and "3 file(s) that do not exist" in text
    for name in ("labelsTr/BRATS_001.nii.gz", "imagesTr/BRATS_099.nii.gz", "labelsTr/BRATS_099.nii.gz"):
        assert name in text
    assert "Fix:" in text


def test_msd_channel_count_must_match_modality(copy_of):
    root = copy_of("decathlon")
    description = json.loads((root / "dataset.json").read_text())
    description["modality"] = {"0": "FLAIR", "1": "T1w"}
    (root / "dataset.json").write_text(json.dumps(description))
    text = error_text(lambda: load_case_image(open_dataset(root).cases[0]))
    assert "BRATS_001.nii.gz" in text and "4 channel(s)" in text and "FLAIR, T1w" in text


def test_atrium_case_folder_without_laendo(copy_of):
    root = copy_of("atrium")
    label = next(root.glob("Training Set/*/laendo.nrrd"))
    label.unlink()
    text = error_text(lambda: open_dataset(root))
    assert f"{label.parent.name}/laendo.nrrd" in text and "no laendo.nrrd" in text
    unlabelled = [c for c in open_dataset(root, require_labels=False).cases if c.label_path is None]
    assert [c.case_id for c in unlabelled] == [label.parent.name]


def test_pancreas_label_without_dicom_case(copy_of):
    root = copy_of("pancreas")
    labels = root / "TCIA_pancreas_labels-02-05-2017"
    shutil.copy(labels / "label0001.nii.gz", labels / "label0007.nii.gz")
    text = error_text(lambda: open_dataset(root))
    assert "label0007.nii.gz" in text and "without a DICOM case" in text and "PANCREAS_XXXX" in text


def test_pancreas_case_without_label(copy_of):
    root = copy_of("pancreas")
    (root / "TCIA_pancreas_labels-02-05-2017" / "label0002.nii.gz").unlink()
    text = error_text(lambda: open_dataset(root))
    assert "PANCREAS_0002" in text and "without a label" in text


def test_thalamus_subject_missing_a_channel(copy_of):
    root = copy_of("thalamus")
    subject = sorted(p for p in root.iterdir() if p.is_dir())[1]
    (subject / "diffusion" / "RD.nii.gz").unlink()
    text = error_text(lambda: open_dataset(root))
    assert f"{subject.name}/diffusion/RD.nii.gz" in text and "no RD channel" in text
    assert len(open_dataset(root, channels=("FA", "MD")).cases) == 3  # fine without RD


def test_thalamus_channels_on_different_grids(copy_of):
    root = copy_of("thalamus")
    case = open_dataset(root).cases[0]
    fa_path = root / case.case_id / "diffusion" / "FA.nii.gz"
    fa = read_image(fa_path)
    shifted = Volume.create(fa.array, fa.grid.spacing_xyz_mm, np.add(fa.grid.origin_lps, [2.0, 0, 0]),
                            fa.grid.direction_lps)
    write_image(shifted, fa_path)
    text = error_text(lambda: load_case_image(case))
    assert "FA.nii.gz" in text and "evalue1.nii.gz" in text and "origins differ" in text


def test_generic_image_without_label(tmp_path):
    volume = Volume.create(np.zeros((4, 5, 6), dtype=np.float32))
    for name in ("one", "two"):
        write_image(volume, tmp_path / "images" / f"{name}.nii.gz")
    write_image(volume.with_array(np.zeros((4, 5, 6), np.uint8)), tmp_path / "labels" / "one.nii.gz")
    text = error_text(lambda: open_dataset(tmp_path))
    assert "without a label" in text and "two" in text and "labels/" in text


def test_label_on_another_grid_than_its_image(copy_of):
    root = copy_of("atrium")
    case = open_dataset(root).cases[0]
    raw = read_label(case.label_path)
    coarser = Volume.create(raw.array, np.multiply(raw.grid.spacing_xyz_mm, 1.5), raw.grid.origin_lps,
                            raw.grid.direction_lps)
    write_image(coarser, case.label_path)
    text = error_text(lambda: load_case(case))
    assert "laendo.nrrd" in text and "spacings differ" in text


def test_unrecognised_folder_lists_what_was_looked_for(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    text = error_text(lambda: detect_layout(tmp_path))
    for expected in ("dataset.json", "lgemri.nrrd", "PANCREAS_00XX", "diffusion", "<scan>.nii.gz", "images/"):
        assert expected in text
    assert "unknown dataset layout" in error_text(lambda: open_dataset(tmp_path, layout="nnunet"))
    assert "option" in error_text(lambda: open_dataset(tmp_path / "notes", layout="generic", channels=("FA",)))


# --- dataset.json fields of the wrong type; a part of a dataset passed as the dataset --------------------------------


def _inspect(*args, cwd):
    return subprocess.run([sys.executable, "-m", "SegCore", "inspect", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("segcore inspect: error: ")
    return lines[0]


def _set(data: dict, field: str, value) -> None:
    """data[field] = value for a field like 'training', 'training[1]' or 'training[0].image'."""
    *path, last = [int(p) if p.isdigit() else p for p in field.replace("]", "").replace("[", ".").split(".")]
    for key in path:
        data = data[key]
    data[last] = value


@pytest.mark.parametrize("field, value", [
    ("training", 5), ("training", {"image": "x"}), ("labels", ["background", "spleen"]), ("modality", "CT"),
    ("test", 5), ("name", 7), ("training[0]", "./imagesTr/x.nii.gz"), ("training[0].image", 5),
    ("training[1].label", None), ("test[0]", 5),
])
def test_msd_dataset_json_field_of_the_wrong_type_is_named(copy_of, field, value):
    root = copy_of("decathlon")  # 2 training cases, 1 test case
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    _set(data, field, value)
    path.write_text(json.dumps(data))
    text = error_text(lambda: open_dataset(root))
    assert text.startswith(f"{path}: dataset.json field '{field}' must be "), text
    assert json.dumps(value) in text


def test_msd_dataset_json_of_the_wrong_type_through_the_cli(copy_of, tmp_path):
    root = copy_of("decathlon")
    path = root / "dataset.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "training": 5}))
    before = path.read_bytes()
    line = _one_line_error(_inspect(root, "--out", "fp", cwd=tmp_path))
    assert f"{path}: dataset.json field 'training' must be a list, got a number 5" in line
    assert path.read_bytes() == before and not (tmp_path / "fp").exists()


@pytest.mark.parametrize("study, part", [
    ("pancreas", "Pancreas-CT"), ("pancreas", "Pancreas-CT/PANCREAS_0001"),
    ("pancreas", "TCIA_pancreas_labels-02-05-2017"), ("decathlon", "imagesTr"), ("decathlon", "labelsTr"),
    ("thalamus", None), ("muscle", None),  # None: the first subject / scan folder (random names)
])
def test_inspect_on_a_part_of_a_dataset_names_its_top_folder(copy_of, tmp_path, study, part):
    root = copy_of(study)
    part = part or sorted(p.name for p in root.iterdir() if p.is_dir())[0]
    line = _one_line_error(_inspect(f"{study}/{part}", "--out", "fp", cwd=tmp_path))
    assert f"this looks like the {part} folder of the " in line
    assert line.endswith(f"(segcore inspect {study}).")
    assert not (tmp_path / "fp").exists()


def test_inspect_on_a_subset_folder_notes_the_whole_dataset(copy_of, tmp_path):
    copy_of("atrium")
    result = _inspect("atrium/Training Set", "--out", "fp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == ("note: this looks like the Training Set folder of the LA 2018 challenge "
                                             "dataset in atrium; for the whole dataset run: segcore inspect atrium")


@pytest.mark.parametrize("study", ["thalamus", "atrium", "pancreas", "muscle", "decathlon"])
def test_a_whole_dataset_is_not_taken_for_a_part_of_another(copy_of, study):
    from SegCore.datasets.registry import enclosing_dataset

    root = copy_of(study)
    assert enclosing_dataset(root) is None
    assert enclosing_dataset(root.parent) is None
