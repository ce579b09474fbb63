"""The decathlon study on its phantoms: the preset (the author's code values), every MSD task by name with its
channels and classes, the author's loss and schedule against hand computations, the automatic plan, fold 0 of
the protocol trained and tested on a held-out case, and a fold ensemble.

The automatic plan's own properties (the same data and budget give the same plan, within the budget, monotonic
in it) are tested in Testing/test_training_autoplan.py; here: that the decathlon preset gets a deterministic one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SegCore.datasets import load_case, open_dataset
from SegCore.errors import SegCoreError
from SegCore.inference import Predictor
from SegCore.losses import build_loss
from SegCore.phantoms import DECATHLON_TASKS, write_phantom_dataset
from SegCore.protocol import run_protocol
from SegCore.studies import get_study
from SegCore.training.checkpoint import capture_rng_state, load_checkpoint, save_checkpoint
from SegCore.training.config import resolve_plan
from SegCore.transforms import Preprocessing

STUDY = get_study("decathlon")
# A short CPU run that learns the Liver phantom: the dropout variant (the Keras BatchNorm's momentum 0.01 leaves
# its running statistics near their start after 60 steps), Dice + CE at a larger step; the author's Adam epsilon
# 0.1 and log-cosh Dice move the weights too little for 60 steps. The author's settings train in
# test_the_preset_trains_a_few_steps_as_published.
FAST = ["model.arguments.regularisation=dropout", 'loss={"name": "dice_ce", "arguments": {}}',
        "training.class_weights=null", "optim.lr=3e-3", "optim.eps=1e-8", "training.epochs=6",
        "training.steps_per_epoch=10", "inference.batch=16"]
# The liver covers 6% of the phantom: an all-liver mask scores 2f / (1 + f) = 0.11, an empty one 0.
DICE_THRESHOLD = 0.3


@pytest.fixture(scope="module")
def liver(tmp_path_factory):
    """Task03_Liver phantom: 4 labelled cases and 1 test image."""
    return write_phantom_dataset("decathlon", tmp_path_factory.mktemp("msd") / "Task03_Liver", cases=5, seed=0,
                                 task="Liver")


@pytest.fixture(scope="module")
def fold0(liver, tmp_path_factory):
    """Fold 0 of the protocol (train, then test on its held-out case), --tiny with FAST."""
    out = tmp_path_factory.mktemp("run") / "decathlon"
    run_protocol("decathlon", liver, out, tiny=True, fold=0, overrides=FAST, device="cpu")
    return out


def test_the_preset_holds_the_authors_values(liver):
    plan = resolve_plan(flags={"study": "decathlon", "data": str(liver)}, tiny=True)
    arguments = plan["model"]["arguments"]
    assert plan["model"]["name"] == "unet3d" and (arguments["upsampling"], arguments["regularisation"]) == (
        "transpose", "batchnorm")  # conv3dtranspose_batchnormalization
    assert arguments["dropout"] == 0.3 and STUDY.preset["model"]["arguments"]["resize_factor"] == 2
    optim = plan["optim"]
    assert (optim["name"], optim["lr"], optim["eps"], optim["betas"]) == ("adam", 1e-4, 0.1, [0.9, 0.999])
    schedule = plan["schedule"]
    assert (schedule["name"], schedule["factor"], schedule["min_lr"], schedule["mode"]) == ("plateau", 0.1, 1e-6,
                                                                                            "max")
    assert STUDY.preset["training"]["epochs"] == 200 and plan["training"]["class_weights"] == "inverse"
    assert plan["loss"]["name"] == "log_dice"
    zscore = plan["preprocessing"][1]
    assert (zscore["name"], zscore["mode"], zscore["axis"]) == ("zscore", "slice", "z")
    assert plan["split"]["folds"] == 5 and [s.name for s in STUDY.protocol] == [
        name for k in range(5) for name in (f"fold{k}", f"test-fold{k}")]
    assert [s.fold for s in STUDY.protocol] == [k for k in range(5) for _ in range(2)]


def test_per_slice_zscore_is_the_authors_standardize(liver):
    """Each channel's each z slice to mean 0, std 1 (datagenerator.py), by hand with numpy."""
    image, _ = load_case(open_dataset(liver).labelled_cases()[0])
    out = Preprocessing([{"name": "zscore", "mode": "slice", "axis": "z"}]).apply(image).image
    raw = image.array.astype(np.float64)
    mean, std = raw.mean(axis=(2, 3), keepdims=True), raw.std(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(out, (raw - mean) / std, atol=1e-4)


def test_the_plateau_lowers_the_rate_at_the_20th_epoch_without_improvement_as_keras(liver):
    """Keras ReduceLROnPlateau(patience=20): wait += 1 per epoch without improvement, reduce when wait >= 20."""
    from SegCore.training.optim import build_optimizer, build_scheduler

    plan = resolve_plan(flags={"study": "decathlon", "data": str(liver)}, tiny=True)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), plan["optim"])
    schedule = build_scheduler(optimizer, plan["schedule"], epochs=200, steps_per_epoch=1)
    schedule.step_epoch(0.5)
    rates = []
    for _ in range(21):
        schedule.step_epoch(0.4)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[18] == pytest.approx(1e-4) and rates[19] == pytest.approx(1e-5)  # after the 19th / 20th


