"""Slice-by-slice, 2.5D and three-view inference, against hand loops over slices and distill's teacher_forward."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special
import torch

from SegCore.errors import SegCoreError
from SegCore.inference.slices import AXES, predict_slices, predict_views


def _image(shape_czyx, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape_czyx).astype(np.float32))


def _conv_net(channels_in: int = 1, classes: int = 3, size: int = 3, seed: int = 0) -> torch.nn.Module:
    """A seeded 2D convolution with in-plane context, so the three views give different answers."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(channels_in, classes, size, padding=size // 2).eval()


def _by_hand(net, image: np.ndarray, axis: int) -> np.ndarray:
    """(K, Z, Y, X) float64: softmax of `net` on every single slice along `axis`, one slice at a time."""
    out = None
    for i in range(image.shape[axis + 1]):
        plane = np.take(image, i, axis=axis + 1)  # (C, H, W)
        with torch.no_grad():
            logits = net(torch.from_numpy(plane[None])).numpy()[0].astype(np.float64)
        if out is None:
            out = np.zeros((logits.shape[0], *image.shape[1:]))
        index = [slice(None)] * 4
        index[axis + 1] = i
        out[tuple(index)] = scipy.special.softmax(logits, axis=0)
    return out


def test_axes_are_the_samplers():
    assert AXES == {"axial": 0, "coronal": 1, "sagittal": 2}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_toy_net_gives_its_hand_known_probabilities(axis):
    image = _image((1, 4, 5, 6))
    two = predict_slices(lambda x: torch.cat([torch.zeros_like(x), 2 * x], 1), image, axis=axis, batch=3,
                         device="cpu")
    foreground = scipy.special.expit(2 * image.numpy()[0])
    assert two.shape == (2, 4, 5, 6) and two.dtype == torch.float32
    np.testing.assert_allclose(two[1].numpy(), foreground, rtol=1e-6)
    one = predict_slices(lambda x: 2 * x, image, axis=axis, device="cpu")  # one channel: sigmoid, [1 - p, p]
    np.testing.assert_allclose(one[1].numpy(), foreground, rtol=1e-6)
    np.testing.assert_allclose(one[0].numpy(), 1 - foreground, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_view_equals_a_hand_loop_over_slices(axis):
    net, image = _conv_net(), _image((1, 6, 7, 8), seed=1)
    probs = predict_slices(net, image, axis=axis, batch=4, device="cpu")
    np.testing.assert_allclose(probs.numpy(), _by_hand(net, image.numpy(), axis), rtol=1e-5, atol=1e-6)


def test_stack25d_channels_are_k_neighbours_with_zeros_past_the_ends():
    image = _image((2, 5, 3, 4), seed=2)
    seen = []

    def reader(x):
        seen.append(x.clone())
        return x[:, :2]

    predict_slices(reader, image, axis=1, k=3, batch=2, device="cpu")  # coronal: slices along y
    stacks = torch.cat(seen)  # (Y, C * k, Z, X)
    assert stacks.shape == (3, 6, 5, 4)
    volume = image.numpy()
    for i in range(3):
        for c in range(2):
            for j in range(3):
                s = i - 1 + j
                expected = volume[c, :, s, :] if 0 <= s < 3 else np.zeros((5, 4), np.float32)
                np.testing.assert_array_equal(stacks[i, c * 3 + j].numpy(), expected)


@pytest.mark.parametrize("axis_name", ["axial", "coronal", "sagittal"])
def test_stack25d_layout_is_teacher_forwards(axis_name):
    from SegCore.training.distill import teacher_forward

    image = _image((2, 6, 5, 7), seed=3)
    identity = torch.nn.Identity()  # class m = input channel m: the label says which channel was largest
    teacher = teacher_forward(identity, image.numpy(), spatial_dims=2,
                              sampler={"kind": "stack25d", "axis": axis_name, "k": 5}, batch_size=3)
    probs = predict_slices(identity, image, axis=AXES[axis_name], k=5, batch=4, device="cpu")
    assert probs.shape[0] == 10
    np.testing.assert_array_equal(probs.argmax(0).numpy(), teacher)


def test_in_plane_sides_are_padded_to_the_divisor_and_cropped_back():
    net = _conv_net(classes=2, size=1)  # pointwise: padding must not change anything
    image = _image((1, 9, 13, 11), seed=4)
    expected = _by_hand(net, image.numpy(), 0)

    def strict(x):
        assert x.shape[2] % 8 == 0 and x.shape[3] % 8 == 0
        return net(x)

    for axis in (0, 1, 2):
        probs = predict_slices(strict, image, axis=axis, divisor=8, device="cpu")
        np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_batch_size_does_not_change_the_result():
    net, image = _conv_net(channels_in=3), _image((1, 7, 6, 5), seed=5)
    one = predict_slices(net, image, axis=2, k=3, batch=1, device="cpu")
    many = predict_slices(net, image, axis=2, k=3, batch=4, device="cpu")
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)


def test_mean_fusion_is_the_average_of_the_three_views():
    net, image = _conv_net(), _image((1, 6, 7, 8), seed=6)
    views = ["axial", "coronal", "sagittal"]
    fused = predict_views(net, image, views=views, fusion="mean", batch=3, device="cpu")
    by_hand = np.mean([_by_hand(net, image.numpy(), AXES[v]) for v in views], axis=0)
    np.testing.assert_allclose(fused.numpy(), by_hand, rtol=1e-5, atol=1e-6)
    single = predict_views(net, image, views=["coronal"], device="cpu")
    np.testing.assert_allclose(single.numpy(), _by_hand(net, image.numpy(), 1), rtol=1e-5, atol=1e-6)


