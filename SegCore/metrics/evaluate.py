"""Evaluate predictions against references from disk: per case and label, per cohort, per group.

`evaluate(...)` reads every case (any format SegCore reads, .seg.nrrd included), computes every metric per
label, and returns an `Evaluation`: plain rows and summary rows that the CLI writes as CSV/JSON/PNG and the
Slicer review panel shows as tables and plots. Progress goes to a callback; nothing is printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from SegCore.errors import SegCoreError
from SegCore.metrics.cases import CasePair, pair_cases
from SegCore.metrics.compare import both_empty_metrics, compare_volumes, label_table
from SegCore.metrics.definitions import DEFAULT_TOLERANCE_MM, METRIC_KEYS, STATUS_PREDICTION_MISSING
from SegCore.metrics.summary import summarise
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress
from SegCore.volume import Grid, Volume


@dataclass
class Evaluation:
    """The result of `evaluate`, as data.

    rows: one dict per (group, case, label): group, case, label, label_name, status, every metric key,
    pred_file, ref_file. summary: one dict per (group, label, metric), see `summary.summarise`.
    settings: what was evaluated and how (JSON-able). notes: things the user should know (unscored files).
    """

    rows: list[dict]
    summary: list[dict]
    settings: dict
    notes: list[str] = field(default_factory=list)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(row["group"] for row in self.rows))

    @property
    def labels(self) -> dict[int, str]:
        return dict(sorted({row["label"]: row["label_name"] for row in self.rows}.items()))


@dataclass(frozen=True)
class _LabelFile:
    """A label map read from disk, with segment names when the file has them (.seg.nrrd)."""

    volume: Volume
    names: dict[int, str] | None  # label value -> segment name


def read_labels(path: str | os.PathLike) -> _LabelFile:
    """A (Z, Y, X) integer label map and, for a .seg.nrrd, {value: segment name}."""
    from SegCore.atomic import file_suffix
    from SegCore.io import read_label, read_segmentation
    from SegCore.io.segmentation import merge_layers

    if file_suffix(path) == ".seg.nrrd":
        volume, segments = merge_layers(*read_segmentation(path), path=path)
        return _LabelFile(volume, {s.label_value: s.name for s in segments})
    return _LabelFile(read_label(path), None)


def _rename_by_segment_name(pred: _LabelFile, names_to_values: dict[str, int]) -> Volume:
    """The prediction's label map with values changed so that segment names match the reference's values.

    Used when the prediction is a .seg.nrrd whose segment names are all known: Slicer numbers segments by
    position, so the same organ may carry different values in two files.
    """
    if not pred.names or any(name not in names_to_values for name in pred.names.values()):
        return pred.volume
    mapping = {value: names_to_values[name] for value, name in pred.names.items()}
    if all(a == b for a, b in mapping.items()):
        return pred.volume
    size = max(max(mapping), int(pred.volume.array.max())) + 1
    dtype = np.promote_types(pred.volume.array.dtype, np.min_scalar_type(max(size - 1, *mapping.values())))
    lookup = np.arange(size, dtype=dtype)  # a small type: a CT-sized int64 copy would be 600 MB
    for old, new in mapping.items():
        lookup[old] = new
    return pred.volume.with_array(lookup[pred.volume.array])


def place_on_grid(volume: Volume, grid: Grid) -> Volume | None:
    """`volume` pasted onto `grid` when it is the same lattice shifted by whole voxels (e.g. a .seg.nrrd saved
    cropped to its extent), else None. Exact: no interpolation. Voxels falling outside `grid` must be 0."""
    if not (np.allclose(volume.grid.spacing_xyz_mm, grid.spacing_xyz_mm, rtol=1e-4, atol=0)
            and np.allclose(volume.grid.direction_lps, grid.direction_lps, atol=1e-4)):
        return None
    offset_ijk = grid.lps_to_index(volume.grid.origin_lps)[0]
    shift = np.round(offset_ijk)
    if np.any(np.abs(offset_ijk - shift) > 1e-3):
        return None
    shift_zyx = shift.astype(int)[::-1]
    out = np.zeros(grid.shape_zyx, dtype=volume.array.dtype)
    src, dst = [], []
    for axis in range(3):
        start, size, full = shift_zyx[axis], volume.array.shape[axis], grid.shape_zyx[axis]
        lo, hi = max(start, 0), min(start + size, full)
        if lo >= hi:
            return out if not volume.array.any() else None
        dst.append(slice(lo, hi))
        src.append(slice(lo - start, hi - start))
    inside = volume.array[tuple(src)]
    if np.count_nonzero(inside) != np.count_nonzero(volume.array):
        return None  # labels outside the reference image: let the grid check explain the mismatch
    out[tuple(dst)] = inside
    return Volume(out, grid)


def _case_rows(pair: CasePair, ref: _LabelFile, pred_path: Path | None, labels: dict[int, str] | None,
               resample: bool, tolerance_mm: float) -> list[dict]:
    table = labels or ref.names  # None: every value present
    ref_volume = ref.volume
    if pred_path is None:
        pred_volume = ref_volume.with_array(np.zeros(ref_volume.shape_zyx, dtype=np.uint8))
    else:
        pred = read_labels(pred_path)
        pred_volume = _rename_by_segment_name(pred, {name: value for value, name in (table or {}).items()})
        if ref_volume.grid.mismatch(pred_volume.grid) is not None:
            # Same voxel lattice, different extent (a .seg.nrrd cropped to its segments): paste, no resampling.
            placed = place_on_grid(pred_volume, ref_volume.grid)
            if placed is not None:
                pred_volume = placed
            else:
                placed = place_on_grid(ref_volume, pred_volume.grid)
                ref_volume = placed if placed is not None else ref_volume
    try:
        rows = compare_volumes(pred_volume, ref_volume, labels=table, resample=resample, tolerance_mm=tolerance_mm)
    except SegCoreError as error:
        raise SegCoreError(f"case {pair.case_id}: {error.problem}", path=pred_path, fix=error.fix) from error
    for row in rows:
        if pred_path is None:
            row["status"] = STATUS_PREDICTION_MISSING
    return rows


def _fill_absent_labels(rows: list[dict], label_names: dict[int, str]) -> list[dict]:
    """Add a both-empty row for each (group, case) that lacks a label seen elsewhere in the cohort."""
    present = {(r["group"], r["case"], r["label"]) for r in rows}
    cases = list(dict.fromkeys((r["group"], r["case"], r["pred_file"], r["ref_file"]) for r in rows))
    filled = list(rows)
    for group, case, pred_file, ref_file in cases:
        for value, name in label_names.items():
            if (group, case, value) not in present:
                filled.append({"group": group, "case": case, "label": value, "label_name": name,
                               **both_empty_metrics(), "pred_file": pred_file, "ref_file": ref_file})
    order = {key: i for i, key in enumerate(dict.fromkeys((r["group"], r["case"]) for r in rows))}
    return sorted(filled, key=lambda r: (order[(r["group"], r["case"])], r["label"]))


def group_names_for(preds: Sequence[str | os.PathLike], names: Sequence[str] | None) -> list[str]:
    """Names of the prediction groups: given, or the folder (file) names, made unique."""
    if names is not None:
        if len(names) != len(preds):
            raise SegCoreError(f"{len(names)} group names for {len(preds)} prediction paths",
                               fix="give one name per --pred path, in the same order")
        if len(set(names)) != len(names):
            raise SegCoreError(f"group names must be distinct, got {list(names)}")
        return [str(n) for n in names]
    from SegCore.atomic import file_stem

    base = [file_stem(p) or str(p) for p in (Path(p).resolve() for p in preds)]
    return [b if base.count(b) == 1 else f"{b}_{i + 1}" for i, b in enumerate(base)]


def evaluate(preds: str | os.PathLike | Sequence[str | os.PathLike], ref: str | os.PathLike, *,
             labels: Mapping[int, str] | Sequence[int] | None = None, group_names: Sequence[str] | None = None,
             tolerance_mm: float = DEFAULT_TOLERANCE_MM, resample: bool = False, missing: str = "error",
             progress: ProgressCallback = no_progress) -> Evaluation:
    """Score one or more prediction folders (groups) against one reference folder, per case and label.

    preds: a prediction file or folder, or several (one group each: models, raters, label sources).
    ref: the reference file or folder. Cases pair by file name without the format suffix.
    labels: {value: name} or values to score; None: the .seg.nrrd segments of the references, else every
    non-zero value present in either map (a label absent from a case gets a 'both_empty' row).
    tolerance_mm: surface Dice tolerance. resample: resample a prediction on another grid onto the reference
    grid (nearest neighbour) instead of raising. missing: 'error' | 'empty' | 'skip' for references without a
    prediction (see `cases.pair_cases`).
    """
    pred_paths = [preds] if isinstance(preds, str | os.PathLike) else list(preds)
    if not pred_paths:
        raise SegCoreError("no prediction path given", fix="pass at least one prediction file or folder")
    names = group_names_for(pred_paths, group_names)
    table = None if labels is None else label_table(labels)
    pairings, notes = [], []
    for name, pred_path in zip(names, pred_paths, strict=True):
        pairs, extra = pair_cases(pred_path, ref, missing=missing)
        pairings.append((name, {p.case_id: p for p in pairs}))
        if extra:
            notes.append(f"{name}: {len(extra)} prediction(s) without a reference were not scored: "
                         f"{', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
    case_ids = list(dict.fromkeys(case for _, pairs in pairings for case in pairs))
    total = len(case_ids) * len(pairings)
    rows: list[dict] = []
    step = 0
    progress(ProgressEvent("evaluate", 0, total, "reading references"))
    for case_id in case_ids:
        reference = None
        for group, pairs in pairings:
            pair = pairs.get(case_id)
            if pair is None:
                continue  # skipped in this group (missing='skip')
            if reference is None:
                reference = read_labels(pair.ref)
            case_rows = [{"group": group, "case": case_id, **row, "pred_file": str(pair.pred) if pair.pred else "",
                          "ref_file": str(pair.ref)}
                         for row in _case_rows(pair, reference, pair.pred, table, resample, tolerance_mm)]
            rows.extend(case_rows)
            step += 1
            dice = [r["dice"] for r in case_rows]
            progress(ProgressEvent("evaluate", step, total, f"{group}/{case_id}",
                                   {"dice": float(np.mean(dice))} if dice else {}))
    label_names = dict(sorted({r["label"]: r["label_name"] for r in rows}.items()))
    if table is None:
        rows = _fill_absent_labels(rows, label_names)
    settings = {
        "predictions": {name: str(Path(p)) for name, p in zip(names, pred_paths, strict=True)},
        "reference": str(Path(ref)), "labels": {str(k): v for k, v in label_names.items()},
        "tolerance_mm": float(tolerance_mm), "resample": bool(resample), "missing": missing,
        "metrics": list(METRIC_KEYS),
    }
    return Evaluation(rows=rows, summary=summarise(rows), settings=settings, notes=notes)
