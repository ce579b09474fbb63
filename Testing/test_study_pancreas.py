"""The pancreas study (RSTN): its preset against the study's numbers, the 4-fold split, the protocol's stages, what
the modes S, I and J change, the study's loss and fusions, and fold 0 of the protocol run on a phantom.

The oracles are the study's own numbers and rules, written here by hand from OrganSegRSTN_PyTorch (run.sh,
training.py, model.py, utils.py, coarse_fusion.py, coarse2fine_testing.py), never read back from SegCore.
"""

from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest
import torch

from SegCore.datasets import load_case, open_dataset, pancreas_folds
from SegCore.errors import SegCoreError
from SegCore.inference.coarse_to_fine import coarse_to_fine, fusion_masks, keep_large_components
from SegCore.losses import build_loss
from SegCore.models import MODELS, build_model
from SegCore.protocol.stages import check_protocol, select_stages, train_plan
from SegCore.studies import get_study
from SegCore.training.components import split_cases, split_from_kind
from SegCore.training.config import resolve_plan
from SegCore.training.optim import parameter_groups
from SegCore.training.rstn import forward_loss

STUDY = get_study("pancreas")
PLANES = {"X": "coronal", "Y": "sagittal", "Z": "axial"}  # init.py: X cuts the DICOM rows, Y the columns


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from SegCore.phantoms import write_phantom_dataset

    return write_phantom_dataset("pancreas", tmp_path_factory.mktemp("pancreas") / "NIH", cases=4, seed=0)


def stage(name: str):
    return next(s for s in STUDY.protocol if s.name == name)


# --- the preset -----------------------------------------------------------------------------------------------
def test_preset_resolves_with_the_study_numbers(phantom):
    plan = resolve_plan({"data": {"root": str(phantom)}}, flags={"study": "pancreas"})
    assert plan["data"]["layout"] == "pancreas" and plan["split"] == {**plan["split"], "kind": "pancreas", "folds": 4}
    window = plan["preprocessing"][-1]
    assert (window["name"], window["hu_min"], window["hu_max"], window["out"]) == ("ct_window", -100, 240, [0, 1])
    arguments = plan["model"]["arguments"]
    assert plan["model"]["name"] == "rstn" and arguments["slices"] == 3 and arguments["width_multiplier"] == 1
    assert (arguments["margin"], arguments["random_margin_prob"], arguments["random_margin_max"]) == (20, 0.5, 40)
    # Data.py: the whole slice, 3 of them, each with its own label
    assert plan["sampler"] == {**plan["sampler"], "kind": "stack25d", "k": 3, "size_yx": None, "labels": "stack"}
    optim = plan["optim"]
    assert (optim["name"], optim["lr"], optim["momentum"], optim["weight_decay"]) == ("sgd", 1e-5, 0.99, 5e-4)
    assert plan["training"]["batch_size"] == 1 and plan["training"]["clip_grad_norm"] is None
    c2f = plan["inference"]["coarse_to_fine"]
    assert (c2f["max_rounds"], c2f["convergence_dice"], c2f["thresholds"]) == (10, 0.99, [0.90, 0.95, 0.98, 0.99])
    # training.py's four SGD groups, built here from the module names: coarse weights at lr with weight decay,
    # coarse biases at 2 lr without, saliency + fine weights at 10 lr with, their biases at 20 lr without
    with torch.device("meta"):
        model = build_model("rstn", **arguments)
    expected = {}
    for name, _ in model.named_parameters():
        fine = not name.startswith("coarse_model.")
        bias = name.endswith(".bias")
        expected[name] = (1e-5 * (10 if fine else 1) * (2 if bias else 1), 0.0 if bias else 5e-4)
    got = {name: (group["lr"], group["weight_decay"]) for group in parameter_groups(model, optim)
           for name in group["names"]}
    assert got.keys() == expected.keys()
    for name, (lr, decay) in expected.items():
        assert math.isclose(got[name][0], lr, rel_tol=1e-12) and got[name][1] == decay, name
    assert not any("upscore" in name for name in got)  # the bilinear upsampling is not trained (as the study)


