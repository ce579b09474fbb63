"""The atrium study end to end (SegCore/studies/atrium.py): its preset and protocol against the original's README
and code (bragancas/VNet_PyTorch-Atriaseg2018), the locator trained on exactly what `locate_box` feeds it, and
both stages trained on a phantom, then located, cropped, segmented and pasted back onto the input grid.

The phantom: 7 cases of 32 x 64 x 64 voxels (~3 mm in-plane), 6 in the Training Set and 1 in the Testing Set
(in no fold), 3 folds, so fold 0 holds 2 cases out; the locator
sees them at 16 x 16 x 16. Oracles: the README's and code's numbers, torch's F.interpolate, SimpleITK's reading of
the written NRRD, and the study's own alpha loop and focal formula rewritten here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from SegCore.datasets import load_case, open_dataset
from SegCore.studies import get_study
from SegCore.training.config import resolve_plan

SHAPE_ZYX = (32, 64, 64)
# --tiny, then what a phantom of SHAPE_ZYX needs: no pad to 96x640x640 (the locator then sees 16x16x16, so
# locate_box pads nothing), a crop of half the phantom, a margin of two locator voxels in-plane (the study's 30
# voxels are 7.5), one epoch of 120 steps per stage without step checkpoints (they cost more than the steps)
MARGIN = 8
OVERRIDES = ["preprocessing.0.min_zyx=[32,64,64]", "sampler.size_zyx=[16,32,32]",
             f"inference.locator.margin_voxels={MARGIN}", "split.folds=3",
             "training.epochs=1", "training.steps_per_epoch=120", "training.checkpoint_every_steps=0",
             "optim.lr=0.003"]
STAGES = {stage.name: stage for stage in get_study("atrium").protocol}


def study_alphas(epochs: int) -> list[float]:
    """The hybrid loss weight per epoch as the study's train.py loop sets it (alpha -= 0.01 after each epoch
    while alpha - 0.1 >= 0.05)."""
    alpha, out = 1.0, []
    for _ in range(epochs):
        out.append(alpha)
        if alpha - 0.1 >= 0.05:
            alpha -= 0.01
    return out


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from SegCore.phantoms import write_phantom_dataset

    return write_phantom_dataset("atrium", tmp_path_factory.mktemp("atrium") / "LA", cases=7, size_zyx=SHAPE_ZYX,
                                 seed=0)


@pytest.fixture(scope="module")
def run(phantom, tmp_path_factory):
    """The whole protocol (locator, segmenter, test) on the phantom, seeded: RUN folder."""
    from SegCore.protocol import run_protocol

    out = tmp_path_factory.mktemp("atrium-run") / "RUN"
    torch.manual_seed(0)
    run_protocol("atrium", phantom, out, tiny=True, overrides=OVERRIDES, device="cpu")
    return out


def stage_plan(name: str, phantom, tmp_path, overrides=OVERRIDES) -> dict:
    from SegCore.protocol.stages import train_plan

    return train_plan(get_study("atrium"), STAGES[name], data=phantom, out=tmp_path, tiny=True,
                      overrides=list(overrides))


def held_out(plan: dict) -> list:
    from SegCore.training.components import split_cases

    return split_cases(open_dataset(plan["data"]["root"]), plan["split"])[1]


# --- the preset and protocol hold the study's numbers ---------------------------------------------------------
def test_preset_and_locator_stage_hold_the_published_values(phantom):
    from SegCore.datasets import kfold_splits
    from SegCore.transforms import Preprocessing
    from SegCore.volume import Grid

    plan = resolve_plan(flags={"study": "atrium", "data": str(phantom)})
    locator = resolve_plan({**STAGES["locator"].plan, "study": "atrium"}, flags={"data": str(phantom)})
    assert plan["data"]["layout"] == "atrium" and [s.name for s in STAGES.values()] == ["locator", "segmenter", "test"]
    arguments = plan["model"]["arguments"]
    assert plan["model"]["name"] == "vnet" and arguments["out_channels"] == 1  # code: one sigmoid output
    assert (arguments["num_layers"], arguments["base_channels"], arguments["attention"]) == (1, 8, False)
    assert (arguments["bam_reduction"], arguments["bam_dilation"]) == (4, 4)  # code: BAM reduction 4, dilation 4
    # README table: segmenter Adam 0.0003, patience 7, factor 0.8, batch 3; locator 0.0001, 15, 0.85, batch 5
    assert plan["optim"]["name"] == "adam" and plan["optim"]["lr"] == 0.0003
    assert (plan["schedule"]["name"], plan["schedule"]["patience"], plan["schedule"]["factor"]) == ("plateau", 7, 0.8)
    assert (plan["training"]["batch_size"], plan["training"]["epochs"]) == (3, 200)
    assert plan["training"]["steps_per_epoch"] * 3 == 480  # code: 80 images x 6 per epoch
    assert locator["optim"]["lr"] == 0.0001 and locator["training"]["batch_size"] == 5
    assert (locator["schedule"]["patience"], locator["schedule"]["factor"]) == (15, 0.85)
    assert locator["sampler"] == {"kind": "whole"} and plan["sampler"]["size_zyx"] == [96, 144, 224]
    assert plan["loss"]["name"] == "dice"
    loc = plan["inference"]["locator"]
    assert (loc["scale_zyx"], loc["margin_voxels"], loc["crop_zyx"]) == ([0.5, 0.25, 0.25], 30, "auto")
    from SegCore.inference.settings import inference_settings
    from SegCore.training.checkpoint import checkpoint_meta

    # the crop the Predictor enlarges the box to is the crop the segmenter trains on: 96x144x224 (README)
    assert inference_settings(checkpoint_meta(plan))["locator"]["crop_zyx"] == [96, 144, 224]
    aug = plan["augmentation"]
    assert aug["rotate_deg"] == [[-3.0, 3.0], [0.0, 0.0], [0.0, 0.0]]  # README: -3..3 degrees about depth
    assert aug["translate_vox"] == [[0.0, 0.0], [-5.0, 5.0], [-5.0, 5.0]] and aug["flip_axes"] == [1]
    assert aug["noise_std"] == [0.0, 1.0] and aug["elastic_p"] == 0.0  # elastic: supported, not used
    assert math.isclose(aug["flip_p"] + aug["noise_p"] + aug["rotate_p"] + aug["translate_p"], 5 / 6)
    # README: 80 / 20 of the 100 images
    folds = kfold_splits([f"c{i:03d}" for i in range(100)], plan["split"]["folds"], seed=plan["split"]["seed"])
    assert (len(folds[0]["train"]), len(folds[0]["val"])) == (80, 20)
    # README: 88x576x576 or 88x640x640 at 0.625 mm, zero-padded to 96x640x640; the locator sees 48x160x160, a
    # multiple of the V-Net's 16, so locate_box pads nothing there either
    for side in (576, 640):
        grid = Grid((88, side, side), (0.625, 0.625, 0.625), (0.0, 0.0, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
        assert Preprocessing(plan["preprocessing"]).output_grid(grid).shape_zyx == (96, 640, 640)
        assert Preprocessing(locator["preprocessing"]).output_grid(grid).shape_zyx == (48, 160, 160)


def test_the_labelled_testing_set_never_joins_a_fold_and_a_test_stage_can_score_it(phantom):
    from SegCore.studies.atrium import LAYOUT
    from SegCore.training.components import labelled_test_cases, split_cases

    def folders(subset: str) -> set[str]:  # the oracle: the layout's folders on disk
        return {entry.name for entry in (phantom / subset).iterdir() if (entry / LAYOUT.label_file).is_file()}

    training, testing = folders(LAYOUT.training_folder), folders(LAYOUT.test_folder)
    assert training and testing and not training & testing
    dataset = open_dataset(phantom)
    for fold in range(3):
        train, val = split_cases(dataset, {"kind": "kfold", "folds": 3, "fold": fold, "seed": 0})
        assert {c.case_id for c in train} | {c.case_id for c in val} == training
    assert {c.case_id for c in labelled_test_cases(dataset)} == testing


def test_bam_and_wider_segmenters_come_from_set_lines():
    """docs/studies.md: BAM with --set model.arguments.attention=true optim.lr=0.00025; the wider V-Net with
    num_layers=2 and lr 0.00015. Parameter counts against the README's 10.75 M and 16.2 M."""
    from SegCore.models import build_model
    from SegCore.models.bam import BAM

    counts = {}
    for name, sets in (("plain", []), ("bam", ["model.arguments.attention=true", "optim.lr=0.00025"]),
                       ("wider", ["model.arguments.num_layers=2", "optim.lr=0.00015"])):
        plan = resolve_plan(flags={"study": "atrium"}, overrides=sets, inspect_data=False)
        with torch.device("meta"):
            model = build_model(plan["model"]["name"], **plan["model"]["arguments"])
        counts[name] = sum(p.numel() for p in model.parameters())
        bams = [m for m in model.modules() if isinstance(m, BAM)]
        assert len(bams) == (5 if name == "bam" else 0)
        dilations = {m.dilation[0] for b in bams for m in b.modules() if isinstance(m, torch.nn.Conv3d)}
        assert dilations <= {1, 4}
        assert plan["optim"]["lr"] == {"plain": 0.0003, "bam": 0.00025, "wider": 0.00015}[name]
    assert abs(counts["plain"] / 1e6 - 10.75) < 0.02 and abs(counts["wider"] / 1e6 - 16.2) < 0.02
    assert counts["bam"] > counts["plain"]


