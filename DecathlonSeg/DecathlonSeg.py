"""DecathlonSeg: the ten Medical Segmentation Decathlon tasks (a 3D U-Net), a SegStudies module.

    import DecathlonSeg
    logic = DecathlonSeg.DecathlonSegLogic()
    segmentation = logic.segment([flair, t1w, t1gd, t2w], "decathlon.pt", device="cpu")

The Segment, Train and Review panels are SegCore.slicer_utils.widget's, shared by the five study modules; this file
holds only what is the decathlon study's own: its study name, its task and its inputs (one per modality), its main
training options and its sample data. docs/slicer.md is the user guide.
"""

import os
import sys
from typing import Annotated, Optional, Union

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

# Run from a source checkout (this folder added in Slicer's module paths): SegCore lies beside it.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "SegCore")) and _CHECKOUT not in sys.path:
    sys.path.append(_CHECKOUT)

from SegCore.slicer_utils.module import StudyModuleLogic, StudyModuleTest  # noqa: E402  (after the path above)
from SegCore.slicer_utils.widget import StudyModuleWidget  # noqa: E402
from SegCore.studies import get_study  # noqa: E402  (standard library only: cheap)

TASKS = tuple(task.name for task in get_study("decathlon").tasks)

STUDY = "decathlon"
# The Train panel's main options: (label, plan key, choices), the first choice being the study's published one.
TRAIN_OPTIONS = (
    (_("Upsampling"), "model.arguments.upsampling", ("transpose", "interpolate")),
    (_("Regularisation"), "model.arguments.regularisation", ("batchnorm", "dropout")),
)
SELF_TEST_OVERRIDES = ()


class DecathlonSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Decathlon Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegStudies developers"]
        self.parent.helpText = _(
            "Segment any of the ten Medical Segmentation Decathlon tasks with the published 3D U-Net: choose the "
            "task, one volume per modality, and a model; train it on the task's data, and review results against "
            "a reference. Segment runs in the background: Slicer stays responsive and Cancel stops it. "
            "See the <a href=\"https://github.com/SegStudies/SegStudies/blob/main/docs/slicer.md\">user guide</a>.")
        self.parent.acknowledgementText = _(
            "Reproduces 3D-image-segmentation-medical-decathlon-tensorflow (a 3D U-Net for the Medical "
            "Segmentation Decathlon); docs/studies.md summarises the original repository.")
        slicer.app.connect("startupCompleted()", _register_sample_data)


def _register_sample_data():
    """A phantom BrainTumour case (four MR inputs) and its reference, in Sample Data (SegStudies), made on first use."""
    from SegCore.slicer_utils.sample_data import register_sample_data

    register_sample_data(STUDY, thumbnail=os.path.join(os.path.dirname(__file__), "Resources", "Icons",
                                                       "DecathlonSeg.png"))


@parameterNodeWrapper
class DecathlonSegParameterNode:
    """The module's scene state (saved with the scene).

    task: the Decathlon task (it sets the channels and labels). input_volume0..3: one volume per modality of
    the task, in dataset.json's order (BrainTumour: FLAIR, T1w, t1gd, T2w; most tasks: one).
    output_segmentation: the node Segment refills (none: a new one beside the input). show_3d: show the
    result's surfaces in 3D. review_segmentation, review_reference: the Review panel's pair (the reference a
    segmentation or a label map).
    """

    task: Annotated[str, Choice(TASKS)] = TASKS[0]
    input_volume0: vtkMRMLScalarVolumeNode
    input_volume1: vtkMRMLScalarVolumeNode
    input_volume2: vtkMRMLScalarVolumeNode
    input_volume3: vtkMRMLScalarVolumeNode
    output_segmentation: vtkMRMLSegmentationNode
    show_3d: bool = False
    review_segmentation: vtkMRMLSegmentationNode
    # typing's Union: Slicer's parameterNodeWrapper does not read `A | B` unions (Python 3.12 types.UnionType).
    review_reference: Optional[Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]]  # noqa: UP007, UP045


class DecathlonSegWidget(StudyModuleWidget):
    STUDY = STUDY
    TRAIN_OPTIONS = TRAIN_OPTIONS

    def create_logic(self):
        return DecathlonSegLogic()


class DecathlonSegLogic(StudyModuleLogic):
    """Scripted use of the module: `segment(input_volumes, checkpoint, device=, settings=, output_segmentation=)`,
    the same Segment the panel runs, blocking (SegCore.slicer_utils.module)."""

    STUDY = STUDY
    PARAMETER_NODE = DecathlonSegParameterNode


class DecathlonSegTest(StudyModuleTest):
    """Segment the sample case with a tiny CPU checkpoint through the real subprocess, then review it."""

    STUDY = STUDY
    OVERRIDES = SELF_TEST_OVERRIDES
    TASK = TASKS[0]