def test_stack_labels_follow_the_network(phantom):
    """stack25d's labels: every slice's for the RSTN (one map per slice), the centre slice's for a 2D U-Net."""
    config = {"data": {"root": str(phantom)}}
    unet = {**config, "model": {"name": "unet2d", "arguments": {}}, "sampler": {"kind": "stack25d", "size_yx": None}}
    assert resolve_plan(unet, flags={"study": "pancreas"}, overrides=["sampler.labels=auto"])["sampler"]["labels"] \
        == "centre"
    with pytest.raises(SegCoreError, match="labels 'stack' does not suit unet2d"):
        resolve_plan(unet, flags={"study": "pancreas"})
    with pytest.raises(SegCoreError, match="labels 'centre' does not suit rstn"):
        resolve_plan(config, flags={"study": "pancreas"}, overrides=["sampler.labels=centre"])


def test_stage_plans_set_plane_mode_epochs_and_initialisation(phantom, tmp_path):
    run = tmp_path / "RUN"
    epochs = {"S": 2, "I": 6, "J": 8}  # run.sh TRAINING_EPOCH_S / _I / _J
    for plane, view in PLANES.items():
        for mode in "SIJ":
            plan = train_plan(STUDY, stage(f"fold1-{plane}-{mode}"), data=phantom, out=run, tiny=False, overrides=[])
            assert plan["split"]["fold"] == 1 and plan["sampler"]["axis"] == view
            assert plan["model"]["arguments"]["training_mode"] == mode and plan["training"]["epochs"] == epochs[mode]
            previous = {"S": None, "I": f"fold1-{plane}-S", "J": f"fold1-{plane}-I"}[mode]
            init = plan["training"]["init"]
            assert init == (None if previous is None else str((run / previous / "best.pt").absolute()))
            assert plan["training"]["freeze"] == (["saliency1", "saliency2"] if mode == "S" else [])
            schedule = plan["schedule"]
            if mode == "J":  # training.py: lr x 0.5 after every 2 epochs of J (run.sh LR_DECAY_EPOCH_J_STEP=2)
                assert (schedule["name"], schedule["step_epochs"], schedule["gamma"]) == ("step", 2, 0.5)
            else:
                assert schedule["name"] == "constant"


def test_protocol_has_four_folds_of_nine_trainings_and_two_tests():
    check_protocol(STUDY)
    assert len(STUDY.protocol) == 4 * 11
    for fold in range(4):
        stages = select_stages(STUDY.protocol, fold)
        assert all(s.fold == fold for s in stages)
        names = [s.name for s in stages]
        assert names[:9] == [f"fold{fold}-{p}-{m}" for p in "XYZ" for m in "SIJ"]
        assert names[9:] == [f"fold{fold}-coarse2fine", f"fold{fold}-oracle"]
        assert all(s.models == tuple(f"fold{fold}-{p}-J" for p in "XYZ") for s in stages[9:])
        assert stages[10].plan == {"oracle": True}
    with pytest.raises(SegCoreError, match="no fold 4"):
        select_stages(STUDY.protocol, 4)


# --- the split ------------------------------------------------------------------------------------------------
def test_pancreas_folds_are_the_study_blocks_whatever_the_order():
    ids = [f"PANCREAS_{n:04d}" for n in range(1, 83)]
    blocks = [(1, 20), (21, 40), (41, 61), (62, 82)]  # README: the test folds of Fold #0 .. #3
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    first = pancreas_folds(ids, 4)
    assert pancreas_folds(shuffled, 4) == first == pancreas_folds(ids, 4)
    for fold, (low, high) in enumerate(blocks):
        numbers = [int(case[-4:]) for case in first[fold]["val"]]
        assert numbers == list(range(low, high + 1))
        assert sorted(first[fold]["train"] + first[fold]["val"]) == ids and not set(first[fold]["train"]) & set(
            first[fold]["val"])


def test_split_on_a_small_phantom(phantom):
    dataset = open_dataset(phantom)
    held_out = []
    for fold in range(4):  # 4 cases: one case per test fold, in case-number order
        train, val = split_cases(dataset, {**STUDY.preset["split"], "fold": fold})
        assert [c.case_id for c in val] == [f"PANCREAS_{fold + 1:04d}"] and len(train) == 3
        held_out += [c.case_id for c in val]
    assert held_out == sorted(c.case_id for c in dataset.cases)
    with pytest.raises(SegCoreError, match="fold 4 does not exist"):
        split_cases(dataset, {**STUDY.preset["split"], "fold": 4})
    # fewer cases than folds: one fold per case (so --fold 3 of a 3-case phantom is refused)
    folds = split_from_kind("pancreas", ["PANCREAS_0003", "PANCREAS_0001", "PANCREAS_0002"],
                            {"folds": 4, "seed": 0}, None, pancreas_folds)
    assert [f["val"] for f in folds] == [["PANCREAS_0001"], ["PANCREAS_0002"], ["PANCREAS_0003"]]


