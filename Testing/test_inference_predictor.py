"""The Predictor end to end on real checkpoints: geometry, TTA, ensembles, input checks (SegCore/inference)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from inference_models import threshold_locator_pair, threshold_net_registered, tiny_checkpoint

from SegCore.errors import SegCoreError
from SegCore.inference import Predictor, check_input, read_input
from SegCore.io import write_image
from SegCore.transforms import Preprocessing
from SegCore.volume import Grid, Volume, to_sitk

GEOMETRY_STEPS = [{"name": "reorient"}, {"name": "resample", "spacing_xyz_mm": [1.5, 1.5, 1.5], "image_order": 1},
                  {"name": "pad", "multiple_zyx": [8, 8, 8]}]


@pytest.fixture(scope="module")
def threshold_model(tmp_path_factory):
    """A checkpoint of the pointwise ThresholdNet (class 1 where the image > 0.5) behind reorient + resample."""
    folder = tmp_path_factory.mktemp("threshold")
    with threshold_net_registered():
        path = tiny_checkpoint(folder / "threshold.pt", "threshold_net", plan={
            "model": {"arguments": {"threshold": 0.5}}, "data": {"channels": ["FLAIR"]},
            "preprocessing": GEOMETRY_STEPS, "sampler": {"kind": "patch3d", "patch_zyx": [8, 8, 8]},
            "loss": {"name": "dice_ce"}})
        yield path


def _blob(grid: Grid) -> Volume:
    """A smooth bump in physical space (so every grid sees the same object), values 0..1."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.shape_zyx], indexing="ij")
    ijk = np.stack([i, j, k, np.ones_like(i)], -1).reshape(-1, 4).T
    lps = (grid.ijk_to_lps() @ ijk)[:3].T.reshape(*grid.shape_zyx, 3)
    centre = grid.ijk_to_lps() @ np.array([*(np.array(grid.shape_zyx[::-1]) - 1) / 2, 1])
    r2 = (((lps - centre[:3]) / np.array([9.0, 7.0, 6.0])) ** 2).sum(-1)
    return Volume(np.exp(-r2).astype(np.float32), grid)


@pytest.mark.parametrize("case", ["oblique", "flipped", "anisotropic"])
def test_the_label_lands_on_the_input_grid_as_simpleitk_resamples_it(threshold_model, oblique_direction, case):
    direction = {"oblique": oblique_direction, "flipped": np.diag([-1.0, 1.0, -1.0]),
                 "anisotropic": np.eye(3)}[case]
    spacing = {"oblique": (1.1, 0.9, 2.0), "flipped": (1.05, 0.95, 1.2), "anisotropic": (0.7, 0.85, 3.1)}[case]
    grid = Grid((13, 27, 31), spacing, (-20.0, 14.0, 33.0), tuple(map(tuple, direction)))
    image = _blob(grid)
    with threshold_net_registered():
        prediction = Predictor(threshold_model, device="cpu", settings={"tta": False}).predict(image)
    assert prediction.label.grid == image.grid  # exactly: the same size, spacing, origin and direction
    # The oracle: SimpleITK resamples the image onto the network's grid (linear), the threshold is applied there,
    # and SimpleITK resamples that label back onto the input grid (nearest).
    network_grid = Preprocessing(GEOMETRY_STEPS).output_grid(image.grid)
    reference = to_sitk(Volume(np.zeros(network_grid.shape_zyx, np.float32), network_grid))
    on_network = sitk.Resample(to_sitk(image), reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    label_network = sitk.Cast(on_network > 0.5, sitk.sitkUInt8)
    back = sitk.GetArrayFromImage(sitk.Resample(label_network, to_sitk(image), sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0))
    assert back.sum() > 50
    agreement = np.mean(back == prediction.label.array)
    assert agreement > 0.995, agreement


def test_mirroring_a_mirror_equivariant_network_changes_nothing(threshold_model):
    image = _blob(Grid((12, 20, 22), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3)))))
    with threshold_net_registered():
        plain = Predictor(threshold_model, device="cpu", settings={"tta": False}).predict(image, probabilities=True)
        mirrored = Predictor(threshold_model, device="cpu", settings={"tta": True}).predict(
            image, probabilities=True, uncertainty=True)
    assert mirrored.info["passes"] == 8 and plain.info["passes"] == 1
    np.testing.assert_array_equal(plain.label.array, mirrored.label.array)
    np.testing.assert_allclose(plain.probabilities.array.astype(np.float32),
                               mirrored.probabilities.array.astype(np.float32), atol=2e-3)
    assert plain.probabilities.array.dtype == np.float16 and plain.probabilities.grid == image.grid
    assert mirrored.uncertainty.grid == image.grid and mirrored.uncertainty.array.dtype == np.float32


