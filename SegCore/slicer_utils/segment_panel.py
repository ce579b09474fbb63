"""The Segment panel of a study module: model, device and advanced options, Segment / Cancel, progress and log.

    panel = SegmentPanel(study_widget)          # StudyWidget makes it, in the module's segmentPanelHost
    panel.use_checkpoint("runs/la/best.pt")    # what the Train panel's "Use best model" does

Segment checks the dependencies (first run), then SegmentLogic.start: the checkpoint's study and channels and
the inputs' geometry are checked before anything runs, `segcore predict` runs in a PythonSlicer subprocess that
a QTimer polls (Slicer stays responsive), the button becomes Cancel (which kills the process tree), the
progress bar follows the JSON events, the log pane shows the runner's capped log. The model chooser lists the
per-user model folder (SegCore.slicer_utils.models) and remembers the last choice in the settings.
"""

from __future__ import annotations

import os
import time

import qt
import slicer
from slicer.i18n import tr as _

from SegCore.errors import SegCoreError
from SegCore.slicer_utils.widget import combo_data, load_panel

POLL_MS = 200
LOG_REFRESH_S = 1.0
TTA_CHOICES = (None, True, False)  # the order of ttaComboBox's items: as the model says, on, off


class SegmentPanel:
    """See the module docstring. host: the StudyWidget."""

    def __init__(self, host):
        self.host = host
        self.module_ui = host.ui
        self.ui = load_panel("SegmentPanel.ui", self.module_ui.segmentPanelHost)
        self.logic = None
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self._poll)
        self._log_shown_at = 0.0
        uses_locator = (host.study.preset.get("inference") or {}).get("strategy") == "locate_segment"
        self.ui.locatorLabel.setVisible(uses_locator)
        self.ui.locatorPathLineEdit.setVisible(uses_locator)
        self.ui.locatorPathLineEdit.currentPath = host.settings.get("locator")
        self.ui.progressBar.hide()
        self.ui.segmentButton.connect("clicked(bool)", self.on_segment)
        self.ui.chooseModelButton.connect("clicked(bool)", self.on_choose_model)
        self.ui.importModelButton.connect("clicked(bool)", self.on_import_model)
        self.ui.copyLogButton.connect("clicked(bool)", self.on_copy_log)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.on_model_changed)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.on_device_changed)
        self.refresh_models(host.settings.get("checkpoint"))
        host.fill_devices(self.ui.deviceComboBox, "device")

    # -- the model chooser -----------------------------------------------------------------------------------
    def refresh_models(self, select: str = "") -> None:
        """List the study's models in the per-user folder (no weights read) plus `select`, and select it."""
        from SegCore.slicer_utils.models import list_models

        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        try:
            models = list_models(self.host.study.name)
        except OSError:
            models = []
        for model in models:
            combo.addItem(model["name"], model["path"])
            combo.setItemData(combo.count - 1, model.get("summary", ""), qt.Qt.ToolTipRole)
        if select and combo.findData(select) < 0 and os.path.isfile(select):
            combo.addItem(os.path.basename(os.path.dirname(select)) + "/" + os.path.basename(select), select)
            combo.setItemData(combo.count - 1, select, qt.Qt.ToolTipRole)
        combo.setCurrentIndex(max(combo.findData(select), 0) if combo.count else -1)
        combo.blockSignals(False)
        self.on_model_changed()

    def checkpoint(self) -> str:
        return combo_data(self.ui.modelComboBox) or ""

    def on_model_changed(self, *_unused) -> None:
        path = self.checkpoint()
        self.host.settings.set("checkpoint", path)
        index = self.ui.modelComboBox.currentIndex
        summary = self.ui.modelComboBox.itemData(index, qt.Qt.ToolTipRole) if index >= 0 else ""
        self.ui.modelInfoLabel.text = (summary if summary and summary != path else path) or _(
            "No model yet: Import model... copies a checkpoint into your model folder (for offline use); "
            "Choose file... uses one where it is.")

    def use_checkpoint(self, path: str) -> None:
        """Choose a checkpoint file where it lies, after checking it (its study must be the module's)."""
        from SegCore.slicer_utils.models import checkpoint_info

        if not self.host.ensure_dependencies():
            return
        info = checkpoint_info(path, study=self.host.study.name)
        self.refresh_models(info["path"])
        self.ui.modelInfoLabel.text = info["summary"] + "".join(f"\n{w}" for w in info["warnings"])

    def on_choose_model(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, _("Choose a SegStudies checkpoint"), "",
                                              _("Checkpoints (*.pt)"))
        if path:
            with self.host.reporting(self.ui.statusLabel):
                self.use_checkpoint(path)

    def on_import_model(self) -> None:
        path = qt.QFileDialog.getOpenFileName(None, _("Import a SegStudies checkpoint"), "", _("Checkpoints (*.pt)"))
        if not path:
            return
        with self.host.reporting(self.ui.statusLabel):
            from SegCore.slicer_utils.models import import_model, user_model_folder

            if not self.host.ensure_dependencies():
                return
            copied = import_model(path, study=self.host.study.name)
            self.refresh_models(str(copied))
            self.host.show_status(self.ui.statusLabel, _("Imported into {folder}").format(folder=user_model_folder()))

    def on_device_changed(self, *_unused) -> None:
        self.host.settings.set("device", self.host.device(self.ui.deviceComboBox))

    # -- segmenting ------------------------------------------------------------------------------------------
    def settings(self) -> dict:
        """The Advanced section as SegmentLogic settings (None: the checkpoint's plan decides)."""
        locator = self.ui.locatorPathLineEdit.currentPath if self.ui.locatorPathLineEdit.visible else ""
        self.host.settings.set("locator", locator)
        return {"overlap": float(self.ui.overlapSpinBox.value),
                "tta": TTA_CHOICES[max(self.ui.ttaComboBox.currentIndex, 0)],
                "postprocess": None if self.ui.postprocessCheckBox.checked else False,
                "locator": locator or None}

    @property
    def running(self) -> bool:
        return self.logic is not None and self.logic.runner is not None and self.logic.runner.running

    def on_segment(self) -> None:
        if self.running:  # the button reads Cancel
            self.logic.cancel()
            self.host.show_status(self.ui.statusLabel, _("Cancelling..."))
            return
        with self.host.reporting(self.ui.statusLabel):
            if not self.host.ensure_dependencies():
                return
            checkpoint = self.checkpoint()
            if not checkpoint:
                raise SegCoreError("no model chosen", fix="use Import model... or Choose file... first")
            from SegCore.slicer_utils.logic import SegmentLogic

            self.logic = SegmentLogic(slicer.mrmlScene, study=self.host.study.name)
            self.ui.logTextEdit.setPlainText("")
            output = self.module_ui.outputSegmentationSelector.currentNode()
            self.logic.start(self.host.input_nodes(), checkpoint, device=self.host.device(self.ui.deviceComboBox),
                             settings=self.settings(), output_node=output, on_progress=self._on_event,
                             on_done=self._on_done)
            self._set_running(True)
            self.timer.start()

    def _set_running(self, running: bool) -> None:
        self.ui.segmentButton.text = _("Cancel") if running else _("Segment")
        self.ui.segmentButton.toolTip = (_("Stop the segmentation (its process and every process it started)")
                                         if running else _("Segment the input volumes with the chosen model"))
        for widget in (self.ui.modelComboBox, self.ui.chooseModelButton, self.ui.importModelButton,
                       self.ui.deviceComboBox, self.ui.advancedGroupBox):
            widget.enabled = not running
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.progressBar.setRange(0, 0)  # busy until the first event with a total
            self.host.show_status(self.ui.statusLabel, _("Starting..."))

    def _poll(self) -> None:
        if self.logic is None or self.logic.runner is None:
            self.timer.stop()
            return
        self.logic.runner.poll()  # calls _on_event per event and _on_done at the end
        now = time.monotonic()
        if now - self._log_shown_at >= LOG_REFRESH_S:
            self._show_log()
            self._log_shown_at = now

    def _show_log(self) -> None:
        if self.logic is not None and self.logic.runner is not None:
            self.ui.logTextEdit.setPlainText(self.logic.runner.log_text())
            bar = self.ui.logTextEdit.verticalScrollBar()
            bar.setValue(bar.maximum)

    def _on_event(self, event: dict) -> None:
        from SegCore.slicer_utils.display import event_progress

        fraction, text = event_progress(event)
        if fraction is None:
            self.ui.progressBar.setRange(0, 0)
        else:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.setValue(int(round(fraction * 100)))
        if text and event.get("event") != "error":
            self.host.show_status(self.ui.statusLabel, text)

    def _on_done(self, node, error) -> None:
        self.timer.stop()
        self._set_running(False)
        self._show_log()
        if error == "cancelled":
            self.host.show_status(self.ui.statusLabel, _("Cancelled."))
            return
        if error:
            self.host.show_error(self.ui.statusLabel, error)
            return
        self.module_ui.outputSegmentationSelector.setCurrentNode(node)
        self.module_ui.reviewSegmentationSelector.setCurrentNode(node)
        if self.module_ui.show3DCheckBox.checked:
            node.CreateClosedSurfaceRepresentation()
        segments = node.GetSegmentation().GetNumberOfSegments()
        warnings = "".join(f" Note: {w}" for w in self.logic.warnings)
        self.host.show_status(self.ui.statusLabel, _("Done: {count} segment(s) in {name}.").format(
            count=segments, name=node.GetName()) + warnings)

    def on_copy_log(self) -> None:
        qt.QApplication.clipboard().setText(self.ui.logTextEdit.toPlainText())

    def cleanup(self) -> None:
        """The module closes: a running segmentation is cancelled (nothing would import its result)."""
        self.timer.stop()
        if self.running:
            self.logic.cancel()
