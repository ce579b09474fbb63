"""The case cache: each case preprocessed once into memory-mapped `.npy` files, so an epoch never decodes NIfTI.

    cache = CaseCache(Path("cache"), Preprocessing(steps))
    cached = cache.prepare(dataset.labelled_cases(), progress)   # list[CachedCase], memory-mapped

Layout: `FOLDER/<digest[:16]>/preprocessing.json` (the resolved steps, for people) and one entry folder per case,
`FOLDER/<digest[:16]>/<case id>/` holding `image.npy` (C, Z, Y, X) float32, `label.npy` (Z, Y, X), `locations.npy`
(N, 3) int32 and `meta.json`. A changed preprocessing parameter gives another digest, hence another folder. An
entry is reused only when its `meta.json` reads, names the same key (digest + label rule + every source file's
path, size and mtime) and every array opens with the shape, dtype and byte size `meta.json` promises; otherwise it
is rebuilt (a truncated `.npy`, bad JSON, a touched source file). `verify="full"` also re-hashes every array.

Entries are written through `atomic_dir`, so an interrupted build never leaves a half entry under the final name.
Under several processes (DDP ranks), build on one first; a process that loses a race to write the same entry
uses the winner's entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from SegCore.atomic import atomic_dir, atomic_file
from SegCore.datasets.case import Case, load_case
from SegCore.errors import SegCoreError
from SegCore.failures import os_error
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress
from SegCore.volume import Grid

CACHE_FORMAT = 1
# Foreground oversampling needs a random label voxel per class, not all of them: nnU-Net keeps 10 000 per class.
MAX_LOCATIONS_PER_CLASS = 10_000
VERIFY_MODES = ("size", "full")
_ARRAYS = ("image", "label", "locations")


@dataclass
class CachedCase:
    """One preprocessed case, as the samplers read it.

    image: (C, Z, Y, X) float32, usually an np.memmap (read-only); label: (Z, Y, X) uint8/uint16 or None.
    record: the preprocessing record (JSON-able, enough to invert). grid: the preprocessed grid.
    class_locations: label value -> (N, 3) int32 (z, y, x) voxels of that class (a seeded random subset of at
        most MAX_LOCATIONS_PER_CLASS); only values > 0 that occur. class_voxels: exact voxel count per label
        value (0 included) after preprocessing. foreground_box_zyx: (start, stop) of all label > 0, or None.
    weight / pseudo: a case's loss weight and whether its label is a pseudo-label (self-distillation).
    Pickling (to DataLoader workers) sends the file names of memory-mapped arrays, never their voxels.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    record: dict
    class_locations: dict[int, np.ndarray]
    class_voxels: dict[int, int] = field(default_factory=dict)
    foreground_box_zyx: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    grid: Grid | None = None
    weight: float = 1.0
    pseudo: bool = False

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape[1:])

    @property
    def num_channels(self) -> int:
        return int(self.image.shape[0])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("image", "label"):
            array = state[name]
            if isinstance(array, np.memmap) and array.filename:
                state[name] = ("memmap", os.fspath(array.filename))
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ("image", "label"):
            if isinstance(state[name], tuple) and state[name][:1] == ("memmap",):
                state[name] = np.load(state[name][1], mmap_mode="r")
        self.__dict__.update(state)


def _stat_sources(case: Case) -> list[list]:
    """[path, size, mtime_ns] of every file a case reads (each file of a DICOM series folder), sorted."""
    rows = []
    for path in [*case.image_paths, *([case.label_path] if case.label_path is not None else [])]:
        try:
            files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
            for file in files:
                info = file.stat()
                rows.append([os.fspath(file.resolve()), info.st_size, info.st_mtime_ns])
        except OSError as error:
            raise os_error(error, path) from None
    return rows