# --- the modes and the loss -------------------------------------------------------------------------------------
def square_stack(n=2, size=(40, 36), rows=(15, 21), cols=(10, 17)) -> torch.Tensor:
    label = torch.zeros(n, 3, *size, dtype=torch.long)
    label[:, :, rows[0]:rows[1], cols[0]:cols[1]] = 1
    return label


def test_modes_of_the_stage_plans_change_what_the_fine_stage_sees(phantom, tmp_path):
    """S: the fine stage sees the plain image (no gradient of the fine output reaches the coarse FCN); I and J: it
    sees image x saliency(coarse) (it does). J takes its box from the coarse mask, I from the label."""
    torch.manual_seed(0)
    image, label = torch.rand(2, 3, 40, 36), square_stack()
    coarse_grad, boxes = {}, {}
    for mode in "SIJ":
        plan = train_plan(STUDY, stage(f"fold0-Z-{mode}"), data=phantom, out=tmp_path, tiny=True, overrides=[])
        model = build_model("rstn", **{**plan["model"]["arguments"], "dropout": 0.0, "margin": 3,
                                       "random_margin_prob": 0.0})
        assert model.training_mode == mode
        with torch.no_grad():
            model.saliency2.weight.normal_(std=0.1)  # as after the first I step: the saliency follows the map
            model.coarse_model.score_fr.bias.fill_(20.0)  # the coarse mask covers the whole image
        out = model(image, label.float())  # no mode given: the stage's
        out["fine"].sum().backward()
        coarse_grad[mode] = sum(float(p.grad.abs().sum()) for p in model.coarse_model.parameters()
                                if p.grad is not None)
        boxes[mode] = out["box"].tolist()
    assert coarse_grad["S"] == 0 and coarse_grad["I"] > 0 and coarse_grad["J"] > 0
    label_box = [15 - 3, 21 + 3, 10 - 3, 17 + 3]
    assert boxes["S"] == boxes["I"] == [label_box] * 2 and boxes["J"] == [[0, 40, 0, 36]] * 2


def study_dsc_loss(prob: np.ndarray, target: np.ndarray) -> float:
    """model.py DSC_loss: per item over all its maps, (2 sum(pg) + 1e-6) / (sum(p + g) + 1e-6), 1 - mean."""
    p, g = prob.reshape(len(prob), -1), target.reshape(len(target), -1).astype(np.float64)
    dsc = (2 * (p * g).sum(1) + 1e-6) / ((p + g).sum(1) + 1e-6)
    return 1 - dsc.sum() / len(prob)


def test_training_step_is_the_study_loss():
    torch.manual_seed(0)
    model = build_model("rstn", **{**MODELS["rstn"].small, "training_mode": "I", "dropout": 0.0,
                                   "random_margin_prob": 0.0})
    loss_fn = build_loss(STUDY.preset["loss"]["name"], **STUDY.preset["loss"]["arguments"])
    image, label = torch.rand(2, 3, 40, 36), square_stack()
    label[1, 0] = 0  # the slices of a stack differ
    value = forward_loss(model, image, label, loss_fn)
    with torch.no_grad():
        out = model(image, label.float())
    coarse, fine = (torch.sigmoid(out[k].double()).numpy() for k in ("coarse_logits", "fine_logits"))
    expected = study_dsc_loss(coarse, label.numpy()) / 3 + 2 * study_dsc_loss(fine, label.numpy()) / 3
    assert math.isclose(float(value.detach()), expected, rel_tol=1e-5)
    with pytest.raises(SegCoreError, match="one per slice"):  # a centre slice's label alone is refused
        forward_loss(model, image, label[:, 1], loss_fn)
    with pytest.raises(SegCoreError, match="mixup"):
        forward_loss(model, image, label, loss_fn, mixup=object())


