"""Evaluate predictions against references from disk: per case and label, per cohort, per group.

`evaluate(...)` reads every case (any format SegCore reads, .seg.nrrd included), computes every metric per
label, and returns an `Evaluation`: plain rows and summary rows that the CLI writes as CSV/JSON/PNG and the
Slicer review panel shows as tables and plots. Progress goes to a callback; nothing is printed. What the user
should know about the inputs (values not scored, labels in neither file, predictions pasted onto the
reference's lattice, unscored files) is gathered in `Evaluation.notes`, once per finding with its cases.
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
from SegCore.metrics.inputs import LabelFile, label_values, read_labels, rename_by_segment_name
from SegCore.metrics.notes import Notes
from SegCore.metrics.summary import summarise
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress
from SegCore.volume import Volume, place_on_grid, resample_to_grid


@dataclass
class Evaluation:
    """The result of `evaluate`, as data.

    rows: one dict per (group, case, label): group, case, label, label_name, status, every metric key,
    pred_file, ref_file. summary: one dict per (group, label, metric), see `summary.summarise`.
    settings: what was evaluated and how (JSON-able). notes: things the user should know (see `notes.Notes`).
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


def _on_common_grid(pred: Volume, ref: Volume, resample: bool) -> tuple[Volume, Volume, str | None]:
    """(pred, ref) on one grid, and whose grid that is when one was pasted onto the other's voxel lattice.

    Same lattice, other extent (a .seg.nrrd saved cropped to its segments): pasted, no resampling. Another
    lattice: resampled onto the reference (nearest neighbour) with `resample`, else left for
    `compare_volumes` to explain the mismatch.
    """
    if ref.grid.mismatch(pred.grid) is None:
        return pred, ref, None
    placed = place_on_grid(pred, ref.grid)
    if placed is not None:
        return placed, ref, "reference"
    placed = place_on_grid(ref, pred.grid)
    if placed is not None:
        return pred, placed, "prediction"
    if resample:
        return resample_to_grid(pred, ref.grid, interpolation="nearest"), ref, None
    return pred, ref, None


def _default_name(value: int) -> str:
    return f"label_{value}"


def _case_table(labels: dict[int, str] | None, ref: LabelFile, pred_names: dict[int, str] | None,
                present: set[int]) -> dict[int, str]:
    """{value: name} scored in one case: the given labels, or the reference's segments and every value present.

    Names: given ones first, then the reference's segment names, then the prediction's, then 'label_<value>'.
    """
    values = list(labels) if labels is not None else sorted(set(ref.names or {}) | present)
    table = {}
    for value in values:
        given = labels.get(value) if labels is not None else None
        table[value] = next((name for name in (given, (ref.names or {}).get(value), (pred_names or {}).get(value))
                             if name and name != _default_name(value)), _default_name(value))
    return table


def _case_rows(pair: CasePair, ref: LabelFile, labels: dict[int, str] | None, resample: bool, tolerance_mm: float,
               notes: Notes, where: str) -> list[dict]:
    """Rows of one case; `where` is how the notes name it ('case01', or 'group/case01' with several groups)."""
    ref_volume = ref.volume
    pred_names = None
    if pair.pred is None:
        pred_volume = ref_volume.with_array(np.zeros(ref_volume.shape_zyx, dtype=np.uint8))
    else:
        pred = read_labels(pair.pred, "prediction")
        pred_names = pred.names
        known = labels if labels is not None else (ref.names or {})
        pred_volume = rename_by_segment_name(pred, {name: value for value, name in known.items()})
        pred_volume, ref_volume, pasted = _on_common_grid(pred_volume, ref_volume, resample)
        if pasted is not None:
            notes.pasted(where, pasted)
    pred_values, ref_values = set(label_values(pred_volume.array).tolist()), set(ref.values.tolist())
    table = _case_table(labels, ref, pred_names, pred_values | ref_values)
    if labels is not None:
        notes.check_requested(where, labels, pred_values, ref_values)
    try:
        rows = compare_volumes(pred_volume, ref_volume, labels=table, resample=False, tolerance_mm=tolerance_mm)
    except SegCoreError as error:
        raise SegCoreError(f"case {pair.case_id}: {error.problem}", path=pair.pred, fix=error.fix) from error
    for row in rows:
        if pair.pred is None:
            row["status"] = STATUS_PREDICTION_MISSING
    return rows


