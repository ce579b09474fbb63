"""Batches for training: cached cases -> sampler -> augmentation -> torch tensors, reproducible to the sample.

    cached = CaseCache(Path("cache"), preprocessing).prepare(cases, progress)
    loader = build_loader(cached, Sampler(spec), augmentation, batch_size=2, steps_per_epoch=250, seed=0,
                          workers=default_workers())
    for images, labels in loader.epoch(epoch, start_step=0):   # (B, C, *spatial) float32, (B, *spatial) int64

Sample i of the batch of `step` on `rank` is global sample n = step * batch_size * world_size + rank * batch_size
+ i of the epoch, and every random choice for it (case, window, augmentation) comes from
`np.random.default_rng([seed, epoch, n])`. So the batches do not depend on the number of workers, `start_step`
resumes an epoch exactly where a checkpoint left it, and the ranks of a distributed run take disjoint shares of
the same global batch that one process with `batch_size * world_size` would draw. Workers are seeded from
(seed, rank, worker) too, only to keep code that uses global generators repeatable; the DataLoader gets its own
torch generator so it never draws from the main process's global one. Workers write batches into shared memory
they reuse once the consumer has let go of a batch (SegCore/training/batch_pool.py): fresh shared memory for every
batch cost more than making the batch. Each sample's image is written straight into its place in the batch.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import signal
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from SegCore.errors import SegCoreError
from SegCore.losses.class_weights import class_weights_from_frequencies
from SegCore.training.batch_pool import BatchPool, PoolKeeper, keep_freed_memory, shared_empty
from SegCore.training.cache import CachedCase, CaseCache
from SegCore.training.samplers import Sampler

__all__ = ["CachedCase", "CaseCache", "Loader", "Sampler", "build_loader", "class_weights_for", "default_workers"]


def default_workers() -> int:
    """Worker processes for a machine: half its cores (the other half runs the network step), 1 to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // 2))


def _seed_worker(worker_id: int, *, seed: int, rank: int) -> None:
    keep_freed_memory()  # a worker makes the same sizes of arrays batch after batch
    # Ctrl-C and SIGTERM reach the whole process group; the main process stops the run cleanly at a step
    # boundary and then ends its workers, so a worker must not die of them first (the run would end 'failed').
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2)
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))
    torch.manual_seed(int(state[0]))
    torch.set_num_threads(1)  # each worker is one core's worth of work; more threads only fight the main process


def _end_workers_at_exit() -> None:
    """Workers ignore SIGTERM (`_seed_worker`), so multiprocessing's own exit handler, which terminates its daemonic
    children and then joins them, would wait forever for workers still alive at exit: those of a loader kept by a
    reference, or of one whose iterator waits in a reference cycle for a collection that never comes (this hung
    the test suite after its last test once). This handler, registered after multiprocessing's, runs before it:
    it collects what it can (workers then end through their queues) and kills the daemonic children left, which
    are exactly the ones multiprocessing would have tried to terminate."""
    import gc
    import multiprocessing

    gc.collect()
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if children and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would call the kill below a failure
    for child in children:
        child.kill()
        child.join(5)


import multiprocessing.util  # noqa: E402,F401,I001  (registers multiprocessing's exit handler now, so that ours,
atexit.register(_end_workers_at_exit)  # registered after it, runs before it: atexit runs handlers last-in, first-out


