"""FCN-8s and RSTN of the pancreas study: sizes, shapes, gradients, modes S/I/J, boxes, oracle, iterations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.models import MODELS, build_model
from SegCore.models.fcn8s import FCN8s, bilinear_kernel
from SegCore.models.rstn import OUTSIDE_LOGIT, RSTN

TINY = 1 / 16


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_rstn(**kwargs) -> RSTN:
    torch.manual_seed(0)
    return RSTN(width_multiplier=TINY, dropout=0.0, **kwargs)


def box_of(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """Reference box, written independently: rows/cols with any True over all channels, grown, clipped."""
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    size_y, size_x = mask.shape[1:]
    return (max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, size_y),
            max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, size_x))


def square_label(shape_yx=(40, 30), rows=(18, 22), cols=(12, 16)) -> torch.Tensor:
    label = torch.zeros(1, 3, *shape_yx)
    label[:, :, rows[0]:rows[1], cols[0]:cols[1]] = 1
    return label


# ---------------------------------------------------------------- FCN-8s

def test_fcn8s_width_1_has_the_vgg16_fcn8s_parameter_count():
    layers = [(3, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 256, 3),
              (256, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3),
              (512, 4096, 7), (4096, 4096, 1)]  # (in, out, kernel): VGG-16's 13 convs, fc6, fc7
    backbone = sum(ci * co * k * k + co for ci, co, k in layers)
    assert backbone == 138_357_544 - (4096 * 1000 + 1000)  # VGG-16's published total less its fc8
    scores = (4096 * 3 + 3) + (256 * 3 + 3) + (512 * 3 + 3)  # score_fr, score_pool3, score_pool4
    with torch.device("meta"):
        assert count(FCN8s()) == backbone + scores  # fixed bilinear upsampling: no trainable weights
        assert count(FCN8s(upsampling="learned")) == backbone + scores + 3 * 3 * (4 * 4 + 4 * 4 + 16 * 16)


@pytest.mark.parametrize("size_yx", [(1, 1), (37, 50), (64, 64), (33, 17)])
def test_fcn8s_output_matches_any_input_size(size_yx):
    model = FCN8s(width_multiplier=TINY)
    out = model(torch.rand(2, 3, *size_yx))
    assert out.shape == (2, 3, *size_yx)
    assert torch.isfinite(out).all()


def test_fcn8s_refuses_wrong_channels_and_options():
    with pytest.raises(SegCoreError, match="adjacent slices"):
        FCN8s(width_multiplier=TINY)(torch.zeros(1, 1, 32, 32))
    with pytest.raises(SegCoreError, match="upsampling"):
        FCN8s(upsampling="nearest")


def test_fcn8s_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = FCN8s(width_multiplier=TINY, upsampling="learned", dropout=0.0)
    model(torch.rand(2, 3, 30, 41)).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_fcn8s_fixed_upsampling_is_bilinear_saved_and_not_trained(tmp_path):
    # FCN's bilinear kernel for x2: the ramp 1/4, 3/4, 3/4, 1/4 in each direction
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(bilinear_kernel(4), ramp[:, None] * ramp[None, :])
    model = FCN8s(width_multiplier=TINY).eval()
    assert not any("upscore" in name for name, _ in model.named_parameters())
    path = tmp_path / "fcn8s.pt"
    torch.save(model.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert state["upscore8.weight"].shape == (3, 3, 16, 16)
    torch.manual_seed(5)
    again = FCN8s(width_multiplier=TINY).eval()
    again.load_state_dict(state)
    x = torch.rand(1, 3, 20, 27)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


# ---------------------------------------------------------------- RSTN outputs and boxes

def test_saliency_starts_as_one_constant_per_slice():
    model = tiny_rstn()
    weights = model.saliency(torch.rand(2, 3, 9, 11))
    expected = torch.tensor([1.0, 1.5, 2.0])[None, :, None, None].expand(2, 3, 9, 11)
    torch.testing.assert_close(weights, expected)


@pytest.mark.parametrize("mode", ["S", "I", "J", "oracle"])
def test_modes_return_the_documented_maps(mode):
    model = tiny_rstn()
    image, label = torch.rand(2, 3, 40, 30), square_label().expand(2, -1, -1, -1)
    out = model(image, label, mode=mode)
    expected_keys = {"coarse_logits", "coarse", "fine_logits", "fine", "box"} | ({"saliency"} if mode != "S" else set())
    assert set(out) == expected_keys
    for key in expected_keys - {"box"}:
        assert out[key].shape == (2, 3, 40, 30)
    assert out["box"].shape == (2, 4) and out["box"].dtype == torch.int64
    for n, (y0, y1, x0, x1) in enumerate(out["box"].tolist()):
        outside = torch.ones(3, 40, 30, dtype=torch.bool)
        outside[:, y0:y1, x0:x1] = False
        assert (out["fine_logits"][n][outside] == OUTSIDE_LOGIT).all()
        assert (out["fine"][n][outside] == 0).all()
    assert set(model(image, mode="coarse")) == {"coarse_logits", "coarse"}


def test_label_modes_need_the_label_and_a_known_mode():
    model = tiny_rstn()
    with pytest.raises(SegCoreError, match="needs the label"):
        model(torch.rand(1, 3, 20, 20), mode="J")
    with pytest.raises(SegCoreError, match="unknown RSTN mode"):
        model(torch.rand(1, 3, 20, 20), square_label((20, 20), (2, 4), (2, 4)), mode="X")
    with pytest.raises(SegCoreError, match="shape"):
        model(torch.rand(1, 3, 20, 20), square_label(), mode="S")


@pytest.mark.parametrize("mode", ["S", "I", "oracle"])
def test_label_modes_crop_the_label_box_plus_margin(mode):
    model = tiny_rstn(margin=5).eval()
    label = square_label(rows=(2, 9), cols=(20, 26))  # near the top and right edges: the box is clipped there
    out = model(torch.rand(1, 3, 40, 30), label, mode=mode)
    assert tuple(out["box"][0].tolist()) == box_of(label[0].numpy() > 0, 5) == (0, 14, 15, 30)


def test_joint_mode_crops_the_coarse_mask_plus_margin():
    model = tiny_rstn(margin=4).eval()
    image, label = torch.rand(1, 3, 40, 30), square_label()
    coarse = model(image, mode="coarse")["coarse"]
    # a threshold just under the top few coarse probabilities: a small mask somewhere in the image
    model.threshold = float(coarse.detach().flatten().topk(3).values[-1])
    mask = (coarse >= model.threshold)[0].numpy()
    out = model(image, label, mode="J")
    y0, y1, x0, x1 = out["box"][0].tolist()
    assert (y0, y1, x0, x1) == box_of(mask, 4)
    rows, cols = np.nonzero(mask.any(axis=0))
    assert 0 <= y0 <= rows.min() and rows.max() < y1 <= 40 and 0 <= x0 <= cols.min() and cols.max() < x1 <= 30


def test_empty_coarse_mask_falls_back_to_the_label_then_to_the_whole_image():
    model = tiny_rstn(margin=3).eval()
    image = torch.rand(1, 3, 40, 30)
    model.threshold = float(model(image, mode="coarse")["coarse"].detach().max()) + 1e-6  # nothing reaches it
    assert model.threshold < 1
    label = square_label()
    assert tuple(model(image, label, mode="J")["box"][0].tolist()) == box_of(label[0].numpy() > 0, 3)
    assert model(image, torch.zeros_like(label), mode="J")["box"][0].tolist() == [0, 40, 0, 30]
    refined = model.refine(image, torch.zeros_like(image))
    assert refined["box"][0].tolist() == [0, 40, 0, 30]
    assert torch.isfinite(refined["fine_logits"]).all() and (refined["fine_logits"] != OUTSIDE_LOGIT).all()


def test_training_margins_are_random_within_the_range_and_fixed_in_eval():
    torch.manual_seed(3)
    model = RSTN(width_multiplier=TINY, dropout=0.0, margin=4, random_margin_prob=1.0, random_margin_min=2,
                 random_margin_max=6).train()
    label = square_label()  # rows 18..21, cols 12..15: far enough from the edges for any margin in range
    boxes = {tuple(model(torch.rand(1, 3, 40, 30), label, mode="S")["box"][0].tolist()) for _ in range(6)}
    assert len(boxes) > 1
    for y0, y1, x0, x1 in boxes:
        assert 2 <= 18 - y0 <= 6 and 2 <= y1 - 22 <= 6 and 2 <= 12 - x0 <= 6 and 2 <= x1 - 16 <= 6
    model.eval()
    assert model(torch.rand(1, 3, 40, 30), label, mode="S")["box"][0].tolist() == [14, 26, 8, 20]


# ---------------------------------------------------------------- gradients

def fine_loss_gradients(mode: str) -> tuple[RSTN, dict]:
    model = tiny_rstn()
    with torch.no_grad():  # one step away from the zero start, so the saliency depends on the coarse output
        model.saliency2.weight.normal_(std=0.1)
    out = model(torch.rand(2, 3, 40, 30), square_label().expand(2, -1, -1, -1), mode=mode)
    out["fine"].sum().backward()
    return model, out


def grads_of(module: torch.nn.Module) -> list[float]:
    return [0.0 if p.grad is None else float(p.grad.abs().sum()) for p in module.parameters()]


def test_separate_mode_keeps_the_fine_loss_out_of_the_coarse_stage():
    model, _ = fine_loss_gradients("S")
    assert all(g == 0 for g in grads_of(model.coarse_model) + grads_of(model.saliency1) + grads_of(model.saliency2))
    assert sum(grads_of(model.fine_model)) > 0


@pytest.mark.parametrize("mode", ["I", "J"])
def test_individual_and_joint_modes_send_the_fine_loss_into_the_coarse_stage(mode):
    model, _ = fine_loss_gradients(mode)
    assert sum(grads_of(model.coarse_model)) > 0
    assert sum(grads_of(model.saliency1)) > 0 and sum(grads_of(model.saliency2)) > 0


def test_every_parameter_receives_a_gradient_in_joint_training():
    model = tiny_rstn(upsampling="learned")
    with torch.no_grad():
        model.saliency2.weight.normal_(std=0.1)
    label = square_label().expand(2, -1, -1, -1)
    out = model(torch.rand(2, 3, 40, 30), label, mode="J")

    def dice_loss(prob):
        return 1 - 2 * (prob * label).sum() / (prob.sum() + label.sum())

    (dice_loss(out["coarse"]) / 3 + 2 * dice_loss(out["fine"]) / 3).backward()  # the study's weighting
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# ---------------------------------------------------------------- coarse-to-fine iterations

def constant_fine_model(model: RSTN, logit: float = 10.0) -> None:
    """Fine FCN that predicts `logit` everywhere in its crop: every weight zero, score_pool3's bias = logit."""
    with torch.no_grad():
        for p in model.fine_model.parameters():
            p.zero_()
        model.fine_model.score_pool3.bias.fill_(logit)


