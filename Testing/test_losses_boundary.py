"""Signed distance maps in mm against Kervadec et al.'s one_hot2dist (written here with scipy) and by hand (axis
order on an anisotropic grid), their cache, and the boundary loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from SegCore.errors import SegCoreError
from SegCore.losses import BoundaryLoss, DistanceMapCache, signed_distance_map_mm
from SegCore.losses import distance_maps as distance_maps_module

SPACING_XYZ = (0.5, 1.0, 3.0)  # x = 0.5 mm, y = 1 mm, z = 3 mm
H_MM = 0.5  # the smallest voxel size: the inside shift (Kervadec's "- 1", one voxel of the finest axis)


def kervadec_one_hot2dist(label: np.ndarray, num_classes: int) -> np.ndarray:
    """The reference (LIVIAETS/boundary-loss utils.one_hot2dist, voxel units) on a one-hot of `label`:
    dist(outside) * outside - (dist(inside) - 1) * inside for every class present."""
    result = np.zeros((num_classes, *label.shape))
    for k in range(num_classes):
        posmask = label == k
        if posmask.any():
            negmask = ~posmask
            result[k] = distance_transform_edt(negmask) * negmask - (distance_transform_edt(posmask) - 1) * posmask
    return result


def test_one_row_is_the_reference_row():
    label = np.array([[0, 0, 0, 1, 1, 1, 0, 0, 0]])
    maps = signed_distance_map_mm(label, (1.0, 1.0), num_classes=2)
    np.testing.assert_array_equal(maps[1, 0], [3, 2, 1, 0, -1, 0, 1, 2, 3])
    np.testing.assert_array_equal(maps[0, 0], [-2, -1, 0, 1, 2, 1, 0, -1, -2])  # background: its own map


@pytest.mark.parametrize("shape", [(9, 11), (5, 6, 7)])
def test_isotropic_maps_equal_the_reference_in_voxels(shape, rng):
    label = rng.integers(0, 3, size=shape)
    label[label == 2] = 0
    label[(slice(1, 4),) * len(shape)] = 2  # a compact class next to speckled ones
    reference = kervadec_one_hot2dist(label, 3)
    np.testing.assert_allclose(signed_distance_map_mm(label, (1.0,) * len(shape), 3), reference, atol=1e-5)
    # At any isotropic spacing s the map is s times the reference in voxels (the shift is one voxel, s mm).
    np.testing.assert_allclose(signed_distance_map_mm(label, (0.625,) * len(shape), 3), 0.625 * reference,
                               atol=1e-5)


def slab_expected(n: int, inside: int, step_mm: float) -> np.ndarray:
    """Along one axis of n voxels, indices < inside are in the slab: -((inside - i) * step - h) inside,
    (i - inside + 1) * step outside (distances between voxel centres; h = 0.5 mm, the finest spacing)."""
    i = np.arange(n)
    return np.where(i < inside, H_MM - (inside - i) * step_mm, (i - inside + 1) * step_mm)


@pytest.mark.parametrize("axis, step_mm", [(2, 0.5), (1, 1.0), (0, 3.0)])  # array axes z, y, x = 0, 1, 2
def test_slab_distances_in_mm_along_each_axis(axis, step_mm):
    shape = [4, 5, 6]
    shape[axis] = 8
    label = np.zeros(shape, dtype=np.uint8)
    index = [slice(None)] * 3
    index[axis] = slice(0, 3)
    label[tuple(index)] = 1
    maps = signed_distance_map_mm(label, SPACING_XYZ, num_classes=2)
    assert maps.shape == (2, *shape) and maps.dtype == np.float32
    expected_1d = slab_expected(8, 3, step_mm)
    view = [1, 1, 1]
    view[axis] = 8
    expected = np.broadcast_to(expected_1d.reshape(view), shape)
    np.testing.assert_allclose(maps[1], expected, atol=1e-6)
    np.testing.assert_allclose(maps[0], H_MM - expected, atol=1e-6)  # background: sides swapped, shift moved


def test_single_voxel_distance_is_euclidean_in_mm():
    label = np.zeros((3, 3, 5), dtype=np.int64)
    label[1, 1, 2] = 1
    maps = signed_distance_map_mm(label, SPACING_XYZ, num_classes=2)
    # Voxel (z=0, y=0, x=0): offsets dz=1, dy=1, dx=2 -> sqrt(3^2 + 1^2 + (2*0.5)^2).
    assert maps[1, 0, 0, 0] == pytest.approx(math.sqrt(9 + 1 + 1), abs=1e-5)
    # The one inside voxel: nearest outside voxel is its x neighbour, 0.5 mm away; less h = 0.5 mm: 0.
    assert maps[1, 1, 1, 2] == pytest.approx(0.0, abs=1e-6)


def test_absent_and_full_classes_have_zero_maps():
    label = np.zeros((4, 6), dtype=np.int32)
    label[:, :2] = 1
    maps = signed_distance_map_mm(label, (2.0, 1.0), num_classes=3)  # 2D: spacing (x, y)
    assert not maps[2].any()
    # Inside: 4 and 2 mm to the outside, less h = min(2, 1) = 1 mm.
    np.testing.assert_allclose(maps[1, 0], [-3.0, -1.0, 2.0, 4.0, 6.0, 8.0])
    assert not signed_distance_map_mm(np.ones((3, 3), np.int32), (1.0, 1.0), 2).any()


def test_distance_map_input_errors():
    with pytest.raises(SegCoreError, match="2 values for a 3D label"):
        signed_distance_map_mm(np.zeros((2, 2, 2), np.int32), (1.0, 1.0), 2)
    with pytest.raises(SegCoreError, match="outside 0..1"):
        signed_distance_map_mm(np.full((2, 2), 2), (1.0, 1.0), 2)
    with pytest.raises(SegCoreError, match="positive"):
        signed_distance_map_mm(np.zeros((2, 2), np.int32), (1.0, 0.0), 2)


# --- cache --------------------------------------------------------------------------------------------------

def case_label(seed: int) -> np.ndarray:
    label = np.zeros((6, 7, 8), dtype=np.uint8)
    label[1 + seed % 2:5, 2:6, 2 + seed % 3:7] = 1
    return label


def test_cache_computes_each_case_once_in_memory():
    cache = DistanceMapCache()
    first = cache.get(case_label(0), SPACING_XYZ, 2, case_id="la_001")
    again = cache.get(case_label(0).copy(), SPACING_XYZ, 2, case_id="la_001")
    assert (cache.computed, cache.memory_hits) == (1, 1)
    assert again is first
    np.testing.assert_array_equal(first, signed_distance_map_mm(case_label(0), SPACING_XYZ, 2))
    cache.get(case_label(1), SPACING_XYZ, 2, case_id="la_001")  # new label content: computed again
    cache.get(case_label(0), (1.0, 1.0, 1.0), 2, case_id="la_001")  # other spacing: another map
    assert cache.computed == 3
    with pytest.raises(ValueError):
        first[0, 0, 0, 0] = 1.0  # the cached copy is read-only


def test_cache_round_trips_on_disk(tmp_path):
    folder = tmp_path / "dmaps"
    cache = DistanceMapCache(folder)
    maps = cache.get(case_label(0), SPACING_XYZ, 2, case_id="la 001/x")
    files = sorted(folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy" and files[0].name.startswith("la_001_x-")
    np.testing.assert_array_equal(np.load(files[0]), maps)
    stamp = files[0].stat().st_mtime_ns
    # A new cache on the same folder (a new process, another DataLoader worker) reads it instead of computing.
    fresh = DistanceMapCache(folder)
    loaded = fresh.get(case_label(0), SPACING_XYZ, 2, case_id="la 001/x")
    assert (fresh.computed, fresh.disk_hits) == (0, 1)
    np.testing.assert_array_equal(loaded, maps)
    assert files[0].stat().st_mtime_ns == stamp
    # A damaged file is recomputed and rewritten, whole.
    files[0].write_bytes(files[0].read_bytes()[:50])
    repaired = DistanceMapCache(folder).get(case_label(0), SPACING_XYZ, 2, case_id="la 001/x")
    np.testing.assert_array_equal(repaired, maps)
    np.testing.assert_array_equal(np.load(files[0]), maps)
    assert sorted(p.name for p in folder.iterdir()) == [files[0].name]  # no temporary files left


def test_cache_does_not_reuse_maps_of_the_old_definition(tmp_path, monkeypatch):
    # A map cached under the first definition (no inside shift, version sdm-mm-v1) lies in the folder.
    monkeypatch.setattr(distance_maps_module, "MAP_VERSION", "sdm-mm-v1")
    DistanceMapCache(tmp_path).get(case_label(0), SPACING_XYZ, 2, case_id="la_001")
    (old_file,) = tmp_path.iterdir()
    np.save(old_file, np.full((2, 6, 7, 8), 99.0, dtype=np.float32))
    monkeypatch.undo()
    cache = DistanceMapCache(tmp_path)
    maps = cache.get(case_label(0), SPACING_XYZ, 2, case_id="la_001")
    assert (cache.computed, cache.disk_hits) == (1, 0) and maps.max() < 99.0
    assert len(list(tmp_path.iterdir())) == 2  # the new map has its own file


def test_cache_memory_budget_drops_old_maps_but_keeps_disk(tmp_path):
    cache = DistanceMapCache(tmp_path, max_memory_mb=0.001)  # ~1 kB: one 3 kB map at a time
    for seed in range(3):
        cache.get(case_label(seed), SPACING_XYZ, 2, case_id=f"c{seed}")
    cache.get(case_label(0), SPACING_XYZ, 2, case_id="c0")
    assert (cache.computed, cache.memory_hits, cache.disk_hits) == (3, 0, 1)


# --- boundary loss ------------------------------------------------------------------------------------------

def row(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_boundary_loss_by_hand():
    # Reference [1, 1, 0, 0, 0, 0] at 2 mm: foreground map 2 * [-1, 0, 1, 2, 3, 4] = [-2, 0, 2, 4, 6, 8].
    target = torch.tensor([1, 1, 0, 0, 0, 0]).view(1, 1, 6)
    loss = BoundaryLoss(spacing_xyz_mm=(2.0, 2.0), inputs="probabilities")
    assert float(loss(row([0, 0, 1, 0, 0, 0]), target)) == pytest.approx(2 / 6)
    assert float(loss(row([1, 1, 0, 0, 0, 0]), target)) == pytest.approx(-2 / 6)
    # With the background class too: its map is [4, 2, 0, -2, -4, -6] and its probability 1 - p.
    both = BoundaryLoss(spacing_xyz_mm=(2.0, 2.0), include_background=True, inputs="probabilities")
    value = both(row([0, 0, 1, 0, 0, 0]), target)
    assert float(value) == pytest.approx((2 + (4 + 2 - 2 - 4 - 6)) / 12)
    # A foreground-only map gives the same background (h - foreground, h = 2 mm).
    foreground = torch.tensor([-2.0, 0, 2, 4, 6, 8]).view(1, 1, 1, 6)
    given = both(row([0, 0, 1, 0, 0, 0]), target, distance_maps=foreground)
    assert float(given) == pytest.approx(float(value), abs=1e-6)
    with pytest.raises(SegCoreError, match="spacing"):
        BoundaryLoss(include_background=True)(row([0, 0, 1, 0, 0, 0]), target, distance_maps=foreground)


def test_boundary_loss_prefers_predictions_nearer_the_boundary():
    target = torch.zeros(1, 12, 12, dtype=torch.long)
    target[0, 4:8, 4:8] = 1
    loss = BoundaryLoss(spacing_xyz_mm=(1.0, 1.0), inputs="probabilities")

    def shifted(dx: int) -> torch.Tensor:
        return torch.roll(target, dx, dims=2).float()[:, None]

    perfect, near, far = (float(loss(shifted(d), target)) for d in (0, 1, 3))
    assert perfect < near < far


def test_boundary_loss_uses_mm_and_given_maps(tmp_path):
    target = torch.zeros(2, 3, 4, 8, dtype=torch.long)
    target[:, :, :, :3] = 1
    logits = torch.randn(2, 1, 3, 4, 8)
    iso = BoundaryLoss(spacing_xyz_mm=(1.0, 1.0, 1.0))(logits, target)
    aniso = BoundaryLoss(spacing_xyz_mm=(0.5, 7.0, 9.0))(logits, target)  # only x matters for an x-slab
    assert float(aniso) == pytest.approx(0.5 * float(iso), rel=1e-5)
    maps = torch.from_numpy(np.stack([signed_distance_map_mm(t, (0.5, 7.0, 9.0), 2) for t in target.numpy()]))
    given = BoundaryLoss()(logits, target, distance_maps=maps)
    foreground_only = BoundaryLoss()(logits, target, distance_maps=maps[:, 1:])
    assert float(given) == pytest.approx(float(aniso), rel=1e-6)
    assert float(foreground_only) == pytest.approx(float(aniso), rel=1e-6)
    with pytest.raises(SegCoreError, match=r"distance_maps shape \(2, 3, 3, 4, 8\)"):
        BoundaryLoss()(logits, target, distance_maps=torch.zeros(2, 3, 3, 4, 8))
    # Through a cache folder: one file per case, named by its id.
    cached = BoundaryLoss(spacing_xyz_mm=(0.5, 7.0, 9.0), cache=tmp_path)
    assert float(cached(logits, target, case_ids=["a", "b"])) == pytest.approx(float(aniso), rel=1e-6)
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["a", "b"]


def test_boundary_gradient_is_nonzero_where_the_map_is():
    target = torch.tensor([0, 1, 1, 1, 0, 0, 0]).view(1, 1, 7)
    logits = torch.zeros(1, 2, 1, 7, requires_grad=True)
    BoundaryLoss()(logits, target).backward()
    grad = logits.grad[0, 1, 0]
    # The foreground map is [1, 0, -1, 0, 1, 2, 3]: the gradient pushes p up inside, down outside, and leaves
    # the object's outermost voxels (map 0) alone.
    assert grad[2] < 0 and (grad[[0, 4, 5, 6]] > 0).all() and (grad[[1, 3]] == 0).all()
    assert abs(float(grad[6])) > abs(float(grad[4]))  # further out, stronger push


@pytest.mark.parametrize("channels", [1, 3])
def test_boundary_logits_and_probabilities_modes_agree(channels, rng):
    logits = torch.from_numpy(rng.normal(size=(2, channels, 3, 6, 7)).astype("float32"))
    target = torch.from_numpy(rng.integers(0, max(channels, 2), size=(2, 3, 6, 7)))
    probs = torch.sigmoid(logits) if channels == 1 else torch.softmax(logits, 1)
    spacing = (0.5, 1.0, 3.0)
    from_logits = BoundaryLoss(spacing_xyz_mm=spacing)(logits, target)
    from_probs = BoundaryLoss(spacing_xyz_mm=spacing, inputs="probabilities")(probs, target)
    assert float(from_logits) == pytest.approx(float(from_probs), abs=1e-5)
