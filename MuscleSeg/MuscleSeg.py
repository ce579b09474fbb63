"""MuscleSeg: abdominal muscle in CT (EfficientNet U-Net or SegResNet, mixup, self-distillation), a SegStudies module.

    import MuscleSeg
    logic = MuscleSeg.MuscleSegLogic()
    segmentation = logic.segment([ctVolumeNode], "muscle.pt", device="cpu")

The Segment, Train and Review panels are SegCore.slicer_utils.widget's, shared by the five study modules; this file
holds only what is the muscle study's own: its study name, its one input (the CT volume), its main training options
and its sample data. docs/slicer.md is the user guide.
"""

import os
import sys
from typing import Optional, Union

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

# Run from a source checkout (this folder added in Slicer's module paths): SegCore lies beside it.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_CHECKOUT, "SegCore")) and _CHECKOUT not in sys.path:
    sys.path.append(_CHECKOUT)

from SegCore.slicer_utils.module import StudyModuleLogic, StudyModuleTest  # noqa: E402  (after the path above)
from SegCore.slicer_utils.widget import StudyModuleWidget  # noqa: E402

STUDY = "muscle"
# The Train panel's main options: (label, plan key, choices), the first choice being the study's published one.
TRAIN_OPTIONS = (
    (_("Mixup"), "mixup.mode", ("manifold", "input", "off")),
    (_("Encoder"), "model.arguments.variant", ("b3", "b0", "b1", "b2", "b4", "b5")),
)
SELF_TEST_OVERRIDES = ()


class MuscleSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Muscle Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegStudies developers"]
        self.parent.helpText = _(
            "Segment the abdominal muscle in CT with the published EfficientNet-encoder U-Net (mixup, self- "
            "distillation), train it on your CT series, and review results against a reference. Segment runs in "
            "the background: Slicer stays responsive and Cancel stops it. "
            "See the <a href=\"https://github.com/SegStudies/SegStudies/blob/main/docs/slicer.md\">user guide</a>.")
        self.parent.acknowledgementText = _(
            "Reproduces 'Semantic segmentation of muscles on abdominal CT scans'; docs/studies.md summarises the "
            "original repository.")
        slicer.app.connect("startupCompleted()", _register_sample_data)


def _register_sample_data():
    """A phantom CT case with its reference, in Sample Data (SegStudies), made on first use."""
    from SegCore.slicer_utils.sample_data import register_sample_data

    register_sample_data(STUDY, thumbnail=os.path.join(os.path.dirname(__file__), "Resources", "Icons",
                                                       "MuscleSeg.png"))


@parameterNodeWrapper
class MuscleSegParameterNode:
    """The module's scene state (saved with the scene).

    input_volume0: the CT volume (Hounsfield units).
    output_segmentation: the node Segment refills (none: a new one beside the input). show_3d: show the
    result's surfaces in 3D. review_segmentation, review_reference: the Review panel's pair (the reference a
    segmentation or a label map).
    """

    input_volume0: vtkMRMLScalarVolumeNode
    output_segmentation: vtkMRMLSegmentationNode
    show_3d: bool = False
    review_segmentation: vtkMRMLSegmentationNode
    # typing's Union: Slicer's parameterNodeWrapper does not read `A | B` unions (Python 3.12 types.UnionType).
    review_reference: Optional[Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]]  # noqa: UP007, UP045


class MuscleSegWidget(StudyModuleWidget):
    STUDY = STUDY
    TRAIN_OPTIONS = TRAIN_OPTIONS

    def create_logic(self):
        return MuscleSegLogic()


class MuscleSegLogic(StudyModuleLogic):
    """Scripted use of the module: `segment(input_volumes, checkpoint, device=, settings=, output_segmentation=)`,
    the same Segment the panel runs, blocking (SegCore.slicer_utils.module)."""

    STUDY = STUDY
    PARAMETER_NODE = MuscleSegParameterNode


class MuscleSegTest(StudyModuleTest):
    """Segment the sample case with a tiny CPU checkpoint through the real subprocess, then review it."""

    STUDY = STUDY
    OVERRIDES = SELF_TEST_OVERRIDES
