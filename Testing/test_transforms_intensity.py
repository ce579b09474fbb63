"""Intensity preprocessing steps against numpy computed by hand, on CT values in HU and multi-channel MRI."""

from __future__ import annotations

import numpy as np
import pytest

from SegCore.transforms import Preprocessing
from SegCore.volume import Volume


@pytest.fixture
def ct(rng) -> Volume:
    """An int16 CT in HU: air around a body of soft tissue, fat and some bone; grid anisotropic."""
    hu = np.full((10, 24, 20), -1000, dtype=np.int16)
    body = rng.normal(40, 60, size=(8, 18, 14)).round().astype(np.int16)
    body[2:4, 5:9, 3:6] = rng.integers(300, 1800, size=(2, 4, 3))
    hu[1:9, 3:21, 3:17] = body
    return Volume.create(hu, (0.7, 0.7, 3.0))


def run(steps, image, label=None):
    return Preprocessing(steps).apply(image, label)


def test_ct_window_and_clip_scale_in_hu(ct):
    hu = ct.array.astype(np.float64)
    out = run([{"name": "ct_window", "hu_min": -160, "hu_max": 240}], ct)
    np.testing.assert_allclose(out.image[0], (np.clip(hu, -160, 240) + 160) / 400, atol=1e-6)
    assert out.image.dtype == np.float32 and out.image.min() == 0 and out.image.max() == 1
    out = run([{"name": "ct_window", "hu_min": -1000, "hu_max": 1000, "out": [-1, 1]}], ct)
    np.testing.assert_allclose(out.image[0], np.clip(hu, -1000, 1000) / 1000, atol=1e-6)
    out = run([{"name": "clip_scale", "low": -1000, "high": 1500, "mean": 50, "std": 200}], ct)
    np.testing.assert_allclose(out.image[0], (np.clip(hu, -1000, 1500) - 50) / 200, rtol=1e-6)


def test_zscore_per_volume_per_slice_and_in_a_mask(ct):
    hu = ct.array.astype(np.float64)
    out = run([{"name": "zscore"}], ct)
    np.testing.assert_allclose(out.image[0], (hu - hu.mean()) / hu.std(), rtol=1e-5, atol=1e-5)
    facts = out.record["steps"][0]["per_channel"][0]
    assert facts["mean"] == pytest.approx(hu.mean()) and facts["std"] == pytest.approx(hu.std())
    for axis, name in enumerate("zyx"):
        out = run([{"name": "zscore", "mode": "slice", "axis": name}], ct)
        for index in (0, 4, hu.shape[axis] - 1):
            plane = np.take(hu, index, axis=axis)
            expected = (plane - plane.mean()) / max(plane.std(), 1e-8)
            np.testing.assert_allclose(np.take(out.image[0], index, axis=axis), expected, rtol=1e-5, atol=1e-5)
    out = run([{"name": "zscore", "mode": "mask", "mask_threshold": -500}], ct)
    body = hu > -500
    expected = np.where(body, (hu - hu[body].mean()) / hu[body].std(), 0.0)
    np.testing.assert_allclose(out.image[0], expected, rtol=1e-5, atol=1e-5)
    assert out.record["steps"][0]["per_channel"][0]["mask_voxels"] == int(body.sum())


def test_percentile_minmax_is_the_thalamus_scaling(ct, rng):
    t1 = rng.gamma(2.0, 300.0, size=(10, 24, 20))  # a long bright tail, as MRI has
    image = Volume.create(np.stack([t1, 5 * t1 + 7]).astype(np.float32), (1.25, 1.25, 1.25))
    out = run([{"name": "percentile_minmax"}], image)
    for c in range(2):
        values = image.array[c].astype(np.float64)
        low, high = np.percentile(values, 0), np.percentile(values, 99.98)
        np.testing.assert_allclose(out.image[c], (np.clip(values, low, high) - low) / (high - low), atol=1e-6)
        assert out.record["steps"][0]["per_channel"][c]["high"] == pytest.approx(high)
    assert out.image.min() == 0 and out.image.max() == 1
    assert np.mean(out.image[0] == 1) == pytest.approx(0.0002, abs=2 / t1.size)  # the top 0.02 % clipped
    out = run([{"name": "percentile_minmax", "lower": 1, "upper": 99}], ct)
    low, high = np.percentile(ct.array.astype(np.float64), [1, 99])
    expected = (np.clip(ct.array, low, high) - low) / (high - low)
    np.testing.assert_allclose(out.image[0], expected, atol=1e-6)


def test_channels_are_normalised_on_their_own_or_left_alone(rng):
    a, b = rng.normal(100, 20, size=(6, 8, 8)), rng.normal(-3, 0.5, size=(6, 8, 8))
    image = Volume.create(np.stack([a, b]).astype(np.float32))
    out = run([{"name": "zscore"}], image)
    for c, values in enumerate((a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64))):
        np.testing.assert_allclose(out.image[c], (values - values.mean()) / values.std(), rtol=1e-5, atol=1e-5)
    out = run([{"name": "zscore", "channels": [1]}], image)
    assert np.array_equal(out.image[0], image.array[0])
    assert abs(out.image[1].mean()) < 1e-5