def test_variance_over_identical_passes_is_zero_and_entropy_is_that_of_the_mean(threshold_model):
    image = _blob(Grid((12, 20, 22), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3)))))
    with threshold_net_registered():
        variance = Predictor(threshold_model, device="cpu", settings={"tta": True, "uncertainty": "variance"}
                             ).predict(image, uncertainty=True)
        entropy = Predictor(threshold_model, device="cpu", settings={"tta": False}).predict(
            image, probabilities=True, uncertainty=True)
    assert np.abs(variance.uncertainty.array).max() < 1e-6
    p = entropy.probabilities.array.astype(np.float64).clip(1e-8, 1)
    np.testing.assert_allclose(entropy.uncertainty.array, -(p * np.log(p)).sum(0), atol=5e-3)


def test_an_ensemble_of_two_identical_checkpoints_equals_one(tmp_path):
    first = tiny_checkpoint(tmp_path / "a.pt", "unet3d", seed=3)
    second = tmp_path / "b.pt"
    second.write_bytes(first.read_bytes())
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(size=(4, 18, 30, 26)).astype(np.float32),
                   Grid((18, 30, 26), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3)))))
    torch.manual_seed(0)
    one = Predictor(first, device="cpu", settings={"tta": False}).predict(image, probabilities=True)
    events = []
    two = Predictor([first, second], device="cpu", settings={"tta": False}, progress=events.append).predict(
        image, probabilities=True)
    # one bar over both members: steps rise to the total once (not back to 0 at the second member)
    steps = [(e.step, e.total) for e in events if e.stage == "infer"]
    windows = steps[0][1] // 2
    assert steps[-1] == (2 * windows, 2 * windows) and [s for s, _ in steps] == sorted({s for s, _ in steps})
    assert {e.message for e in events if e.stage == "infer"} == {"pass 1 of 2", "pass 2 of 2"}
    np.testing.assert_array_equal(one.label.array, two.label.array)
    np.testing.assert_allclose(one.probabilities.array.astype(np.float32),
                               two.probabilities.array.astype(np.float32), atol=1e-3)
    assert two.info["models"] == 2


def test_one_pass_takes_its_labels_in_bands_as_the_argmax_and_never_changes_the_input(tmp_path):
    path = tiny_checkpoint(tmp_path / "u.pt", "unet3d", seed=2)  # 4 channels, 4 classes
    grid = Grid((45, 30, 26), (1.0, 1.2, 0.9), (3.0, -2.0, 1.0), tuple(map(tuple, np.eye(3))))
    data = np.random.default_rng(2).normal(size=(4, *grid.shape_zyx)).astype(np.float32)
    image = Volume(data.copy(), grid)
    predictor = Predictor(path, device="cpu", settings={"tta": False})
    banded = predictor.predict(image)
    whole = predictor.predict(image, probabilities=True)  # the (K, Z, Y, X) probabilities: no bands
    assert banded.info["labels_in_bands"] and not whole.info["labels_in_bands"]
    assert predictor.members[0].window.classes == 4 and len(np.unique(banded.label.array)) > 1
    np.testing.assert_array_equal(banded.label.array, whole.label.array)
    np.testing.assert_array_equal(image.array, data)  # bit for bit: the preprocessing worked on its own copy
    source = write_image(image, tmp_path / "case.nii.gz")
    read = predictor.predict_files([source])  # reads the file itself, and frees it once preprocessed
    assert read.label.grid.mismatch(grid) is None
    np.testing.assert_array_equal(read.label.array, banded.label.array)