def case_key(case: Case, digest: str) -> str:
    """The cache key of a case: preprocessing digest, label rule and source files (path, size, mtime)."""
    text = json.dumps({"format": CACHE_FORMAT, "preprocessing": digest, "case_id": case.case_id,
                       "label_rule": case.label_rule.to_dict(), "sources": _stat_sources(case)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _entry_name(case_id: str) -> str:
    """A file-system-safe folder name for a case id (ids are usually safe already; others get a hash suffix)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id).lstrip(".") or "case"
    return safe if safe == case_id else f"{safe}-{hashlib.sha256(case_id.encode()).hexdigest()[:8]}"


def _checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _label_facts(label: np.ndarray, seed_key: str) -> tuple[np.ndarray, dict, dict, list | None]:
    """(locations (N, 3) int32, {value: [start, stop) rows}, {value: voxels}, foreground box) of a label map."""
    counts = np.bincount(label.ravel())
    class_voxels = {int(v): int(n) for v, n in enumerate(counts) if n}
    flat = np.flatnonzero(label)
    if flat.size == 0:
        return np.zeros((0, 3), np.int32), {}, class_voxels, None
    values = label.ravel()[flat]
    rng = np.random.default_rng(int(seed_key[:16], 16))  # same entry, same subset
    chunks, rows, start = [], {}, 0
    for value in sorted(v for v in class_voxels if v > 0):
        members = flat[values == value]
        if members.size > MAX_LOCATIONS_PER_CLASS:
            members = np.sort(rng.choice(members, MAX_LOCATIONS_PER_CLASS, replace=False))
        chunks.append(np.stack(np.unravel_index(members, label.shape), axis=1).astype(np.int32))
        rows[value] = [start, start + members.size]
        start += members.size
    coordinates = np.unravel_index(flat, label.shape)
    box = [[int(c.min()) for c in coordinates], [int(c.max()) + 1 for c in coordinates]]
    return np.concatenate(chunks), rows, class_voxels, box


def _grid_dict(grid: Grid) -> dict:
    return {"shape_zyx": list(grid.shape_zyx), "spacing_xyz_mm": list(grid.spacing_xyz_mm),
            "origin_lps": list(grid.origin_lps), "direction_lps": [list(row) for row in grid.direction_lps]}


def _grid_from(data: dict) -> Grid:
    return Grid(tuple(data["shape_zyx"]), tuple(data["spacing_xyz_mm"]), tuple(data["origin_lps"]),
                tuple(tuple(row) for row in data["direction_lps"]))


class CaseCache:
    """Preprocessed cases on disk under `folder`, keyed by `preprocessing.digest` (see the module docstring).

    preprocessing: a `SegCore.transforms.Preprocessing` (anything with `.spec`, `.digest` and `.apply`).
    verify: 'size' (shapes, dtypes and byte sizes of the arrays; default) or 'full' (also their checksums).
    After `prepare`, `stats` counts entries 'built' (new), 'rebuilt' (stale or corrupt) and 'reused'.
    """

    def __init__(self, folder: str | os.PathLike, preprocessing, *, verify: str = "size"):
        if verify not in VERIFY_MODES:
            raise SegCoreError(f"unknown cache verification {verify!r}", fix=f"use one of {', '.join(VERIFY_MODES)}")
        self.preprocessing = preprocessing
        self.verify = verify
        self.root = Path(folder) / preprocessing.digest[:16]
        self.stats = {"built": 0, "rebuilt": 0, "reused": 0}

    def entry(self, case_id: str) -> Path:
        """The folder holding the cached arrays of `case_id`."""
        return self.root / _entry_name(case_id)

    def prepare(self, cases: Iterable[Case], progress: ProgressCallback = no_progress) -> list[CachedCase]:
        """Preprocess each case unless a valid entry exists; returns the cached cases, memory-mapped, in order."""
        cases = list(cases)
        self._write_spec()
        result = []
        for step, case in enumerate(cases):
            key = case_key(case, self.preprocessing.digest)
            folder = self.entry(case.case_id)
            cached = self._open(folder, key)
            if cached is not None:
                self.stats["reused"] += 1
            else:
                self.stats["rebuilt" if folder.exists() else "built"] += 1
                cached = self._build(case, folder, key)
            result.append(cached)
            progress(ProgressEvent("cache", step + 1, len(cases), case.case_id))
        return result

    def _write_spec(self) -> None:
        path = self.root / "preprocessing.json"
        text = json.dumps({"digest": self.preprocessing.digest, "steps": self.preprocessing.spec}, indent=2) + "\n"
        try:
            if path.is_file() and path.read_text(encoding="utf-8") == text:
                return
        except (OSError, UnicodeDecodeError):
            pass  # unreadable: rewrite it
        with atomic_file(path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def _open(self, folder: Path, key: str) -> CachedCase | None:
        """The entry in `folder` if it is complete and made for `key`; None when missing, stale or corrupt."""
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                return None
            arrays = {}
            for name in _ARRAYS:
                facts = meta["arrays"].get(name)
                if facts is None:
                    arrays[name] = None
                    continue
                path = folder / f"{name}.npy"
                if path.stat().st_size != facts["bytes"]:
                    return None
                if self.verify == "full" and _checksum(path) != facts["blake2b"]:
                    return None
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                if list(array.shape) != facts["shape"] or array.dtype.str != facts["dtype"]:
                    return None
                arrays[name] = array
            return self._case(meta, arrays)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
            return None  # unreadable or inconsistent: rebuilt by the caller, never trusted

    @staticmethod
    def _case(meta: dict, arrays: dict) -> CachedCase:
        locations = arrays["locations"]
        class_locations = {int(v): locations[a:b] for v, (a, b) in meta["locations"].items()}
        box = meta["foreground_box_zyx"]
        return CachedCase(
            case_id=meta["case_id"], image=arrays["image"], label=arrays["label"], record=meta["record"],
            class_locations=class_locations, class_voxels={int(k): v for k, v in meta["class_voxels"].items()},
            foreground_box_zyx=None if box is None else (tuple(box[0]), tuple(box[1])),
            grid=_grid_from(meta["grid"]))

    def _build(self, case: Case, folder: Path, key: str) -> CachedCase:
        image, label = load_case(case)
        out = self.preprocessing.apply(image, label)
        arrays = {"image": np.ascontiguousarray(out.image, dtype=np.float32),
                  "label": None if out.label is None else np.ascontiguousarray(out.label)}
        if arrays["label"] is not None:
            locations, rows, class_voxels, box = _label_facts(arrays["label"], key)
        else:
            locations, rows, class_voxels, box = np.zeros((0, 3), np.int32), {}, {}, None
        arrays["locations"] = locations
        meta = {"format": CACHE_FORMAT, "key": key, "case_id": case.case_id, "record": out.record,
                "grid": _grid_dict(out.grid), "locations": {str(v): r for v, r in rows.items()},
                "class_voxels": {str(v): n for v, n in class_voxels.items()}, "foreground_box_zyx": box,
                "arrays": {}}
        try:
            with atomic_dir(folder) as tmp:
                for name, array in arrays.items():
                    if array is None:
                        continue
                    np.save(tmp / f"{name}.npy", array, allow_pickle=False)
                    path = tmp / f"{name}.npy"
                    meta["arrays"][name] = {"shape": list(array.shape), "dtype": array.dtype.str,
                                            "bytes": path.stat().st_size, "blake2b": _checksum(path)}
                (tmp / "meta.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        except OSError as error:
            # Another process may have written the same entry meanwhile (a lost rename race): use its entry.
            if (cached := self._open(folder, key)) is not None:
                return cached
            raise os_error(error, folder.parent, writing=True) from None
        cached = self._open(folder, key)
        if cached is None:
            raise SegCoreError("the cache entry just written does not read back", path=folder,
                               fix="check the disk (free space, errors) or choose another cache folder")
        return cached
