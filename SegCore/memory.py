"""Memory of arrays nobody reads any more, handed back to the system before the array itself is freed.

    from SegCore.memory import release_slices
    release_slices(image_czyx, 40)   # slices [0, 40) of every channel read as zeros now; their pages are free

Freeing part of an array is not portable: on Linux the whole pages inside the slices go back with madvise
(MADV_DONTNEED; anonymous memory then reads as zeros, and the allocator frees the array as usual), elsewhere
nothing happens and the array keeps its memory. Used where one full-size array is turned into another slab by
slab (the sliding window's image behind its windows, the pad step's source behind its copy), so that the peak
holds one array, not two.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np


def _page_release():
    """libc's madvise on Linux, else None."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


_MADVISE = _page_release()


def release_slices(array_czyx: np.ndarray, z: int) -> bool:
    """Hand back the memory of slices [0, z) of every channel of a C-contiguous (C, Z, Y, X) array (the whole
    pages inside them; nothing before or after is touched). Only for an array nobody reads there again: those
    slices read as zeros afterwards. Returns whether memory was released (False off Linux, for an array that is
    not C-contiguous or does not own writable memory, or for z <= 0: then nothing changes)."""
    if (_MADVISE is None or z <= 0 or array_czyx.ndim != 4 or not array_czyx.flags.c_contiguous
            or not array_czyx.flags.writeable):
        return False
    z = min(z, array_czyx.shape[1])
    slice_bytes, released = array_czyx.strides[1], False
    for c in range(array_czyx.shape[0]):
        begin = array_czyx[c].ctypes.data
        start = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (begin + z * slice_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            released |= _MADVISE(start, stop - start, mmap.MADV_DONTNEED) == 0
    return released
