"""The data pipeline: case cache, samplers, reproducible loaders (SegCore/training/{cache,samplers,data}.py)."""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

from SegCore.datasets import compute_fingerprint, load_case, open_dataset
from SegCore.errors import SegCoreError
from SegCore.phantoms import write_phantom_dataset
from SegCore.training import cache as cache_module
from SegCore.training.data import CachedCase, CaseCache, Sampler, build_loader, class_weights_for
from SegCore.transforms import Augmentation, Preprocessing

STEPS = [{"name": "reorient"}, {"name": "zscore"}]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "Task01"
    write_phantom_dataset("decathlon", root, cases=4, seed=3, size_zyx=(20, 36, 36))
    return open_dataset(root)


@pytest.fixture
def loads(monkeypatch):
    """Counts the cases the cache decodes from their source files."""
    calls = []
    real = cache_module.load_case

    def counting(case):
        calls.append(case.case_id)
        return real(case)

    monkeypatch.setattr(cache_module, "load_case", counting)
    return calls


@pytest.fixture(scope="module")
def cached(dataset, tmp_path_factory):
    return CaseCache(tmp_path_factory.mktemp("cache"), Preprocessing(STEPS)).prepare(dataset.labelled_cases())


def _entry_files(cache: CaseCache) -> dict[str, tuple[int, int]]:
    return {os.fspath(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.root.rglob("*") if p.is_file()}


def test_cache_is_built_once_and_holds_the_preprocessed_arrays(dataset, tmp_path, loads):
    cases = dataset.labelled_cases()
    pre = Preprocessing(STEPS)
    first = CaseCache(tmp_path / "cache", pre)
    built = first.prepare(cases)
    assert sorted(loads) == sorted(c.case_id for c in cases)
    files = _entry_files(first)
    again = CaseCache(tmp_path / "cache", Preprocessing(STEPS))
    reused = again.prepare(cases)
    assert len(loads) == len(cases), "the second prepare decoded source files"
    assert again.stats == {"built": 0, "rebuilt": 0, "reused": len(cases)}
    assert _entry_files(again) == files, "the second prepare rewrote cache files"
    for case, a, b in zip(cases, built, reused, strict=True):
        image, label = load_case(case)
        expected = pre.apply(image, label)  # the oracle: preprocessing run directly
        assert isinstance(b.image, np.memmap)
        assert np.array_equal(b.image, expected.image) and np.array_equal(b.label, expected.label)
        assert b.label.dtype == expected.label.dtype
        counts = np.bincount(expected.label.ravel())
        assert b.class_voxels == {v: int(n) for v, n in enumerate(counts) if n}
        for value, locations in b.class_locations.items():
            assert value > 0 and len(locations) == min(counts[value], cache_module.MAX_LOCATIONS_PER_CLASS)
            assert np.all(expected.label[tuple(locations.T)] == value)
        nonzero = np.argwhere(expected.label > 0)
        assert b.foreground_box_zyx == (tuple(nonzero.min(0)), tuple(nonzero.max(0) + 1))
        assert a.record == b.record == json.loads(json.dumps(expected.record))


def test_changed_parameter_or_source_file_invalidates(dataset, tmp_path, loads):
    cases = dataset.labelled_cases()
    folder = tmp_path / "cache"
    zscored = CaseCache(folder, Preprocessing(STEPS)).prepare(cases)
    other = Preprocessing([{"name": "reorient"}, {"name": "zscore", "mode": "slice"}])
    changed = CaseCache(folder, other)
    sliced = changed.prepare(cases)
    assert len(loads) == 2 * len(cases) and changed.stats["built"] == len(cases)
    assert not np.array_equal(zscored[0].image, sliced[0].image)
    # a touched label file (newer mtime) rebuilds that case only
    label_path = cases[1].label_path
    stat = label_path.stat()
    os.utime(label_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = CaseCache(folder, Preprocessing(STEPS))
    again.prepare(cases)
    assert loads[2 * len(cases):] == [cases[1].case_id]
    assert again.stats == {"built": 0, "rebuilt": 1, "reused": len(cases) - 1}


@pytest.mark.parametrize("damage", ["truncated_image", "bad_json", "missing_label", "wrong_shape"])
def test_corrupt_entry_is_rebuilt(dataset, tmp_path, loads, damage):
    cases = dataset.labelled_cases()
    cache = CaseCache(tmp_path / "cache", Preprocessing(STEPS))
    good = [np.array(c.image) for c in cache.prepare(cases)]
    entry = cache.entry(cases[0].case_id)
    if damage == "truncated_image":
        data = (entry / "image.npy").read_bytes()
        (entry / "image.npy").write_bytes(data[: len(data) // 2])
    elif damage == "bad_json":
        (entry / "meta.json").write_text('{"format": 1, "key": ', encoding="utf-8")
    elif damage == "missing_label":
        (entry / "label.npy").unlink()
    else:  # same byte count, other shape: a header that lies
        array = np.load(entry / "image.npy")
        np.save(entry / "image.npy", array.reshape(array.shape[0], -1))
    fresh = CaseCache(tmp_path / "cache", Preprocessing(STEPS))
    rebuilt = fresh.prepare(cases)
    assert loads[len(cases):] == [cases[0].case_id]
    assert fresh.stats["rebuilt"] == 1
    assert all(np.array_equal(a, b.image) for a, b in zip(good, rebuilt, strict=True))


def test_full_verification_catches_flipped_bytes(dataset, tmp_path, loads):
    cases = dataset.labelled_cases()[:1]
    cache = CaseCache(tmp_path / "cache", Preprocessing(STEPS))
    cache.prepare(cases)
    path = cache.entry(cases[0].case_id) / "image.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    CaseCache(tmp_path / "cache", Preprocessing(STEPS)).prepare(cases)
    assert len(loads) == 1, "the default size check rebuilt an entry of the right size"
    CaseCache(tmp_path / "cache", Preprocessing(STEPS), verify="full").prepare(cases)
    assert len(loads) == 2


def test_cached_case_pickles_by_file_name(cached):
    data = pickle.dumps(cached[0])
    assert len(data) < cached[0].image.nbytes / 10
    back = pickle.loads(data)
    assert isinstance(back.image, np.memmap) and np.array_equal(back.image, cached[0].image)
    assert np.array_equal(back.label, cached[0].label)


def _binomial_ok(k: int, n: int, p: float) -> bool:
    return abs(k - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("fraction", [0.0, 0.33, 0.8, 1.0])
def test_foreground_oversampling_fraction_and_class_choice(cached, fraction):
    sampler = Sampler({"kind": "patch3d", "patch_zyx": [8, 12, 12], "foreground_fraction": fraction})
    case = cached[0]
    classes = sorted(case.class_locations)
    assert len(classes) >= 2
    n = 3000
    chosen = [sampler.choose(case, np.random.default_rng([7, i]))[1] for i in range(n)]
    centred = [c for c in chosen if c is not None]
    assert _binomial_ok(len(centred), n, fraction)
    for value in classes:  # uniform among the classes present
        assert _binomial_ok(centred.count(value), len(centred), 1 / len(classes))


def test_foreground_patches_are_centred_on_their_class(cached):
    sampler = Sampler({"kind": "patch3d", "patch_zyx": [8, 12, 12], "foreground_fraction": 0.5})
    loader = build_loader(cached, sampler, Augmentation.off(), batch_size=4, steps_per_epoch=25, seed=5)
    seen = 0
    by_id = {c.case_id: c for c in cached}
    for _, labels, info in loader.epoch(0, info=True):
        for label, case_id, start, value in zip(labels, info["case_id"], info["start_zyx"], info["class"],
                                                strict=True):
            volume = by_id[case_id].label
            if value is None:  # a random patch lies inside the volume
                assert all(0 <= s <= n - p for s, n, p in zip(start, volume.shape, (8, 12, 12), strict=True))
                continue
            seen += 1
            centre = tuple(s + p // 2 for s, p in zip(start, (8, 12, 12), strict=True))
            assert volume[centre] == value  # independent: the volume itself at the patch's centre index
            assert label[4, 6, 6] == value and int((label > 0).sum()) > 0
    assert seen > 20


def _coordinate_case(shape=(9, 11, 13), seed=0) -> CachedCase:
    """A case whose image channel 0 holds flat index + 1 and channel 1 its negative, so patches decode."""
    rng = np.random.default_rng(seed)
    index = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    label = rng.integers(0, 3, shape).astype(np.uint8)
    locations = {v: np.argwhere(label == v).astype(np.int32) for v in (1, 2)}
    return CachedCase("coords", np.stack([index, -index]), label, {}, locations)


def _oracle(volume: np.ndarray, start, window, axis: int) -> np.ndarray:
    """volume[..., start:start+window] with zeros outside, by explicit per-voxel index arithmetic."""
    out = np.zeros((*volume.shape[:-3], *window), volume.dtype)
    for o in np.ndindex(*window):
        source = tuple(s + i for s, i in zip(start, o, strict=True))
        if all(0 <= q < n for q, n in zip(source, volume.shape[-3:], strict=True)):
            out[(..., *o)] = volume[(..., *source)]
    return out


@pytest.mark.parametrize("axis,number", [("axial", 0), ("coronal", 1), ("sagittal", 2)])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_slices_and_stacks_match_the_volume(axis, number, k):
    case = _coordinate_case()
    size = [7, 5]
    spec = {"kind": "slice2d", "axis": axis, "size_yx": size} if k == 1 else \
        {"kind": "stack25d", "axis": axis, "k": k, "size_yx": size}
    loader = build_loader([case], Sampler(spec), Augmentation.off(), batch_size=3, steps_per_epoch=8, seed=1)
    for images, labels, info in loader.epoch(0, info=True):
        assert images.shape == (3, 2 * k, *size) and labels.shape == (3, *size) and labels.dtype == torch.int64
        for image, label, start in zip(images.numpy(), labels.numpy(), info["start_zyx"], strict=True):
            window = [0, 0, 0]
            window[number] = k
            window[[a for a in range(3) if a != number][0]] = size[0]
            window[[a for a in range(3) if a != number][1]] = size[1]
            expected = np.moveaxis(_oracle(case.image, start, window, number), number + 1, 1)  # (C, k, H, W)
            assert np.array_equal(image.reshape(2, k, *size), expected)
            centre = list(start)
            centre[number] += k // 2
            centre_window = list(window)
            centre_window[number] = 1
            expected_label = _oracle(case.label, centre, centre_window, number).squeeze(number)
            assert np.array_equal(label, expected_label)
            assert 0 <= centre[number] < case.label.shape[number]


def _slab(volume: np.ndarray, axis: int, first: int, k: int) -> np.ndarray:
    """Slices first .. first + k - 1 of `volume` (..., Z, Y, X) along spatial `axis`, zeros past the ends, moved
    to the front of the spatial axes: numpy slicing, the oracle of the stack samplers."""
    planes = np.moveaxis(volume, volume.ndim - 3 + axis, -3)
    out = np.zeros((*planes.shape[:-3], k, *planes.shape[-2:]), volume.dtype)
    for j in range(k):
        if 0 <= first + j < planes.shape[-3]:
            out[..., j, :, :] = planes[..., first + j, :, :]
    return out


@pytest.mark.parametrize("axis,number", [("axial", 0), ("coronal", 1), ("sagittal", 2)])
def test_stack_of_labels_and_whole_planes_through_the_organ(axis, number):
    """labels "stack": every slice's label; size_yx None with foreground_fraction 1: the whole plane, unshifted,
    its centre slice through a label voxel (only the slice is chosen from the voxel)."""
    case = _coordinate_case(shape=(6, 8, 10))
    k = 3
    spec = {"kind": "stack25d", "axis": axis, "k": k, "size_yx": None, "foreground_fraction": 1.0, "labels": "stack"}
    loader = build_loader([case], Sampler(spec), Augmentation.off(), batch_size=4, steps_per_epoch=6, seed=2)
    plane = [n for a, n in enumerate(case.shape_zyx) if a != number]
    for images, labels, info in loader.epoch(0, info=True):
        assert images.shape == (4, 2 * k, *plane) and labels.shape == (4, k, *plane)
        for image, label, start, value in zip(images.numpy(), labels.numpy(), info["start_zyx"], info["class"],
                                              strict=True):
            first = start[number]
            assert [v for a, v in enumerate(start) if a != number] == [0, 0]
            assert np.array_equal(image.reshape(2, k, *plane), _slab(case.image, number, first, k))
            assert np.array_equal(label, _slab(case.label, number, first, k))
            assert value in (1, 2) and (label[k // 2] == value).any()
    with pytest.raises(SegCoreError, match="unknown labels"):
        Sampler({**spec, "labels": "all"})


def test_window_spanning_one_side_whole_is_shifted_along_the_other_only():
    case = _coordinate_case(shape=(6, 8, 10))
    spec = {"kind": "slice2d", "axis": "axial", "size_yx": [8, 5], "foreground_fraction": 1.0}
    loader = build_loader([case], Sampler(spec), Augmentation.off(), batch_size=4, steps_per_epoch=6, seed=3)
    for _, labels, info in loader.epoch(0, info=True):
        for label, start, value in zip(labels.numpy(), info["start_zyx"], info["class"], strict=True):
            assert start[1] == 0  # y: the whole side
            z, x = start[0], start[2] + 5 // 2  # the voxel: this slice, the window's centre column
            assert (case.label[z, :, x] == value).any() and np.array_equal(label[:, 5 // 2], case.label[z, :, x])


def test_whole_plane_windows_follow_each_case():
    """size_yx None: each case's own plane, whatever the other cases' sizes."""
    cases = [_coordinate_case(shape=(6, 8, 10), seed=0), _coordinate_case(shape=(9, 7, 10), seed=1)]
    spec = {"kind": "stack25d", "axis": "coronal", "k": 3, "labels": "stack"}
    sampler = Sampler(spec)
    for case in cases:
        loader = build_loader([case], sampler, Augmentation.off(), batch_size=1, steps_per_epoch=3, seed=0)
        for images, labels, info in loader.epoch(0, info=True):
            first = info["start_zyx"][0][1]
            assert labels.shape == (1, 3, case.shape_zyx[0], case.shape_zyx[2])
            assert np.array_equal(images[0].numpy().reshape(2, 3, *labels.shape[2:]), _slab(case.image, 1, first, 3))


def test_whole_and_crop_samplers(cached):
    case = cached[0]
    whole = build_loader([case], Sampler({"kind": "whole"}), None, batch_size=2, steps_per_epoch=1, seed=0)
    images, labels = next(whole.epoch(0))
    assert np.array_equal(images[1].numpy(), case.image) and np.array_equal(labels[0].numpy(), case.label)
    size = [6, 8, 10]
    for centre in ("volume", "foreground"):
        crop = build_loader([case], Sampler({"kind": "crop", "size_zyx": size, "centre": centre}), None,
                            batch_size=1, steps_per_epoch=1, seed=0)
        images, labels, info = next(crop.epoch(0, info=True))
        start = info["start_zyx"][0]
        low, high = case.foreground_box_zyx if centre == "foreground" else ((0, 0, 0), case.shape_zyx)
        for s, p, a, b in zip(start, size, low, high, strict=True):  # the crop's centre is the box's centre
            assert abs((s + (p - 1) / 2) - (a + b - 1) / 2) <= 1
        assert np.array_equal(labels[0].numpy(), _oracle(case.label, start, size, 0))


@pytest.mark.parametrize("kind", [{"kind": "patch3d", "patch_zyx": [8, 16, 16]},
                                  {"kind": "slice2d", "axis": "sagittal", "size_yx": [16, 16]},
                                  {"kind": "stack25d", "k": 3, "size_yx": [24, 24]}])
def test_same_batches_with_and_without_workers(cached, kind):
    augmentation = Augmentation({"rotate_p": 0.5, "scale_p": 0.5, "noise_p": 0.5, "elastic_p": 0.3})
    batches = {}
    for workers in (0, 2):
        loader = build_loader(cached, Sampler(kind), augmentation, batch_size=2, steps_per_epoch=4, seed=11,
                              workers=workers)
        batches[workers] = [list(loader.epoch(e)) for e in (0, 1)]
    for a, b in zip(batches[0], batches[2], strict=True):
        for (ia, la), (ib, lb) in zip(a, b, strict=True):
            assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert not torch.equal(batches[0][0][0][0], batches[0][1][0][0]), "epochs 0 and 1 gave the same batch"


@pytest.mark.parametrize("workers", [0, 2])
def test_start_step_resumes_the_epoch_exactly(cached, workers):
    loader = build_loader(cached, Sampler({"kind": "patch3d", "patch_zyx": [8, 16, 16]}), Augmentation({}),
                          batch_size=2, steps_per_epoch=6, seed=4, workers=workers)
    full = list(loader.epoch(3))
    tail = list(loader.epoch(3, start_step=4))
    assert len(tail) == 2
    for (ia, la), (ib, lb) in zip(full[4:], tail, strict=True):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert list(loader.epoch(3, start_step=6)) == []
    with pytest.raises(SegCoreError, match="start step 7"):
        loader.epoch(3, start_step=7)


def test_ranks_take_disjoint_shares_of_the_global_batch(cached):
    spec = Sampler({"kind": "patch3d", "patch_zyx": [8, 16, 16]})
    aug = Augmentation({})
    single = build_loader(cached, spec, aug, batch_size=4, steps_per_epoch=3, seed=2)
    ranks = [build_loader(cached, spec, aug, batch_size=2, steps_per_epoch=3, seed=2, rank=r, world_size=2)
             for r in (0, 1)]
    whole = list(single.epoch(1, info=True))
    shares = [list(loader.epoch(1, info=True)) for loader in ranks]
    for step, (images, labels, info) in enumerate(whole):
        (i0, l0, n0), (i1, l1, n1) = shares[0][step], shares[1][step]
        assert set(n0["n"]).isdisjoint(n1["n"]) and sorted(n0["n"] + n1["n"]) == info["n"]
        assert torch.equal(torch.cat([i0, i1]), images) and torch.equal(torch.cat([l0, l1]), labels)
        assert not torch.equal(i0, i1)


def _shared_file(tensor: torch.Tensor) -> int:
    """The inode of the shared-memory segment behind a tensor a worker sent."""
    fd, _ = tensor.untyped_storage()._share_fd_cpu_()
    return os.fstat(fd).st_ino


def test_reused_batch_memory_never_overwrites_a_batch_still_held(cached):
    # workers write batches into a few reused shared-memory slots (SegCore/training/batch_pool.py)
    spec, aug = Sampler({"kind": "slice2d", "size_yx": [16, 16]}), Augmentation({"rotate_p": 0.5})
    settings = {"batch_size": 2, "steps_per_epoch": 12, "seed": 5}
    expected = [images for images, _ in build_loader(cached, spec, aug, **settings).epoch(1)]
    with build_loader(cached, spec, aug, workers=1, **settings) as loader:
        slots = loader._batches.pool.slots
        files = {_shared_file(images) for images, _ in loader.epoch(1)}  # each dropped before the next
        views = [images[:, 0, 3] for images, _ in loader.epoch(1)]  # only a view of each held, in the slots
        kept = list(loader.epoch(1))  # twice as many batches as slots, all held
        assert all(torch.equal(images, want) for (images, _), want in zip(kept, expected, strict=True))
        assert all(torch.equal(view, want[:, 0, 3]) for view, want in zip(views, expected, strict=True))
        assert len(files) <= slots < len(expected)
        del kept, views
        left = loader.epoch(1)
        for _ in range(3):
            next(left)
        del left  # an epoch left early: the batches it had queued never arrive
        epoch = loader.epoch(1)
        first = next(epoch)[0]
        marks = loader._batches.pool.taken.numpy()
        assert set(np.unique(marks)) <= {0, loader._steps.generation}  # the dropped batches' slots came back
        assert torch.equal(first, expected[0]) and all(
            torch.equal(images, want) for (images, _), want in zip(epoch, expected[1:], strict=True))


def test_even_batch_and_bad_settings_are_refused(cached):
    sampler = Sampler({"kind": "patch3d", "patch_zyx": [8, 16, 16]})
    with pytest.raises(SegCoreError, match="batch size 3 is odd.*--batch 4"):
        build_loader(cached, sampler, None, batch_size=3, steps_per_epoch=1, seed=0, even_batch=True)
    assert len(build_loader(cached, sampler, None, batch_size=2, steps_per_epoch=5, seed=0, even_batch=True)) == 5
    with pytest.raises(SegCoreError, match="no training cases"):
        build_loader([], sampler, None, batch_size=2, steps_per_epoch=1, seed=0)
    big = Sampler({"kind": "patch3d", "patch_zyx": [64, 16, 16]})
    with pytest.raises(SegCoreError, match=f"larger than case {cached[0].case_id}.*pad step"):
        build_loader(cached, big, None, batch_size=2, steps_per_epoch=1, seed=0)
    with pytest.raises(SegCoreError, match="rank 2 is not below"):
        build_loader(cached, sampler, None, batch_size=2, steps_per_epoch=1, seed=0, rank=2, world_size=2)
    for spec, words in [({"kind": "patch"}, "unknown sampler kind"), ({"kind": "patch3d"}, "needs patch_zyx"),
                        ({"kind": "slice2d", "axis": "axail"}, "unknown axis"),
                        ({"kind": "stack25d", "k": 2}, "odd"), ({"kind": "whole", "size": 3}, "unknown key"),
                        ({"kind": "patch3d", "patch_zyx": [8, 8], "foreground_fraction": 0.3}, "3 positive"),
                        ({"kind": "patch3d", "patch_zyx": [8, 8, 8], "foreground_fraction": 1.5}, r"\[0, 1\]")]:
        with pytest.raises(SegCoreError, match=words):
            Sampler(spec)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_worker_error_arrives_as_one_segcore_error(workers):
    cases = [_coordinate_case((9, 11, 13)), _coordinate_case((9, 12, 13), seed=1)]
    # closed here: the traceback keeps the loader in a reference cycle, and a DataLoader iterator that a later
    # collection finds waits 5 s per worker to end it (the cycle's queues are closed before its __del__ runs)
    with build_loader(cases, Sampler({"kind": "whole"}), None, batch_size=4, steps_per_epoch=2, seed=0,
                      workers=workers) as loader, pytest.raises(SegCoreError, match="differ in size") as caught:
        list(loader.epoch(0))
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


_HELD_AT_EXIT = """
import gc
import numpy as np
from SegCore.errors import SegCoreError
from SegCore.training.data import CachedCase, Sampler, build_loader
cases = [CachedCase(f"c{i}", np.zeros((1, 9, 11 + i, 13), np.float32), np.zeros((9, 11 + i, 13), np.uint8), {},
                    {}) for i in range(2)]

def failing_epoch():
    loader = build_loader(cases, Sampler({"kind": "whole"}), None, batch_size=4, steps_per_epoch=2, seed=0,
                          workers=2)
    try:
        list(loader.epoch(0))
    except SegCoreError as error:
        return error

gc.disable()  # as under pytest: the failed iterator waits in a reference cycle for a collection that never comes
in_a_cycle = failing_epoch().__traceback__
kept = failing_epoch()  # a traceback kept in a variable until exit
print("done", flush=True)
"""


def test_workers_of_a_loader_held_until_exit_do_not_block_the_exit():
    import subprocess
    import sys

    # multiprocessing's exit handler terminates workers and then joins them; workers ignore SIGTERM (so a group
    # SIGTERM cannot kill them under a training that is stopping cleanly), so without closing them first it waits
    # forever. That is how the whole test suite once hung after its last test.
    done = subprocess.run([sys.executable, "-c", _HELD_AT_EXIT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr


def test_close_ends_the_workers_and_the_loader_starts_them_again():
    import multiprocessing

    def children() -> set[int]:  # of this loader: other tests' loaders may still be alive
        return {child.pid for child in multiprocessing.active_children()} - before

    before = {child.pid for child in multiprocessing.active_children()}
    cases = [_coordinate_case(), _coordinate_case(seed=1)]
    with build_loader(cases, Sampler({"kind": "whole"}), None, batch_size=2, steps_per_epoch=2, seed=0,
                      workers=2) as loader:
        first = [images for images, _ in loader.epoch(0)]
        assert len(children()) == 2
        loader.close()
        assert children() == set()
        again = [images for images, _ in loader.epoch(0)]
    assert children() == set()
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_class_weights_from_cache_and_fingerprint(dataset, cached):
    labels = [load_case(case)[1].array for case in dataset.labelled_cases()]
    counts = np.bincount(np.concatenate([label.ravel() for label in labels]), minlength=4).astype(float)
    expected = counts.sum() / (4 * counts)  # the decathlon study's N / (C N_k)
    assert np.allclose(class_weights_for(cached, True, num_classes=4), expected)
    fingerprint = compute_fingerprint(dataset)
    assert np.allclose(class_weights_for(fingerprint, "inverse", num_classes=4), expected)
    assert np.allclose(class_weights_for(fingerprint.to_dict(), {"method": "inverse", "max_weight": 5.0}),
                       np.minimum(expected, 5.0))
    assert class_weights_for(cached, None) is None and class_weights_for(cached, [1, 2, 3, 4]) == [1, 2, 3, 4]
    with pytest.raises(SegCoreError, match="no voxels"):
        class_weights_for(cached, True, num_classes=5)
    with pytest.raises(SegCoreError, match="3 classes"):
        class_weights_for(cached, True, num_classes=3)

