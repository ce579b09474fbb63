"""The Review panel of a study module: per-case metrics of a segmentation against a reference, a cohort's
evaluation folder as a table and a box plot, and Export CSV.

    panel = ReviewPanel(study_widget)    # the module's reviewSegmentationSelector / reviewReferenceSelector

Compute fills a table node (one row per reference segment: Dice, IoU, precision, recall, HD, HD95, ASSD,
surface Dice, volumes and status; columns with titles, units and descriptions) and switches to a layout that
shows it. Load cohort reads a `segcore evaluate --out` folder (or a `segcore run` report's evaluation) into a
table and a box plot of the chosen metric. Export CSV writes the rows last shown. ReviewLogic does the work.
"""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _

from SegCore.errors import SegCoreError
from SegCore.slicer_utils.widget import combo_data, load_panel

DEFAULT_METRIC = "dice"


class ReviewPanel:
    """See the module docstring. host: the StudyWidget."""

    def __init__(self, host):
        from SegCore.metrics.definitions import METRICS_BY_KEY

        self.host = host
        self.module_ui = host.ui
        self.ui = load_panel("ReviewPanel.ui", self.module_ui.reviewPanelHost)
        self.logic = None
        self.table = None
        self.cohort = (None, None)  # (table, chart) of the loaded evaluation, refilled on the next load
        for key, metric in METRICS_BY_KEY.items():
            self.ui.metricComboBox.addItem(f"{metric.title} ({metric.unit})" if metric.unit else metric.title, key)
        self.ui.metricComboBox.setCurrentIndex(max(self.ui.metricComboBox.findData(DEFAULT_METRIC), 0))
        self.ui.evaluationPathLineEdit.currentPath = host.settings.get("review/evaluation")
        self.ui.computeButton.connect("clicked(bool)", self.on_compute)
        self.ui.loadEvaluationButton.connect("clicked(bool)", self.on_load_evaluation)
        self.ui.exportCsvButton.connect("clicked(bool)", self.on_export_csv)
        self.ui.exportCsvButton.enabled = False

    def _review_logic(self):
        if self.logic is None:
            from SegCore.slicer_utils.logic import ReviewLogic

            self.logic = ReviewLogic(slicer.mrmlScene)
        return self.logic

    def on_compute(self) -> None:
        with self.host.reporting(self.ui.reviewStatusLabel):
            segmentation = self.module_ui.reviewSegmentationSelector.currentNode()
            reference = self.module_ui.reviewReferenceSelector.currentNode()
            if segmentation is None or reference is None:
                raise SegCoreError("choose a segmentation and a reference", fix="pick both in the Review panel")
            labels = None
            if reference.IsA("vtkMRMLLabelMapVolumeNode"):  # a label map names no segments: the study's labels do
                labels = {label.name: label.value for label in self.host.labels() if label.value}
            logic = self._review_logic()
            with slicer.util.WaitCursor():
                self.table = logic.compute(segmentation, reference, labels, table_node=self.table,
                                           name=f"{segmentation.GetName()} vs {reference.GetName()}")
            logic.show(self.table)
            self.ui.exportCsvButton.enabled = True
            self.host.show_status(self.ui.reviewStatusLabel, _("{count} segment(s) compared.").format(
                count=len(logic.rows)))

    def on_load_evaluation(self) -> None:
        with self.host.reporting(self.ui.reviewStatusLabel):
            folder = self.ui.evaluationPathLineEdit.currentPath.strip()
            if not folder:
                raise SegCoreError("choose an evaluation folder", fix="the folder `segcore evaluate --out` wrote")
            self.host.settings.set("review/evaluation", folder)
            logic = self._review_logic()
            table, chart = logic.load_evaluation(folder, metric=combo_data(self.ui.metricComboBox) or DEFAULT_METRIC,
                                                 table_node=self.cohort[0], chart_node=self.cohort[1])
            self.cohort = (table, chart)
            logic.show(table, chart)
            self.ui.exportCsvButton.enabled = True
            self.host.show_status(self.ui.reviewStatusLabel, _("{count} row(s) from {folder}.").format(
                count=len(logic.rows), folder=folder))

    def on_export_csv(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, _("Export the metrics as CSV"), "metrics.csv", _("CSV (*.csv)"))
        if not path:
            return
        with self.host.reporting(self.ui.reviewStatusLabel):
            written = self._review_logic().export_csv(self.logic.rows, path)
            self.host.show_status(self.ui.reviewStatusLabel, _("Wrote {path}").format(path=written))