def _fill_absent_labels(rows: list[dict], cases: list[tuple[str, str, str, str]], label_names: dict[int, str]
                        ) -> list[dict]:
    """Add a both-empty row for each (group, case) that lacks a label of the cohort, so that every case counts
    in every label's statistics; `cases` holds (group, case, pred_file, ref_file) in order, all of them (a case
    with no label in either file has no rows of its own)."""
    present = {(r["group"], r["case"], r["label"]) for r in rows}
    filled = list(rows)
    for group, case, pred_file, ref_file in cases:
        for value, name in label_names.items():
            if (group, case, value) not in present:
                filled.append({"group": group, "case": case, "label": value, "label_name": name,
                               **both_empty_metrics(), "pred_file": pred_file, "ref_file": ref_file})
    order = {(group, case): i for i, (group, case, _, _) in enumerate(cases)}
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
    labels: {value: name} or values to score; None: the .seg.nrrd segments of the references and every non-zero
    value present in either map. Every case gets a row for every label of the cohort ('both_empty' where the
    label is in neither file), so no case drops out of a label's statistics.
    tolerance_mm: surface Dice tolerance. resample: resample a prediction on another grid onto the reference
    grid (nearest neighbour) instead of raising. missing: 'error' | 'empty' | 'skip' for references without a
    prediction (see `cases.pair_cases`).
    Raises SegCoreError naming the file when a prediction or reference looks like an image, not a label map.
    """
    pred_paths = [preds] if isinstance(preds, str | os.PathLike) else list(preds)
    if not pred_paths:
        raise SegCoreError("no prediction path given", fix="pass at least one prediction file or folder")
    names = group_names_for(pred_paths, group_names)
    table = None if labels is None else label_table(labels)
    notes = Notes()
    pairings = []
    for name, pred_path in zip(names, pred_paths, strict=True):
        pairs, extra = pair_cases(pred_path, ref, missing=missing)
        pairings.append((name, {p.case_id: p for p in pairs}))
        notes.unpaired(name, extra)
    case_ids = list(dict.fromkeys(case for _, pairs in pairings for case in pairs))
    total = len(case_ids) * len(pairings)
    rows: list[dict] = []
    cases: list[tuple[str, str, str, str]] = []
    step = 0
    progress(ProgressEvent("evaluate", 0, total, "reading references"))
    for case_id in case_ids:
        reference = None
        for group, pairs in pairings:
            pair = pairs.get(case_id)
            if pair is None:
                continue  # skipped in this group (missing='skip')
            if reference is None:
                reference = read_labels(pair.ref, "reference")
            where = f"{group}/{case_id}" if len(pairings) > 1 else case_id
            files = {"pred_file": str(pair.pred) if pair.pred else "", "ref_file": str(pair.ref)}
            case_rows = [{"group": group, "case": case_id, **row, **files}
                         for row in _case_rows(pair, reference, table, resample, tolerance_mm, notes, where)]
            rows.extend(case_rows)
            cases.append((group, case_id, files["pred_file"], files["ref_file"]))
            step += 1
            dice = [r["dice"] for r in case_rows]
            progress(ProgressEvent("evaluate", step, total, f"{group}/{case_id}",
                                   {"dice": float(np.mean(dice))} if dice else {}))
    label_names = notes.cohort_names(rows, _default_name)
    for row in rows:
        row["label_name"] = label_names[row["label"]]
    rows = _fill_absent_labels(rows, cases, label_names)
    if not rows and cases:
        notes.nothing_labelled(len(cases))
    settings = {
        "predictions": {name: str(Path(p)) for name, p in zip(names, pred_paths, strict=True)},
        "reference": str(Path(ref)), "labels": {str(k): v for k, v in label_names.items()},
        "tolerance_mm": float(tolerance_mm), "resample": bool(resample), "missing": missing,
        "metrics": list(METRIC_KEYS),
    }
    return Evaluation(rows=rows, summary=summarise(rows), settings=settings, notes=notes.lines())
