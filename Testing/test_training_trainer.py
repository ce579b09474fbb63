"""The Trainer in-process: it learns, stops early, keeps frozen parts fixed, fine-tunes, and stops on a NaN loss."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from training_runs import NO_AUGMENTATION, assert_same_weights, config, phantom, status, weights

from SegCore.errors import SegCoreError
from SegCore.training import train_from_plan
from SegCore.training.config import resolve_plan

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom(tmp_path_factory.mktemp("la") / "la", cases=4, size=32)


def plan_for(folder, data, **sections):
    return resolve_plan(config(folder, **sections), flags={"data": str(data), "device": "cpu"})


def chance_dice(data) -> float:
    """Dice of the best trivial prediction, everything foreground: 2p / (1 + p) for the foreground fraction p
    (predicting nothing scores 0), computed from the label files themselves."""
    from SegCore.datasets import load_case, open_dataset

    labels = [load_case(case)[1].array for case in open_dataset(data).labelled_cases()]
    p = float(np.mean(np.concatenate([label.ravel() > 0 for label in labels])))
    return 2 * p / (1 + p)


def test_short_training_lowers_the_loss_and_beats_chance(tmp_path, data):
    plan = plan_for(tmp_path, data, model={"name": "unet2d", "arguments": {"features": [8, 16]}},
                    # whole-case validation scores every slice, background ones included: 30 steps an epoch
                    training={"epochs": 3, "steps_per_epoch": 30, "batch_size": 4, "workers": 0,
                              "checkpoint_every_steps": 0, "deterministic": False},
                    split={"kind": "kfold", "folds": 2, "fold": 0, "seed": 0})
    result = train_from_plan(plan, tmp_path / "run")
    history = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["history"]
    assert len(history) == 3
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    chance = chance_dice(data)
    assert chance < 0.3  # the target is small: a trivial prediction scores low
    assert result["best_metric"] > max(0.6, 2 * chance), (result["best_metric"], chance)
    assert status(tmp_path / "run")["state"] == "finished"
    for name in ("plan.json", "last.pt", "best.pt", "status.json", "history.csv", "curves.png", "train.log"):
        assert (tmp_path / "run" / name).is_file(), name


def test_early_stopping_stops_after_patience_validations(tmp_path, data):
    # min_delta 10: no Dice (at most 1) ever beats the first by that much, so the run stops after 1 + patience.
    plan = plan_for(tmp_path, data, training={"epochs": 6, "steps_per_epoch": 1, "batch_size": 2, "workers": 0,
                                              "early_stopping": {"patience": 2, "min_delta": 10.0}})
    result = train_from_plan(plan, tmp_path / "run")
    assert result["early_stopping"] is True
    assert result["epochs"] == 3
    rows = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["history"]
    assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_init_and_freeze_keep_frozen_weights_and_batchnorm_statistics(tmp_path, data):
    first = train_from_plan(plan_for(tmp_path, data), tmp_path / "a")
    assert first["epochs"] == 2
    start = weights(tmp_path / "a" / "last.pt")
    plan = resolve_plan(config(tmp_path), flags={"data": str(data), "device": "cpu",
                                                 "init": str(tmp_path / "a" / "last.pt"), "freeze": ["encoder1"]})
    train_from_plan(plan, tmp_path / "b")
    tuned = weights(tmp_path / "b" / "last.pt")
    frozen = [k for k in start if k.startswith("encoder1")]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics are among them
    assert_same_weights({k: start[k] for k in frozen}, {k: tuned[k] for k in frozen})
    trained = [k for k in start if not k.startswith("encoder1") and start[k].is_floating_point()]
    assert any(not torch.equal(start[k], tuned[k]) for k in trained)


def test_freeze_prefix_that_matches_nothing_is_refused(tmp_path, data):
    plan = resolve_plan(config(tmp_path), flags={"data": str(data), "device": "cpu", "freeze": ["encoderz"]})
    with pytest.raises(SegCoreError, match="encoderz"):
        train_from_plan(plan, tmp_path / "run")


def test_init_from_other_labels_reinitialises_the_head(tmp_path, data):
    train_from_plan(plan_for(tmp_path, data), tmp_path / "a")
    checkpoint = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    checkpoint["meta"]["labels"] = [{"value": 0, "name": "background", "colour_rgb": [0, 0, 0]},
                                    {"value": 1, "name": "x", "colour_rgb": [1, 2, 3]},
                                    {"value": 2, "name": "y", "colour_rgb": [3, 2, 1]}]
    head = [k for k, v in checkpoint["model_state"].items() if v.ndim == 4 and v.shape[0] == 2][-1]
    checkpoint["model_state"][head] = torch.zeros((3, *checkpoint["model_state"][head].shape[1:]))
    torch.save(checkpoint, tmp_path / "other.pt")
    plan = resolve_plan(config(tmp_path), flags={"data": str(data), "device": "cpu",
                                                 "init": str(tmp_path / "other.pt")})
    train_from_plan(plan, tmp_path / "b")
    log = (tmp_path / "b" / "train.log").read_text(encoding="utf-8")
    assert "fresh initialisation" in log and head in log


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data):
    plan = plan_for(tmp_path, data, optim={"name": "sgd", "lr": 1e30, "momentum": 0.0},
                    training={"epochs": 2, "steps_per_epoch": 4, "batch_size": 2, "workers": 0,
                              "checkpoint_every_steps": 1, "clip_grad_norm": 0})
    with pytest.raises(SegCoreError, match=r"(loss became (nan|inf|-inf) at epoch 1, step \d)|(NaN or Inf)") as caught:
        train_from_plan(plan, tmp_path / "run")
    run = tmp_path / "run"
    assert status(run)["state"] == "failed"
    assert str(caught.value) in status(run)["message"]
    # last.pt is the last good state: finite weights, from a step before the one that failed
    saved = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["model_state"].values() if v.is_floating_point())
    failed_step = int(re.search(r"step (\d+)", str(caught.value)).group(1))
    assert saved["epoch"] == 0 and 1 <= saved["step"] < failed_step
    assert "Traceback" in (run / "train.log").read_text(encoding="utf-8")


def test_augmentation_default_and_mixup_run(tmp_path, data):
    plan = plan_for(tmp_path, data, mixup={"mode": "input", "alpha": 0.4},
                    augmentation={k: 0.5 for k in NO_AUGMENTATION})
    result = train_from_plan(plan, tmp_path / "run")
    assert result["epochs"] == 2 and np.isfinite(result["loss"])


def test_self_distillation_adds_weighted_pseudo_labelled_cases(tmp_path, data):
    train_from_plan(plan_for(tmp_path, data), tmp_path / "teacher")
    plan = plan_for(tmp_path, data, distillation={"teacher": str(tmp_path / "teacher" / "last.pt"),
                                                  "unlabelled": str(data), "weight": 0.5, "subset": "training"},
                    training={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "workers": 0,
                              "class_weights": "inverse"})
    result = train_from_plan(plan, tmp_path / "student")
    assert result["epochs"] == 1 and np.isfinite(result["loss"])
    manifest = json.loads((tmp_path / "student" / "pseudo" / "pseudo_labels.json").read_text(encoding="utf-8"))
    assert manifest  # the teacher labelled the scans
    log = (tmp_path / "student" / "train.log").read_text(encoding="utf-8")
    assert "pseudo-labelled case(s)" in log and "weight 0.5" in log and "class weights" in log


def test_out_of_gpu_memory_names_batch_and_patch(tmp_path, data, monkeypatch):
    from SegCore.training.trainer import Trainer

    trainer = Trainer(plan_for(tmp_path, data), tmp_path / "run", resume=False, overwrite=False,
                      progress=lambda event: None, resume_command=None)
    trainer.setup()

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "_step", out_of_memory)
    with pytest.raises(SegCoreError, match=r"batch of 2 with patches of \[32, 32\].*--batch") as caught:
        trainer._run_step(iter(trainer.loader.epoch(0, info=True)), 1, 0, 0)
    assert "sampler.patch_zyx" in str(caught.value)
    trainer.run.close()
