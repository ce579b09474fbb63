"""Sliding-window inference and the network helpers, against brute force, scipy and whole-volume forwards."""

from __future__ import annotations

import itertools
import mmap
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import scipy.special
import torch

from SegCore.errors import SegCoreError
from SegCore.inference.network import class_indices, pad_to_multiple, probabilities
from SegCore.inference.windows import SlidingWindow, gaussian_importance, window_starts


def _pointwise_net(channels_in: int = 1, classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """A 1x1x1 convolution: the logits of a voxel depend on that voxel only, so stitching must be exact."""
    torch.manual_seed(seed)
    return torch.nn.Conv3d(channels_in, classes, kernel_size=1).eval()


def _image(shape_czyx, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape_czyx).astype(np.float32))


# --- network.py ---------------------------------------------------------------------------------------------------

def test_probabilities_softmax_and_one_channel_sigmoid():
    logits = np.random.default_rng(0).normal(scale=3, size=(2, 4, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(probabilities(torch.from_numpy(logits)).numpy(), scipy.special.softmax(logits, axis=1),
                               rtol=1e-5, atol=1e-7)
    one = torch.from_numpy(logits[:, :1]).half()
    probs = probabilities(one)
    assert probs.dtype == torch.float32 and probs.shape == (2, 2, 3, 5)
    p = scipy.special.expit(one.float().numpy()[:, 0])
    np.testing.assert_allclose(probs[:, 1].numpy(), p, rtol=1e-6)
    np.testing.assert_allclose(probs[:, 0].numpy(), 1 - p, rtol=1e-5, atol=1e-7)


def test_pad_to_multiple_pads_the_ends_and_reports_the_sizes():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    padded, sizes = pad_to_multiple(x, 4, 2)
    assert sizes == (5, 7)
    expected = np.pad(x.numpy(), [(0, 0), (0, 0), (0, 3), (0, 1)])
    np.testing.assert_array_equal(padded.numpy(), expected)
    same, sizes = pad_to_multiple(padded, 4, 3)  # already multiples (the channel axis 2 counts here: 2 -> 4)
    assert sizes == (2, 8, 8) and same.shape == (1, 4, 8, 8)
    untouched, _ = pad_to_multiple(padded, 4, 2)
    assert untouched is padded


# --- window_starts ------------------------------------------------------------------------------------------------

def _fewest_windows(size: int, patch: int, overlap: str) -> int:
    """Brute force, in exact arithmetic: the smallest n whose evenly spread step is at most the allowed step."""
    step = max(patch * (1 - Fraction(overlap)), Fraction(1))
    n = 1
    while n == 1 and size > patch or n > 1 and Fraction(size - patch, n - 1) > step:
        n += 1
    return n


@pytest.mark.parametrize("overlap", ["0", "0.1", "0.25", "0.5", "0.7", "0.9", "0.99"])
def test_window_starts_follow_the_rule_and_cover_every_voxel(overlap):
    for patch in (1, 2, 5, 8, 13):
        for size in range(1, 40):
            starts = window_starts(size, patch, float(overlap))
            assert len(starts) == _fewest_windows(size, patch, overlap), (size, patch, overlap)
            assert starts[0] == 0
            if size <= patch:
                assert starts == [0]
                continue
            assert starts[-1] == size - patch and starts == sorted(set(starts))
            n = len(starts)
            assert starts == [round(Fraction(i * (size - patch), n - 1)) for i in range(n)]
            covered = np.zeros(size, dtype=int)
            for start in starts:
                covered[start:start + patch] += 1
            assert covered.min() >= 1


def test_window_starts_match_nnunet_on_a_typical_axis():
    # nnU-Net v2 compute_steps_for_sliding_window((300,), (128,), 0.5) by hand: n = ceil(172 / 64) + 1 = 4,
    # step 172 / 3 = 57.33 -> 0, 57, 115, 172
    assert window_starts(300, 128, 0.5) == [0, 57, 115, 172]


# --- gaussian_importance ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [(8, 12, 10), (5, 7, 9), (16, 16, 16)])
def test_gaussian_importance_is_scipys_gaussian_outer_product(patch):
    g = gaussian_importance(patch, 0.125)
    assert g.dtype == torch.float32 and tuple(g.shape) == patch
    wz, wy, wx = (scipy.signal.windows.gaussian(n, std=0.125 * n) for n in patch)
    expected = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
    np.testing.assert_allclose(g.numpy(), expected / expected.max(), rtol=1e-6)
    assert float(g.max()) == pytest.approx(1.0)
    assert gaussian_importance(list(patch), 0.125) is g  # cached


def test_gaussian_importance_replaces_zeros_by_the_smallest_weight():
    g = gaussian_importance((32, 32, 32), 0.01).numpy()  # the far corners underflow float32
    wz = scipy.signal.windows.gaussian(32, std=0.32)
    exact = wz[:, None, None] * wz[None, :, None] * wz[None, None, :]
    exact = (exact / exact.max()).astype(np.float32)
    normal = exact >= np.finfo(np.float32).tiny
    assert (exact == 0).any() and g.min() > 0
    np.testing.assert_allclose(g[normal], exact[normal], rtol=1e-6)
    assert (g[exact == 0] == g.min()).all()  # the zeros became the smallest non-zero weight
    assert np.isclose(g.min(), exact[exact > 0].min(), rtol=0.05)  # a float32 subnormal: a few bits only


# --- stitching ----------------------------------------------------------------------------------------------------

def test_pointwise_net_through_windows_equals_the_whole_volume():
    net = _pointwise_net()
    image = _image((1, 20, 30, 25))
    expected = probabilities(net(image[None]))[0]
    for batch in (1, 3):
        probs = SlidingWindow([8, 12, 10], overlap=0.5, batch=batch)(net, image, device="cpu")
        assert probs.dtype == torch.float32 and probs.device.type == "cpu" and probs.shape == (3, 20, 30, 25)
        torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)


def _window_net(x: torch.Tensor) -> torch.Tensor:
    """Logits that depend on the window's content (its mean), so windows disagree and the weights matter."""
    means = x.mean(dim=(1, 2, 3, 4), keepdim=True)
    return torch.cat([x * 0, x * means * 4, x + means], dim=1)


def test_window_dependent_net_is_the_gaussian_weighted_average():
    image = _image((1, 13, 17, 11), seed=1)
    patch, overlap = (6, 8, 5), 0.5
    probs = SlidingWindow(list(patch), overlap=overlap, sigma_scale=0.125)(_window_net, image, device="cpu")
    # Oracle: loop over every window in float64 with scipy's Gaussian, weighted sum / summed weights
    volume = image.numpy().astype(np.float64)
    g = np.ones(patch)
    for axis, n in enumerate(patch):
        shape = [1, 1, 1]
        shape[axis] = n
        g = g * scipy.signal.windows.gaussian(n, std=0.125 * n).reshape(shape)
    total, weight = np.zeros((3, *volume.shape[1:])), np.zeros(volume.shape[1:])
    for z in window_starts(13, 6, overlap):
        for y in window_starts(17, 8, overlap):
            for x in window_starts(11, 5, overlap):
                box = (slice(z, z + 6), slice(y, y + 8), slice(x, x + 5))
                window = volume[(slice(None), *box)]
                mean = window.mean()
                logits = np.concatenate([window * 0, window * mean * 4, window + mean])
                total[(slice(None), *box)] += scipy.special.softmax(logits, axis=0) * g
                weight[box] += g
    np.testing.assert_allclose(probs.numpy(), total / weight, rtol=1e-5, atol=1e-6)


def test_input_smaller_than_the_patch_is_padded_to_the_divisor_and_cropped_back():
    net = _pointwise_net(channels_in=2, classes=1)
    image = _image((2, 5, 30, 7), seed=2)
    shapes = []

    def net_fn(x):
        shapes.append(tuple(x.shape))
        return net(x)

    probs = SlidingWindow([8, 12, 10], overlap=0.25)(net_fn, image, device="cpu", divisor=4)
    assert {s[2:] for s in shapes} == {(8, 12, 12)}  # x: 10 -> 12, z and x padded up to the patch
    assert len(shapes) == 3  # y: 30 along windows of 12 with step <= 9 -> starts 0, 9, 18
    torch.testing.assert_close(probs, probabilities(net(image[None]))[0], rtol=1e-5, atol=1e-6)


def test_stitching_on_the_cpu_equals_stitching_on_the_device():
    image = _image((1, 14, 18, 16), seed=3)
    on_device = SlidingWindow([8, 8, 8], batch=2, stitch="device")(_window_net, image, device="cpu")
    on_cpu = SlidingWindow([8, 8, 8], batch=2, stitch="cpu")(_window_net, image, device="cpu")
    torch.testing.assert_close(on_device, on_cpu, rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_stitching_matches_cpu_stitching():
    image = _image((1, 40, 48, 44), seed=4)
    window = SlidingWindow([16, 24, 20], batch=2, stitch="device")
    on_cuda = window(_window_net, image, device="cuda")
    on_cpu = SlidingWindow([16, 24, 20], batch=2, stitch="cpu")(_window_net, image, device="cuda")
    reference = SlidingWindow([16, 24, 20], batch=2)(_window_net, image, device="cpu")
    assert on_cuda.device.type == "cpu" and on_cuda.dtype == torch.float32 and window.events == []
    torch.testing.assert_close(on_cuda, reference, rtol=0, atol=2e-3)  # float16 accumulator
    torch.testing.assert_close(on_cpu, reference, rtol=1e-5, atol=1e-6)


def test_progress_reports_every_batch():
    calls = []
    SlidingWindow([8, 8, 8], overlap=0.0, batch=3)(_window_net, _image((1, 16, 16, 16)), device="cpu",
                                      progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 8), (6, 8), (8, 8)]  # 2 x 2 x 2 windows


# --- labels in bands (argmax=True) ---------------------------------------------------------------------------------

def test_class_indices_are_torchs_argmax_ties_included():
    rng = np.random.default_rng(0)
    for classes, shape in ((1, (5, 4)), (2, (7, 5, 3)), (3, (40, 3, 2)), (5, (33, 4, 1)), (300, (3, 4))):
        scores = torch.from_numpy(np.round(rng.random((classes, *shape)) * 3).astype(np.float32))  # many ties
        index = class_indices(scores, slab=4)
        assert index.dtype == (torch.uint8 if classes <= 256 else torch.int32) and index.shape == shape
        assert torch.equal(index.long(), scores.argmax(0)), classes  # the first largest class, as argmax


@pytest.mark.parametrize("net, patch, shape", [
    (_window_net, [6, 8, 5], (1, 31, 17, 11)),            # 3 classes, windows disagree, 9 z-rows
    (_window_net, [8, 8, 8], (1, 5, 30, 7)),              # smaller than the patch along z and x: padded, cropped
    (lambda x: torch.round(_window_net(x) * 2) / 2, [4, 6, 6], (1, 13, 12, 12)),  # coarse logits: ties
    (_pointwise_net(classes=1), [5, 8, 8], (1, 16, 9, 10)),  # one sigmoid channel: 2 classes
])
def test_labels_in_bands_are_exactly_the_argmax_of_the_probabilities(net, patch, shape):
    image = _image(shape, seed=8)
    for overlap, batch in ((0.5, 1), (0.0, 3), (0.75, 2)):
        window = SlidingWindow(patch, overlap=overlap, batch=batch)
        probs = window(net, image, device="cpu")
        index = window(net, image, device="cpu", argmax=True)
        assert index.dtype == torch.uint8 and index.shape == shape[1:] and window.classes == probs.shape[0]
        assert torch.equal(index.long(), probs.argmax(0)), (overlap, batch)


@pytest.mark.gpu
def test_labels_in_bands_on_cuda_are_the_argmax_of_cudas_probabilities():
    image = _image((1, 40, 48, 44), seed=4)
    window = SlidingWindow([16, 24, 20], batch=2, stitch="device")
    probs = window(_window_net, image, device="cuda")  # from the float16 accumulator, exactly widened
    index = window(_window_net, image, device="cuda", argmax=True)
    assert index.device.type == "cpu" and torch.equal(index.long(), probs.argmax(0))


def test_labels_in_bands_survive_the_memory_fallback():
    image = _image((1, 21, 20, 16), seed=9)
    expected = SlidingWindow([8, 8, 8])(_window_net, image, device="cpu").argmax(0)
    calls = []

    def flaky(x):
        calls.append(x.shape[0])
        if len(calls) in (4, 9):  # in the middle of a z-row of windows, then again later
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return _window_net(x)

    window = SlidingWindow([8, 8, 8], batch=3, stitch="device")
    assert torch.equal(window(flaky, image, device="cpu", argmax=True).long(), expected)
    assert window.stitch == "cpu" and window.batch == 1


def _brute_force_probabilities(volume: np.ndarray, patch, overlap: float, logits_fn) -> np.ndarray:
    """(K', Z, Y, X) float64: every window's probabilities (softmax, or [1 - p, p] for one logit channel) weighted
    by scipy's Gaussian, summed and divided by the summed weights, window by window."""
    g = np.ones(patch)
    for axis, n in enumerate(patch):
        shape = [1, 1, 1]
        shape[axis] = n
        g = g * scipy.signal.windows.gaussian(n, std=0.125 * n).reshape(shape)
    total, weight = None, np.zeros(volume.shape[1:])
    axes = zip(volume.shape[1:], patch, strict=True)
    for box in itertools.product(*([slice(s, s + p) for s in window_starts(n, p, overlap)] for n, p in axes)):
        logits = logits_fn(volume[(slice(None), *box)])
        if logits.shape[0] == 1:
            probs = np.concatenate([scipy.special.expit(-logits), scipy.special.expit(logits)])
        else:
            probs = scipy.special.softmax(logits, axis=0)
        total = np.zeros((probs.shape[0], *volume.shape[1:])) if total is None else total
        total[(slice(None), *box)] += probs * g
        weight[box] += g
    return total / weight


@pytest.mark.parametrize("classes, device", [
    (1, "cpu"), (2, "cpu"), pytest.param(2, "cuda", marks=pytest.mark.gpu)])
def test_two_classes_in_bands_are_the_float64_argmax_of_the_weighted_average(classes, device):
    # one channel in the band (the weighted sum of p1 - p0; float16 on CUDA): the labels of a float64 average
    image = _image((1, 29, 21, 18), seed=10)
    patch = (6, 8, 7)

    def logits_np(window):  # content-dependent, so that windows disagree
        mean = window.mean()
        two = np.concatenate([window * mean * 3, window + mean])
        return two[1:] - two[:1] if classes == 1 else two

    def net(x):
        means = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        two = torch.cat([x * means * 3, x + means], dim=1)
        return two[:, 1:] - two[:, :1] if classes == 1 else two

    exact = _brute_force_probabilities(image.numpy().astype(np.float64), patch, 0.5, logits_np)
    margin = np.abs(exact[1] - exact[0])
    for batch in (1, 4):
        window = SlidingWindow(list(patch), overlap=0.5, batch=batch)
        index = window(net, image, device=device, argmax=True).numpy()
        assert index.dtype == np.uint8 and window.classes == 2
        clear = margin > (1e-5 if device == "cpu" else 1e-2)  # away from float32 (float16) rounding of the sums
        assert clear.mean() > (0.999 if device == "cpu" else 0.98) and 0.1 < index.mean() < 0.9
        np.testing.assert_array_equal(index[clear], (exact[1] > exact[0])[clear])


def test_release_slices_hands_the_pages_back_and_leaves_the_rest():
    from SegCore.inference.windows import release_slices

    t = torch.ones(2, 64, 128, 128)  # 2 x 4 MB per channel, past malloc's mmap threshold
    if not sys.platform.startswith("linux"):
        assert not release_slices(t, 32) and bool((t == 1).all())  # elsewhere the image simply stays
        return

    def rss() -> int:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) * 1024

    before = rss()
    assert release_slices(t, 32)
    assert before - rss() > 0.9 * t[:, :32].numel() * 4  # half of each channel: 8 MB back to the system
    assert bool((t[:, 32:] == 1).all())  # the slices still ahead are untouched
    page = mmap.PAGESIZE // 4  # what may stay of a page shared with the slices ahead or the allocation's start
    assert int((t[:, :32] != 0).sum()) <= 2 * 2 * page
    assert not release_slices(t[:, :, ::2], 64) and not release_slices(t, 0)  # not contiguous; nothing asked


