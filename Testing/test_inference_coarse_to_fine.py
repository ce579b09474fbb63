"""RSTN coarse-to-fine testing (pancreas study): stack averaging by hand, fusion, the stopping rules, components,
oracle mode, and a real tiny RSTN end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.inference.coarse_to_fine import coarse_to_fine, keep_large_components, stack_average
from SegCore.models import MODELS, build_model

SHAPE = (8, 12, 12)


def cube(z, y, x, shape=SHAPE) -> torch.Tensor:
    mask = torch.zeros(shape)
    mask[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = 1.0
    return mask


def slice_index_image(shape=SHAPE) -> torch.Tensor:
    """Every axial slice holds its own index, so a toy model knows which slices a stack holds."""
    return torch.arange(shape[0], dtype=torch.float32)[:, None, None].expand(shape).clone()


class ToyRSTN(torch.nn.Module):
    """RSTN-like (axial plane): answers each stack channel with that slice of a fixed volume. The coarse map is
    `coarse`; the n-th call of refine answers with fine[n - 1] (the last one from then on, or cycling)."""

    slices = 3

    def __init__(self, coarse: torch.Tensor, fine=(), cycle: bool = False):
        super().__init__()
        self.coarse, self.fine, self.cycle = coarse, list(fine), cycle
        self.calls: list[dict] = []

    @staticmethod
    def lookup(volume: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return volume[x[:, :, 0, 0].round().long()]  # (B, 3, Y, X)

    def forward(self, x, label=None, mode="J"):
        if mode == "oracle":
            self.calls.append({"oracle_label": label.clone()})
            return {"fine": label.clone()}
        assert mode == "coarse"
        return {"coarse": self.lookup(self.coarse, x)}

    def refine(self, x, previous_prob, previous_mask=None):
        n = len(self.calls)
        self.calls.append({"slices": x[:, :, 0, 0].clone(), "prob": previous_prob.clone(),
                           "mask": previous_mask.clone()})
        volume = self.fine[n % len(self.fine)] if self.cycle else self.fine[min(n, len(self.fine) - 1)]
        return {"fine": self.lookup(volume, x)}


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.numpy() > 0.5, b.numpy() > 0.5
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_overlapping_stacks_are_averaged_as_by_hand(axis):
    generator = torch.Generator().manual_seed(0)
    volume = torch.rand(5, 4, 3, generator=generator)
    out = torch.zeros_like(volume)
    positions = torch.tensor([1.0, 2.0, 3.0])[None, :, None, None]  # stack position k scales its map by k + 1
    stack_average(lambda x: x * positions, [volume], axis, out, batch=2)
    # inside: (3 + 2 + 1) / 3 = 2; first slice: stacks 0 (pos 1) and 1 (pos 0): 1.5; last: 2.5 (the clamped
    # duplicate of stack 0 / n-1 is dropped)
    n = volume.shape[axis]
    factor = torch.full((n,), 2.0)
    factor[0], factor[-1] = 1.5, 2.5
    shape = [1, 1, 1]
    shape[axis] = n
    torch.testing.assert_close(out, volume * factor.reshape(shape))


def test_a_single_slice_and_skipped_stacks():
    volume = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(1))
    out = torch.zeros_like(volume)
    stack_average(lambda x: x * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None], [volume], 0, out)
    torch.testing.assert_close(out, 2.0 * volume)  # its one stack, at position 1
    volume = torch.ones(5, 2, 2)
    out = torch.zeros_like(volume)
    active = torch.tensor([True, True, False, True, True])
    stack_average(lambda x: x * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None], [volume], 0, out,
                  active=active, weight=0.5)
    # stack 2 not run counts as 0: slice 1 = (3 + 2 + 0) / 3, slice 2 = (3 + 0 + 1) / 3, slice 3 = (0 + 2 + 1) / 3
    expected = 0.5 * torch.tensor([1.5, 5 / 3, 4 / 3, 1.0, 2.5])
    torch.testing.assert_close(out[:, 0, 0], expected)


def test_loop_stops_when_two_rounds_agree():
    coarse = 0.9 * cube((2, 6), (3, 7), (3, 7))
    moved = cube((2, 6), (3, 7), (4, 8))   # 48 of 64 voxels shared with the coarse mask: Dice 0.75
    grown = cube((2, 6), (3, 8), (4, 8))   # 64 of 80 shared with `moved`: Dice 128 / 144
    model = ToyRSTN(coarse, [moved, grown])
    result = coarse_to_fine({"axial": model}, slice_index_image(), batch=64, thresholds=(0.7, 0.8, 0.9, 0.99))
    assert result["rounds"] == 3 and result["converged"]
    np.testing.assert_allclose(result["inter_dice"], [0.75, 128 / 144, 1.0])
    assert result["inter_dice"][:2] == pytest.approx([dice(coarse, moved), dice(moved, grown)])
    assert result["dice_at"] == {0.7: 1, 0.8: 2, 0.9: 3, 0.99: 3}
    assert len(model.calls) == 3  # one forward per round: every active stack fits one batch
    # round 2 refines from round 1's fused probability and mask; stacks 1..6 hold a slice of z 2..5
    assert model.calls[1]["slices"][:, 1].tolist() == [1, 2, 3, 4, 5, 6]
    expected = ToyRSTN.lookup(moved, model.calls[1]["slices"][..., None, None])
    assert torch.equal(model.calls[1]["mask"], expected) and torch.equal(model.calls[1]["prob"], expected)
    probabilities = result["probabilities"]
    assert probabilities.shape == (2, *SHAPE) and probabilities.dtype == torch.float32
    assert torch.equal(probabilities[1], grown) and torch.equal(result["mask"], grown.bool())


def test_loop_stops_at_max_rounds():
    coarse = 0.9 * cube((2, 6), (3, 7), (1, 5))
    first, second = cube((2, 6), (3, 7), (3, 7)), cube((2, 6), (3, 7), (5, 9))  # each half the previous one
    model = ToyRSTN(coarse, [first, second], cycle=True)
    result = coarse_to_fine({"axial": model}, slice_index_image(), max_rounds=4, batch=64)
    assert result["rounds"] == 4 and not result["converged"]
    assert result["inter_dice"] == pytest.approx([0.5] * 4)
    assert result["dice_at"] == {0.90: None, 0.95: None, 0.98: None, 0.99: None}
    assert torch.equal(result["mask"], second.bool())


def test_an_empty_coarse_mask_leaves_nothing_to_refine():
    model = ToyRSTN(torch.full(SHAPE, 0.25), [cube((2, 6), (3, 7), (3, 7))])
    result = coarse_to_fine({"axial": model}, slice_index_image())
    assert model.calls == [] and result["rounds"] == 0 and not result["converged"]
    assert result["inter_dice"] == [] and not result["mask"].any()
    torch.testing.assert_close(result["probabilities"], torch.stack([torch.full(SHAPE, 0.75),
                                                                      torch.full(SHAPE, 0.25)]))


def test_planes_are_fused_by_their_mean():
    class Constant(torch.nn.Module):
        slices = 3

        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x, label=None, mode="J"):
            return {"coarse": torch.full_like(x, self.value)}

    image = torch.zeros(4, 5, 6)
    result = coarse_to_fine({"axial": Constant(0.2), "sagittal": Constant(0.6)}, image)
    assert result["rounds"] == 0
    torch.testing.assert_close(result["probabilities"][1], torch.full((4, 5, 6), 0.4))
    three = {"axial": Constant(0.2), "coronal": Constant(0.3), "sagittal": Constant(0.7)}
    torch.testing.assert_close(coarse_to_fine(three, image[None])["probabilities"][1], torch.full((4, 5, 6), 0.4))


def test_components_of_half_the_largest_are_kept():
    mask = torch.zeros(10, 10, 10, dtype=torch.bool)
    mask[1:4, 1:4, 1:4] = True          # 27 voxels: the largest
    mask[6:8, 6:8, 5:9] = True          # 16 >= 13.5: kept
    mask[4, 4, 4] = True                # touches the largest at a corner only: its own (6-connected) component
    mask[8, 1, 8] = True                # 1 voxel: removed
    kept = keep_large_components(mask)
    expected = mask.clone()
    expected[4, 4, 4] = expected[8, 1, 8] = False
    assert torch.equal(kept, expected)
    only_largest = keep_large_components(mask, fraction=1.0)
    assert int(only_largest.sum()) == 27 and bool(only_largest[2, 2, 2])


def test_fine_rounds_keep_the_large_components_only():
    coarse = 0.9 * cube((1, 7), (0, 12), (0, 12))
    fine = cube((2, 5), (2, 5), (2, 5)) + cube((2, 3), (9, 10), (9, 10))  # 27 voxels and 1 voxel
    result = coarse_to_fine({"axial": ToyRSTN(coarse, [fine])}, slice_index_image(), batch=64)
    assert torch.equal(result["mask"], cube((2, 5), (2, 5), (2, 5)).bool())
    assert float(result["probabilities"][1, 2, 9, 9]) == 0.0 and result["rounds"] == 2
    kept_all = coarse_to_fine({"axial": ToyRSTN(coarse, [fine])}, slice_index_image(), largest_component=False)
    assert torch.equal(kept_all["mask"], fine.bool()) and float(kept_all["probabilities"][1, 2, 9, 9]) == 1.0


def test_oracle_runs_one_round_on_the_label():
    coarse = 0.9 * cube((2, 6), (3, 7), (3, 7))
    label = cube((3, 6), (3, 7), (3, 7))
    model = ToyRSTN(coarse, [torch.zeros(SHAPE)])
    result = coarse_to_fine({"axial": model}, slice_index_image(), oracle_label=label.to(torch.uint8), batch=64)
    assert result["rounds"] == 1 and result["inter_dice"] == pytest.approx([dice(coarse, label)])
    assert torch.equal(result["mask"], label.bool()) and torch.equal(result["probabilities"][1], label)
    assert len(model.calls) == 1 and model.calls[0]["oracle_label"].shape == (5, 3, 12, 12)  # stacks 2..6


def test_tiny_rstn_end_to_end():
    torch.manual_seed(0)
    models = {}
    for view in ("axial", "coronal", "sagittal"):
        model = build_model("rstn", **MODELS["rstn"].small).eval()
        with torch.no_grad():  # untrained: a positive coarse bias so that the fine rounds have a box
            model.coarse_model.score_fr.bias.fill_(3.0)
        models[view] = model
    image = torch.rand(5, 16, 16, generator=torch.Generator().manual_seed(0))
    result = coarse_to_fine(models, image, max_rounds=2)
    probabilities = result["probabilities"]
    assert probabilities.shape == (2, 5, 16, 16) and probabilities.dtype == torch.float32
    assert float(probabilities.min()) >= 0.0 and float(probabilities.max()) <= 1.0
    torch.testing.assert_close(probabilities.sum(0), torch.ones(5, 16, 16))
    assert 1 <= result["rounds"] <= 2 and len(result["inter_dice"]) == result["rounds"]
    assert torch.equal(result["mask"], probabilities[1] >= 0.5)


def test_bad_inputs_are_explained():
    toy = ToyRSTN(torch.zeros(SHAPE))
    with pytest.raises(SegCoreError, match="one RSTN per plane"):
        coarse_to_fine({"X": toy}, slice_index_image())
    with pytest.raises(SegCoreError, match=r"\(Z, Y, X\)"):
        coarse_to_fine({"axial": toy}, torch.zeros(2, *SHAPE))
    with pytest.raises(SegCoreError, match="oracle label"):
        coarse_to_fine({"axial": toy}, slice_index_image(), oracle_label=torch.zeros(4, 4, 4))
    with pytest.raises(SegCoreError, match="max_rounds"):
        coarse_to_fine({"axial": toy}, slice_index_image(), max_rounds=0)


@pytest.mark.gpu
def test_tiny_rstn_on_cuda_matches_cpu():
    torch.manual_seed(0)
    model = build_model("rstn", **MODELS["rstn"].small).eval()
    with torch.no_grad():
        model.coarse_model.score_fr.bias.fill_(3.0)
    image = torch.rand(6, 20, 20, generator=torch.Generator().manual_seed(0))
    cpu = coarse_to_fine({"axial": model}, image, max_rounds=1)
    gpu = coarse_to_fine({"axial": model.cuda()}, image, max_rounds=1, device="cuda")
    torch.testing.assert_close(gpu["probabilities"], cpu["probabilities"], atol=1e-4, rtol=0)
    half = coarse_to_fine({"axial": model}, image, max_rounds=1, device="cuda", precision="float16")
    assert half["probabilities"].dtype == torch.float32 and bool(torch.isfinite(half["probabilities"]).all())


def test_progress_counts_planes_and_rounds_and_ends_at_the_total():
    """One axial plane: coarse + 3 fine rounds of a possible 1 + 5, so steps 1..4 then the jump to 6; a real
    tiny RSTN on three planes with max_rounds 2: 3 x 3 steps, rising, ending at 9."""
    coarse = 0.9 * cube((2, 6), (3, 7), (3, 7))
    moved, grown = cube((2, 6), (3, 7), (4, 8)), cube((2, 6), (3, 8), (4, 8))
    events = []
    result = coarse_to_fine({"axial": ToyRSTN(coarse, [moved, grown])}, slice_index_image(), max_rounds=5,
                            batch=64, progress=lambda done, total: events.append((done, total)))
    assert result["rounds"] == 3 and events == [(1, 6), (2, 6), (3, 6), (4, 6), (6, 6)]
    torch.manual_seed(0)
    models = {}
    for view in ("axial", "coronal", "sagittal"):
        models[view] = build_model("rstn", **MODELS["rstn"].small).eval()
        with torch.no_grad():
            models[view].coarse_model.score_fr.bias.fill_(3.0)
    events.clear()
    coarse_to_fine(models, torch.rand(5, 16, 16, generator=torch.Generator().manual_seed(0)), max_rounds=2,
                   progress=lambda done, total: events.append((done, total)))
    steps = [done for done, _ in events]
    assert {total for _, total in events} == {9} and steps == sorted(steps) and steps[:3] == [1, 2, 3]
    assert steps[-1] == 9


def test_the_predictor_reports_coarse_to_fine_steps_as_infer_events(tmp_path):
    from inference_models import tiny_checkpoint

    from SegCore.inference import Predictor
    from SegCore.volume import Grid, Volume

    path = tiny_checkpoint(tmp_path / "rstn_axial.pt", "rstn", plan={
        "data": {"channels": ["FLAIR"]}, "sampler": {"axis": "axial"},
        "inference": {"coarse_to_fine": {"max_rounds": 2}}}, size_zyx=(32, 32, 32))
    grid = Grid((6, 32, 32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3))))
    events = []
    image = np.random.default_rng(2).normal(size=grid.shape_zyx).astype(np.float32)
    Predictor(path, device="cpu", progress=events.append).predict(Volume(image, grid))
    infer = [(e.step, e.total) for e in events if e.stage == "infer"]
    assert infer[0] == (1, 3) and infer[-1] == (3, 3) and [s for s, _ in infer] == sorted(s for s, _ in infer)
