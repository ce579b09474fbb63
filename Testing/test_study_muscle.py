"""The muscle study end to end on its phantom: the preset (README values), HU from DICOM, the protocol
(supervised, then one self-distillation round whose pseudo-labels are inference's own predictions), a Dice
clearly above chance, and the prediction mapped exactly back onto the DICOM grid (a brute-force oracle through
physical coordinates)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SegCore.datasets import load_case, load_case_image, open_dataset
from SegCore.inference import Predictor
from SegCore.io import write_dicom_series
from SegCore.phantoms import write_phantom_dataset
from SegCore.protocol import run_protocol
from SegCore.studies import get_study
from SegCore.training.checkpoint import load_checkpoint
from SegCore.training.config import resolve_plan
from SegCore.training.distill import teacher_forward
from SegCore.training.run_folder import RunFolder
from SegCore.training.trainer import train_from_plan
from SegCore.transforms import Preprocessing
from SegCore.volume import Volume

LABELLED, UNLABELLED = 4, 1
# SegResNet (the README's other --model_choice) at a small width learns the phantom in 40 steps; the preset's
# augmentation and mixup regularise a run that short below any useful Dice, so this run turns them off.
FAST = ['model={"name": "segresnet", "arguments": {"init_filters": 4, "num_groups": 2, "blocks_down": [1, 1, 1], '
        '"blocks_up": [1, 1]}}', "optim.lr=3e-3", "training.epochs=4", "training.steps_per_epoch=10",
        "training.batch_size=8", "mixup.mode=off", "augmentation.flip_p=0", "augmentation.rotate_p=0",
        "augmentation.elastic_p=0"]
# The phantom's muscle covers 6% of a slice: an all-muscle mask scores 2f / (1 + f) = 0.116, an empty one 0.
DICE_THRESHOLD = 0.3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A muscle phantom: DICOM series with NIfTI labels, and one scan without a label."""
    return write_phantom_dataset("muscle", tmp_path_factory.mktemp("muscle") / "sarco", cases=LABELLED,
                                 unlabelled=UNLABELLED, seed=0)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """The whole protocol, --tiny with FAST."""
    out = tmp_path_factory.mktemp("run") / "muscle"
    run_protocol("muscle", data, out, tiny=True, overrides=FAST, device="cpu")
    return out


def test_the_preset_holds_the_readme_values(data):
    plan = resolve_plan(flags={"study": "muscle", "data": str(data)})
    assert plan["data"]["layout"] == "muscle" and plan["data"]["options"] == {"require_labels": False}
    assert plan["model"]["name"] == "efficientnet_unet" and plan["model"]["arguments"]["variant"] == "b3"
    assert plan["training"]["batch_size"] == 8 and plan["training"]["even_batch"] is True  # "must be even"
    assert plan["optim"]["lr"] == 1e-4 and plan["training"]["epochs"] == 50
    assert plan["training"]["early_stopping"]["patience"] == 7
    assert plan["mixup"] == {"mode": "manifold", "alpha": 1.0, "layers": None}
    augmentation = plan["augmentation"]
    assert augmentation["flip_p"] == augmentation["rotate_p"] == augmentation["elastic_p"] == 0.5  # --aug_prob
    assert plan["sampler"]["kind"] == "slice2d" and plan["preprocessing"][1]["name"] == "ct_window"
    assert [s.name for s in get_study("muscle").protocol] == ["supervised", "test-supervised", "distill-1",
                                                             "test-distill-1"]
    # 2.5D (--channel_3d): three adjacent slices as the channels of one CT image
    stacked = resolve_plan(flags={"study": "muscle", "data": str(data)}, overrides=["sampler.kind=stack25d"])
    assert stacked["sampler"]["k"] == 3 and stacked["model"]["arguments"]["in_channels"] == 3
    with pytest.raises(Exception, match="odd"):  # the even-batch rule reaches the loader
        from SegCore.training.data import build_loader

        build_loader([object()], None, batch_size=7, steps_per_epoch=1, seed=0, even_batch=True)


def test_the_reader_gives_hounsfield_units_through_the_rescale_tags(tmp_path):
    """Values spanning more than int16 are stored with a shifted Rescale Intercept; the reader must undo it."""
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 40000, size=(2, 12, 10)).astype(np.float32)
    volume = Volume.create(hu, spacing_xyz_mm=(0.8, 0.8, 3.0), origin_lps=(-150.0, -120.0, -70.0))
    write_dicom_series(volume, tmp_path / "scanA", modality="CT")
    from SegCore.io import write_image

    write_image(Volume(np.ones((2, 12, 10), np.uint8), volume.grid), tmp_path / "scanA.nii.gz")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(sorted((tmp_path / "scanA").iterdir())[0]))
    reader.ReadImageInformation()
    assert float(reader.GetMetaData("0028|1052")) != 0.0  # the stored values are not the HU
    [case] = open_dataset(tmp_path, "muscle").cases
    np.testing.assert_array_equal(load_case_image(case).array[0], hu)


