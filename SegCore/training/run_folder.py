"""The run folder: the files a training run writes, which the Slicer modules, resume and the benchmarks read.

    with RunFolder.open("RUN", resume=False, overwrite=False, parameters=n_weights) as run:
        run.write_plan(plan)
        run.write_status("training", epoch=1, epochs=10, step=5, steps=50, loss=0.4, eta_s=120.0)
        run.append_history({"epoch": 1, "loss": 0.4, "val_loss": 0.5, "dice_spleen": 0.7, "lr": 1e-3})
        run.draw_curves()
        run.logger.info("epoch 1 done")

Files (names in `FILES`): plan.json, last.pt, best.pt, status.json, history.csv, curves.png, train.log. Every
file but the log is rewritten atomically (SegCore.atomic), so a reader never sees half a file. A folder holding
a previous run (any of plan.json, last.pt, best.pt, status.json, history.csv) is refused unless `resume` (needs
last.pt and plan.json) or `overwrite` (removes the run's files, nothing else). The folder may not be or hold an
input (atomic.check_output). Before training, `open` writes and removes a probe file and checks that the disk
can hold two checkpoints and the temporary of a third (their size estimated from the parameter count).

history.csv columns, by convention: epoch, loss, val_loss, <metric>_<label> (e.g. dice_spleen), dice_mean, lr,
epoch_time_s. `draw_curves` plots every column whose name ends in "loss" in one panel and every other numeric
column except epoch, step, lr and times in the validation panel.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

from SegCore.atomic import atomic_file, check_output, remove_stale_temporaries, save_figure
from SegCore.errors import SegCoreError
from SegCore.failures import os_error

FILES = {"plan": "plan.json", "last": "last.pt", "best": "best.pt", "status": "status.json",
         "history": "history.csv", "curves": "curves.png", "log": "train.log"}
RUN_MARKERS = ("plan.json", "last.pt", "best.pt", "status.json", "history.csv")  # a folder with one holds a run
RESUME_NEEDS = ("last.pt", "plan.json")
STATES = ("starting", "training", "validating", "finished", "stopped", "failed")
ENDED = ("finished", "stopped", "failed")  # states after which no ETA is shown
PROBE_NAME = ".segcore-write-probe"
# A checkpoint holds the weights and Adam's two moments (float32), plus room for states and meta.
CHECKPOINT_BYTES_PER_PARAMETER = 12
CHECKPOINT_OVERHEAD_BYTES = 2 ** 20
NOT_PLOTTED = ("epoch", "step", "lr", "epoch_time_s", "time_s")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def _plain(value):
    """JSON-safe: non-finite floats (a NaN loss) become null; numpy and torch scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(text: str):
    """A history.csv cell back as int or float; other text stays text."""
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