def test_constant_images_give_zeros_and_labels_never_change(ct):
    flat = Volume.create(np.full((4, 5, 6), 7.0, dtype=np.float32))
    for step in ({"name": "zscore"}, {"name": "zscore", "mode": "slice"}, {"name": "percentile_minmax"},
                 {"name": "zscore", "mode": "mask", "mask_threshold": 100}):
        out = run([step], flat)
        assert np.all(np.isfinite(out.image)) and np.all(out.image == 0)
    label = ct.with_array((ct.array > 200).astype(np.uint8))
    pre = Preprocessing([{"name": "ct_window", "hu_min": -160, "hu_max": 240}, {"name": "zscore"},
                         {"name": "percentile_minmax"}])
    out = pre.apply(ct, label)
    assert np.array_equal(out.label, label.array) and out.grid.same_as(ct.grid)
    assert np.array_equal(pre.invert_label(out.label, out.record).array, label.array)


# --- in place, on the pipeline's own copy -----------------------------------------------------------------------

ALL_STEPS = [{"name": "zscore"}, {"name": "zscore", "mode": "slice", "axis": "y"},
             {"name": "zscore", "mode": "mask", "mask_threshold": 90}, {"name": "percentile_minmax"},
             {"name": "ct_window", "hu_min": 50, "hu_max": 150}, {"name": "clip_scale", "low": 0, "high": 200}]


def test_the_callers_image_never_changes_and_overwrite_normalises_its_array_in_place(rng):
    data = rng.normal(100, 30, size=(2, 6, 10, 12)).astype(np.float32)
    flipped = ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))  # reorient gives a view of the caller's array
    for image in (Volume.create(data.copy()), Volume.create(data.copy(), direction_lps=flipped)):
        for steps in ([step] for step in ALL_STEPS):
            for before in ([], [{"name": "reorient"}], [{"name": "crop_box", "start_zyx": [1, 2, 0],
                                                         "stop_zyx": [5, 9, 12]}]):
                out = Preprocessing(before + steps).apply(image)
                assert np.array_equal(image.array, data), (before, steps)  # bit for bit
                assert not np.shares_memory(out.image, image.array)
    for step in ALL_STEPS:
        expected = Preprocessing([step]).apply(Volume.create(data)).image
        own = data.copy()
        out = Preprocessing([step, {"name": "pad", "multiple_zyx": [2, 2, 4]}]).apply(Volume.create(own),
                                                                                     overwrite=True)
        assert np.shares_memory(out.image, own)  # normalised in place, and the pad that fits copied nothing
        np.testing.assert_array_equal(out.image, expected)


def test_slab_by_slab_equals_one_slab_and_float64_by_hand(ct, monkeypatch):
    from SegCore.transforms import intensity

    whole = {repr(step): run([step], ct) for step in ALL_STEPS}
    monkeypatch.setattr(intensity, "SLAB_VOXELS", 100)  # one z-slice (480 voxels) per slab
    for step in ALL_STEPS:
        out, one = run([step], ct), whole[repr(step)]
        np.testing.assert_allclose(out.image, one.image, rtol=1e-6, atol=1e-6)
        for a, b in zip(out.record["steps"][0]["per_channel"], one.record["steps"][0]["per_channel"], strict=True):
            assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-12) for k in a if a[k] is not None)
    hu = ct.array.astype(np.float64)
    np.testing.assert_allclose(run([{"name": "zscore"}], ct).image[0], (hu - hu.mean()) / hu.std(), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("step", ALL_STEPS, ids=lambda step: f"{step['name']}-{step.get('mode', '')}")
def test_no_step_allocates_a_whole_image_and_the_pipeline_copies_once(step, rng, monkeypatch):
    """Measured by tracemalloc, which sees numpy's buffers: a (32, 64, 64) CT of 512 KB as float32."""
    import tracemalloc

    from SegCore.transforms import intensity

    monkeypatch.setattr(intensity, "SLAB_VOXELS", 4096)
    hu = rng.normal(100, 30, size=(32, 64, 64)).astype(np.int16)
    float_bytes = hu.size * 4
    own = Volume.create(hu.astype(np.float32))
    copying = 1.0 if step["name"] == "percentile_minmax" else 0.0  # numpy partitions a float32 copy
    tracemalloc.start()
    try:
        Preprocessing([step, {"name": "pad", "multiple_zyx": [16, 16, 16]}]).apply(own, overwrite=True)
        in_place = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        Preprocessing([step]).apply(Volume.create(hu))  # int16 in: one float32 copy, normalised in place
        from_int16 = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert in_place < (copying + 0.25) * float_bytes, in_place / float_bytes
    assert from_int16 < (1 + copying + 0.25) * float_bytes, from_int16 / float_bytes
