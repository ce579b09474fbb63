"""Signed distance maps of a label image in millimetres, and a cache so each case's maps are computed once.

    maps = signed_distance_map_mm(label_zyx, spacing_xyz_mm=(0.625, 0.625, 0.625), num_classes=2)  # (2, Z, Y, X)
    maps = DistanceMapCache("dmaps/").get(label_zyx, (0.625, 0.625, 0.625), 2, case_id="la_001")  # same, kept

Definition (one map per class k, mask M = label == k, Euclidean distances between voxel centres, in mm; h is the
smallest voxel size, min(spacing_xyz_mm)):
    phi_k(q) = +d(q, M)                  for q outside M  (distance to the nearest voxel of M)
    phi_k(q) = -(d(q, outside M) - h)    for q inside M   (distance to the nearest voxel not in M, less h)
This is Kervadec et al.'s one_hot2dist, dist(outside) * outside - (dist(inside) - 1) * inside, with its "- 1"
(one voxel) read as one voxel of the finest axis: at 1 mm isotropic the two are identical, and at any isotropic
spacing s the map is s times the reference's map in voxels. Along a row, [0,0,0,1,1,1,0,0,0] at 1 mm gives
[3,2,1,0,-1,0,1,2,3]: zero on the object's outermost voxels, negative deeper inside, positive outside. (The
reference run with `resolution=` subtracts a literal 1 in the resolution's unit; below 1 mm that would make the
object's outermost voxels positive, so SegStudies subtracts h instead; docs/losses.md.)
A class absent from the label (or filling all of it) has no boundary: its map is all zeros, so the boundary loss
neither rewards nor penalises that class (the region term of a hybrid loss handles it). For two classes, present
both, the background map is h - the foreground map.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from SegCore.atomic import atomic_file
from SegCore.errors import SegCoreError

# Bumped when the definition above changes, so maps cached on disk by an older version are not reused.
MAP_VERSION = "sdm-mm-v2"  # v2: inside shifted by h (Kervadec's "- 1"); v1 had no shift


def _sampling_zyx(label_zyx: np.ndarray, spacing_xyz_mm: Sequence[float]) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing_xyz_mm)
    if len(spacing) != label_zyx.ndim:
        raise SegCoreError(f"spacing_xyz_mm has {len(spacing)} values for a {label_zyx.ndim}D label of shape "
                           f"{label_zyx.shape}", fix="give (x, y) for a 2D label and (x, y, z) for a 3D one")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise SegCoreError(f"spacing must be positive and finite, got {spacing} mm")
    return spacing[::-1]  # arrays are (Z, Y, X) / (Y, X); spacing is given x first


def inside_shift_mm(spacing_xyz_mm: Sequence[float]) -> float:
    """h, the shift of the inside distances (see the module docstring): the smallest voxel size in mm."""
    return float(min(float(s) for s in spacing_xyz_mm))


def signed_distance_map_mm(label_zyx: np.ndarray, spacing_xyz_mm: Sequence[float],
                           num_classes: int) -> np.ndarray:
    """Signed distance map of every class of an integer label image, in mm.

    Args:
        label_zyx: (Z, Y, X) or (Y, X) integer labels 0..num_classes-1.
        spacing_xyz_mm: voxel size (x, y, z) in mm, or (x, y) for a 2D label. Note the order: x first, while the
            array axes are z, y, x.
        num_classes: number of classes C (2 for a binary label).

    Returns:
        (C, Z, Y, X) or (C, Y, X) float32: positive outside class k, zero on its outermost voxels (those next to
        the outside across the finest axis), negative deeper inside; all zero for an absent class (see the module
        docstring).
    """
    label = np.asarray(label_zyx)
    if label.ndim not in (2, 3):
        raise SegCoreError(f"label must be (Z, Y, X) or (Y, X), got shape {label.shape}")
    is_integer = np.issubdtype(label.dtype, np.integer) or label.dtype == bool
    if not is_integer and not np.array_equal(label, np.round(label)):
        raise SegCoreError(f"label must hold integer class values, got dtype {label.dtype} with fractions")
    if num_classes < 2:
        raise SegCoreError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
    sampling = _sampling_zyx(label, spacing_xyz_mm)
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        raise SegCoreError(f"label values {label.min()}..{label.max()} outside 0..{num_classes - 1}")
    shift_mm = inside_shift_mm(spacing_xyz_mm)
    maps = np.zeros((num_classes, *label.shape), dtype=np.float32)
    for k in range(num_classes):
        inside = label == k
        if not inside.any() or inside.all():
            continue
        # distance_transform_edt measures, for each non-zero voxel, the distance to the nearest zero voxel.
        outside_mm = ndimage.distance_transform_edt(~inside, sampling=sampling)
        inside_mm = ndimage.distance_transform_edt(inside, sampling=sampling)
        # inside_mm >= shift_mm on every inside voxel, so the inside stays <= 0 and the outside > 0.
        maps[k] = np.where(inside, shift_mm - inside_mm, outside_mm).astype(np.float32)
    return maps


def label_digest(label_zyx: np.ndarray, spacing_xyz_mm: Sequence[float], num_classes: int) -> str:
    """SHA-1 hex digest of everything a map depends on: label content, shape, spacing, class count, definition."""
    label = np.ascontiguousarray(label_zyx)
    h = hashlib.sha1()
    h.update(f"{MAP_VERSION}|{label.shape}|{label.dtype.str}|{num_classes}|".encode())
    h.update(",".join(repr(float(s)) for s in spacing_xyz_mm).encode())
    h.update(label.tobytes())
    return h.hexdigest()


class DistanceMapCache:
    """Signed distance maps computed once per (case, label content), kept in memory and optionally on disk.

    Args:
        folder: where to keep maps as `<case id>-<digest>.npy` (written atomically); None = memory only.
        max_memory_mb: in-memory budget; the least recently used maps are dropped from memory past it (they stay
            on disk when a folder is given).

    `get` returns the map for a label; `computed` counts maps computed, `memory_hits` / `disk_hits` count reuse.
    Safe to share a folder between DataLoader workers and processes: every file appears whole or not at all.
    """

    def __init__(self, folder: str | os.PathLike | None = None, max_memory_mb: float = 1024.0):
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None and self.folder.exists() and not self.folder.is_dir():
            raise SegCoreError("the distance-map cache folder is a file", path=self.folder,
                               fix="choose a folder path")
        self.max_memory_bytes = int(max_memory_mb * 1024 * 1024)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._memory_bytes = 0
        self.computed = 0
        self.memory_hits = 0
        self.disk_hits = 0

    @staticmethod
    def key(case_id: str, digest: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:64] or "case"
        return f"{safe}-{digest[:20]}"

    def path_for(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.npy"

    def get(self, label_zyx: np.ndarray, spacing_xyz_mm: Sequence[float], num_classes: int,
            case_id: str = "") -> np.ndarray:
        """(C, Z, Y, X) / (C, Y, X) float32 map of `label_zyx` (see signed_distance_map_mm); treat it as read-only."""
        label = np.asarray(label_zyx)
        key = self.key(str(case_id), label_digest(label, spacing_xyz_mm, num_classes))
        expected_shape = (num_classes, *label.shape)
        if key in self._memory:
            self._memory.move_to_end(key)
            self.memory_hits += 1
            return self._memory[key]
        maps = self._load(key, expected_shape)
        if maps is not None:
            self.disk_hits += 1
        else:
            maps = signed_distance_map_mm(label, spacing_xyz_mm, num_classes)
            self.computed += 1
            self._save(key, maps)
        self._remember(key, maps)
        return maps

    def _load(self, key: str, expected_shape: tuple[int, ...]) -> np.ndarray | None:
        path = self.path_for(key)
        if path is None or not path.is_file():
            return None
        try:
            maps = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # unreadable (e.g. truncated by a full disk): recompute and rewrite it
        if maps.shape != expected_shape or maps.dtype != np.float32:
            return None
        return maps

    def _save(self, key: str, maps: np.ndarray) -> None:
        path = self.path_for(key)
        if path is None:
            return
        with atomic_file(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, maps, allow_pickle=False)

    def _remember(self, key: str, maps: np.ndarray) -> None:
        maps.setflags(write=False)  # shared between callers: a caller must not change the cached copy
        self._memory[key] = maps
        self._memory_bytes += maps.nbytes
        while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= dropped.nbytes

    def clear_memory(self) -> None:
        """Forget the in-memory maps (files on disk stay)."""
        self._memory.clear()
        self._memory_bytes = 0
