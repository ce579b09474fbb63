"""Write an `Evaluation` to a folder: tables (CSV, JSON) and plots (PNG), all or nothing.

The folder is written under a temporary name and renamed into place at the end, so an interrupted run leaves
no half-written report. An existing folder is replaced only when it is empty or an earlier report (it holds
metrics.json); a folder holding anything else, or holding the inputs, is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from SegCore.atomic import atomic_dir, refuse_overwriting_inputs
from SegCore.errors import SegCoreError
from SegCore.metrics.evaluate import Evaluation
from SegCore.metrics.plots import write_plots
from SegCore.metrics.tables import evaluation_to_json, rows_to_csv

REPORT_FILES = ("metrics.csv", "summary.csv", "metrics.json")


def _check_out_dir(out_dir: Path, inputs: list[Path]) -> None:
    refuse_overwriting_inputs(out_dir, inputs)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise SegCoreError("a file is in the way of the output folder", path=out_dir, fix="choose a folder path")
        if any(out_dir.iterdir()) and not (out_dir / "metrics.json").is_file():
            raise SegCoreError("the output folder is not empty and is not an earlier evaluation report", path=out_dir,
                               fix="choose a new or empty folder (an earlier report folder is replaced)")


def write_report(evaluation: Evaluation, out_dir: str | os.PathLike, *, plots: bool = True) -> list[Path]:
    """Write metrics.csv (per case and label), summary.csv (per group, label, metric), metrics.json (all of it
    with settings and definitions) and, with `plots`, the plots that suit the cohort (`plots.write_plots`:
    metrics.png for one case per group, else boxplots.png and cases_<metric>.png). Returns the paths."""
    out_dir = Path(out_dir)
    inputs = [Path(p) for p in evaluation.settings.get("predictions", {}).values()]
    inputs.append(Path(evaluation.settings.get("reference", out_dir / "__none__")))
    _check_out_dir(out_dir, inputs)
    names = list(REPORT_FILES)
    with atomic_dir(out_dir) as tmp:
        rows_to_csv(evaluation.rows, tmp / "metrics.csv")
        rows_to_csv(evaluation.summary, tmp / "summary.csv")
        evaluation_to_json(evaluation, tmp / "metrics.json")
        if plots:
            names.extend(write_plots(evaluation.rows, tmp))
    return [out_dir / name for name in names]