# --- testing: fusions, components, inter-round thresholds --------------------------------------------------------
def test_component_filter_counts_only_seeded_components():
    mask = torch.zeros(6, 12, 12, dtype=torch.bool)
    mask[0:3, 0:3, 0:3] = True  # 27 voxels, unseeded: removed although it is the largest
    mask[4:6, 5:9, 5:8] = True  # 24 voxels, seeded: the largest seeded one
    mask[4:6, 0:2, 9:12] = True  # 12 voxels, seeded, >= 0.5 x 24: kept
    mask[0, 10, 10] = True  # 1 voxel, seeded, too small: removed
    seeds = torch.zeros_like(mask)
    seeds[5, 6, 6] = seeds[4, 0, 10] = seeds[0, 10, 10] = True
    kept = keep_large_components(mask, seeds_zyx=seeds)
    expected = torch.zeros_like(mask)
    expected[4:6, 5:9, 5:8] = expected[4:6, 0:2, 9:12] = True
    assert torch.equal(kept, expected)
    assert not keep_large_components(mask, seeds_zyx=torch.zeros_like(mask)).any()


def test_fusions_are_the_study_vote_counts():
    probs = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.6, 0.1], [0.9, 0.9, 0.9], [0.4, 0.1, 0.05]])  # 4 voxels, 3 planes
    mean = probs.mean(1).reshape(1, 1, 4)
    masks = fusion_masks(mean, 3, "coarse", filtered=False)
    total = probs.sum(1)  # coarse_fusion.py: pred_total = X + Y + Z, F1 >= 0.5, F2 >= 1.5, F3 >= 2.5
    for v, bound in ((1, 0.5), (2, 1.5), (3, 2.5)):
        assert masks[f"coarse-F{v}"].flatten().tolist() == (total >= bound).tolist()


class PlaneToy(torch.nn.Module):
    """An RSTN-like model whose coarse map and fine rounds are fixed volumes (looked up by slice index)."""

    slices = 3

    def __init__(self, coarse, fine):
        super().__init__()
        self.coarse, self.fine, self.calls = coarse, fine, 0

    @staticmethod
    def lookup(volume, x):
        return volume[x[:, :, 0, 0].round().long()]

    def forward(self, x, label=None, mode="coarse"):
        return {"coarse": self.lookup(self.coarse, x)}

    def refine(self, x, prob, mask):  # one call per round (every stack in one batch)
        self.calls += 1
        return {"fine": self.lookup(self.fine[min(self.calls, len(self.fine)) - 1], x)}


def test_masks_at_the_inter_round_thresholds():
    shape = (6, 10, 10)
    index = torch.arange(shape[0], dtype=torch.float32)[:, None, None].expand(shape).clone()

    def box(y1):
        volume = torch.zeros(shape)
        volume[1:5, 2:y1, 2:8] = 1.0
        return volume

    # nested boxes that grow, then stay: coarse rows 2..6, rounds 1, 2, 3 rows 2..7, 2..8, 2..8
    rounds = [box(8), box(9), box(9)]
    model = PlaneToy(box(7), rounds)
    result = coarse_to_fine({"axial": model}, index, max_rounds=5, batch=64, largest_component=False)
    areas = [30, 36, 42, 42]  # per-slice area (rows x 6 columns) of the coarse mask and rounds 1, 2, 3
    dice = [2 * min(a, b) / (a + b) for a, b in zip(areas, areas[1:], strict=False)]
    assert result["inter_dice"] == pytest.approx(dice) and result["rounds"] == 3
    first = {t: next(r for r, d in enumerate(dice, 1) if d >= t) for t in (0.90, 0.95, 0.98, 0.99)}
    assert first == {0.90: 1, 0.95: 3, 0.98: 3, 0.99: 3} and result["dice_at"] == first
    for t, r in first.items():
        assert torch.equal(result["extras"][f"round-at-{t:.2f}"], rounds[r - 1].bool())
    assert torch.equal(result["extras"]["coarse-axial"], box(7).bool())


# --- fold 0 of the protocol on the phantom ------------------------------------------------------------------------
# --tiny, one epoch of one step per stage and one fine round: the stages' order, plans and files, not learning
FAST = ["training.epochs=1", "training.steps_per_epoch=1", "training.checkpoint_every_steps=0",
        "inference.coarse_to_fine.max_rounds=1", "inference.batch=16"]
