"""The body of every study module's self-test (XSegTest): a tiny CPU model end to end on the study's sample data.

    class AtriumSegTest(ScriptedLoadableModuleTest):
        def runTest(self):
            slicer.mrmlScene.Clear()
            run_self_test(self, "atrium", overrides=("inference.strategy=sliding_window",))

It loads the sample case (sample_data.py), writes a checkpoint of the study's `--tiny` plan with seeded,
untrained weights (exactly the file `segcore train` writes, as Testing/inference_models.py does for the pytest
suite), runs Segment through the real `PythonSlicer -m SegCore predict` subprocess in blocking mode, checks the
segments' names, colours and terminology and the result's grid against the input, then fills the metrics table
against the reference. Untrained weights segment nothing useful, so the test checks the plumbing, not accuracy.
Runs inside Slicer (ctest, or the Self Tests module); torch is imported here, in the test only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_S = 600.0


def tiny_checkpoint(study: str, dataset, path, *, overrides: Sequence[str] = (), seed: int = 0) -> Path:
    """Write a checkpoint of `study`'s --tiny plan on `dataset` (its layout fixes channels and labels) with
    seeded untrained weights; `overrides` are --set KEY=VALUE items. Returns `path`."""
    import torch

    from SegCore.models import build_model
    from SegCore.studies import get_study
    from SegCore.training.checkpoint import capture_rng_state, checkpoint_meta, save_checkpoint
    from SegCore.training.config import resolve_plan

    layout = get_study(study).layout.name
    plan = resolve_plan({"data": {"root": str(dataset), "layout": layout}}, flags={"study": study}, tiny=True,
                        overrides=list(overrides))
    torch.manual_seed(seed)
    net = build_model(plan["model"]["name"], **plan["model"]["arguments"]).eval()
    save_checkpoint(path, model_state=net.state_dict(), epoch=1, step=0, best_metric=None, history=[],
                    rng_state=capture_rng_state(), meta=checkpoint_meta(plan))
    return Path(path)


def run_self_test(test, study: str, *, task: str | None = None, overrides: Sequence[str] = (), scene=None) -> dict:
    """Segment and review the sample case of `study` with a tiny CPU checkpoint; `test` is the unittest case
    whose assertions and delayDisplay are used; scene: default slicer.mrmlScene (the pytest suite passes a
    slicer-core scene). Returns {"segmentation", "reference", "volumes", "table", "events" (the JSON events)}."""
    import numpy as np

    from SegCore.slicer_utils.logic import ReviewLogic, SegmentLogic
    from SegCore.slicer_utils.sample_data import load_sample_case, write_sample_case
    from SegCore.slicer_utils.segmentations import segmentation_grid, segments_of_node, study_segments
    from SegCore.slicer_utils.volumes import grid_from_node
    from SegCore.studies import get_study

    if scene is None:
        import slicer

        scene = slicer.mrmlScene
    test.delayDisplay(f"Loading the {study} sample case")
    case = write_sample_case(study, task=task)
    volumes, reference = load_sample_case(study, scene, task=task)
    definition = get_study(study)
    labels = definition.task(case.task).labels if case.task else definition.labels
    expected = {s.name: s for s in study_segments(labels)}

    with tempfile.TemporaryDirectory(prefix="segstudies-selftest-") as folder:
        test.delayDisplay("Writing a tiny checkpoint and segmenting on the CPU (a real predict subprocess)")
        checkpoint = tiny_checkpoint(study, case.dataset, Path(folder) / f"{study}-tiny.pt", overrides=overrides)
        events = []
        node = SegmentLogic(scene, study=study).run_blocking(
            volumes, checkpoint, device="cpu", settings={"tta": False}, on_progress=events.append,
            timeout=TIMEOUT_S)

    test.assertEqual(events[-1]["event"], "result", "the JSON stream ends in one result event")
    found = {s.name: s for s in segments_of_node(node)}
    test.assertEqual(sorted(found), sorted(expected), "one segment per label, named as the study names it")
    for name, segment in expected.items():
        np.testing.assert_allclose(found[name].color_rgb, segment.color_rgb, atol=1e-6)
        test.assertEqual(found[name].terminology, segment.terminology)
    test.assertTrue(segmentation_grid(node).same_as(grid_from_node(volumes[0])), "the result is on the input grid")

    test.delayDisplay("Computing the metrics against the reference")
    table = ReviewLogic(scene).compute(node, reference)
    test.assertEqual(table.GetNumberOfRows(), len(expected))
    test.assertIsNotNone(table.GetTable().GetColumnByName("dice"))
    test.delayDisplay(f"{definition.module} self-test passed")
    return {"segmentation": node, "reference": reference, "volumes": volumes, "table": table, "events": events}