def expected_rounds(start_rows, start_cols, margin, shape_yx, threshold):
    """Each round's mask is the previous mask's box grown by margin (clipped): Dice of nested masks by area."""
    (r0, r1), (c0, c1) = start_rows, start_cols
    area, dice = (r1 - r0) * (c1 - c0), []
    while True:
        r0, r1 = max(r0 - margin, 0), min(r1 + margin, shape_yx[0])
        c0, c1 = max(c0 - margin, 0), min(c1 + margin, shape_yx[1])
        new_area = (r1 - r0) * (c1 - c0)
        dice.append(2 * area / (area + new_area))
        area = new_area
        if dice[-1] >= threshold:
            return dice


def test_iterate_stops_when_rounds_agree():
    model = tiny_rstn(margin=4).eval()
    constant_fine_model(model)
    start = square_label()  # rows 18..21, cols 12..15 of 40 x 30
    out = model.iterate(torch.rand(1, 3, 40, 30), max_iterations=10, convergence_dice=0.99, start_prob=start)
    expected = expected_rounds((18, 22), (12, 16), 4, (40, 30), 0.99)
    assert out["iterations"] == len(expected) == 6 and out["converged"]
    np.testing.assert_allclose(out["inter_dice"], expected)
    assert out["mask"].all()  # grown to the whole image
    torch.testing.assert_close(out["coarse"], start)


