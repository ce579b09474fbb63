"""Post-processing of label maps against independent oracles: a flood fill written here, and SimpleITK's
ConnectedComponent / RelabelComponent / BinaryFillhole filters."""

from collections import deque
from itertools import product

import numpy as np
import pytest
import SimpleITK as sitk

from SegCore.errors import SegCoreError
from SegCore.inference.postprocess import postprocess_labels


def offsets(connectivity):
    """Neighbour offsets of a voxel: 6 faces, or all 26."""
    return [d for d in product((-1, 0, 1), repeat=3) if any(d) and (connectivity == 26 or sum(map(abs, d)) == 1)]


def flood_components(mask, connectivity):
    """Connected components of a bool mask by breadth-first flood fill: a list of voxel lists, in raster order
    of each component's first voxel."""
    seen = np.zeros(mask.shape, bool)
    components = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, voxels = deque([start]), []
        while queue:
            voxel = queue.popleft()
            voxels.append(voxel)
            for d in offsets(connectivity):
                n = tuple(v + dv for v, dv in zip(voxel, d, strict=True))
                if all(0 <= c < s for c, s in zip(n, mask.shape, strict=True)) and mask[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        components.append(voxels)
    return components


def oracle(label, *, largest=(), min_voxels=0, holes=(), connectivity=26):
    """The module docstring's rules written out voxel by voxel."""
    out = label.copy()
    for value in sorted(set(largest) | (set(np.unique(label)) - {0} if min_voxels else set())):
        components = flood_components(label == value, connectivity)
        keep = [c for c in components if len(c) >= min_voxels]
        if value in largest and keep:
            biggest = max(len(c) for c in components)
            first = next(c for c in components if len(c) == biggest)  # raster order breaks ties
            keep = [first] if len(first) >= min_voxels else []
        for c in components:
            if not any(c is k for k in keep):
                for v in c:
                    out[v] = 0
    dual = 6 if connectivity == 26 else 26
    after_components = out.copy()
    for value in holes:
        for region in flood_components(after_components == 0, dual):
            members = set(region)
            touches_border = any(c in (0, s - 1) for v in region for c, s in zip(v, label.shape, strict=True))
            neighbours = {tuple(c + d for c, d in zip(v, off, strict=True)) for v in region for off in offsets(dual)}
            neighbours = {n for n in neighbours if n not in members}
            if not touches_border and all(after_components[n] == value for n in neighbours):
                for v in region:
                    out[v] = value
    return out


def random_labels(rng, shape=(8, 9, 10), holes=0.15):
    """Two labels side by side inside a background shell, pierced by random background voxels (holes, for some)
    and sprinkled with random islands of either label (small components)."""
    label = np.zeros(shape, np.uint8)
    label[1:-1, 1:-1, 1:-1] = 1
    label[1:-1, 1:-1, shape[2] // 2:-1] = 2
    label[rng.random(shape) < holes] = 0
    islands = rng.random(shape) < 0.04
    label[islands] = rng.choice([1, 2], size=int(islands.sum()))
    return label


@pytest.mark.parametrize("connectivity", [26, 6])
def test_random_maps_match_the_flood_fill_oracle(connectivity):
    rng = np.random.default_rng(0)
    filled = 0
    for trial in range(6):
        label = random_labels(rng, holes=0.05 + 0.05 * trial)
        before = label.copy()
        got = postprocess_labels(label, largest_component=[1], min_component_voxels=3, fill_holes=[1, 2],
                                 connectivity=connectivity)
        expected = oracle(label, largest=[1], min_voxels=3, holes=[1, 2], connectivity=connectivity)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(label, before)  # the input is never changed
        assert got.dtype == label.dtype
        assert (got != label).any()
        filled += bool(((label == 0) & (got != 0)).any())
    assert filled >= 2  # some trials had holes to fill, not only components to drop


def sitk_largest(mask, fully_connected):
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), fully_connected)
    relabelled = sitk.RelabelComponent(components, sortByObjectSize=True)
    return sitk.GetArrayFromImage(relabelled) == 1


@pytest.mark.parametrize("connectivity", [26, 6])
def test_largest_component_and_hole_filling_match_simpleitk(connectivity):
    rng = np.random.default_rng(1)
    mask = rng.random((10, 11, 12)) < 0.35
    got = postprocess_labels(mask.astype(np.uint16) * 3, largest_component=[3], connectivity=connectivity)
    np.testing.assert_array_equal(got == 3, sitk_largest(mask, connectivity == 26))

    dense = rng.random((10, 11, 12)) < 0.7  # many enclosed pockets for a 26-connected label
    dense[2:7, 2:7, 2:7] = True
    dense[4, 4, 4] = False  # and one for both connectivities
    # ITK's fullyConnected names the background's connectivity here: 6-connected background for 26-connected labels
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(dense.astype(np.uint8)), fullyConnected=connectivity == 6,
                                 foregroundValue=1)
    got = postprocess_labels(dense.astype(np.int32), fill_holes="all", connectivity=connectivity)
    np.testing.assert_array_equal(got, sitk.GetArrayFromImage(filled))
    assert (got != dense).any()  # the check has holes to fill