@pytest.mark.parametrize("task", ["BrainTumour", "Spleen"])
def test_the_loss_is_the_authors_log_cosh_dice(tmp_path, task):
    """segmentation_losses.py by hand: softmax, squared denominator, background included (several classes);
    one sigmoid channel, foreground, plain denominator (two classes); log(cosh(1 - D)), Keras epsilon 1e-7."""
    data = write_phantom_dataset("decathlon", tmp_path / task, cases=2, size_zyx=16, seed=1, task=task)
    plan = resolve_plan(flags={"study": "decathlon", "data": str(data)}, tiny=True)
    classes = len(STUDY.task(task).labels)
    assert plan["model"]["arguments"]["out_channels"] == (1 if classes == 2 else classes)
    loss = build_loss(plan["loss"]["name"], **plan["loss"]["arguments"])
    rng = np.random.default_rng(0)
    channels = plan["model"]["arguments"]["out_channels"]
    logits = rng.normal(size=(2, channels, 3, 4, 5))
    labels = rng.integers(0, classes, size=(2, 3, 4, 5))
    e = 1e-7
    if classes == 2:
        p, g = 1 / (1 + np.exp(-logits[:, 0])), (labels == 1).astype(float)
        dice = (2 * (p * g).sum() + e) / (p.sum() + g.sum() + e)
    else:
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        g = np.stack([labels == k for k in range(classes)], 1).astype(float)
        axes = (0, 2, 3, 4)
        dice = np.mean((2 * (p * g).sum(axes) + e) / ((p ** 2).sum(axes) + (g ** 2).sum(axes) + e))
    expected = np.log(np.cosh(1 - dice))
    value = loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels))
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_every_msd_task_by_name_with_its_channels_and_classes(tmp_path):
    assert set(DECATHLON_TASKS) == {task.name for task in STUDY.tasks}  # a phantom for each of the ten
    for task in STUDY.tasks:
        data = write_phantom_dataset("decathlon", tmp_path / task.folder, cases=2, size_zyx=24, seed=2,
                                     task=task.name)
        dataset = open_dataset(data)
        assert dataset.channel_names == task.channels
        values = set()
        for case in dataset.labelled_cases():
            values |= set(np.unique(load_case(case)[1].array).tolist())
        assert values == {label.value for label in task.labels}, task.name  # every class, nothing else
        plan = resolve_plan(flags={"study": "decathlon", "data": str(data)}, tiny=True)
        arguments = plan["model"]["arguments"]
        assert arguments["in_channels"] == len(task.channels), task.name
        binary = len(task.labels) == 2
        assert arguments["out_channels"] == (1 if binary else len(task.labels)), task.name
        assert plan["loss"]["arguments"]["include_background"] is not binary


def test_unknown_task_names_list_the_valid_ones():
    with pytest.raises(SegCoreError, match="BrainTumour, Heart, Liver, Hippocampus, Prostate, Lung, Pancreas, "
                                           "HepaticVessel, Spleen, Colon"):
        STUDY.task("Kidney")
    with pytest.raises(SegCoreError, match="use one of BrainTumour, .*Colon"):
        write_phantom_dataset("decathlon", "unused", task="Kidney")