def test_hybrid_loss_follows_the_study_ramp_and_its_focal_weights():
    from SegCore.losses import build_loss

    schedule = {"mode": "ramp", "alpha_start": 1.0, "alpha_end": 0.15, "ramp_epochs": 85}
    plan = resolve_plan(flags={"study": "atrium"}, inspect_data=False, overrides=[
        "loss.name=hybrid", "loss.arguments=" + json.dumps({"schedule": schedule})])
    loss = build_loss(plan["loss"]["name"], **plan["loss"]["arguments"])
    ours = []
    for epoch in range(200):
        ours.append(loss.alpha)
        loss.step_epoch(epoch)
    assert np.allclose(ours, study_alphas(200), atol=1e-9)  # 1.0 at epoch 0, 0.15 from epoch 85 on
    # "Dice/Focal + Boundary": the study's focal term is mean((1 + 199 g) (1 - p_t)^2 BCE) (code: utils.py)
    focal = build_loss("focal", gamma=2.0, alpha=[1.0, 200.0])
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 6, 7, 8, generator=generator)
    target = (torch.rand(2, 1, 6, 7, 8, generator=generator) > 0.7).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    study = ((1 + target * 199) * (1 - torch.exp(-bce)) ** 2 * bce).mean()
    assert torch.isclose(focal(logits, target.long()[:, 0]), study, rtol=1e-5)


