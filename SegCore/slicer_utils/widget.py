"""The study modules' shared GUI: `StudyModuleWidget` (a module's widget class) and `StudyWidget` (its panels).

    class AtriumSegWidget(StudyModuleWidget):          # in AtriumSeg/AtriumSeg.py
        STUDY = "atrium"
        TRAIN_OPTIONS = ((_("BAM attention"), "model.arguments.attention", ("false", "true")),)

        def create_logic(self):
            return AtriumSegLogic()

A module's `.ui` (Resources/UI/XSeg.ui) holds what is scene state, bound to its parameter node through
SlicerParameterName: one input selector per channel (`inputSelector0`.., labelled `inputLabel0`..; DecathlonSeg
adds `taskComboBox`), `outputSegmentationSelector`, `show3DCheckBox`, `reviewSegmentationSelector`,
`reviewReferenceSelector`, and three empty hosts, `segmentPanelHost`, `trainPanelHost`, `reviewPanelHost`.
StudyWidget fills the hosts with the Segment, Train and Review panels (segment_panel.py, train_panel.py,
review_panel.py, each from its own .ui in SegCore/slicer_utils/Resources/UI/), labels the input selectors with
the study file's channels (SegCore.studies), and keeps the user's choices that are not scene state (model,
device, folders) in the application settings under SegStudies/<study>/. Testing/test_extension_layout.py checks
that every name used here exists in every module's .ui.

Rules the panels keep: nothing heavy is imported before the user acts (torch on the first Segment or Train, or
when the device list is first filled); no popup at start-up or in testing mode (`slicer.app.testingEnabled()`);
an error reaches the user as its one line (SegCoreError's text, `failures.describe` for anything else), with
the traceback in the Python console's log.
"""

from __future__ import annotations

import contextlib
import logging
import os

import qt
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from SegCore.errors import SegCoreError

PANEL_UI_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "UI")
SETTINGS_PREFIX = "SegStudies"
ERROR_STYLE = "color: #c62828"


def testing() -> bool:
    """Whether Slicer runs its self-tests (no popups then)."""
    return bool(getattr(slicer, "app", None) is not None and slicer.app.testingEnabled())


def error_text(error: BaseException) -> str:
    """The one line a user sees: a SegCoreError's own text, else SegCore.failures' description."""
    if isinstance(error, SegCoreError):
        return str(error)
    from SegCore.failures import describe

    return describe(error).message


def combo_data(combo):
    """The user data of a QComboBox's current item (None when it has none)."""
    index = combo.currentIndex
    return combo.itemData(index) if index >= 0 else None


def load_panel(file_name: str, host):
    """Load SegCore/slicer_utils/Resources/UI/`file_name` into the `host` widget's layout; its child widgets by
    name (slicer.util.childWidgetVariables)."""
    panel = slicer.util.loadUI(os.path.join(PANEL_UI_FOLDER, file_name))
    host.layout().addWidget(panel)
    return slicer.util.childWidgetVariables(panel)


class Settings:
    """The application settings of one study module (QSettings, SegStudies/<study>/<key>), as strings."""

    def __init__(self, study: str):
        self.prefix = f"{SETTINGS_PREFIX}/{study}/"

    def get(self, key: str, default: str = "") -> str:
        value = qt.QSettings().value(self.prefix + key)
        return default if value in (None, "") else str(value)

    def set(self, key: str, value) -> None:
        qt.QSettings().setValue(self.prefix + key, "" if value is None else str(value))


