"""Memory of loader workers: shared-memory batch buffers they reuse, instead of fresh shared memory for every batch,
and `keep_freed_memory` (malloc keeps what it freed).

    pool = BatchPool(workers=2)                     # in the main process, before the workers start
    images, labels, slot = pool.take(generation, (16, 12, 128, 128), (16, 128, 128))   # in a worker
    keeper = PoolKeeper(pool); keeper.received(slot, images, labels)                    # back in the main process

A batch that a DataLoader worker sends travels through shared memory. Fresh shared memory costs the kernel a
page fault per 4 KiB page on first touch: ~3600 faults and ~14 ms of system time for one 2.5D batch (16 x 12 x
128 x 128 float32 images and int64 labels) on the benchmark machine, more than the augmentation of several
samples, and the main process maps each new segment again. So each worker keeps `slots` buffers and writes a
batch into a free one. The main process frees a slot only once every tensor of its batch is gone (torch's
`StorageWeakRef` of the received storages), so a batch a consumer keeps, or a view of it, is never
overwritten; with no free slot the worker uses fresh memory, as before. Free slots are marked in one shared int64
array (worker, slot): 0 free, else the loader's iteration (`generation`) that took it. Batches that a restarted
epoch discards (an epoch left early) never reach the main process; `reclaim` frees them once the new iteration
has drained them. Batches larger than `max_bytes` (all slots together) always take fresh memory.
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch.multiprocessing.reductions import StorageWeakRef


def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep freed memory for reuse, instead of handing blocks above its mmap
    threshold (128 KiB, adapting up to 32 MiB) back to the system; True where it took effect (glibc only).

    Memory handed back and taken again costs a page fault per 4 KiB page on first touch, which on a virtual machine
    can cost more than the arithmetic on it: a worker making 2.5D batches (16 x 12 x 128 x 128) took ~500 such
    faults per batch, ~100 with this; a tight loop resampling one rotated 2.5D sample, ~2900 faults and 16 ms per
    sample instead of 0 and 2 ms (benchmark machine, benchmarks/RESULTS.md "Data pipeline"). A loader worker makes
    the same sizes of arrays batch after batch, so its memory stays at a few batches' worth.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3
    # blocks up to glibc's largest threshold come from the heap; its top is trimmed only past 1 GiB free
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def shared_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor made in shared memory directly (as torch's default_collate does), not in
    process memory first and then copied there by `share_memory_()`."""
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).resize_(*shape)


class BatchPool:
    """The workers' slots and their shared free marks (see the module docstring)."""

    def __init__(self, workers: int, slots: int = 6, max_bytes: int = 1 << 30):
        self.slots, self.max_bytes = slots, max_bytes
        self.taken = torch.zeros((workers, slots), dtype=torch.int64).share_memory_()
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # this worker's own, filled lazily

    def __getstate__(self) -> dict:  # a spawned worker starts with no buffers of its own
        return {**self.__dict__, "_buffers": {}}

    def take(self, generation: int, image_shape, label_shape) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
        """(images float32, labels int64, slot) for one batch in a worker: a free slot's buffers (made or remade to
        these shapes), or fresh shared tensors and slot None. generation: the loader's iteration, >= 1."""
        worker = torch.utils.data.get_worker_info()
        nbytes = math.prod(image_shape) * 4 + math.prod(label_shape) * 8
        marks = self.taken.numpy()[worker.id] if worker is not None else None
        free = [] if marks is None or nbytes * self.slots > self.max_bytes else [s for s in range(self.slots)
                                                                                if marks[s] == 0]
        if not free:
            return shared_empty(image_shape, torch.float32), shared_empty(label_shape, torch.int64), None
        slot = free[0]
        images, labels = self._buffers.get(slot, (None, None))
        if images is None or tuple(images.shape) != tuple(image_shape) or tuple(labels.shape) != tuple(label_shape):
            images, labels = shared_empty(image_shape, torch.float32), shared_empty(label_shape, torch.int64)
            self._buffers[slot] = (images, labels)
        marks[slot] = generation  # the main process sets it back to 0 once the batch is gone there
        return images, labels, (worker.id, slot)


class PoolKeeper:
    """The main process's side: frees a slot once the tensors of its batch are gone.

    It keeps each slot's received storages (so their memory stays mapped in this process: torch's receiving side
    then finds them in its cache instead of mapping the shared memory afresh, with a page fault per 4 KiB page on
    first touch) and frees a slot once those storages have no other user (`_storage_Use_Count`); where torch
    lacks that count, it holds weak references only, and a freed batch's memory is mapped again for the next.
    """

    def __init__(self, pool: BatchPool):
        self.pool = pool
        self._out: list[tuple[tuple[int, int], list]] = []  # slots whose batch a consumer may still have
        self._kept: dict[tuple[int, int], list[torch.UntypedStorage]] = {}  # each slot's storages, mapped
        self._count = getattr(torch._C, "_storage_Use_Count", None)

    def received(self, slot: tuple[int, int] | None, *tensors: torch.Tensor) -> None:
        """Note a batch handed on to the consumer (slot None: fresh memory, nothing to free), then free the slots
        of earlier batches that are gone."""
        if slot is not None:  # (worker, slot), a list once through the DataLoader's conversion
            slot = tuple(slot)
            storages = [t.untyped_storage() for t in tensors]
            if self._count is None:
                self._out.append((slot, [StorageWeakRef(s) for s in storages]))
            else:
                kept = self._kept.get(slot)
                if kept is None or [s.data_ptr() for s in kept] != [s.data_ptr() for s in storages]:
                    self._kept[slot] = storages  # new buffers for this slot (first batch, or remade)
                self._out.append((slot, self._kept[slot]))
        self.release()

    def _gone(self, refs) -> bool:
        if self._count is None:
            return all(ref.expired() for ref in refs)
        return all(self._count(storage._cdata) == 1 for storage in refs)  # only this keeper's reference left

    def release(self) -> None:
        marks, kept = self.pool.taken.numpy(), []
        for slot, refs in self._out:
            if self._gone(refs):
                marks[slot] = 0
            else:
                kept.append((slot, refs))
        self._out = kept

    def reclaim(self, generation: int) -> None:
        """Free the slots of batches from iterations before `generation` that never reached the consumer (an epoch
        left early: the DataLoader drained and dropped them when the new iteration started)."""
        self.release()
        out = {slot for slot, _ in self._out}
        marks = self.pool.taken.numpy()
        for worker in range(marks.shape[0]):
            for slot in range(marks.shape[1]):
                if 0 < marks[worker, slot] < generation and (worker, slot) not in out:
                    marks[worker, slot] = 0
