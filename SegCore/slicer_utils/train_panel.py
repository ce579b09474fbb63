"""The Train panel of a study module: dataset and output folders, fold, epochs and the study's main options;
Train / Stop / Resume; the run's epoch, loss and best validation score, and a live curve.

    panel = TrainPanel(study_widget, (("View", "sampler.axis", ("axial", "coronal", "sagittal")),))

Train runs `segcore train --study S ...` in a PythonSlicer subprocess (TrainLogic); a QTimer reads the run
folder's status.json and history.csv every second, so what the panel shows is the run folder's truth: reopening
the module, or restarting Slicer, finds a run from its remembered output folder and shows its state (and Stop
still reaches it through the pid in status.json). Stop sends SIGTERM: the trainer stops at the next step and
keeps last.pt; Resume continues from it with the run's own plan.json. The curve is a plot chart node fed from
history.csv (loss, val_loss, dice_mean per epoch), shown in the plot view on request.
"""

from __future__ import annotations

import os
from pathlib import Path

import qt
import slicer
from slicer.i18n import tr as _

from SegCore.errors import SegCoreError
from SegCore.slicer_utils.widget import load_panel

POLL_MS = 1000


class TrainPanel:
    """See the module docstring. host: the StudyWidget; options: ((label, plan key, choices), ...)."""

    def __init__(self, host, options=()):
        self.host = host
        self.module_ui = host.ui
        self.ui = load_panel("TrainPanel.ui", self.module_ui.trainPanelHost)
        self.logic = None
        self.option_combos = []
        self._history_rows = -1
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self._tick)
        settings = host.settings
        for label, key, choices in options:
            combo = qt.QComboBox()
            for choice in choices:
                combo.addItem(str(choice), str(choice))
            combo.setCurrentIndex(max(combo.findData(settings.get(f"train/{key}")), 0))
            combo.toolTip = _("Plan key {key}; the first choice is the study's published setting").format(key=key)
            self.ui.trainOptionsHost.layout().addRow(f"{label}:", combo)
            self.option_combos.append((key, combo))
        self.ui.dataPathLineEdit.currentPath = settings.get("train/data")
        self.ui.outputPathLineEdit.currentPath = settings.get("train/out")
        self.ui.foldSpinBox.value = int(settings.get("train/fold", "0"))
        self.ui.epochsSpinBox.value = int(settings.get("train/epochs", "0"))
        self.ui.tinyCheckBox.checked = settings.get("train/tiny") == "true"
        self.ui.setLineEdit.text = settings.get("train/set")
        host.fill_devices(self.ui.trainDeviceComboBox, "train/device")
        self.ui.trainButton.connect("clicked(bool)", self.on_train)
        self.ui.stopButton.connect("clicked(bool)", self.on_stop)
        self.ui.resumeButton.connect("clicked(bool)", self.on_resume)
        self.ui.showCurveButton.connect("clicked(bool)", self.on_show_curve)
        self.ui.useModelButton.connect("clicked(bool)", self.on_use_model)
        self.ui.outputPathLineEdit.connect("currentPathChanged(QString)", self.refind)
        self.refind()

    def _train_logic(self):
        if self.logic is None:
            from SegCore.slicer_utils.logic import TrainLogic

            self.logic = TrainLogic(slicer.mrmlScene)
        return self.logic

    def out(self) -> str:
        return self.ui.outputPathLineEdit.currentPath.strip()

    def _remember(self) -> None:
        settings = self.host.settings
        settings.set("train/data", self.ui.dataPathLineEdit.currentPath)
        settings.set("train/out", self.out())
        settings.set("train/fold", self.ui.foldSpinBox.value)
        settings.set("train/epochs", self.ui.epochsSpinBox.value)
        settings.set("train/tiny", "true" if self.ui.tinyCheckBox.checked else "false")
        settings.set("train/set", self.ui.setLineEdit.text)
        settings.set("train/device", self.host.device(self.ui.trainDeviceComboBox))
        for key, combo in self.option_combos:
            settings.set(f"train/{key}", combo.currentText)

    def overrides(self) -> list[str]:
        """--set KEY=VALUE items: the main options that differ from the preset's (first) choice, then the
        'More options' line."""
        items = [f"{key}={combo.currentText}" for key, combo in self.option_combos if combo.currentIndex > 0]
        return items + self.ui.setLineEdit.text.split()

    # -- the run's state -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.logic is not None and self.logic.runner is not None and self.logic.runner.running

    def refind(self, *_unused) -> None:
        """Show the run in the output folder, if any; keep polling it while it runs (ours or not)."""
        out = self.out()
        if self.running:
            return
        found = None
        if out:
            from SegCore.slicer_utils.logic import TrainLogic

            try:
                found = TrainLogic.find_run(out)
            except (OSError, SegCoreError) as error:
                self.host.show_error(self.ui.trainStateLabel, error)
                return
        if found is not None:
            self._train_logic().out = Path(out)  # Stop reaches a run found here through its status.json
        self._show(found or {})
        if found is not None and found["running"]:
            self.timer.start()

    def _show(self, status: dict) -> None:
        from SegCore.slicer_utils.display import train_summary

        plan = status.get("plan") or {}
        best_name = (plan.get("training") or {}).get("best_metric") or self._best_metric_name()
        summary = train_summary(status, best_name)
        self.host.show_status(self.ui.trainStateLabel, summary["state"] + (
            f": {summary['message']}" if summary["message"] else ""))
        if status.get("state") == "failed":
            self.ui.trainStateLabel.styleSheet = "color: #c62828"
        self.ui.epochLabel.text = summary["epoch"]
        self.ui.lossLabel.text = summary["loss"]
        self.ui.bestLabel.text = summary["best"]
        fraction = summary["fraction"]
        self.ui.trainProgressBar.setVisible(fraction is not None)
        if fraction is not None:
            self.ui.trainProgressBar.setValue(int(round(fraction * 100)))
        running = self.running or bool(status.get("running"))
        self.ui.trainButton.enabled = not running
        self.ui.stopButton.enabled = running
        self.ui.resumeButton.enabled = not running and bool(status.get("can_resume", status.get("state") in (
            "stopped", "interrupted", "failed")))
        out = self.out()
        self.ui.useModelButton.enabled = bool(out) and os.path.isfile(os.path.join(out, "best.pt"))
        self.ui.showCurveButton.enabled = bool(status.get("history"))

    def _best_metric_name(self) -> str:
        return str((self.host.study.preset.get("training") or {}).get("best_metric") or "")

    def _tick(self) -> None:
        from SegCore.slicer_utils.logic import TrainLogic

        if self.logic is not None:
            self.logic.poll()  # the runner's events (on_done at the end)
        out = self.out()
        if not out:
            return
        status = TrainLogic.status(out)
        status["can_resume"] = False
        self._show(status)
        rows = len(status.get("history") or [])
        if rows != self._history_rows and rows:
            self._history_rows = rows
            with self.host.reporting(self.ui.trainStateLabel):
                self._train_logic().update_curves(out)
        if not self.running and not status.get("running"):
            self.timer.stop()
            self.refind()

    # -- actions ---------------------------------------------------------------------------------------------
    def _start(self, *, resume: bool) -> None:
        with self.host.reporting(self.ui.trainStateLabel):
            out = self.out()
            if not out:
                raise SegCoreError("choose an output folder for the run", fix="pick a new, empty folder")
            if not self.host.ensure_dependencies():
                return
            self._remember()
            epochs = self.ui.epochsSpinBox.value or None  # 0: the study's preset
            data = self.ui.dataPathLineEdit.currentPath.strip() or None
            self._history_rows = -1
            self._train_logic().start(self.host.study.name, data, out, fold=self.ui.foldSpinBox.value,
                                      epochs=epochs, overrides=self.overrides(),
                                      device=self.host.device(self.ui.trainDeviceComboBox), resume=resume,
                                      tiny=self.ui.tinyCheckBox.checked, on_done=self._on_done)
            self.host.show_status(self.ui.trainStateLabel, _("starting..."))
            self.ui.trainButton.enabled = self.ui.resumeButton.enabled = False
            self.ui.stopButton.enabled = True
            self.timer.start()

    def on_train(self) -> None:
        self._start(resume=False)

    def on_resume(self) -> None:
        self._start(resume=True)

    def on_stop(self) -> None:
        with self.host.reporting(self.ui.trainStateLabel):
            self._train_logic().stop()
            self.host.show_status(self.ui.trainStateLabel, _("stopping at the next step (last.pt is kept)..."))

    def _on_done(self, returncode: int, error) -> None:
        from SegCore.slicer_utils.logic import TrainLogic

        status = TrainLogic.find_run(self.out()) or {}
        self._show(status)
        if error and error != "cancelled":
            self.host.show_error(self.ui.trainStateLabel, error)

    def on_show_curve(self) -> None:
        with self.host.reporting(self.ui.trainStateLabel):
            from SegCore.slicer_utils.logic import show_in_layout

            table, chart = self._train_logic().update_curves(self.out())
            show_in_layout(slicer.mrmlScene, table, chart)

    def on_use_model(self) -> None:
        with self.host.reporting(self.ui.trainStateLabel):
            self.host.segment.use_checkpoint(os.path.join(self.out(), "best.pt"))
            self.module_ui.segmentCollapsibleButton.collapsed = False

    def cleanup(self) -> None:
        """The module closes: stop polling. A training run is left running; reopening the module finds it."""
        self.timer.stop()