def test_the_automatic_plan_of_the_preset_is_deterministic_and_follows_the_budget(liver):
    def plan(budget):
        return resolve_plan(flags={"study": "decathlon", "data": str(liver), "memory_budget": budget}, tiny=True,
                            overrides=["sampler.patch_zyx=auto", "training.batch_size=auto"])

    first, again, larger = plan(40), plan(40), plan(400)
    first.pop("versions"), again.pop("versions")
    assert first == again
    record = first["training"]["autoplan"]
    assert record["budget_mb"] == 40 and first["sampler"]["patch_zyx"] == record["patch_zyx"]
    assert first["preprocessing"][0]["spacing_xyz_mm"] == record["spacing_xyz_mm"]
    assert np.prod(larger["sampler"]["patch_zyx"]) * larger["training"]["batch_size"] >= np.prod(
        first["sampler"]["patch_zyx"]) * first["training"]["batch_size"]
    assert STUDY.preset["training"]["memory_budget_mb"] == 24576  # the author's 24 GB TITAN RTX by default


def test_the_preset_trains_a_few_steps_as_published(tmp_path):
    """The author's settings (log-cosh Dice, class weights N / (C N_j), Adam eps 0.1, BatchNorm), --tiny."""
    from SegCore.training.run_folder import RunFolder
    from SegCore.training.trainer import train_from_plan

    data = write_phantom_dataset("decathlon", tmp_path / "Task01_BrainTumour", cases=3, size_zyx=24, seed=3)
    plan = resolve_plan(flags={"study": "decathlon", "data": str(data), "device": "cpu"}, tiny=True)
    train_from_plan(plan, tmp_path / "fold0")
    history = RunFolder(tmp_path / "fold0").read_history()
    assert len(history) == 2 and all(np.isfinite(float(row["loss"])) for row in history)
    assert "class weights" in (tmp_path / "fold0" / "train.log").read_text()


def test_fold0_predicts_its_held_out_case_on_its_grid_above_chance(fold0, liver):
    [test] = json.loads((fold0 / "report.json").read_text())["tests"]
    assert test["stage"] == "test-fold0" and test["fold"] == 0
    dice = test["dice_mean"]["reference"]["model/liver"]
    assert dice > DICE_THRESHOLD, f"held-out liver Dice {dice:.3f}"
    dataset = open_dataset(liver)
    from SegCore.io import read_label

    [path] = list((fold0 / "test-fold0" / "predictions").iterdir())
    image, reference = load_case(dataset.case(path.name[: -len(".nii.gz")]))
    assert read_label(path).grid.same_as(image.grid)


def test_an_ensemble_of_two_fold_checkpoints_predicts_their_mean(fold0, liver, tmp_path):
    """`segcore predict --model RUN/fold*/best.pt`: the Predictor averages the folds' probabilities."""
    first = fold0 / "fold0" / "best.pt"
    checkpoint = load_checkpoint(first)
    generator = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for k, v in checkpoint.model_state.items()}
    second = save_checkpoint(tmp_path / "fold1" / "best.pt", model_state=state, epoch=1, step=0, best_metric=None,
                             history=[], rng_state=capture_rng_state(), meta=checkpoint.meta)
    test_image = [case for case in open_dataset(liver).cases if not case.has_label][0]
    image, _ = load_case(test_image)
    fast = {"overlap": 0.25, "batch": 32}  # fewer, batched windows: the same mean either way
    ensemble = Predictor([first, second], device="cpu", settings=fast).predict(image, probabilities=True)
    assert ensemble.label.grid.same_as(image.grid) and ensemble.probabilities.grid.same_as(image.grid)
    members = [Predictor(path, device="cpu", settings=fast).predict(image, probabilities=True).probabilities.array
               .astype(float)
               for path in (first, second)]
    np.testing.assert_allclose(ensemble.probabilities.array.astype(float), (members[0] + members[1]) / 2, atol=2e-3)
    assert not np.allclose(members[0], members[1], atol=1e-2)  # two different models