VARIANTS = (["coarse-coronal", "coarse-sagittal", "coarse-axial"]
            + [f"coarse-F{v}{p}" for p in ("", "P") for v in (1, 2, 3)]
            + ["round-at-0.90", "round-at-0.95", "round-at-0.98", "round-at-0.99"])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """2 small cases: 2 folds (fewer cases than the study's 4 folds); fold 0 holds out case 1."""
    from SegCore.phantoms import write_phantom_dataset

    return write_phantom_dataset("pancreas", tmp_path_factory.mktemp("small") / "NIH", cases=2, seed=1,
                                 size_zyx=(32, 32, 32))


@pytest.fixture(scope="module")
def run(small, tmp_path_factory):
    from SegCore.protocol import run_protocol

    out = tmp_path_factory.mktemp("rstn") / "RUN"
    run_protocol("pancreas", small, out, tiny=True, fold=0, overrides=FAST, device="cpu")
    return out


def test_fold0_trains_nine_stages_in_order_and_tests_them(run, small):
    phantom = small
    from SegCore.protocol import read_status
    from SegCore.training.run_folder import RunFolder

    status = read_status(run)
    rows = {row["name"]: row["state"] for row in status["stages"]}
    assert all(rows[s.name] == "finished" for s in select_stages(STUDY.protocol, 0))
    assert rows["fold1-X-S"] == "pending"
    for plane, view in PLANES.items():
        for mode in "SIJ":
            folder = run / f"fold0-{plane}-{mode}"
            plan = RunFolder(folder).read_plan()
            assert plan["model"]["arguments"]["training_mode"] == mode and plan["sampler"]["axis"] == view
            log = (folder / "train.log").read_text(encoding="utf-8")
            if mode != "S":  # I starts from S's best.pt, J from I's
                previous = "S" if mode == "I" else "I"
                assert f"initialised from {(run / f'fold0-{plane}-{previous}' / 'best.pt').absolute()}" in log
    # the held-out case of fold 0 is case 1; every prediction lies on its grid exactly
    from SegCore.io import read_label

    (case,) = [c for c in open_dataset(phantom).cases if c.case_id == "PANCREAS_0001"]
    image, reference = load_case(case)
    test = run / "fold0-coarse2fine"
    for variant in ["predictions"] + [f"predictions-{name}" for name in VARIANTS]:
        predicted = read_label(test / variant / "PANCREAS_0001.nii.gz")
        assert predicted.grid.same_as(image.grid), variant
        assert set(np.unique(predicted.array)) <= {0, 1}
    result = json.loads((test / "test.json").read_text(encoding="utf-8"))
    assert result["cases"] == ["PANCREAS_0001"] and result["strategy"] == "coarse_to_fine"
    dice = result["dice_per_case"]["reference"]
    assert set(dice) == {f"{name}/pancreas" for name in ["model"] + VARIANTS}
    truth = reference.array > 0
    final = read_label(test / "predictions" / "PANCREAS_0001.nii.gz").array > 0
    expected = 2 * (truth & final).sum() / (truth.sum() + final.sum()) if final.any() else 0.0
    assert math.isclose(dice["model/pancreas"]["PANCREAS_0001"], expected, abs_tol=1e-6)
    (row,) = json.loads((test / "cases.json").read_text(encoding="utf-8"))
    assert row["planes"] == ["axial", "coronal", "sagittal"] and 0 <= row["rounds"] <= 2
    assert set(row["dice_at"]) == {"0.9", "0.95", "0.98", "0.99"} and len(row["inter_dice"]) == row["rounds"]
    oracle = json.loads((run / "fold0-oracle" / "test.json").read_text(encoding="utf-8"))
    assert {"model/pancreas", "oracle-axial/pancreas", "oracle-F2P/pancreas"} <= set(oracle["dice_mean"]["reference"])
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert {"coarse2fine", "oracle"} <= set(report["overall"])
    assert report["overall"]["coarse2fine"]["reference"]["round-at-0.99/pancreas"]["per_fold"].keys() == {"0"}
    # the README's end-of-stage losses ("e.g. 0.3 in S, 0.2 in I, 0.15 in J"), each stage's last epoch beside them
    readme = {"S": 0.3, "I": 0.2, "J": 0.15}
    rows = {row["stage"]: row for row in report["training"]}
    assert sorted(rows) == sorted(f"fold0-{plane}-{mode}" for plane in "XYZ" for mode in "SIJ")
    for name, row in rows.items():
        with open(run / name / "history.csv", newline="", encoding="utf-8") as handle:
            last = list(csv.DictReader(handle))[-1]
        assert row["target"] == readme[name[-1]] and row["loss"] == pytest.approx(float(last["loss"]))
        assert row["reached"] == (row["loss"] <= row["target"])
    assert "## Training losses" in (run / "report.md").read_text(encoding="utf-8")