def test_trainer_steps_the_hybrid_schedule_each_epoch_and_replays_it_on_resume(phantom, tmp_path):
    from SegCore.progress import no_progress
    from SegCore.training.trainer import Trainer

    schedule = {"mode": "ramp", "alpha_start": 1.0, "alpha_end": 0.15, "ramp_epochs": 85}
    plan = stage_plan("segmenter", phantom, tmp_path, overrides=[
        *OVERRIDES, "training.epochs=2", "training.steps_per_epoch=1", "loss.name=hybrid",
        "loss.arguments=" + json.dumps({"schedule": schedule})])
    trainer = Trainer(plan, tmp_path / "hybrid", resume=False, overwrite=False, progress=no_progress,
                      resume_command=None)
    trainer.setup()
    trainer.fit()
    assert math.isclose(trainer.loss_fn.alpha, study_alphas(3)[2])
    # a resumed run (2 more epochs) continues the ramp where the first left it, as one run of 4 epochs would
    plan["training"]["epochs"] = 4
    resumed = Trainer(plan, tmp_path / "hybrid", resume=True, overwrite=False, progress=no_progress,
                      resume_command=None)
    resumed.setup()
    resumed.fit()
    assert math.isclose(resumed.loss_fn.alpha, study_alphas(5)[4])