def shell(shape=(9, 9, 9), box=(slice(2, 7),) * 3, inner=(slice(3, 6),) * 3, value=1):
    label = np.zeros(shape, np.uint8)
    label[box] = value
    label[inner] = 0
    return label


def test_a_closed_shell_is_filled_and_a_diagonal_leak_depends_on_connectivity():
    label = shell()
    assert (postprocess_labels(label, fill_holes=[1]) == 1).sum() == 125
    leaky = label.copy()
    leaky[2, 2, 2] = 0  # the inside now touches the outside through a corner only
    assert (postprocess_labels(leaky, fill_holes=[1], connectivity=26) == 1).sum() == 97 + 27
    assert (postprocess_labels(leaky, fill_holes=[1], connectivity=6) == 1).sum() == 97


def test_a_region_touching_the_border_is_not_a_hole():
    label = np.ones((5, 6, 7), np.uint8)
    label[1:4, 1:5, 1:6] = 0
    label[0, 2, 3] = 0  # the cavity opens onto the volume's first z face
    np.testing.assert_array_equal(postprocess_labels(label, fill_holes="all"), label)
    label[0, 2, 3] = 1
    assert postprocess_labels(label, fill_holes="all").all()


def test_a_pocket_that_touches_another_label_is_left_and_other_labels_are_kept():
    label = shell(value=1)
    label[4, 4, 4] = 2  # a "tumour" in the middle of the pocket: the pocket touches label 2
    got = postprocess_labels(label, fill_holes=[1])
    np.testing.assert_array_equal(got, label)
    label[3:6, 3:6, 3:6] = 2  # the pocket is all tumour: nothing is background
    np.testing.assert_array_equal(postprocess_labels(label, fill_holes=[1, 2]), label)


def test_several_labels_each_keep_their_largest_component():
    label = np.zeros((6, 12, 12), np.uint8)
    label[1:3, 1:4, 1:4] = 1           # 18 voxels
    label[1:2, 8:10, 8:10] = 1         # 4
    label[4:6, 1:3, 8:12] = 2          # 16
    label[4, 10, 1] = 2                # 1
    label[5, 10, 10] = 3               # untouched: not requested
    label[5, 8, 5] = 3
    got = postprocess_labels(label, largest_component=[1, 2])
    assert (got == 1).sum() == 18 and (got == 2).sum() == 16 and (got == 3).sum() == 2
    assert (got[label == 0] == 0).all()
    got = postprocess_labels(label, largest_component="all")
    assert (got == 3).sum() == 1 and got[5, 8, 5] == 3  # a tie: the first in (Z, Y, X) raster order stays


def test_ties_keep_the_first_component_in_raster_order():
    label = np.zeros((4, 4, 9), np.uint8)
    label[1, 1, 6:8] = 1  # two components of 2 voxels; this one starts later in x
    label[1, 2, 1:3] = 1  # ... and this one in a later row (y = 2 > 1): the first one is kept
    got = postprocess_labels(label, largest_component=[1])
    assert got[1, 1, 6] == 1 and got[1, 2, 1] == 0


def test_min_component_voxels_drops_small_components_of_every_label():
    label = np.zeros((5, 10, 10), np.uint8)
    label[0:2, 0:2, 0:2] = 1  # 8
    label[4, 9, 9] = 1        # 1
    label[2:4, 5:8, 5:8] = 2  # 18
    label[4, 0, 9] = 2        # 1
    got = postprocess_labels(label, min_component_voxels=2)
    assert (got == 1).sum() == 8 and (got == 2).sum() == 18
    got = postprocess_labels(label, largest_component=[1], min_component_voxels=9)  # the largest is too small
    assert (got == 1).sum() == 0 and (got == 2).sum() == 18


def test_empty_maps_absent_labels_and_bool_maps():
    empty = np.zeros((3, 4, 5), np.uint16)
    got = postprocess_labels(empty, largest_component="all", fill_holes="all", min_component_voxels=5)
    assert got.dtype == np.uint16 and not got.any() and got is not empty
    label = shell()
    np.testing.assert_array_equal(postprocess_labels(label, largest_component=[7], fill_holes=[7]), label)
    mask = shell().astype(bool)
    mask[0, 0, 0] = True
    got = postprocess_labels(mask, largest_component=[1], fill_holes=[1])
    assert got.dtype == bool and got.sum() == 125 and not got[0, 0, 0]


def test_bad_arguments_are_explained():
    label = shell()
    for kwargs, message in (({"connectivity": 18}, "connectivity"), ({"fill_holes": [0]}, "0 is the background"),
                            ({"largest_component": "some"}, "must be \"all\""),
                            ({"min_component_voxels": -1}, "min_component_voxels")):
        with pytest.raises(SegCoreError, match=message):
            postprocess_labels(label, **kwargs)
    with pytest.raises(SegCoreError, match="integer label map"):
        postprocess_labels(label.astype(np.float32), fill_holes=[1])
    with pytest.raises(SegCoreError, match=r"\(Z, Y, X\)"):
        postprocess_labels(label[0], fill_holes=[1])
    with pytest.raises(SegCoreError, match=">= 0"):
        postprocess_labels(label.astype(np.int8) - 1, fill_holes=[1])