# --- learning: one plane's S -> I -> J on the CPU, then the coarse-to-fine Predictor ---------------------------------
# The demo's short-run settings (STUDY.demo: a zoomed phantom, whole 96 x 96 planes, Dice + cross-entropy, Adam
# warmed up then decayed, no dropout, 40 px boxes; each with its reason in SegCore/studies/pancreas.py) on the
# axial plane alone, over --tiny. What they change from the preset:
SHORT_RUN = {"sampler.size_yx": None, "training.batch_size": 2, "training.epochs": 5, "loss.name": "dice_ce",
             "optim.name": "adam", "optim.lr": 5e-4, "optim.weight_decay": 0, "optim.groups": [],
             "schedule.name": "poly", "schedule.warmup_epochs": 1, "model.arguments.dropout": 0,
             "model.arguments.margin": 40, "model.arguments.random_margin_max": 80}
LEARN_STEPS = {"S": 6, "I": 3, "J": 15}  # per epoch: 30, 15 and 75 steps (the demo: 60 each, on 3 planes)


def _value(text: str):
    """A --set value as the plan reads it: JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_the_demo_states_its_short_run_settings():
    overrides = {key: _value(value) for key, _, value in (o.partition("=") for o in STUDY.demo["overrides"])}
    assert overrides.items() >= SHORT_RUN.items() and STUDY.demo["phantom"] == {"zoom": 2.0}
    assert STUDY.demo["fold"] == 0 and STUDY.demo["cases"] == 8


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """8 zoomed phantom cases (fold 0 holds out cases 1 and 2); the axial S, I and J stages trained in order."""
    from SegCore.phantoms import write_phantom_dataset
    from SegCore.training.trainer import train_from_plan

    root = tmp_path_factory.mktemp("learn")
    data = write_phantom_dataset("pancreas", root / "NIH", cases=8, seed=1, size_zyx=(16, 96, 96),
                                 **STUDY.demo["phantom"])
    for mode in "SIJ":
        plan = train_plan(STUDY, stage(f"fold0-Z-{mode}"), data=data, out=root / "RUN", tiny=True, device="cpu",
                          overrides=[*STUDY.demo["overrides"], f"training.steps_per_epoch={LEARN_STEPS[mode]}"])
        assert plan["loss"]["name"] == "dice_ce" and plan["sampler"]["size_yx"] is None
        train_from_plan(plan, root / "RUN" / f"fold0-Z-{mode}")
    return data, root / "RUN" / "fold0-Z-J" / "best.pt"


def test_axial_rstn_trained_s_i_j_beats_chance_on_held_out_cases(learned):
    """Chance: an all-foreground mask scores 2|G| / (|G| + N) (0.066 and 0.078 here), an empty one 0, a mask off
    the organ (a flipped axis, a shifted grid) about 0. Reached: 0.42 and 0.40 (training seeds 1 to 3: 0.37 to
    0.41; the all-body mask the Dice loss alone gets stuck on: 0.12)."""
    from SegCore.inference import Predictor

    data, model = learned
    predictor = Predictor([model], device="cpu")
    held_out = [c for c in open_dataset(data).cases if c.case_id in ("PANCREAS_0001", "PANCREAS_0002")]
    dice, chance = [], []
    for case in held_out:
        image, reference = load_case(case)
        prediction = predictor.predict(image)
        assert prediction.label.grid.same_as(image.grid) and prediction.info["planes"] == ["axial"]
        truth, guess = reference.array > 0, prediction.label.array > 0
        chance.append(2 * truth.sum() / (truth.sum() + truth.size))
        dice.append(2 * (truth & guess).sum() / (truth.sum() + guess.sum()))
    assert len(dice) == 2 and max(chance) < 0.12
    floor = [max(0.2, 3 * c) for c in chance]
    assert np.mean(dice) > 0.3 and all(d > f for d, f in zip(dice, floor, strict=True)), (dice, chance)
