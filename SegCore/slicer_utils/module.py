"""The logic and self-test classes of the five study modules: one implementation, a study name each.

    class MuscleSegLogic(StudyModuleLogic):
        STUDY, PARAMETER_NODE = "muscle", MuscleSegParameterNode

    class MuscleSegTest(StudyModuleTest):
        STUDY = "muscle"

Slicer finds a module's classes by name (XSeg, XSegWidget, XSegLogic, XSegTest), so each module file declares
them; what they do is written once here. Nothing heavy is imported until a method runs.
"""

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest


class StudyModuleLogic(ScriptedLoadableModuleLogic):
    """Scripted use of a study module: the same Segment the panel runs, blocking.

    STUDY: the study's name. PARAMETER_NODE: the module's @parameterNodeWrapper class."""

    STUDY: str = ""
    PARAMETER_NODE = None

    def getParameterNode(self):  # noqa: N802 (Slicer's name)
        return self.PARAMETER_NODE(super().getParameterNode())

    def segment(self, input_volumes, checkpoint, device="auto", settings=None, output_segmentation=None):
        """Segment [one volume node per channel of the checkpoint, in its order] with a checkpoint in a
        PythonSlicer subprocess and wait; returns the segmentation node (SegCoreError with the one-line reason
        otherwise)."""
        from SegCore.slicer_utils.logic import SegmentLogic

        return SegmentLogic(slicer.mrmlScene, study=self.STUDY).run_blocking(
            input_volumes, checkpoint, device=device, settings=settings, output_node=output_segmentation)


class StudyModuleTest(ScriptedLoadableModuleTest):
    """Segment the study's sample case with a tiny CPU checkpoint through the real subprocess, then review it.

    STUDY: the study's name; TASK: the Decathlon task (None otherwise); OVERRIDES: --set lines for the tiny
    checkpoint."""

    STUDY: str = ""
    TASK = None
    OVERRIDES: tuple = ()

    def setUp(self):  # noqa: N802 (unittest's name)
        slicer.mrmlScene.Clear()

    def runTest(self):  # noqa: N802 (unittest's name)
        self.setUp()
        self.test_segment_and_review()

    def test_segment_and_review(self):
        from SegCore.slicer_utils.selftest import run_self_test

        kwargs = {} if self.TASK is None else {"task": self.TASK}
        run_self_test(self, self.STUDY, overrides=self.OVERRIDES, **kwargs)