class _Batches(torch.utils.data.Dataset):
    """Map-style dataset of whole batches: item (epoch, step[, generation]) -> (images, labels, info).

    In a worker the batch goes into a slot of `pool` (the loader's iteration `generation` marks it taken) or into
    fresh shared memory; in the main process into plain memory, pinned where `pin` (CUDA).
    """

    def __init__(self, cases, sampler, augmentation, batch_size, seed, rank, world_size):
        self.cases, self.sampler, self.augmentation = cases, sampler, augmentation
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.pool: BatchPool | None = None
        self.pin = False

    def sample(self, epoch: int, n: int, out=None) -> tuple[np.ndarray, np.ndarray, dict]:
        """Global sample n of `epoch`; out: None, or a function (image shape, label shape) -> the batch's image
        slot for this sample (the image goes straight into it), which refuses a shape that differs."""
        rng = np.random.default_rng([self.seed, epoch, n])
        case = self.cases[int(rng.integers(len(self.cases)))]
        image, label, info = self.sampler.sample(case, self.augmentation, rng,
                                                 out=None if out is None else out(*self.sampler.shapes(case)))
        return image, label, {**info, "weight": case.weight, "pseudo": case.pseudo}

    def _buffers(self, item, image_shape, label_shape):
        """(images float32, labels int64, pool slot or None) for one batch."""
        if torch.utils.data.get_worker_info() is not None:  # in shared memory already: not copied again to send
            if self.pool is not None and len(item) > 2:
                return self.pool.take(item[2], image_shape, label_shape)
            return shared_empty(image_shape, torch.float32), shared_empty(label_shape, torch.int64), None
        # pinned here, where CUDA is, rather than copied into pinned memory afterwards
        return (torch.empty(image_shape, dtype=torch.float32, pin_memory=self.pin),
                torch.empty(label_shape, dtype=torch.int64, pin_memory=self.pin), None)

    def __getitem__(self, item: tuple[int, ...]):
        epoch, step = item[:2]
        first = (step * self.world_size + self.rank) * self.batch_size
        batch: list = []  # images, labels, slot, once the first sample's case gives the shapes
        shapes: set = set()

        def slot(i, image_shape, label_shape):  # where sample i's image goes (all samples: one shape)
            shapes.add(image_shape)
            if len(shapes) > 1:
                raise SegCoreError(
                    f"the samples of one batch differ in size ({', '.join(str(s) for s in sorted(shapes))}): "
                    f"the {self.sampler.kind} sampler takes each case's own size",
                    fix="use batch size 1, give the sampler a fixed size (size_yx, crop size_zyx), or pad every "
                        "case to one size in preprocessing")
            if not batch:
                batch.extend(self._buffers(item, (self.batch_size, *image_shape), (self.batch_size, *label_shape)))
            return batch[0].numpy()[i]

        details = []
        try:
            for i in range(self.batch_size):
                _, label, info = self.sample(epoch, first + i, out=functools.partial(slot, i))
                batch[1].numpy()[i] = label
                details.append(info)
        except SegCoreError as error:
            if batch and batch[2] is not None:  # the slot is free again: this batch never reaches the consumer
                self.pool.taken.numpy()[tuple(batch[2])] = 0
            return error  # re-raised by the main process as itself, not wrapped in a worker traceback
        images, labels, slot_taken = batch
        info = {key: [d[key] for d in details] for key in ("case_id", "start_zyx", "class", "pseudo")}
        info["weight"] = torch.tensor([d["weight"] for d in details], dtype=torch.float32)
        info["n"] = list(range(first, first + self.batch_size))
        info["slot"] = slot_taken  # taken out again by the Loader
        return images, labels, info


class _Steps(torch.utils.data.Sampler):
    """The (epoch, step, generation) items of one epoch from `start`; set before each iteration (workers stay
    alive). generation counts the Loader's iterations (for its BatchPool)."""

    def __init__(self):
        self.epoch, self.start, self.stop, self.generation = 0, 0, 0, 0

    def __iter__(self):
        return iter([(self.epoch, step, self.generation) for step in range(self.start, self.stop)])

    def __len__(self) -> int:
        return self.stop - self.start


class Loader:
    """The batches of every epoch (see the module docstring); built by `build_loader`."""

    def __init__(self, batches: _Batches, *, steps_per_epoch: int, workers: int, pin_memory: bool):
        self._batches = batches
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batches.batch_size
        self.world_size = batches.world_size
        self.workers = workers
        self.pin_memory = pin_memory
        self.sampler = batches.sampler
        self._steps = _Steps()
        self._loader = self._keeper = None
        batches.pin = pin_memory and workers == 0
        if workers > 0:
            prefetch = 2
            self._loader = torch.utils.data.DataLoader(
                batches, batch_size=None, sampler=self._steps, num_workers=workers, persistent_workers=True,
                pin_memory=pin_memory, prefetch_factor=prefetch, generator=torch.Generator().manual_seed(batches.seed),
                worker_init_fn=functools.partial(_seed_worker, seed=batches.seed, rank=batches.rank))
            # Batches are reused slots of shared memory; with pin_memory the DataLoader copies each batch into
            # pinned memory anyway, and fresh shared memory keeps that path simple. Slots per worker: the
            # batches queued (prefetch), the one being made, the one the consumer has, the previous one (its
            # loop variable holds it while it asks for the next), and one spare.
            self._slots = prefetch + 4
            self._new_pool()

    def _new_pool(self) -> None:
        """A pool for workers about to start (old workers' slots die with them)."""
        if self.workers > 0 and not self.pin_memory:
            self._batches.pool = BatchPool(self.workers, self._slots)
            self._keeper = PoolKeeper(self._batches.pool)

    def close(self) -> None:
        """End the worker processes now (they also end when the Loader is collected or the process exits)."""
        iterator = getattr(self._loader, "_iterator", None) if self._loader is not None else None
        if iterator is not None:
            iterator._shutdown_workers()
            self._loader._iterator = None
            self._new_pool()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def epoch(self, epoch: int, start_step: int = 0, *, info: bool = False) -> Iterator[tuple]:
        """Yield (images, labels) for steps `start_step` .. steps_per_epoch - 1 of `epoch`, in order.

        images: float32 (B, C, *spatial) (C * k for 2.5D); labels: int64 (B, *spatial). With `info=True`, also a
        dict of lists (case_id, start_zyx, class, pseudo, n: the global sample indices) and weight (B,) float32.
        """
        if not 0 <= start_step <= self.steps_per_epoch:  # checked now, not at the first batch
            raise SegCoreError(f"start step {start_step} is outside the epoch's 0..{self.steps_per_epoch} steps",
                               fix="resume from a checkpoint written with the same steps per epoch")
        return self._iterate(epoch, start_step, info)

    def _iterate(self, epoch: int, start_step: int, info: bool) -> Iterator[tuple]:
        if self._loader is None:
            items = (self._batches[(epoch, step)] for step in range(start_step, self.steps_per_epoch))
        else:
            self._steps.generation += 1
            self._steps.epoch, self._steps.start, self._steps.stop = epoch, start_step, self.steps_per_epoch
            items = iter(self._loader)  # restarting drains what an epoch left early had queued
            if self._keeper is not None:
                self._keeper.reclaim(self._steps.generation)
        for item in items:
            if isinstance(item, SegCoreError):
                raise SegCoreError(item.problem, path=item.path, fix=item.fix)
            images, labels, details = item
            slot = details.pop("slot")
            if self._keeper is not None:
                self._keeper.received(slot, images, labels)
            yield (images, labels, details) if info else (images, labels)