class RunFolder:
    """One run folder, opened for writing by one process (rank 0 under torchrun). Use `open`, not the constructor."""

    def __init__(self, path: Path):
        self.path = path
        self._status: dict = {}
        self._history: list[dict] = []
        self._handler: logging.Handler | None = None
        self.logger = logging.getLogger(f"segcore.run.{id(self)}")

    # -- opening -----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
             parameters: int | None = None) -> RunFolder:
        """Check and prepare `path` for a run; see the module docstring. parameters: the network's parameter
        count, for the free-space check (skipped when None)."""
        if resume and overwrite:
            raise SegCoreError("--resume and --overwrite exclude each other", path=path,
                               fix="pass --resume to continue the run, or --overwrite to start it again")
        check_output(path)
        folder = Path(os.path.abspath(path))
        if folder.exists() and not folder.is_dir():
            raise SegCoreError("a file is in the way of the run folder", path=folder, fix="choose a folder path")
        previous = [name for name in RUN_MARKERS if (folder / name).exists()]
        if resume:
            missing = [name for name in RESUME_NEEDS if not (folder / name).is_file()]
            if missing:
                raise SegCoreError(f"cannot resume: the run folder has no {' and no '.join(missing)}", path=folder,
                                   fix="start the run without --resume (or with --overwrite)")
        elif previous and not overwrite:
            raise SegCoreError(f"the folder holds a previous run ({', '.join(previous)})", path=folder,
                               fix="pass --resume to continue it, --overwrite to replace it, or choose another --out")
        run = cls(folder)
        run._probe(parameters)
        if overwrite:
            for name in FILES.values():
                target = folder / name
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
                remove_stale_temporaries(target)
        elif resume and (folder / FILES["history"]).is_file():
            run._history = run.read_history()
        run._open_log()
        return run

    def _probe(self, parameters: int | None) -> None:
        """Write and remove a probe file (creates the folder, proves it writable), then check the free space."""
        probe = self.path / PROBE_NAME
        with atomic_file(probe) as tmp:
            tmp.write_bytes(b"segcore write probe\n")
        probe.unlink()
        if parameters is None:
            return
        checkpoint = parameters * CHECKPOINT_BYTES_PER_PARAMETER + CHECKPOINT_OVERHEAD_BYTES
        needed = 3 * checkpoint  # last.pt, best.pt and the temporary of the next write
        free = shutil.disk_usage(self.path).free
        if free < needed:
            raise SegCoreError(f"not enough free space for the run: its checkpoints need about "
                               f"{needed / 2**20:.0f} MiB (3 x {checkpoint / 2**20:.0f} MiB), {free / 2**20:.0f} MiB "
                               "are free", path=self.path, fix="free some space or choose another --out")

    def _open_log(self) -> None:
        try:
            self._handler = logging.FileHandler(self.path / FILES["log"], mode="a", encoding="utf-8")
        except OSError as error:
            raise os_error(error, self.path / FILES["log"], writing=True) from None
        self._handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        self.logger.addHandler(self._handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # the log goes to train.log only; the CLI reports on the terminal

    def close(self) -> None:
        """Close train.log (each run has its own handler; nothing is left open on another logger)."""
        if self._handler is not None:
            self.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None and self._handler is not None:
            self.logger.error("run ended by %s: %s", kind.__name__, error, exc_info=(kind, error, trace))
        self.close()

    # -- paths -------------------------------------------------------------------------------------------------
    def file(self, key: str) -> Path:
        """The path of one of FILES by key ('plan', 'last', ...)."""
        return self.path / FILES[key]

    @property
    def last(self) -> Path:
        return self.file("last")

    @property
    def best(self) -> Path:
        return self.file("best")

    @property
    def log_path(self) -> Path:
        return self.file("log")

    # -- plan --------------------------------------------------------------------------------------------------
    def write_plan(self, plan: dict) -> Path:
        with atomic_file(self.file("plan")) as tmp:
            tmp.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
        return self.file("plan")

    def read_plan(self) -> dict:
        from SegCore.training.config import load_config

        return load_config(self.file("plan"))

    # -- status ------------------------------------------------------------------------------------------------
    def write_status(self, state: str, **fields) -> dict:
        """Rewrite status.json: `state` (one of STATES) and `fields` (epoch, epochs, step, steps, loss, last_metric,
        best_metric, eta_s, message, ...) merged over the previous status; adds pid, log, updated and, with
        eta_s, eta (ISO times). Returns what was written."""
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}; states: {STATES}")
        now = time.time()
        if state in ENDED and "eta_s" not in fields:
            fields["eta_s"] = None  # nothing is expected any more
        self._status.update({key: _plain(value) for key, value in fields.items()})
        self._status.update(state=state, pid=os.getpid(), log=str(self.log_path), updated=_iso(now))
        if "eta_s" in fields:  # the expected end as a time of day, for people reading the file
            eta_s = self._status["eta_s"]
            self._status["eta"] = _iso(now + eta_s) if isinstance(eta_s, int | float) else None
        with atomic_file(self.file("status")) as tmp:
            tmp.write_text(json.dumps(self._status, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return dict(self._status)

    def read_status(self) -> dict:
        return json.loads(self.file("status").read_text(encoding="utf-8"))

    # -- history and curves ------------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict]:
        return [dict(row) for row in self._history]

    def set_history(self, rows: list[dict]) -> None:
        """Replace the history (on resume: the checkpoint's, which matches its weights) and rewrite history.csv."""
        self._history = [dict(row) for row in rows]
        self._write_history()

    def append_history(self, row: dict) -> None:
        """Add one epoch's row and rewrite history.csv (columns: the union of all rows, in first-seen order)."""
        self._history.append({key: _plain(value) for key, value in row.items()})
        self._write_history()

    def _write_history(self) -> None:
        columns = list(dict.fromkeys(key for row in self._history for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in self._history:
            writer.writerow({k: "" if v is None else repr(v) if isinstance(v, float) else v for k, v in row.items()})
        with atomic_file(self.file("history")) as tmp:
            tmp.write_text(text.getvalue(), encoding="utf-8")

    def read_history(self) -> list[dict]:
        """history.csv as rows of numbers; an empty cell (a column the epoch did not have) is left out."""
        path = self.file("history")
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                return [{key: _number(value) for key, value in row.items() if value != ""}
                        for row in csv.DictReader(handle)]
        except (OSError, csv.Error) as error:
            if isinstance(error, OSError):
                raise os_error(error, path) from None
            raise SegCoreError(f"history.csv is not readable CSV: {error}", path=path,
                               fix="remove it; the checkpoint's history rewrites it on resume") from None

    def draw_curves(self) -> Path:
        """Redraw curves.png from the history: losses per epoch, and the validation metrics per epoch."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        rows = self._history
        columns = list(dict.fromkeys(key for row in rows for key in row))
        numeric = [c for c in columns if any(isinstance(row.get(c), int | float) and not isinstance(row.get(c), bool)
                                             for row in rows)]
        losses = [c for c in numeric if c.endswith("loss")]
        metrics = [c for c in numeric if c not in losses and c not in NOT_PLOTTED]
        figure = Figure(figsize=(9.0, 3.6), dpi=100)
        FigureCanvasAgg(figure)  # Agg directly, no pyplot state (works headless and inside Slicer)
        figure.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.15, wspace=0.28)
        for index, (names, title, ylabel) in enumerate(((losses, "Loss", "loss"),
                                                        (metrics, "Validation", "metric value"))):
            axes = figure.add_subplot(1, 2, index + 1)
            for name in names:
                points = [(row.get("epoch", i + 1), row[name]) for i, row in enumerate(rows)
                          if isinstance(row.get(name), int | float)]
                if points:
                    axes.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
            axes.set_title(title, fontsize=10)
            axes.set_xlabel("epoch")
            axes.set_ylabel(ylabel)
            axes.grid(alpha=0.3)
            if names:
                axes.legend(fontsize=7)
            else:
                axes.text(0.5, 0.5, "no values yet", ha="center", va="center", transform=axes.transAxes)
        return save_figure(figure, self.file("curves"))