# --- the zoom step and the locator's input --------------------------------------------------------------------
def test_zoom_step_samples_as_trilinear_interpolate_and_inverts_onto_its_grid():
    from SegCore.transforms import Preprocessing
    from SegCore.volume import Grid, Volume

    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 13, 37, 42)).astype(np.float32)
    label = (rng.random((13, 37, 42)) > 0.6).astype(np.uint8)
    direction = ((0.0, 1.0, 0.0), (0.6, 0.0, -0.8), (0.8, 0.0, 0.6))  # oblique: columns are the i, j, k axes
    grid = Grid((13, 37, 42), (0.7, 0.8, 1.9), (10.0, -5.0, 3.0), direction)
    pre = Preprocessing([{"name": "zoom", "scale_zyx": [0.5, 0.25, 0.25]}])
    out = pre.apply(Volume(image, grid), Volume(label, grid))
    size = [math.floor(n * s + 0.5) for n, s in zip(grid.shape_zyx, (0.5, 0.25, 0.25), strict=True)]
    assert size == [7, 9, 11]  # 13 * 0.5 = 6.5 and 42 * 0.25 = 10.5 round up, as in locate_box
    expected = F.interpolate(torch.from_numpy(image)[None], size=size, mode="trilinear", align_corners=False)[0]
    # torch computes the source positions in float32 (about 1e-6 voxels off at index 40): atol 5e-5
    np.testing.assert_allclose(out.image, expected.numpy(), atol=5e-5)
    # labels by nearest neighbour at the same points: torch's "nearest-exact" where the ratios are whole
    whole = (rng.random((14, 36, 44)) > 0.6).astype(np.uint8)
    plain = Grid((14, 36, 44), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    zoomed = pre.apply(Volume(whole.astype(np.float32), plain), Volume(whole, plain))
    nearest = F.interpolate(torch.from_numpy(whole)[None, None].float(), size=[7, 9, 11], mode="nearest-exact")
    np.testing.assert_array_equal(zoomed.label, nearest[0, 0].numpy().astype(np.uint8))
    # new voxel i lies where F.interpolate samples: old index (i + 0.5) * n / m - 0.5, in the patient frame
    index_zyx = np.array([[0, 0, 0], [3, 4, 5], [size[0] - 1, size[1] - 1, size[2] - 1]], dtype=float)
    old_index = (index_zyx + 0.5) * np.array(grid.shape_zyx) / np.array(size) - 0.5
    np.testing.assert_allclose(out.grid.index_to_lps(index_zyx[:, ::-1]), grid.index_to_lps(old_index[:, ::-1]),
                               atol=1e-9)
    back = pre.invert_label(out.label, out.record)
    assert back.grid.same_as(grid) and back.array.shape == label.shape
    assert set(np.unique(back.array)) <= {0, 1}
    same = Preprocessing([{"name": "zoom", "scale_zyx": [1, 1, 1]}]).apply(Volume(image, grid))
    np.testing.assert_array_equal(same.image, image)


def test_locator_trains_on_exactly_what_locate_box_feeds_it(phantom, tmp_path):
    """locate_box downscales the segmenter's preprocessed image with F.interpolate and never replays the
    locator's own preprocessing; the locator stage's preprocessing (the segmenter's, then zoom, then a pad to 16)
    must give it the same input, on every case (the odd ones lie obliquely)."""
    from SegCore.inference.cascade import locate_box
    from SegCore.transforms import Preprocessing

    segmenter, locator = stage_plan("segmenter", phantom, tmp_path), stage_plan("locator", phantom, tmp_path)
    settings = segmenter["inference"]["locator"]
    seen = []

    def record(x):
        seen.append(x[0].clone())
        return torch.zeros((1, 1, *x.shape[2:]))  # nothing found: locate_box returns None

    for case in open_dataset(phantom).labelled_cases():
        image, label = load_case(case)
        seen.clear()
        full = torch.from_numpy(Preprocessing(segmenter["preprocessing"]).apply(image).image)
        assert locate_box(record, full, scale_zyx=settings["scale_zyx"], divisor=16) is None
        trained = Preprocessing(locator["preprocessing"]).apply(image, label)
        assert trained.image.shape == tuple(seen[0].shape) == (1, 16, 16, 16)
        np.testing.assert_allclose(trained.image, seen[0].numpy(), atol=5e-5)
        assert 0 < trained.label.sum() < trained.label.size // 4  # the atrium survives the downscaling


# --- the protocol on the phantom ------------------------------------------------------------------------------
def test_protocol_trains_both_stages_and_beats_chance_on_held_out_cases(run, phantom):
    from SegCore.io import read_label
    from SegCore.protocol import read_status

    status = read_status(run)
    assert status["state"] == "finished" and [s["state"] for s in status["stages"]] == ["finished"] * 3
    result = json.loads((run / "test" / "test.json").read_text(encoding="utf-8"))
    assert result["strategy"] == "locate_segment" and len(result["cases"]) == 2
    dice = result["dice_per_case"]["reference"]["model/left atrium"]
    cases = {case.case_id: case for case in open_dataset(phantom).cases}
    for case_id, value in dice.items():
        image, reference = load_case(cases[case_id])
        predicted = read_label(run / "test" / "predictions" / f"{case_id}.nii.gz")
        assert predicted.grid.same_as(image.grid) and predicted.array.shape == reference.array.shape
        truth, guess = reference.array > 0, predicted.array > 0
        assert math.isclose(value, 2 * (truth & guess).sum() / (truth.sum() + guess.sum()), abs_tol=1e-6)
        # chance: an all-foreground mask scores 2|G| / (|G| + N) (an empty one 0); the atrium is ~2 % here
        chance = 2 * truth.sum() / (truth.sum() + truth.size)
        assert chance < 0.2 and value > 0.5, (case_id, value, chance)
    boxes = [row["box"] for row in json.loads((run / "test" / "cases.json").read_text(encoding="utf-8"))]
    assert all(box["found"] for box in boxes)


def test_trained_locator_box_contains_the_held_out_atrium(run):
    from SegCore.inference.cascade import locate_box
    from SegCore.inference.network import network_function
    from SegCore.training.checkpoint import load_checkpoint
    from SegCore.transforms import Preprocessing

    plan = segmenter_plan(run)
    locator = load_checkpoint(run / "locator" / "best.pt")
    net_fn = network_function(locator.build_model("cpu"), "cpu")
    preprocessing = Preprocessing(plan["preprocessing"])
    for case in held_out(plan):
        image, label = load_case(case)
        pre = preprocessing.apply(image, label)
        box = locate_box(net_fn, torch.from_numpy(pre.image), scale_zyx=[0.5, 0.25, 0.25], margin_voxels=MARGIN,
                         crop_zyx=[1, 1, 1], divisor=16)  # no enlargement: the box is the locator's extent + margin
        assert box is not None  # an untrained locator finds nothing
        inside = pre.label[tuple(slice(a, b) for a, b in zip(box.start_zyx, box.stop_zyx, strict=True))]
        assert inside.sum() >= 0.95 * pre.label.sum()  # the atrium lies in the box
        assert np.prod(box.size_zyx) < pre.label.size / 3  # and the box is far from the whole volume


def test_segcore_predict_writes_nrrd_on_the_input_grid(run, phantom, tmp_path):
    """The segmenter's best.pt names its locator, so `segcore predict` runs both stages; .nrrd is written as
    asked, on the grid SimpleITK reads from the input, and equals the test stage's prediction."""
    import SimpleITK as sitk

    from SegCore.cli import main

    plan = segmenter_plan(run)
    case = held_out(plan)[0]
    output = tmp_path / "prediction.nrrd"
    assert main(["predict", "--model", str(run / "segmenter" / "best.pt"), "--input", str(case.image_paths[0]),
                 "--output", str(output), "--device", "cpu"]) == 0
    written, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(case.image_paths[0]))
    assert written.GetSize() == source.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, get)(), getattr(source, get)(), atol=1e-6)
    tested = sitk.ReadImage(str(run / "test" / "predictions" / f"{case.case_id}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(tested))
    assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1}


def segmenter_plan(run) -> dict:
    from SegCore.training.run_folder import RunFolder

    return RunFolder(run / "segmenter").read_plan()


@pytest.mark.gpu
def test_full_size_stages_take_one_mixed_precision_step_on_cuda():
    """The study's sizes on the GPU: the locator on 48x160x160 (batch 5), the segmenter on 96x144x224 crops
    (batch 3), plain and with BAM, under autocast; every loss finite."""
    from SegCore.losses import build_loss
    from SegCore.models import build_model

    device = torch.device("cuda")
    torch.manual_seed(0)
    for shape, batch, arguments in (((48, 160, 160), 5, {}), ((96, 144, 224), 3, {}),
                                    ((96, 144, 224), 3, {"attention": True})):
        model = build_model("vnet", out_channels=1, **arguments).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
        x = torch.randn(batch, 1, *shape, device=device)
        y = (torch.rand(batch, *shape, device=device) > 0.9).long()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = build_loss("dice")(model(x), y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        del model, optimizer, x, y
        torch.cuda.empty_cache()
