"""ThalamusSeg: the thalamus in diffusion MRI and T1 (2D U-Nets in three views), a SegStudies module.

    import ThalamusSeg
    logic = ThalamusSeg.ThalamusSegLogic()
    segmentation = logic.segment([evalue1, fa, rd, md, t1], "thalamus.pt", device="cpu")

The Segment, Train and Review panels are SegCore.slicer_utils.widget's, shared by the five study modules; this file
holds only what is the thalamus study's own: its study name, its five inputs (four diffusion maps and the T1), its
main training options and its sample data. docs/slicer.md is the user guide.
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

STUDY = "thalamus"
# The Train panel's main options: (label, plan key, choices), the first choice being the study's published one.
TRAIN_OPTIONS = (
    (_("View"), "sampler.axis", ("axial", "coronal", "sagittal")),
)
SELF_TEST_OVERRIDES = ()


class ThalamusSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Thalamus Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegStudies developers"]
        self.parent.helpText = _(
            "Segment the thalamus from four diffusion MRI maps (first eigenvalue, FA, RD, MD) and a T1 image with "
            "the published 2D U-Nets in three views, train them on HCP-style data, and review results against a "
            "reference. Segment runs in the background: Slicer stays responsive and Cancel stops it. "
            "See the <a href=\"https://github.com/SegStudies/SegStudies/blob/main/docs/slicer.md\">user guide</a>.")
        self.parent.acknowledgementText = _(
            "Reproduces thalamus_benchmark_diffusion (2D U-Nets on diffusion MRI and T1); docs/studies.md "
            "summarises the original repository.")
        slicer.app.connect("startupCompleted()", _register_sample_data)


def _register_sample_data():
    """A phantom diffusion + T1 case with its reference, in Sample Data (SegStudies), made on first use."""
    from SegCore.slicer_utils.sample_data import register_sample_data

    register_sample_data(STUDY, thumbnail=os.path.join(os.path.dirname(__file__), "Resources", "Icons",
                                                       "ThalamusSeg.png"))


@parameterNodeWrapper
class ThalamusSegParameterNode:
    """The module's scene state (saved with the scene).

    input_volume0: the first eigenvalue map. input_volume1: FA. input_volume2: RD. input_volume3: MD.
    input_volume4: the T1 image (one grid for all five).
    output_segmentation: the node Segment refills (none: a new one beside the input). show_3d: show the
    result's surfaces in 3D. review_segmentation, review_reference: the Review panel's pair (the reference a
    segmentation or a label map).
    """

    input_volume0: vtkMRMLScalarVolumeNode
    input_volume1: vtkMRMLScalarVolumeNode
    input_volume2: vtkMRMLScalarVolumeNode
    input_volume3: vtkMRMLScalarVolumeNode
    input_volume4: vtkMRMLScalarVolumeNode
    output_segmentation: vtkMRMLSegmentationNode
    show_3d: bool = False
    review_segmentation: vtkMRMLSegmentationNode
    # typing's Union: Slicer's parameterNodeWrapper does not read `A | B` unions (Python 3.12 types.UnionType).
    review_reference: Optional[Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]]  # noqa: UP007, UP045


class ThalamusSegWidget(StudyModuleWidget):
    STUDY = STUDY
    TRAIN_OPTIONS = TRAIN_OPTIONS

    def create_logic(self):
        return ThalamusSegLogic()


class ThalamusSegLogic(StudyModuleLogic):
    """Scripted use of the module: `segment(input_volumes, checkpoint, device=, settings=, output_segmentation=)`,
    the same Segment the panel runs, blocking (SegCore.slicer_utils.module)."""

    STUDY = STUDY
    PARAMETER_NODE = ThalamusSegParameterNode


class ThalamusSegTest(StudyModuleTest):
    """Segment the sample case with a tiny CPU checkpoint through the real subprocess, then review it."""

    STUDY = STUDY
    OVERRIDES = SELF_TEST_OVERRIDES