@pytest.mark.parametrize("classes", [2, 4])
def test_a_discarded_image_gives_the_same_labels(classes):
    net = _pointwise_net(classes=classes) if classes == 4 else _window_net
    image = _image((1, 40, 48, 40), seed=11)  # slices of 7.5 kB: whole pages released behind every row
    window = SlidingWindow([8, 16, 16], overlap=0.5, batch=3)
    expected = window(net, image, device="cpu", argmax=True)
    given = image.clone()
    index = window(net, given, device="cpu", argmax=True, discard_image=True)
    assert torch.equal(index, expected)
    if sys.platform.startswith("linux"):
        assert int((given != 0).sum()) < given.numel() // 10  # released; the rest lies in partial pages


# --- out of memory ------------------------------------------------------------------------------------------------

def test_out_of_memory_moves_stitching_then_halves_the_batch_and_remembers():
    image = _image((1, 16, 20, 16), seed=5)
    expected = SlidingWindow([8, 8, 8])(_window_net, image, device="cpu")
    batches = []

    def small_memory(x):
        batches.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return _window_net(x)

    window = SlidingWindow([8, 8, 8], batch=4, stitch="device")
    probs = window(small_memory, image, device="cpu")
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)
    assert batches[:3] == [4, 4, 2] and set(batches[3:]) == {1}
    assert window.stitch == "cpu" and window.batch == 1
    assert window.events == ["out of GPU memory: stitching moved to the CPU",
                             "out of GPU memory: sliding-window batch 4 -> 2",
                             "out of GPU memory: sliding-window batch 2 -> 1"]
    batches.clear()
    torch.testing.assert_close(window(small_memory, image, device="cpu"), expected, rtol=0, atol=0)
    assert set(batches) == {1} and len(window.events) == 3  # the next case starts where the last one ended


