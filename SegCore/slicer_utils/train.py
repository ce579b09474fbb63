"""The Train panel's logic: `segcore train` in a subprocess, its run folder polled, stopped cleanly, resumed.

    logic = TrainLogic(slicer.mrmlScene)
    logic.start("atrium", "LA2018", "runs/la", fold=0, epochs=100, device="auto")
    timer.timeout.connect(logic.poll)              # the runner's events; every second or so:
    state = logic.status("runs/la")                # status.json + history rows: epoch/epochs, loss, best_metric
    table, chart = logic.update_curves("runs/la")  # the live curve, from history.csv
    logic.stop()                                   # SIGTERM: stops at the next step, last.pt kept, state 'stopped'
    logic.start("atrium", "LA2018", "runs/la", resume=True)   # continues from last.pt with the run's plan.json
    logic.find_run("runs/la")                      # after Slicer restarts: the run's state, running or not

The run folder is the truth (SegCore/training/run_folder.py): status.json is rewritten atomically at every
step, so the panel reads it rather than the event stream, and a module reopened while a run goes on (or after
Slicer restarted) shows the same state. The pid in status.json tells whether a 'training' run still runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from SegCore.atomic import process_alive
from SegCore.errors import SegCoreError
from SegCore.slicer_utils.runner import ProcessRunner

RUNNING_STATES = ("starting", "training", "validating")


def train_arguments(study: str | None, data, out, *, fold: int | None = None, epochs: int | None = None,
                    overrides: Sequence[str] = (), device: str | None = None, resume: bool = False,
                    config=None, tiny: bool = False, overwrite: bool = False) -> list[str]:
    """`segcore train` arguments for the panel's fields. A resumed run takes its own plan.json, so only --out,
    --resume and --device are passed then."""
    if resume:
        return ["train", "--out", str(out), "--resume", *(["--device", str(device)] if device else [])]
    if data is None:
        raise SegCoreError("choose the dataset folder to train on", fix="pick a folder any layout of "
                           "`segcore inspect` reads (e.g. one written by `segcore phantoms`)")
    argv = ["train", "--data", str(data), "--out", str(out)]
    argv += ["--study", study] if study else []
    argv += ["--config", str(config)] if config else []
    argv += ["--fold", str(int(fold))] if fold is not None else []
    argv += ["--epochs", str(int(epochs))] if epochs is not None else []
    argv += ["--device", str(device)] if device else []
    argv += ["--tiny"] if tiny else []
    argv += ["--overwrite"] if overwrite else []
    overrides = [str(item) for item in overrides]
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise SegCoreError(f"an option override is KEY=VALUE, got {', '.join(bad)}", fix="e.g. optim.lr=0.001")
    return argv + (["--set", *overrides] if overrides else [])


def _is_segcore(pid: int) -> bool:
    """Whether process `pid` runs SegCore (Linux reads its command line; elsewhere it is assumed), so that a
    stale pid in an old status.json, reused by another program, is never signalled."""
    with contextlib.suppress(OSError):
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        return b"SegCore" in command or b"segcore" in command or b"train.py" in command
    return True


class TrainLogic:
    """One training run at a time, started from the panel; `scene` is needed only for the curves."""

    def __init__(self, scene=None):
        self.scene = scene
        self.runner: ProcessRunner | None = None
        self.out: Path | None = None
        self.error: str | None = None
        self.curves: tuple | None = None  # (table node, chart node) of update_curves

    def start(self, study: str | None, data, out, *, fold: int | None = None, epochs: int | None = None,
              overrides: Sequence[str] = (), device: str | None = "auto", resume: bool = False, config=None,
              tiny: bool = False, overwrite: bool = False, on_event: Callable[[dict], None] | None = None,
              on_done: Callable[[int, str | None], None] | None = None) -> ProcessRunner:
        """Start `segcore --progress json train ...` (see train_arguments); returns the runner (poll it, or call
        `poll`). on_event(event): each JSON event. on_done(returncode, error): at the end, error None on
        success, "cancelled" after stop(), else the error event's message. The CLI itself refuses a folder with
        another run (unless resume or overwrite)."""
        if self.runner is not None and self.runner.running:
            raise SegCoreError("a training run is already going", path=self.out, fix="stop it first")
        argv = train_arguments(study, data, out, fold=fold, epochs=epochs, overrides=overrides, device=device,
                               resume=resume, config=config, tiny=tiny, overwrite=overwrite)
        self.out, self.error = Path(out), None

        def finished(returncode: int, last_event: dict | None) -> None:
            self.error = None if returncode == 0 else self.runner.error_message()
            if on_done is not None:
                on_done(returncode, self.error)

        self.runner = ProcessRunner()
        self.runner.start(argv, on_event=on_event, on_finished=finished)
        return self.runner

    def poll(self) -> bool:
        """Deliver the runner's events; True while the process runs."""
        return self.runner.poll() if self.runner is not None else False

    def wait(self, timeout: float | None = None) -> int:
        """Block until the run ends (tests and scripts); its exit code (0 finished, 143 stopped by SIGTERM)."""
        if self.runner is None:
            raise SegCoreError("no training run was started here")
        return self.runner.wait(timeout)

    def stop(self) -> None:
        """End the run cleanly: SIGTERM to its process group. The trainer stops at the next step boundary,
        writes last.pt and status 'stopped' and exits; `start(..., resume=True)` continues it. A run started by
        an earlier session (found with find_run) is stopped through the pid in its status.json."""
        if self.runner is not None and self.runner.running:
            self.runner.terminate()
            return
        if self.out is not None:
            found = self.find_run(self.out)
            if found is not None and found["running"] and _is_segcore(int(found["pid"])):
                import signal

                os.kill(int(found["pid"]), signal.SIGTERM)

    @staticmethod
    def status(out) -> dict:
        """The run in `out` as the panel shows it: status.json's fields (state, epoch, epochs, step, steps,
        loss, last_metric, best_metric, eta_s, message, pid, ...; {} before the run wrote one) plus "history"
        (history.csv's rows, [] before the first epoch) and "running" (its process is alive)."""
        from SegCore.training.run_folder import RunFolder

        run = RunFolder(Path(out))
        status = {}
        with contextlib.suppress(FileNotFoundError, ValueError):  # not written yet
            status = run.read_status()
        history = run.read_history() if run.file("history").is_file() else []
        running = status.get("state") in RUNNING_STATES and process_alive(status.get("pid"))
        return {**status, "history": history, "running": running}

    @classmethod
    def find_run(cls, out) -> dict | None:
        """The run in `out`, or None when the folder holds none: `status` plus "can_resume" (last.pt and
        plan.json exist and the run is not running) and "plan" (plan.json, None when absent). A 'training'
        state whose process is gone (Slicer or the machine stopped) reads as state 'interrupted'."""
        from SegCore.training.run_folder import RUN_MARKERS, RunFolder

        folder = Path(out)
        if not folder.is_dir() or not any((folder / name).exists() for name in RUN_MARKERS):
            return None
        found = cls.status(folder)
        if found.get("state") in RUNNING_STATES and not found["running"]:
            found["state"] = "interrupted"
        run = RunFolder(folder)
        plan = None
        with contextlib.suppress(OSError, SegCoreError, ValueError):
            plan = run.read_plan() if run.file("plan").is_file() else None
        found["plan"] = plan
        found["can_resume"] = run.last.is_file() and plan is not None and not found["running"]
        return found

    def update_curves(self, out=None, *, scene=None):
        """The live curve: history.csv of `out` (default: the run started here) into a table node and a plot
        chart node (loss, val_loss, dice_mean per epoch), refilled on each call. Returns (table, chart)."""
        from SegCore.slicer_utils.plots import curves_chart

        scene = scene or self.scene
        folder = Path(out) if out is not None else self.out
        if scene is None or folder is None:
            raise SegCoreError("update_curves needs a scene and a run folder")
        table, chart = self.curves or (None, None)
        self.curves = curves_chart(self.status(folder)["history"], scene, table_node=table, chart_node=chart,
                                   name=folder.name)
        return self.curves