def test_a_2d_model_segments_slice_by_slice_on_the_input_grid(tmp_path):
    path = tiny_checkpoint(tmp_path / "u2d.pt", "unet2d", plan={"sampler": {"axis": "coronal"}},
                           size_zyx=(32, 40, 40))
    rng = np.random.default_rng(1)
    grid = Grid((9, 21, 17), (0.8, 0.8, 2.5), (5.0, -3.0, 1.0), tuple(map(tuple, np.eye(3))))
    image = Volume(rng.normal(size=(4, *grid.shape_zyx)).astype(np.float32), grid)
    prediction = Predictor(path, device="cpu").predict(image)
    assert prediction.info["strategy"] == "slices" and prediction.label.grid == grid
    assert set(np.unique(prediction.label.array)) <= {0, 1, 2, 3}


def test_a_checkpoint_for_another_number_of_channels_is_refused_in_one_line(tmp_path):
    path = tiny_checkpoint(tmp_path / "four.pt", "unet3d")
    image = Volume(np.zeros((10, 16, 16), np.float32),
                   Grid((10, 16, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3)))))
    with pytest.raises(SegCoreError, match=r"takes 4 channel\(s\) \(FLAIR, T1w, t1gd, T2w\), the image has 1") as e:
        Predictor(path, device="cpu").predict(image, path=tmp_path / "scan.nii.gz")
    assert "scan.nii.gz" in str(e.value) and "\n" not in str(e.value)


def test_channel_files_on_different_grids_are_refused_unless_resampled(tmp_path):
    eye = tuple(map(tuple, np.eye(3)))
    a = write_image(Volume(np.ones((6, 8, 8), np.float32), Grid((6, 8, 8), (1.0, 1.0, 1.0), (0, 0, 0), eye)),
                    tmp_path / "t1.nii.gz")
    b = write_image(Volume(np.full((6, 8, 8), 2, np.float32), Grid((6, 8, 8), (1.0, 1.0, 1.0), (0.5, 0, 0), eye)),
                    tmp_path / "t2.nii.gz")
    with pytest.raises(SegCoreError, match="not on the grid of t1.nii.gz") as e:
        read_input([a, b], channels=["T1w", "T2w"])
    assert "t2.nii.gz" in str(e.value) and "--resample" in str(e.value)
    both = read_input([a, b], resample=True)
    assert both.array.shape == (2, 6, 8, 8) and both.grid == read_input([a]).grid
    np.testing.assert_allclose(both.array[1], 2.0)  # a constant stays constant under linear resampling


def test_the_modality_hint_warns_but_does_not_refuse():
    eye = tuple(map(tuple, np.eye(3)))
    grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0, 0, 0), eye)
    ct_meta = {"study": "pancreas", "channels": ["CT"]}
    mr_meta = {"study": "atrium", "channels": ["LGE-MRI"]}
    picture = Volume(np.linspace(0, 255, 64, dtype=np.float32).reshape(4, 4, 4), grid)
    hounsfield = Volume(np.linspace(-1000, 400, 64, dtype=np.float32).reshape(4, 4, 4), grid)
    assert "trained on CT" in check_input(picture, ct_meta)[0]
    assert check_input(hounsfield, ct_meta) == []
    assert "trained on MR" in check_input(hounsfield, mr_meta)[0]
    assert check_input(picture, mr_meta) == []


def test_ensemble_members_must_share_labels_and_channels(tmp_path):
    four = tiny_checkpoint(tmp_path / "four.pt", "unet3d")
    one = tiny_checkpoint(tmp_path / "one.pt", "unet3d", plan={"data": {"channels": ["FLAIR"]}})
    with pytest.raises(SegCoreError, match="must share their channels") as e:
        Predictor([four, one], device="cpu")
    assert "one.pt" in str(e.value)


