"""Locate, then segment (atrium study): the locator's box by hand, edges, small volumes, paste-back, fallback."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from SegCore.errors import SegCoreError
from SegCore.inference.cascade import Box, crop_box, locate_box, locate_then_segment

SCALE = (0.5, 0.25, 0.25)
SHAPE = (16, 32, 32)  # scaled by SCALE: (8, 8, 8); every scaled voxel covers a 2 x 4 x 4 block


def bright_locator(x: torch.Tensor) -> torch.Tensor:
    """A locator net as a fixed function of its input: two-class logits, foreground where x > 0.5."""
    foreground = (x[:, :1] > 0.5).float()
    return torch.cat([torch.zeros_like(foreground), 20.0 * foreground - 10.0], dim=1)


def cube_image(z, y, x, shape=SHAPE) -> torch.Tensor:
    """(1, Z, Y, X) zeros with a cube of ones at z, y, x = (start, stop) pairs."""
    image = torch.zeros(1, *shape)
    image[0, z[0]:z[1], y[0]:y[1], x[0]:x[1]] = 1.0
    return image


def mask_locator(mask_zyx: np.ndarray, expected_shape, divisor: int = 1, k: int = 2):
    """A locator whose output is a hand-made mask on the scaled grid; it checks the input it is given."""
    def run(x: torch.Tensor) -> torch.Tensor:
        assert all(n % divisor == 0 for n in x.shape[2:])
        assert all(n >= e for n, e in zip(x.shape[2:], expected_shape, strict=True))
        out = torch.zeros(1, 1, *x.shape[2:])
        out[:] = 1.0  # padding beyond the image claims foreground: it must be cropped away
        out[0, 0, :expected_shape[0], :expected_shape[1], :expected_shape[2]] = torch.from_numpy(
            mask_zyx.astype(np.float32))
        logits = 8.0 * out - 4.0
        return logits if k == 1 else torch.cat([torch.zeros_like(logits), logits], dim=1)
    return run


def test_box_of_block_aligned_cube_by_hand():
    # trilinear at scale 1/2 averages voxel pairs and at 1/4 the middle two of four: an aligned cube stays exact
    image = cube_image((4, 8), (8, 16), (12, 20))
    box = locate_box(bright_locator, image, scale_zyx=SCALE, margin_voxels=2, crop_zyx=(4, 4, 4))
    assert box == Box((2, 6, 10), (10, 18, 22))
    # a crop larger than the structure + margins grows it centred, the odd voxel at the end
    box = locate_box(bright_locator, image, scale_zyx=SCALE, margin_voxels=2, crop_zyx=(11, 12, 16))
    assert box == Box((1, 6, 8), (12, 18, 24))
    assert box.size_zyx == (11, 12, 16)


def test_box_near_every_edge_stays_inside():
    low = cube_image((0, 2), (0, 4), (0, 4))
    box = locate_box(bright_locator, low, scale_zyx=SCALE, margin_voxels=3, crop_zyx=(8, 8, 8))
    # z: [0, 2) + 3 -> [0, 5) (no margin outside the image), grown to 8 -> [-1, 7), shifted in -> [0, 8)
    assert box == Box((0, 0, 0), (8, 8, 8))
    high = cube_image((14, 16), (28, 32), (24, 32))
    box = locate_box(bright_locator, high, scale_zyx=SCALE, margin_voxels=3, crop_zyx=(8, 8, 8))
    # y: [28, 32) - 3 -> [25, 32), grown to 8 -> [25, 33), shifted in -> [24, 32); x: [21, 32) is already 11
    assert box == Box((8, 24, 21), (16, 32, 32))
    # an edge with a margin that reaches past the image is clipped, no crop asked for
    box = locate_box(bright_locator, high, scale_zyx=SCALE, margin_voxels=30, crop_zyx=(1, 1, 1))
    assert box == Box((0, 0, 0), SHAPE)


def test_volume_smaller_than_the_crop_gets_a_larger_box_centred_on_it():
    image = cube_image((4, 8), (8, 16), (12, 20))
    box = locate_box(bright_locator, image, scale_zyx=SCALE, margin_voxels=0, crop_zyx=(20, 41, 33))
    # z: 16 < 20 -> 2 voxels of padding before, 2 after; y: 9 -> 4 before, 5 after; x: 1 -> 0 before, 1 after
    assert box == Box((-2, -4, 0), (18, 37, 33))
    crop = crop_box(image, box)
    assert crop.shape == (1, 20, 41, 33)
    assert torch.equal(crop[:, 2:18, 4:36, 0:32], image) and float(crop.sum()) == float(image.sum())


def test_indices_map_back_through_a_rounded_scale():
    # Y = 30 scaled by 0.25 is 7.5 -> 8 voxels of 3.75: scaled rows 2..3 cover full rows [7.5, 15) -> [7, 15)
    image = torch.zeros(1, 10, 30, 17)  # scaled (5, 8, 4): 17 * 0.25 = 4.25 -> 4
    mask = np.zeros((5, 8, 4), bool)
    mask[1:3, 2:4, 3] = True
    locator = mask_locator(mask, (5, 8, 4), divisor=4)
    box = locate_box(locator, image, scale_zyx=SCALE, margin_voxels=0, crop_zyx=(1, 1, 1), divisor=4)
    # z: rows 1..2 of 2 -> [2, 6); x: column 3 of 17 / 4 = 4.25 -> [12.75, 17) -> [12, 17)
    assert box == Box((2, 7, 12), (6, 15, 17))
    one_channel = mask_locator(mask, (5, 8, 4), k=1)
    assert locate_box(one_channel, image, scale_zyx=SCALE, margin_voxels=0, crop_zyx=(1, 1, 1)) == box


def test_nothing_found_is_none():
    assert locate_box(bright_locator, torch.zeros(1, *SHAPE), scale_zyx=SCALE) is None


def test_paste_back_matches_a_brute_force_loop():
    generator = torch.Generator().manual_seed(0)
    shape = (8, 12, 12)
    image = torch.rand(2, *shape, generator=generator)
    mask = np.zeros((4, 3, 3), bool)  # scaled (0.5, 0.25, 0.25) of (8, 12, 12)
    mask[3, 0, 1] = True  # full res z [6, 8), y [0, 4), x [4, 8)
    locator = mask_locator(mask, (4, 3, 3))
    seen = {}

    def segment(crop: torch.Tensor) -> torch.Tensor:
        seen["crop"] = crop.clone()
        weights = torch.softmax(torch.stack([crop[0], crop[1], crop[0] * crop[1]]), dim=0)
        return weights

    probabilities, info = locate_then_segment(locator, segment, image, scale_zyx=SCALE, margin_voxels=1,
                                              crop_zyx=(6, 5, 14))
    assert info == {"box_start_zyx": [2, 0, -1], "box_stop_zyx": [8, 5, 13], "found": True}
    crop = seen["crop"].numpy()
    start = info["box_start_zyx"]
    expected_crop = np.zeros((2, 6, 5, 14), np.float32)
    for i, j, k in itertools.product(range(6), range(5), range(14)):
        z, y, x = start[0] + i, start[1] + j, start[2] + k
        if 0 <= z < shape[0] and 0 <= y < shape[1] and 0 <= x < shape[2]:
            expected_crop[:, i, j, k] = image[:, z, y, x].numpy()
    np.testing.assert_array_equal(crop, expected_crop)
    out = segment(torch.from_numpy(expected_crop)).numpy()
    expected = np.zeros((3, *shape), np.float32)
    for z, y, x in itertools.product(*(range(n) for n in shape)):
        i, j, k = z - start[0], y - start[1], x - start[2]
        inside = 0 <= i < 6 and 0 <= j < 5 and 0 <= k < 14
        expected[:, z, y, x] = out[:, i, j, k] if inside else (1.0, 0.0, 0.0)
    assert probabilities.dtype == torch.float32 and probabilities.shape == (3, *shape)
    np.testing.assert_array_equal(probabilities.numpy(), expected)


def test_fallback_segments_the_whole_volume():
    image = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(1)) * 0.4  # nothing above 0.5
    calls = []

    def segment(crop: torch.Tensor) -> torch.Tensor:
        calls.append(crop)
        return torch.stack([1 - crop[0], crop[0]])

    probabilities, info = locate_then_segment(bright_locator, segment, image, scale_zyx=SCALE)
    assert len(calls) == 1 and torch.equal(calls[0], image)
    assert info == {"box_start_zyx": [0, 0, 0], "box_stop_zyx": list(SHAPE), "found": False}
    assert torch.equal(probabilities, torch.stack([1 - image[0], image[0]]))


def test_found_cube_is_segmented_in_place():
    image = cube_image((4, 8), (8, 16), (12, 20))
    probabilities, info = locate_then_segment(
        bright_locator, lambda crop: torch.cat([1 - crop, crop]), image, scale_zyx=SCALE, margin_voxels=2,
        crop_zyx=(8, 16, 16))
    assert info["found"] and info["box_start_zyx"] == [2, 4, 8]
    assert torch.equal(probabilities[1], image[0]) and torch.equal(probabilities.sum(0), torch.ones(SHAPE))


def test_bad_inputs_are_explained():
    with pytest.raises(SegCoreError, match=r"\(C, Z, Y, X\)"):
        locate_box(bright_locator, torch.zeros(*SHAPE))
    with pytest.raises(SegCoreError, match="crop_zyx"):
        locate_box(bright_locator, torch.zeros(1, *SHAPE), crop_zyx=(96, 144))
    with pytest.raises(SegCoreError, match="margin_voxels"):
        locate_box(bright_locator, torch.zeros(1, *SHAPE), margin_voxels=-1)
    with pytest.raises(SegCoreError, match="segmenter returned shape"):
        locate_then_segment(bright_locator, lambda crop: crop[:, :2], cube_image((4, 8), (8, 16), (12, 20)),
                            scale_zyx=SCALE, crop_zyx=(4, 4, 4))


@pytest.mark.gpu
def test_box_on_cuda_matches_cpu():
    image = cube_image((4, 8), (8, 16), (12, 20))
    options = {"scale_zyx": SCALE, "margin_voxels": 2, "crop_zyx": (11, 12, 16)}
    assert locate_box(bright_locator, image, device="cuda", **options) == locate_box(bright_locator, image,
                                                                                     **options)


@pytest.mark.parametrize("bright", [True, False])
def test_progress_is_one_step_per_network(bright):
    image = cube_image((4, 8), (8, 16), (12, 20)) * (1.0 if bright else 0.4)  # dim: nothing located
    events = []

    def segment(crop: torch.Tensor) -> torch.Tensor:
        assert events == [(1, 2)]  # the locator has reported before the segmenter runs
        return torch.cat([1 - crop, crop])

    locate_then_segment(bright_locator, segment, image, scale_zyx=SCALE, margin_voxels=2, crop_zyx=(8, 16, 16),
                        progress=lambda done, total: events.append((done, total)))
    assert events == [(1, 2), (2, 2)]


def test_the_predictor_reports_the_two_steps_as_infer_events(tmp_path):
    from inference_models import threshold_locator_pair, threshold_net_registered

    from SegCore.inference import Predictor
    from SegCore.volume import Grid, Volume

    with threshold_net_registered():
        locator, segmenter = threshold_locator_pair(tmp_path)
        image = np.zeros((16, 24, 24), np.float32)
        image[2:6, 2:6, 2:6] = 1.0
        events = []
        Predictor(segmenter, device="cpu", locator=locator, progress=events.append).predict(
            Volume(image, Grid((16, 24, 24), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3))))))
    assert [(e.stage, e.step, e.total) for e in events if e.stage == "infer"] == [("infer", 1, 2), ("infer", 2, 2)]