def test_vote_fusion_is_the_majority_label_ties_by_mean_probability():
    net, image = _conv_net(seed=7), _image((1, 8, 9, 10), seed=7)
    views = ["axial", "coronal", "sagittal"]
    fused = predict_views(net, image, views=views, fusion="vote", batch=5, device="cpu").numpy()
    each = np.stack([_by_hand(net, image.numpy(), AXES[v]) for v in views])  # (V, K, Z, Y, X)
    votes = np.stack([(each.argmax(1) == c).sum(0) for c in range(3)])  # (K, Z, Y, X)
    mean = each.mean(0)
    leaders = votes == votes.max(0)
    majority = np.where(leaders, mean, -np.inf).argmax(0)
    ranked = np.sort(np.where(leaders, mean, -np.inf), axis=0)
    clear = ranked[-1] - ranked[-2] > 1e-3  # leaves out near-ties of the mean among tied labels
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(fused.argmax(0)[clear], majority[clear])
    np.testing.assert_allclose(fused, votes / 3, atol=1e-3)
    np.testing.assert_allclose(fused.sum(0), 1, atol=1e-5)
    three_way = leaders.sum(0) == 3  # every view a different label: the mean decides
    overruled = majority != mean.argmax(0)  # the majority differs from the mean fusion
    assert three_way.any() and overruled.any()


def test_bad_views_fusion_or_k_are_segcore_errors():
    image = _image((1, 3, 3, 3))
    with pytest.raises(SegCoreError, match="views"):
        predict_views(lambda x: x, image, views=["axial", "frontal"], device="cpu")
    with pytest.raises(SegCoreError, match="views"):
        predict_views(lambda x: x, image, views=["axial", "axial"], device="cpu")
    with pytest.raises(SegCoreError, match="fusion"):
        predict_views(lambda x: x, image, views=["axial"], fusion="max", device="cpu")
    with pytest.raises(SegCoreError, match="odd"):
        predict_slices(lambda x: x, image, axis=0, k=2, device="cpu")
    with pytest.raises(SegCoreError, match="logits"):
        predict_slices(lambda x: x[0], image, axis=0, device="cpu")


def test_a_real_checkpointed_2d_network_runs_slice_by_slice(tmp_path):
    from inference_models import tiny_checkpoint

    from SegCore.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_checkpoint(tmp_path / "unet2d.pt", "unet2d"))
    model = checkpoint.build_model("cpu").eval()
    image = _image((model.in_channels, 5, 19, 21), seed=8)
    with torch.inference_mode():
        probs = predict_views(model, image, views=["axial", "sagittal"], batch=4,
                              divisor=getattr(model, "divisor", 1), device="cpu")
    assert probs.shape[1:] == (5, 19, 21) and probs.shape[0] >= 2
    torch.testing.assert_close(probs.sum(0), torch.ones(5, 19, 21), rtol=0, atol=1e-5)


def test_progress_counts_slices_done_over_all_views_by_batch():
    """Axial (6 slices) then coronal (7), batches of 4: by hand 4, 6 | 6 + 4, 6 + 7 of 13."""
    net, image = _conv_net(), _image((1, 6, 7, 8), seed=2)
    events = []
    with_progress = predict_views(net, image, views=["axial", "coronal"], batch=4, device="cpu",
                                  progress=lambda done, total: events.append((done, total)))
    assert events == [(4, 13), (6, 13), (10, 13), (13, 13)]
    torch.testing.assert_close(with_progress, predict_views(net, image, views=["axial", "coronal"], batch=4,
                                                            device="cpu"), rtol=0, atol=0)


def test_segcore_predict_progress_json_reports_the_slices_of_a_2d_checkpoint(tmp_path):
    """The real CLI on a tiny 2D (coronal) checkpoint: its `infer` events rise to their total, then the result."""
    import json
    import subprocess
    import sys

    from inference_models import tiny_checkpoint
    from training_runs import ENV, REPO

    from SegCore.io import write_image
    from SegCore.volume import Grid, Volume

    model = tiny_checkpoint(tmp_path / "u2d.pt", "unet2d", plan={"sampler": {"axis": "coronal"},
                                                                "data": {"channels": ["FLAIR"]}},
                           size_zyx=(32, 40, 40))
    grid = Grid((6, 11, 9), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3))))
    source = write_image(Volume(_image((1, *grid.shape_zyx), seed=3).numpy()[0] * 50 + 100, grid),
                         tmp_path / "case.nii.gz")
    result = subprocess.run([sys.executable, "-m", "SegCore", "--progress", "json", "predict", "--device", "cpu",
                             "--no-tta", "--model", str(model), "--input", str(source), "--output",
                             str(tmp_path / "pred.nii.gz")], capture_output=True, text=True, timeout=180, env=ENV,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    infer = [(e["step"], e["total"]) for e in events if e["event"] == "progress" and e["stage"] == "infer"]
    assert infer and len({total for _, total in infer}) == 1
    steps = [step for step, _ in infer]
    assert steps == sorted(steps) and steps[-1] == infer[0][1] and steps[0] > 0
    assert events[-1]["event"] == "result"