def _whole_number(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SegCoreError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def build_loader(cached: Sequence[CachedCase], sampler: Sampler, augmentation=None, *, batch_size: int,
                 steps_per_epoch: int, seed: int, rank: int = 0, world_size: int = 1, workers: int = 0,
                 pin_memory: bool = False, even_batch: bool = False) -> Loader:
    """A `Loader` of `batch_size` samples per step for this rank (see the module docstring).

    augmentation: a `SegCore.transforms.Augmentation` (None: `Augmentation.off()`, plain crops).
    even_batch: the study trains on pairs; an odd `batch_size` is refused. pin_memory: only where CUDA is.
    Checks everything before any work: an empty case list, unlabelled cases, channel counts, windows larger
    than a case.
    """
    batch_size = _whole_number(batch_size, "batch size", 1)
    steps_per_epoch = _whole_number(steps_per_epoch, "steps per epoch", 1)
    world_size = _whole_number(world_size, "world size", 1)
    workers = _whole_number(workers, "workers", 0)
    rank = _whole_number(rank, "rank", 0)
    if rank >= world_size:
        raise SegCoreError(f"rank {rank} is not below the world size {world_size}")
    if even_batch and batch_size % 2:
        raise SegCoreError(f"batch size {batch_size} is odd, but this study trains on an even batch size",
                           fix=f"use --batch {batch_size + 1} (or {batch_size - 1})" if batch_size > 1
                           else "use --batch 2")
    cached = list(cached)
    if not cached:
        raise SegCoreError("there are no training cases", fix="check the data folder and the split (fold, lists)")
    channels = {case.num_channels for case in cached}
    if len(channels) > 1:
        counts = ", ".join(f"{c.case_id}: {c.num_channels}" for c in cached[:6])
        raise SegCoreError(f"the cases have different numbers of channels ({counts})",
                           fix="give every case the same channels, in the same order")
    sampler.check(cached)
    if augmentation is None:
        from SegCore.transforms import Augmentation

        augmentation = Augmentation.off()
    batches = _Batches(cached, sampler, augmentation, batch_size, int(seed), rank, world_size)
    return Loader(batches, steps_per_epoch=steps_per_epoch, workers=workers,
                  pin_memory=bool(pin_memory) and torch.cuda.is_available())


def class_weights_for(source, spec, *, num_classes: int | None = None) -> list[float] | None:
    """Loss class weights from the training data's label frequencies, or None when `spec` asks for none.

    source: a list of CachedCase (voxel counts after preprocessing), a `Fingerprint`, or a fingerprint dict
        (its `class_fraction`). spec: None/False (no weights), True (the 'inverse' method), a method name of
        `class_weights_from_frequencies`, {"method": ..., "max_weight": ...}, or a list of explicit weights.
    num_classes: the network's output channels; labels 0..num_classes-1 must all occur (else a clear error).
    """
    if spec is None or spec is False:
        return None
    if isinstance(spec, (list, tuple)):
        if num_classes is not None and len(spec) != num_classes:
            raise SegCoreError(f"{len(spec)} class weights given for {num_classes} classes",
                               fix="give one weight per class, background first")
        return [float(w) for w in spec]
    options = {"method": "inverse"} if spec is True else {"method": spec} if isinstance(spec, str) else dict(spec)
    if isinstance(source, (list, tuple)):
        counts: dict[int, float] = {}
        for case in source:
            for value, n in case.class_voxels.items():
                counts[int(value)] = counts.get(int(value), 0) + n
    else:
        fractions = source.get("class_fraction") if isinstance(source, dict) else source.class_fraction
        counts = {int(k): float(v) for k, v in (fractions or {}).items()}
    if num_classes is not None:
        extra = sorted(v for v in counts if v >= num_classes)
        if extra:
            raise SegCoreError(f"the labels hold values {extra} but the network has {num_classes} classes",
                               fix="match the network's out_channels to the label set")
        counts = {k: counts.get(k, 0) for k in range(num_classes)}
    return class_weights_from_frequencies(counts, **options)