def test_a_failure_after_some_windows_never_counts_them_twice():
    image = _image((1, 16, 20, 16), seed=6)
    expected = SlidingWindow([8, 8, 8], batch=2, stitch="cpu")(_window_net, image, device="cpu")
    calls = []

    def flaky(x):
        calls.append(x.shape[0])
        if len(calls) == 3:  # after two batches were stitched
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return _window_net(x)

    window = SlidingWindow([8, 8, 8], batch=2, stitch="cpu")
    torch.testing.assert_close(window(flaky, image, device="cpu"), expected, rtol=0, atol=0)
    assert window.batch == 1 and sum(calls) - calls[2] == 36  # 3 x 4 x 3 windows, each stitched once


def test_out_of_memory_at_batch_one_on_the_cpu_is_a_segcore_error():
    def no_memory(x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")

    window = SlidingWindow([8, 8, 8], batch=2)
    with pytest.raises(SegCoreError, match="out of GPU memory even with batch 1.*--device cpu"):
        window(no_memory, _image((1, 8, 8, 8)), device="cpu")
    assert len(window.events) == 2


def test_bad_arguments_and_outputs_are_segcore_errors():
    with pytest.raises(SegCoreError, match="patch_zyx"):
        SlidingWindow([8, 8])
    with pytest.raises(SegCoreError, match="overlap"):
        SlidingWindow([8, 8, 8], overlap=1.0)
    with pytest.raises(SegCoreError, match="stitch"):
        SlidingWindow([8, 8, 8], stitch="gpu")
    with pytest.raises(SegCoreError, match=r"\(C, Z, Y, X\)"):
        SlidingWindow([8, 8, 8])(_window_net, torch.zeros(8, 8, 8), device="cpu")
    with pytest.raises(SegCoreError, match="logits"):
        SlidingWindow([8, 8, 8])(lambda x: x[:, :, :4], torch.zeros(1, 8, 8, 8), device="cpu")


def test_a_real_checkpointed_network_runs_through_the_window(tmp_path):
    from inference_models import tiny_checkpoint

    from SegCore.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_checkpoint(tmp_path / "unet3d.pt", "unet3d"))
    model = checkpoint.build_model("cpu").eval()
    divisor = getattr(model, "divisor", 1)
    image = _image((model.in_channels, 18, 21, 19), seed=7)
    with torch.inference_mode():
        probs = SlidingWindow([16, 16, 16], batch=2)(model, image, device="cpu", divisor=divisor)
    assert probs.shape[1:] == (18, 21, 19) and probs.shape[0] >= 2
    torch.testing.assert_close(probs.sum(0), torch.ones(18, 21, 19), rtol=0, atol=1e-5)