def test_locate_then_segment_through_the_predictor_pastes_the_crop_back_in_place(tmp_path):
    """Locator (ThresholdNet > 0.9) and segmenter (> 0.3): a faint second bump (peak 0.7), which the locator
    does not see, must stay background although the segmenter would mark it: only the crop is segmented."""
    with threshold_net_registered():
        common = {"data": {"channels": ["FLAIR"]}, "preprocessing": [],
                  "sampler": {"kind": "patch3d", "patch_zyx": [8, 8, 8]}}
        tiny_checkpoint(tmp_path / "locator.pt", "threshold_net",
                        plan={**common, "model": {"arguments": {"threshold": 0.9}}})
        segmenter = tiny_checkpoint(tmp_path / "segmenter.pt", "threshold_net", plan={
            **common, "model": {"arguments": {"threshold": 0.3}}, "inference": {
                "locator": {"checkpoint": "locator.pt", "scale_zyx": [0.5, 0.5, 0.5], "margin_voxels": 2,
                            "crop_zyx": [16, 24, 24]}}})
        grid = Grid((30, 60, 50), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3))))
        k, j, i = np.meshgrid(*[np.arange(n) for n in grid.shape_zyx], indexing="ij")
        bump = np.exp(-(((k - 8) / 4.0) ** 2 + ((j - 45) / 5.0) ** 2 + ((i - 10) / 4.0) ** 2))
        faint = 0.7 * np.exp(-(((k - 24) / 3.0) ** 2 + ((j - 8) / 3.0) ** 2 + ((i - 40) / 3.0) ** 2))
        image = (bump + faint).astype(np.float32)
        prediction = Predictor(segmenter, device="cpu").predict(Volume(image, grid))
    box = prediction.info["box"]
    assert prediction.info["strategy"] == "locate_segment" and box["found"]
    start, stop = np.array(box["box_start_zyx"]), np.array(box["box_stop_zyx"])
    assert np.all(stop - start >= [16, 24, 24])
    inside = np.zeros(grid.shape_zyx, bool)
    inside[tuple(slice(max(a, 0), b) for a, b in zip(start, stop, strict=True))] = True
    assert not inside[24, 8, 40] and (image > 0.3)[24, 8, 40]  # the faint bump lies outside the box
    np.testing.assert_array_equal(prediction.label.array, ((image > 0.3) & inside).astype(np.uint8))
    assert prediction.label.grid == grid


def test_a_locator_given_to_the_predictor_is_used_although_the_plan_names_none(tmp_path):
    with threshold_net_registered():
        locator, segmenter = threshold_locator_pair(tmp_path)
        grid = Grid((16, 24, 24), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3))))
        image = np.zeros(grid.shape_zyx, np.float32)
        image[2:6, 2:6, 2:6], image[12:15, 18:22, 18:22] = 1.0, 0.5  # the second only the segmenter sees
        plain = Predictor(segmenter, device="cpu").predict(Volume(image, grid))
        located = Predictor(segmenter, device="cpu", locator=locator).predict(Volume(image, grid))
    assert plain.info["strategy"] != "locate_segment" and plain.label.array[13, 20, 20] == 1
    assert located.info["strategy"] == "locate_segment" and located.label.array[13, 20, 20] == 0
    assert located.label.array[3, 3, 3] == 1


def test_a_locator_trained_at_another_zoom_than_the_settings_say_is_refused(tmp_path):
    with threshold_net_registered():
        common = {"data": {"channels": ["FLAIR"]}, "sampler": {"kind": "patch3d", "patch_zyx": [8, 8, 8]}}
        locator = tiny_checkpoint(tmp_path / "locator.pt", "threshold_net", plan={
            **common, "sampler": {"kind": "whole"},
            "preprocessing": [{"name": "zoom", "scale_zyx": [0.5, 0.25, 0.25]}]})
        for scale, refused in (([0.5, 0.25, 0.25], False), ([0.5, 0.5, 0.5], True)):
            segmenter = tiny_checkpoint(tmp_path / "segmenter.pt", "threshold_net", plan={
                **common, "preprocessing": [], "inference": {"locator": {"scale_zyx": scale, "crop_zyx": [8, 8, 8]}}})
            if refused:
                with pytest.raises(SegCoreError, match=r"by \[0.5, 0.25, 0.25\].*scale_zyx is \[0.5, 0.5, 0.5\]"):
                    Predictor(segmenter, device="cpu", locator=locator)
            else:
                assert Predictor(segmenter, device="cpu", locator=locator).locator.path == locator