class StudyWidget:
    """The Segment, Train and Review panels of one study, in a module's `.ui` (see the module docstring).

    study: the SegCore.studies name. ui: the module's .ui widgets by name. train_options: the study's main
    training options, ((label, plan key, choices), ...), the first choice being the preset's.
    """

    def __init__(self, study: str, ui, *, train_options=()):
        from SegCore.slicer_utils.review_panel import ReviewPanel
        from SegCore.slicer_utils.segment_panel import SegmentPanel
        from SegCore.slicer_utils.train_panel import TrainPanel
        from SegCore.studies import get_study

        self.study = get_study(study)
        self.ui = ui
        self.settings = Settings(study)
        self._dependencies_checked = False
        self._devices = None
        self.segment = SegmentPanel(self)
        self.train = TrainPanel(self, train_options)
        self.review = ReviewPanel(self)
        if hasattr(ui, "taskComboBox"):
            ui.taskComboBox.connect("currentIndexChanged(int)", self.update_channels)
        self.update_channels()

    # -- the study's channels and labels ---------------------------------------------------------------------
    def task(self):
        """The chosen Decathlon task (an MsdTask), None for the other studies."""
        if not self.study.tasks:
            return None
        return self.study.task(self.ui.taskComboBox.currentText or self.study.tasks[0].name)

    def channel_names(self) -> list[str]:
        task = self.task()
        return list(task.channels) if task is not None else list(self.study.channel_names)

    def labels(self):
        """The study's (or task's) Labels, background first."""
        task = self.task()
        return task.labels if task is not None else self.study.labels

    def selectors(self) -> list:
        """The module's input selectors, inputSelector0, inputSelector1, ... as many as its .ui has."""
        found, index = [], 0
        while hasattr(self.ui, f"inputSelector{index}"):
            found.append(getattr(self.ui, f"inputSelector{index}"))
            index += 1
        return found

    def update_channels(self, *_unused) -> None:
        """Label the input selectors with the channels' names (and descriptions), hide the unused ones."""
        names = self.channel_names()
        descriptions = {c.name: c.description for c in self.study.channels}
        for index, selector in enumerate(self.selectors()):
            label = getattr(self.ui, f"inputLabel{index}", None)
            used = index < len(names)
            selector.setVisible(used)
            if label is not None:
                label.setVisible(used)
                if used:
                    label.text = f"{names[index]}:"
            if used:
                selector.toolTip = descriptions.get(names[index]) or names[index]

    def input_nodes(self) -> list:
        """The chosen input volume nodes, one per channel in the study's order (None where none is chosen)."""
        return [selector.currentNode() for selector in self.selectors()[:len(self.channel_names())]]

    # -- devices, dependencies, messages ---------------------------------------------------------------------
    def fill_devices(self, combo, key: str) -> None:
        """Fill a device combo (Auto, CPU, each GPU with name and memory) and select the remembered choice.
        The GPUs are listed once torch is installed (listing them imports torch)."""
        from SegCore.slicer_utils.display import available_devices, device_choices

        if self._devices is None:
            try:
                self._devices = available_devices()
            except Exception as error:  # a broken CUDA install must not break the module; CPU still works
                logging.warning("SegStudies: could not list the GPUs: %s", error_text(error))
                self._devices = []
        wanted = self.settings.get(key, "auto")
        combo.blockSignals(True)  # refilling is no choice of the user's: keep the remembered one
        combo.clear()
        for label, value in device_choices(self._devices):
            combo.addItem(label, value)
        combo.setCurrentIndex(max(combo.findData(wanted), 0))
        combo.blockSignals(False)

    def device(self, combo) -> str:
        return combo_data(combo) or "auto"

    def ensure_dependencies(self) -> bool:
        """Before the first Segment or Train: install missing requirements after the user agrees (torch through
        PyTorchUtils). False when Slicer must restart first; SegCoreError when they cannot be installed."""
        if self._dependencies_checked:
            return True
        from SegCore.slicer_utils.dependencies import install_requirements, missing_requirements

        if missing_requirements():
            outcome = install_requirements(confirm=self.confirm)
            if outcome["restart_needed"]:
                if self.confirm(_("Slicer must restart to use the updated Python packages. Restart now?")):
                    slicer.util.restart()
                return False
            self.refresh_devices()  # torch may have just arrived: list the GPUs now
        self._dependencies_checked = True
        return True

    def refresh_devices(self) -> None:
        """List the devices again (after torch was installed) in both panels' combos."""
        self._devices = None
        self.fill_devices(self.segment.ui.deviceComboBox, "device")
        self.fill_devices(self.train.ui.trainDeviceComboBox, "train/device")

    def confirm(self, text: str) -> bool:
        """Ask the user; never asks (and declines) in testing mode."""
        if testing():
            logging.info("SegStudies (testing, not asked): %s", text)
            return False
        return bool(slicer.util.confirmOkCancelDisplay(text))

    def show_error(self, label, error) -> str:
        """Show an error's one line in `label` (red) and, outside testing, in a message box; log it."""
        text = error if isinstance(error, str) else error_text(error)
        label.text = text
        label.styleSheet = ERROR_STYLE
        logging.error("SegStudies %s: %s", self.study.name, text)
        if not testing():
            slicer.util.errorDisplay(text)
        return text

    def show_status(self, label, text: str) -> None:
        label.text = text
        label.styleSheet = ""

    @contextlib.contextmanager
    def reporting(self, label):
        """Run a user action; any error ends it with its one line in `label` (the traceback goes to the log)."""
        try:
            yield
        except Exception as error:  # the user sees one line; developers get the traceback in the log
            if not isinstance(error, SegCoreError):
                logging.exception("SegStudies %s", self.study.name)
            self.show_error(label, error)

    # -- the module's life cycle -----------------------------------------------------------------------------
    def enter(self) -> None:
        self.train.refind()

    def cleanup(self) -> None:
        """The module widget is destroyed (Slicer closes): stop the timers; a training run goes on by itself."""
        for panel in (self.segment, self.train):
            panel.cleanup()


class StudyModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """A study module's widget: its .ui bound to its parameter node, and the StudyWidget panels in it.

    Subclasses (XSegWidget in each module) set STUDY and TRAIN_OPTIONS and return their logic from create_logic;
    the logic's getParameterNode() returns the module's @parameterNodeWrapper class.
    """

    STUDY = ""
    TRAIN_OPTIONS = ()

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panels: StudyWidget | None = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def create_logic(self):
        raise NotImplementedError("a study module returns its logic here")

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.create_logic()
        self.panels = StudyWidget(self.STUDY, self.ui, train_options=self.TRAIN_OPTIONS)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.on_scene_start_close)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.on_scene_end_close)
        self.initialize_parameter_node()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.panels is not None:
            self.panels.cleanup()

    def enter(self) -> None:
        self.initialize_parameter_node()
        if self.panels is not None:
            self.panels.enter()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def on_scene_start_close(self, caller, event) -> None:
        self.set_parameter_node(None)

    def on_scene_end_close(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initialize_parameter_node()

    def initialize_parameter_node(self) -> None:
        """The scene's parameter node, with the first volume as the first input when none is chosen."""
        self.set_parameter_node(self.logic.getParameterNode())
        if not self._parameterNode.input_volume0:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first is not None and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.input_volume0 = first

    def set_parameter_node(self, parameterNode) -> None:
        """Bind the .ui widgets that carry a SlicerParameterName to `parameterNode` (None: unbind)."""
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