def test_the_preset_trains_a_few_steps_as_published(data, tmp_path):
    """The supervised stage's plan as it stands (EfficientNet-B3 U-Net, manifold mixup, elastic), --tiny."""
    plan = resolve_plan(flags={"study": "muscle", "data": str(data), "device": "cpu"}, tiny=True)
    result = train_from_plan(plan, tmp_path / "supervised")
    history = RunFolder(tmp_path / "supervised").read_history()
    assert len(history) == 2 and all(np.isfinite(float(row["loss"])) for row in history)
    assert (tmp_path / "supervised" / "best.pt").is_file() and (tmp_path / "supervised" / "last.pt").is_file()
    assert result["epochs"] == 2


def test_the_protocol_distils_with_inference_pseudo_labels_and_beats_chance(run, data):
    stages = json.loads((run / "report.json").read_text())["tests"]
    assert [t["stage"] for t in stages] == ["test-supervised", "test-distill-1"]
    supervised = stages[0]["dice_mean"]["reference"]["model/muscle"]
    assert supervised > DICE_THRESHOLD, f"held-out Dice {supervised:.3f}"
    manifest = json.loads((run / "distill-1" / "pseudo" / "pseudo_labels.json").read_text())
    dataset = open_dataset(data, "muscle", require_labels=False)
    [scan] = [case for case in dataset.cases if not case.has_label]
    assert [row["case_id"] for row in manifest["cases"]] == [scan.case_id]
    assert manifest["teacher"] == str((run / "supervised" / "best.pt").absolute())
    # the pseudo-label is exactly what inference predicts with the teacher, on the scan's own grid
    image = load_case_image(scan)
    expected = Predictor(run / "supervised" / "best.pt", device="cpu").predict(image).label
    from SegCore.io import read_label

    pseudo = read_label(run / "distill-1" / "pseudo" / manifest["cases"][0]["label"])
    assert pseudo.grid.same_as(image.grid)
    np.testing.assert_array_equal(pseudo.array, expected.array)
    assert expected.array.any()  # the teacher does label muscle
    # the held-out predictions of both models are on their DICOM grids
    for stage in ("test-supervised", "test-distill-1"):
        for path in (run / stage / "predictions").iterdir():
            case = dataset.case(path.name[: -len(".nii.gz")])
            assert read_label(path).grid.same_as(load_case_image(case).grid)


def test_the_prediction_lands_exactly_on_the_dicom_grid(run, data):
    """Oracle: the network slice by slice on the preprocessed scan (teacher_forward), then each DICOM voxel takes
    the label of the preprocessed voxel at its own physical position (no preprocessing inverse involved)."""
    checkpoint = load_checkpoint(run / "supervised" / "best.pt")
    model = checkpoint.build_model("cpu")
    predictor = Predictor(run / "supervised" / "best.pt", device="cpu")
    preprocessing = Preprocessing(checkpoint.meta["preprocessing"])
    cases = open_dataset(data, "muscle", require_labels=False).labelled_cases()
    rotated = 0
    for case in cases:
        image, _ = load_case(case)
        direction = np.asarray(image.grid.direction_lps)
        rotated += not np.allclose(np.abs(direction), np.round(np.abs(direction)))
        prepared = preprocessing.apply(image)
        with torch.no_grad():
            on_network_grid = teacher_forward(model, prepared.image, spatial_dims=2, sampler=checkpoint.meta["sampler"])
        zyx = np.indices(image.array.shape[1:]).reshape(3, -1)
        lps = image.grid.index_to_lps(zyx[::-1].T)
        ijk = prepared.grid.lps_to_index(lps)
        assert np.abs(ijk - np.round(ijk)).max() < 1e-3  # reorient and pad move whole voxels
        i, j, k = np.round(ijk).astype(int).T
        brute = on_network_grid[k, j, i].reshape(image.array.shape[1:])
        prediction = predictor.predict(image).label
        assert prediction.grid.same_as(image.grid)
        np.testing.assert_array_equal(prediction.array, brute)
    assert 0 < rotated < len(cases)  # oblique (the phantom's odd-numbered) scans and straight ones