def test_iterate_stops_at_the_iteration_limit():
    model = tiny_rstn(margin=4).eval()
    constant_fine_model(model)
    out = model.iterate(torch.rand(1, 3, 40, 30), max_iterations=3, start_prob=square_label())
    assert out["iterations"] == 3 and not out["converged"]
    np.testing.assert_allclose(out["inter_dice"], expected_rounds((18, 22), (12, 16), 4, (40, 30), 0.99)[:3])
    out = model.iterate(torch.rand(1, 3, 40, 30), max_iterations=3)  # from this model's own coarse stage
    assert 1 <= out["iterations"] <= 3 and out["coarse"].shape == (1, 3, 40, 30)


# ---------------------------------------------------------------- registry and checkpoints

def test_registered_and_round_trips_through_a_checkpoint(tmp_path):
    assert MODELS["rstn"].study == MODELS["fcn8s"].study == "pancreas"
    model = build_model("rstn", **MODELS["rstn"].small).eval()
    path = tmp_path / "rstn.pt"
    torch.save(model.state_dict(), path)
    again = build_model("rstn", **MODELS["rstn"].small).eval()
    again.load_state_dict(torch.load(path, weights_only=True))
    image, label = torch.rand(1, 3, 24, 35), square_label((24, 35), (5, 9), (10, 20))
    first, second = model(image, label, mode="J"), again(image, label, mode="J")
    for key in ("coarse", "fine", "box"):
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0)
    fcn = build_model("fcn8s", **MODELS["fcn8s"].small)
    assert fcn(torch.rand(1, *MODELS["fcn8s"].example_input[:1], 16, 16)).shape == (1, 3, 16, 16)


# ---------------------------------------------------------------- the training mode of a stage

@pytest.mark.parametrize("mode", ["S", "I", "J"])
def test_forward_without_a_mode_runs_the_training_mode(mode):
    model = tiny_rstn(training_mode=mode, margin=2).eval()
    image, label = torch.rand(1, 3, 40, 30), square_label()
    for key in ("coarse", "fine", "box"):
        torch.testing.assert_close(model(image, label)[key], model(image, label, mode=mode)[key], rtol=0, atol=0)
    assert ("saliency" in model(image, label)) == (mode != "S")
    assert build_model("rstn", **MODELS["rstn"].small).training_mode == "J"  # the registry default


def test_unknown_training_mode_is_refused():
    with pytest.raises(SegCoreError, match="training_mode"):
        RSTN(width_multiplier=TINY, training_mode="coarse")