def test_rstn_checkpoints_for_three_planes_run_coarse_to_fine(tmp_path):
    paths = [tiny_checkpoint(tmp_path / f"rstn_{plane}.pt", "rstn", seed=i, plan={
        "data": {"channels": ["FLAIR"]}, "sampler": {"axis": plane},
        "inference": {"coarse_to_fine": {"max_rounds": 2}}}, size_zyx=(32, 32, 32))
        for i, plane in enumerate(["axial", "coronal", "sagittal"])]
    rng = np.random.default_rng(2)
    grid = Grid((12, 32, 32), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(map(tuple, np.eye(3))))
    torch.manual_seed(0)
    prediction = Predictor(paths, device="cpu").predict(Volume(rng.normal(size=grid.shape_zyx).astype(np.float32),
                                                               grid))
    info = prediction.info
    assert info["strategy"] == "coarse_to_fine" and info["planes"] == ["axial", "coronal", "sagittal"]
    assert 0 <= info["rounds"] <= 2 and len(info["inter_dice"]) == info["rounds"]
    assert prediction.label.grid == grid and set(np.unique(prediction.label.array)) <= {0, 1}
    with pytest.raises(SegCoreError, match="two RSTN checkpoints were trained on the axial plane"):
        Predictor([paths[0], paths[0]], device="cpu").predict(Volume(np.zeros(grid.shape_zyx, np.float32), grid))


def test_a_file_in_bands_is_a_float64_sliding_window_of_the_network_in_its_own_layout(tmp_path):
    # one channel in the band (two classes), the image released behind the windows, the 3D network channels-last
    # on the CPU: the labels of a brute-force float64 sliding window over the network as built, grid for grid
    import itertools

    import scipy.signal
    import scipy.special

    from SegCore.inference.windows import window_starts
    from SegCore.training.checkpoint import load_checkpoint

    path = tiny_checkpoint(tmp_path / "v.pt", "vnet", study="atrium")  # 2 classes, patch 16, zscore + pad 16
    grid = Grid((37, 40, 35), (0.9, 1.1, 1.3), (4.0, -1.0, 2.0), tuple(map(tuple, np.eye(3))))
    rng = np.random.default_rng(3)
    data = (rng.normal(size=grid.shape_zyx) + np.linspace(-2, 2, 35)).astype(np.float32)
    source = write_image(Volume(data, grid), tmp_path / "case.nii.gz")
    got = Predictor(path, device="cpu", settings={"tta": False}).predict_files([source])
    assert got.info["labels_in_bands"] and got.label.grid.mismatch(grid) is None

    preprocessing = Preprocessing(load_checkpoint(path).meta["preprocessing"])
    pre = preprocessing.apply(read_input([source]))
    model = load_checkpoint(path).build_model("cpu").eval()
    assert all(p.is_contiguous() for p in model.parameters())  # the default layout
    image = pre.image.astype(np.float64)
    patch = (16, 16, 16)
    g = scipy.signal.windows.gaussian(16, std=2.0)
    g = g[:, None, None] * g[None, :, None] * g[None, None, :]
    total, weight = np.zeros((2, *image.shape[1:])), np.zeros(image.shape[1:])
    for box in itertools.product(*([slice(s, s + p) for s in window_starts(n, p, 0.5)]
                                   for n, p in zip(image.shape[1:], patch, strict=True))):
        with torch.inference_mode():
            logits = model(torch.from_numpy(pre.image[(slice(None), *box)][None].copy()))[0].double().numpy()
        total[(slice(None), *box)] += scipy.special.softmax(logits, axis=0) * g
        weight[box] += g
    probs = total / weight
    expected = preprocessing.invert_label((probs[1] > probs[0]).astype(np.uint8), pre.record).array
    margin = preprocessing.invert_probabilities(np.abs(probs[1:] - probs[:1]), pre.record).array[0]
    clear = margin > 1e-4  # away from float32 rounding
    assert clear.mean() > 0.99 and 0.02 < expected.mean() < 0.98  # both classes (0.96 here)
    np.testing.assert_array_equal(got.label.array[clear], expected[clear])
