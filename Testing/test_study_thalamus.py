"""The thalamus study end to end (SegCore/studies/thalamus.py): the preset against the study's code, its clip and
min-max, the frozen encoder of the fine-tuning, the label sources, the fusion of the three views, a channel
subset, and the whole published protocol (three views, test, fine-tuning, test) on the study's phantom.

Oracles: the study's own code (MICLab-Unicamp/thalamus_benchmark_diffusion) written out again in numpy and torch
(its normalisation, its slicing and averaging in inference.py, its freezing rule), the numbers it printed, and the
phantom's true thalami.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_models import tiny_checkpoint

from SegCore.datasets import load_case, load_case_image, load_case_label, open_dataset
from SegCore.errors import SegCoreError
from SegCore.inference import Predictor
from SegCore.io import read_image, read_label
from SegCore.models import build_model
from SegCore.phantoms import write_phantom_dataset
from SegCore.studies import get_study
from SegCore.studies.thalamus import FROZEN, LAYOUT, PRESET, PROTOCOL, VIEWS
from SegCore.training.checkpoint import load_checkpoint
from SegCore.training.components import frozen_names
from SegCore.training.config import resolve_plan
from SegCore.transforms import Preprocessing
from SegCore.volume import Volume

CASES = 8  # 6 training subjects (3 with manual labels), 2 test subjects
AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
# --tiny, a little longer and wider: 60 steps per stage (about 0.7 Dice on the held-out cases here, seeded; 50
# give 0.63) and one validation at the end, whose best.pt the tests use
SHORT_TRAINING = ["training.epochs=6", "training.steps_per_epoch=10", "training.batch_size=8", "training.accumulate=1",
                  "training.validate_every=6", "training.checkpoint_every_steps=0", "optim.lr=0.01",
                  "sampler.size_yx=[48,48]", "model.arguments.features=[8,16,32]"]
ENCODER = ("encoder1", "encoder2", "encoder3", "encoder4", "bottleneck")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset("thalamus", tmp_path_factory.mktemp("thalamus") / "HCP", cases=CASES, seed=0)


@pytest.fixture(scope="module")
def protocol_run(phantom, tmp_path_factory) -> Path:
    from SegCore.protocol import run_protocol

    run = tmp_path_factory.mktemp("thalamus-run") / "run"
    run_protocol("thalamus", phantom, run, tiny=True, overrides=SHORT_TRAINING, device="cpu")
    return run


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _stage(name: str):
    return {stage.name: stage for stage in PROTOCOL}[name]


def _study_normalisation(channel: np.ndarray) -> np.ndarray:
    """code: inference.py, line by line: values above the 99.98th percentile set to it, then min-max to [0, 1]."""
    image = channel.astype(np.float64)
    image[image > np.percentile(image, 99.98)] = np.percentile(image, 99.98)
    image = image * ((1 - 0) / (image.max() - image.min()))
    return image - image.min() + 0


# ---- the preset ------------------------------------------------------------------------------------------------
def test_the_preset_resolves_with_the_studys_published_values(phantom):
    plan = resolve_plan({"study": "thalamus"}, inspect_data=False)  # the published sizes (the phantom is smaller)
    assert plan["data"]["layout"] == "thalamus" and plan["model"]["name"] == "unet2d"
    assert plan["data"]["options"] == {"label_source": "staple", "subjects_file": "training_subjects.txt"}
    assert plan["preprocessing"][:2] == [
        {"name": "percentile_minmax", "lower": 0.0, "upper": 99.98, "channels": None},
        {"name": "crop_box", "start_zyx": [0, 15, 0], "stop_zyx": [144, 159, 144]}]  # [:144, 15:159, :144]
    assert plan["sampler"] == {"kind": "slice2d", "axis": "axial", "size_yx": [64, 64],
                               "foreground_fraction": 50 / 60}  # Patch_size 64, N_PATCHES [10, 50]
    assert plan["optim"]["name"] == "adam" and plan["optim"]["lr"] == 1e-3
    training = plan["training"]
    assert (training["batch_size"], training["accumulate"], training["epochs"]) == (256, 2, 2000)
    assert training["best_metric"] == "val_loss" and training["early_stopping"]["patience"] == 20
    assert {k: plan["schedule"][k] for k in ("name", "factor", "patience", "mode")} == {
        "name": "plateau", "factor": 0.1, "patience": 10, "mode": "min"}  # torch's ReduceLROnPlateau defaults
    assert plan["loss"] == {"name": "dice", "arguments": {"include_background": False}}
    assert plan["augmentation"]["rotate_deg"] == [[-5.0, 5.0], [0.0, 0.0], [0.0, 0.0]]
    assert plan["inference"]["tta"] is False and plan["inference"]["fusion"] == "mean"
    # the README's network summary: 7,763,650 parameters with 5 input channels and 2 output channels
    net = build_model("unet2d", **plan["model"]["arguments"])
    assert plan["model"]["arguments"]["in_channels"] == 5 and sum(p.numel() for p in net.parameters()) == 7_763_650
    # on the phantom (--tiny: its slices are smaller than 64): the five channels from the data, in study order
    tiny = resolve_plan({"study": "thalamus"}, flags={"data": str(phantom), "study": "thalamus"}, tiny=True)
    assert tiny["data"]["channels"] == list(get_study("thalamus").channel_names)
    # the protocol: the views in the study's order (2 - Training.ipynb), their test, the fine-tuning, its test,
    # then the study's test subjects (5 - Save inference (test set _20 subjects).ipynb)
    assert [s.name for s in PROTOCOL] == ["coronal", "sagittal", "axial", "test", "finetune-coronal",
                                          "finetune-sagittal", "finetune-axial", "test-finetuned", "test-subjects"]
    assert _stage("sagittal").plan["augmentation"]["flip_p"] == 0.0  # "Disabling sagital flip aug"


def test_the_percentile_clip_and_min_max_are_the_studys(phantom):
    rng = np.random.default_rng(0)
    image = rng.lognormal(0.0, 1.0, size=(2, 12, 14, 16)).astype(np.float32)
    image[:, :3] = 0.0  # outside the brain, as the diffusion maps are
    image[0, 5, 5, 5], image[1, 7, 2, 9] = 1e4, 3e3  # spikes, what the clip is for
    out = Preprocessing([PRESET["preprocessing"][0]]).apply(Volume.create(image)).image
    expected = np.stack([_study_normalisation(channel) for channel in image])
    assert out.dtype == np.float32 and np.allclose(out, expected, rtol=0, atol=1e-6)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0) and out[0, 5, 5, 5] == pytest.approx(1.0)


def test_fine_tuning_freezes_exactly_the_encoder():
    net = build_model("unet2d", in_channels=2, out_channels=2)  # the study's evalue1 + T1 network
    names = [name for name, _ in net.named_parameters()]
    sizes = dict((name, p.numel()) for name, p in net.named_parameters())
    assert frozen_names(net, FROZEN) == {n for n in names if n.split(".")[0] in ENCODER}
    # code: 4 - Finetuning.ipynb freezes model.parameters() 1..31 (`if i < 32`): those 30 tensors and upconv4's
    # weight, printed as "2.5 M Trainable params, 5.2 M Non-trainable params"
    study = set(names[:31])
    assert study == frozen_names(net, FROZEN) | {"upconv4.weight"}
    frozen = sum(sizes[n] for n in study)
    assert round(frozen / 1e6, 1) == 5.2 and round((sum(sizes.values()) - frozen) / 1e6, 1) == 2.5
    for view in VIEWS:
        plan = _stage(f"finetune-{view}").plan
        assert plan["training"]["init"] == f"@{view}" and plan["training"]["freeze"] == FROZEN
        assert plan["sampler"]["axis"] == view and plan["data"]["options"]["label_source"] == "manual"


# ---- the dataset and its label sources -------------------------------------------------------------------------
def test_manual_labels_exist_for_the_fine_tuning_subjects_and_the_other_sources_differ_a_little(phantom):
    truth = {case.case_id: load_case_label(case).array for case in open_dataset(phantom).cases}  # FreeSurfer
    fine_tuning = (phantom / LAYOUT.fine_tuning_list).read_text().split()
    training = (phantom / LAYOUT.training_list).read_text().split()
    assert fine_tuning and set(fine_tuning) < set(training)
    manual = open_dataset(phantom, label_source="manual")  # the other subjects are unlabelled, not an error
    assert len(manual.cases) == CASES and [c.case_id for c in manual.labelled_cases()] == sorted(fine_tuning)
    for case in manual.labelled_cases():
        assert np.array_equal(load_case_label(case).array, truth[case.case_id])
    for name in ("staple", "fsl", "quicknat"):
        cases = open_dataset(phantom, label_source=name).cases
        assert all(0.6 < _dice(load_case_label(c).array, truth[c.case_id]) < 0.99 for c in cases), name
    stored = read_label(phantom / training[0] / LAYOUT.label_source("quicknat").file).array
    assert set(np.unique(stored).tolist()) == {0, 7, 25}
    # a list named relative to the dataset folder; subjects none of whom has a manual label are refused
    assert [c.case_id for c in open_dataset(phantom, subjects_file=LAYOUT.training_list).cases] == training
    with pytest.raises(SegCoreError, match="none of the 2 subject"):
        open_dataset(phantom, label_source="manual", subjects_file=LAYOUT.testing_list)
    with pytest.raises(SegCoreError, match="no subject list"):
        open_dataset(phantom, subjects_file="missing_subjects.txt")


# ---- inference: three views, averaged ----------------------------------------------------------------------------
def _study_input(image_czyx: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """code: inference.py: each channel normalised, the volume cropped to [:144, 15:159, :144]; padded here to
    multiples of 16 (centred, as SegCore's pad step; the 144 cube needs none). Returns the padded (C, Z, Y, X)
    float32 volume and where the crop lies in it."""
    volume = np.stack([_study_normalisation(c) for c in image_czyx])[:, :144, 15:159, :144]
    sides = volume.shape[1:]
    before = [(math.ceil(n / 16) * 16 - n) // 2 for n in sides]
    padded = np.zeros((volume.shape[0], *[math.ceil(n / 16) * 16 for n in sides]), dtype=np.float32)
    inside = tuple(slice(b, b + n) for b, n in zip(before, sides, strict=True))
    padded[(slice(None),) + inside] = volume
    return padded, inside


def _thalamus_probability(net, volume_czyx: np.ndarray, view: str) -> torch.Tensor:
    """One view's network on its own slices (code: inference.py transposes the view's axis to the batch)."""
    slices = torch.from_numpy(volume_czyx).movedim(AXIS[view] + 1, 0)  # (slices, C, H, W)
    return torch.softmax(net(slices), 1)[:, 1].movedim(0, AXIS[view])


def _oracle_labels(image_czyx: np.ndarray, nets: dict) -> tuple[np.ndarray, np.ndarray]:
    """code: inference.py: the views' softmax averaged, thalamus where the mean >= 0.5, pasted into zeros of the
    full size. Returns the label (Z, Y, X) uint8 and the mean thalamus probability."""
    volume, inside = _study_input(image_czyx)
    with torch.no_grad():
        mean = sum(_thalamus_probability(net, volume, view) for view, net in nets.items()) / len(nets)
    probability = np.zeros(image_czyx.shape[1:], dtype=np.float32)
    probability[:144, 15:159, :144] = mean.numpy()[inside]
    return (probability >= 0.5).astype(np.uint8), probability


def test_each_view_segments_its_own_slices_and_the_views_are_averaged(phantom, tmp_path):
    image = load_case_image(open_dataset(phantom).cases[0])
    volume, _ = _study_input(image.array)

    def balanced(view: str):
        """Seeded weights whose head is made steep and centred on this case: about half of the voxels thalamus,
        in every view, with probabilities far from 0.5."""
        def weights(net):
            logits = net(torch.from_numpy(volume).movedim(AXIS[view] + 1, 0))
            difference = (logits[:, 1] - logits[:, 0]).flatten()
            scale = 5.0 / float(difference.std())
            net.conv.weight.mul_(scale)
            net.conv.bias.mul_(scale)
            net.conv.bias[1] -= scale * float(difference.median())
        return weights

    paths = {view: tiny_checkpoint(tmp_path / f"{view}.pt", "unet2d", plan={"study": "thalamus",
                                                                            "sampler": {"axis": view}},
                                   study="thalamus", size_zyx=(40, 48, 40), seed=i, weights=balanced(view))
             for i, view in enumerate(VIEWS)}
    predictor = Predictor(list(paths.values()), device="cpu")
    assert [member.settings["views"] for member in predictor.members] == [[view] for view in VIEWS]
    prediction = predictor.predict(image, probabilities=True)
    assert prediction.label.grid == image.grid and prediction.info["models"] == 3
    nets = {view: load_checkpoint(path).build_model("cpu") for view, path in paths.items()}
    expected, probability = _oracle_labels(image.array, nets)
    assert 0.1 < expected.mean() < 0.9  # both classes, often: the comparison means something
    clear = np.abs(probability - 0.5) > 1e-3  # away from the threshold (float16 probabilities, float rounding)
    assert np.array_equal(prediction.label.array[clear], expected[clear]) and clear.mean() > 0.95
    assert np.allclose(prediction.probabilities.array[1], probability, atol=2e-3)
    # every member on axial slices gives another answer: the test sees the members' own axes
    axial = Predictor(list(paths.values()), device="cpu", settings={"views": ["axial"]}).predict(image)
    assert (axial.label.array != prediction.label.array).mean() > 0.05


def test_a_channel_subset_trains_and_its_checkpoint_names_its_channels(phantom, tmp_path):
    from SegCore.protocol.stages import train_plan
    from SegCore.training.trainer import train_from_plan

    plan = train_plan(get_study("thalamus"), _stage("axial"), data=phantom, out=tmp_path, tiny=True,
                      overrides=['data.options.channels=["FA","T1"]', "training.epochs=1"])
    assert plan["data"]["channels"] == ["FA", "T1"] and plan["model"]["arguments"]["in_channels"] == 2
    train_from_plan(plan, tmp_path / "axial")
    assert load_checkpoint(tmp_path / "axial" / "best.pt").meta["channels"] == ["FA", "T1"]
    case = open_dataset(phantom, channels=["FA", "T1"]).cases[0]
    image = load_case_image(case)
    predictor = Predictor([tmp_path / "axial" / "best.pt"], device="cpu")
    assert predictor.channels == ["FA", "T1"] and predictor.predict(image).label.grid == image.grid
    with pytest.raises(SegCoreError, match="channel"):  # all five channels: not what this model takes
        predictor.predict(load_case_image(open_dataset(phantom).case(case.case_id)))


# ---- the protocol ------------------------------------------------------------------------------------------------
def test_the_protocol_trains_the_views_fuses_them_and_beats_chance_against_every_reference(protocol_run, phantom):
    report = json.loads((protocol_run / "report.json").read_text())
    tests = {record["stage"]: record for record in report["tests"]}
    assert sorted(tests) == ["test", "test-finetuned", "test-subjects"]
    assert sorted(tests["test"]["dice_mean"]) == ["freesurfer", "fsl", "quicknat", "staple"]
    assert sorted(tests["test-finetuned"]["dice_mean"]) == ["freesurfer", "fsl", "manual", "quicknat", "staple"]
    assert sorted(tests["test-subjects"]["dice_mean"]) == ["freesurfer", "fsl", "quicknat", "staple"]
    held_out = tests["test"]["cases"]
    assert held_out and set(held_out) < set((phantom / LAYOUT.training_list).read_text().split())
    # chance: an empty mask scores 0, an all-thalamus mask 2|G| / (|V| + |G|)
    truth = [read_label(protocol_run / "test" / "references" / "freesurfer" / f"{c}.nii.gz").array for c in held_out]
    chance = max(2.0 * (t > 0).sum() / (t.size + (t > 0).sum()) for t in truth)
    assert chance < 0.02
    for stage, reference in (("test", "freesurfer"), ("test", "staple"), ("test-finetuned", "manual"),
                             ("test-subjects", "staple")):
        assert tests[stage]["dice_mean"][reference]["model/thalamus"] > 0.5, (stage, reference)
    # the three views' mean, on each case's own grid
    rows = json.loads((protocol_run / "test" / "cases.json").read_text())
    assert {(row["strategy"], row["models"]) for row in rows} == {("slices", 3)}
    for case_id in held_out:
        image, _ = load_case(open_dataset(phantom).case(case_id))
        predicted = read_image(protocol_run / "test" / "predictions" / f"{case_id}.nii.gz")
        assert predicted.grid.mismatch(image.grid) is None and set(np.unique(predicted.array)) <= {0, 1}


def test_the_studys_test_subjects_are_never_trained_on_and_are_segmented_last(protocol_run, phantom):
    testing = sorted((phantom / LAYOUT.testing_list).read_text().split())
    report = {r["stage"]: r for r in json.loads((protocol_run / "report.json").read_text())["tests"]}
    assert len(testing) == 2 and sorted(report["test-subjects"]["cases"]) == testing
    assert sorted(p.name.split(".")[0] for p in (protocol_run / "test-subjects" / "predictions").iterdir()) == testing
    for stage in (*VIEWS, *(f"finetune-{view}" for view in VIEWS)):  # the cases each run prepared to train on
        prepared = {entry.name for entry in (protocol_run / stage / "cache").glob("*/*") if entry.is_dir()}
        assert prepared and not prepared & set(testing), stage


def test_fine_tuning_starts_from_each_view_keeps_its_encoder_and_learns_the_manual_labels(protocol_run, phantom):
    from SegCore.training.run_folder import RunFolder

    fine_tuning = set((phantom / LAYOUT.fine_tuning_list).read_text().split())
    report = {r["stage"]: r for r in json.loads((protocol_run / "report.json").read_text())["tests"]}
    assert set(report["test-finetuned"]["cases"]) <= fine_tuning
    for view in VIEWS:
        plan = RunFolder(protocol_run / f"finetune-{view}").read_plan()
        assert plan["data"]["options"]["label_source"] == "manual" and plan["sampler"]["axis"] == view
        assert plan["training"]["init"] == str((protocol_run / view / "best.pt").absolute())
        before = load_checkpoint(protocol_run / view / "best.pt").model_state
        after = load_checkpoint(protocol_run / f"finetune-{view}" / "best.pt").model_state
        encoder = [key for key in before if key.split(".")[0] in ENCODER]
        assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # weights and BN statistics
        assert any(not torch.equal(before[k], after[k]) for k in before if k not in encoder)
