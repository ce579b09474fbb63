"""The Segment and Review logic of the Slicer modules against real MRML (the `slicer-core` wheel), a real
`python -m SegCore predict` subprocess, a real tiny checkpoint and phantoms; the model folder; the requirements
check. The Train logic: test_slicer_train.py.

Oracles: the same `segcore predict` run directly on the phantom's file (the label map the logic must import);
the input node's own geometry; numpy brute force for Dice and medians; the bytes of the copied checkpoint;
pyproject.toml for the requirement list.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("slicer") is None:
    pytest.skip("slicer-core is not installed (pip install -e '.[test]')", allow_module_level=True)

import slicer  # noqa: E402
from inference_models import tiny_checkpoint  # noqa: E402

from SegCore.errors import SegCoreError  # noqa: E402
from SegCore.io import Segment, read_image, read_label, write_image  # noqa: E402
from SegCore.slicer_utils.dependencies import (  # noqa: E402
    REQUIREMENTS,
    _satisfies,
    constraints_text,
    missing_requirements,
)
from SegCore.slicer_utils.logic import (  # noqa: E402
    ReviewLogic,
    SegmentLogic,
    checkpoint_info,
    import_model,
    input_grid,
    list_models,
    show_in_layout,
)
from SegCore.slicer_utils.runner import child_environment, segcore_command  # noqa: E402
from SegCore.slicer_utils.segmentations import (  # noqa: E402
    labels_to_segmentation_node,
    segmentation_grid,
    segmentation_node_to_labels,
    segments_of_node,
)
from SegCore.slicer_utils.volumes import grid_from_node, volume_to_node  # noqa: E402
from SegCore.studies import get_study  # noqa: E402
from SegCore.volume import Volume  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = child_environment({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
SIZE_ZYX = (16, 24, 24)
# The atrium preset pads to 96x640x640 and segments a locator's crop; a phantom this small needs neither.
PREPROCESSING = [{"name": "pad", "multiple_zyx": [1, 2, 2], "min_zyx": list(SIZE_ZYX), "mode": "constant",
                  "value": 0.0}, {"name": "zscore", "mode": "volume", "axis": "z", "mask_threshold": 0.0,
                                  "channels": None}]


@pytest.fixture
def scene():
    """A scene as the application sets it up (colour tables, segmentation converter rules; see test_slicer_mrml)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLColorLogic().SetMRMLScene(scene)
    yield scene
    scene.Clear(1)


@pytest.fixture(scope="module")
def atrium(tmp_path_factory) -> dict:
    """A tiny atrium checkpoint (seeded, untrained, what `segcore train --study atrium` writes) and its phantom."""
    folder = tmp_path_factory.mktemp("atrium")
    plan = {"study": "atrium", "preprocessing": PREPROCESSING, "inference": {"strategy": "sliding_window"}}
    checkpoint = tiny_checkpoint(folder / "atrium.pt", "vnet", plan=plan, study="atrium", size_zyx=SIZE_ZYX)
    images = sorted(folder.glob("atrium-*/Training Set/*/lgemri.nrrd"))
    oblique = next(p for p in images if not np.allclose(read_image(p).grid.direction_lps, np.eye(3)))
    return {"checkpoint": checkpoint, "image": oblique, "folder": folder}


# -- Segment -------------------------------------------------------------------------------------------------------
def test_segment_logic_imports_the_prediction_onto_the_input_grid(scene, atrium, tmp_path):
    image = read_image(atrium["image"])
    input_node = volume_to_node(image, scene, name="LGE")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study_item = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "MR")
    hierarchy.CreateItem(study_item, input_node)
    # The oracle: the same checkpoint run by the CLI on the phantom's own file.
    direct = tmp_path / "direct.nrrd"
    subprocess.run(segcore_command(["predict", "--model", atrium["checkpoint"], "--input", atrium["image"],
                                    "--output", direct, "--device", "cpu"]), env=ENV, cwd=REPO, check=True,
                   capture_output=True, timeout=180)
    expected = read_label(direct).array
    assert 0 < (expected == 1).sum() < expected.size  # a prediction with both classes, so the check means something

    events, done = [], []
    logic = SegmentLogic(scene, study="atrium")
    old = labels_to_segmentation_node(Volume(np.ones(SIZE_ZYX, np.uint8), image.grid), [Segment("old", 1, (1, 0, 0))],
                                      scene, name="chosen output")
    node = logic.run_blocking([input_node], atrium["checkpoint"], device="cpu", settings={"tta": False},
                              output_node=old, on_progress=events.append,
                              on_done=lambda node, error: done.append((node, error)), timeout=180)
    runner = logic.runner
    assert node is old and node is logic.output_node  # the chosen node, refilled
    assert done == [(node, None)] and logic.error is None
    assert [e["event"] for e in events][-1] == "result" and any(e["event"] == "progress" for e in events)
    assert node.IsA("vtkMRMLSegmentationNode") and node.GetName() == "LGE segmentation"
    label = get_study("atrium").labels[1]
    (segment,) = segments_of_node(node)
    assert segment.name == label.name and segment.label_value == 1
    np.testing.assert_allclose(segment.color_rgb, np.array(label.colour_rgb) / 255.0, atol=1e-6)
    assert segment.terminology == label.terminology.to_slicer_entry()
    assert segment.terminology.count("~") == 6 and "SCT^" in segment.terminology
    # On the input's grid exactly, holding what the CLI predicted.
    input_grid_ = grid_from_node(input_node)
    assert segmentation_grid(node).same_as(input_grid_)
    np.testing.assert_allclose(segmentation_grid(node).ijk_to_ras(), input_grid_.ijk_to_ras(), atol=1e-9)
    assert node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == input_node.GetID()
    labels, _ = segmentation_node_to_labels(node, input_grid_)
    assert np.array_equal(labels.array, expected)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study_item
    assert not Path(runner.command[runner.command.index("--output") + 1]).parent.exists()  # temporaries removed


def test_another_studys_checkpoint_is_refused_in_one_line(scene, atrium):
    node = volume_to_node(read_image(atrium["image"]), scene, name="LGE")
    logic = SegmentLogic(scene, study="thalamus")
    with pytest.raises(SegCoreError, match="trained for the 'atrium' study, not 'thalamus'") as caught:
        logic.start([node], atrium["checkpoint"], device="cpu")
    assert "\n" not in str(caught.value) and str(atrium["checkpoint"]) in str(caught.value)
    assert logic.runner is None  # nothing started
    info = checkpoint_info(atrium["checkpoint"], study="atrium")
    assert info["study"] == "atrium" and info["channels"] == ["LGE-MRI"] and info["model"] == "vnet"
    assert [label["name"] for label in info["labels"]] == ["background", "left atrium"]
    assert {"fold", "date", "git_revision", "segstudies", "torch"} <= set(info["provenance"])
    assert info["summary"].startswith("atrium, vnet 3D, 1 channel (LGE-MRI), labels: left atrium")


def test_inputs_that_do_not_fit_are_refused_before_anything_runs(scene, atrium):
    image = read_image(atrium["image"])
    first = volume_to_node(image, scene, name="T1")
    shifted = Volume.create(image.array, image.grid.spacing_xyz_mm, np.add(image.grid.origin_lps, (0, 0, 3.0)),
                            np.asarray(image.grid.direction_lps))
    second = volume_to_node(shifted, scene, name="T2")
    with pytest.raises(SegCoreError, match=r"volume 'T2' \(T2w\) is not on the grid of 'T1': origins differ") as caught:
        input_grid([first, second], ["T1w", "T2w"])
    assert "\n" not in str(caught.value) and "Fix: " in str(caught.value)
    assert input_grid([first, volume_to_node(image, scene)], ["T1w", "T2w"]).same_as(image.grid)
    logic = SegmentLogic(scene, study="atrium")
    with pytest.raises(SegCoreError, match=r"the model takes 1 channel\(s\) \(LGE-MRI\), the inputs hold 2"):
        logic.start([first, second], atrium["checkpoint"], device="cpu")
    with pytest.raises(SegCoreError, match="choose an input volume for every channel"):
        logic.start([None], atrium["checkpoint"], device="cpu")
    with pytest.raises(SegCoreError, match="unknown segment setting"):
        logic.start([first], atrium["checkpoint"], settings={"overlapp": 0.5})
    assert logic.runner is None


# -- Review --------------------------------------------------------------------------------------------------------
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0


def test_review_compute_gives_brute_force_dice(scene, oblique_direction, tmp_path):
    rng = np.random.default_rng(0)
    shape = (10, 12, 14)
    reference = np.zeros(shape, np.uint8)
    reference[2:8, 3:9, 2:10] = 1
    reference[1:4, 8:12, 9:13] = 2
    prediction = reference.copy()
    flip = rng.random(shape) < 0.15
    prediction[flip] = rng.integers(0, 3, shape, dtype=np.uint8)[flip]
    grid_volume = Volume.create(reference, (0.8, 1.1, 2.0), (5.0, -3.0, 12.0), oblique_direction)
    described = [Segment("left atrium", 1, (0.8, 0.4, 0.3)), Segment("tumour", 2, (0.2, 0.6, 0.2))]
    ref_node = labels_to_segmentation_node(grid_volume, described, scene, name="reference")
    pred_node = labels_to_segmentation_node(grid_volume.with_array(prediction), described, scene, name="prediction")
    logic = ReviewLogic(scene)
    table = logic.compute(pred_node, ref_node)
    expected = [_dice(prediction == v, reference == v) for v in (1, 2)]
    assert table.GetNumberOfRows() == 2
    dice = table.GetTable().GetColumnByName("dice")
    assert [dice.GetValue(i) for i in range(2)] == pytest.approx(expected, abs=1e-12)
    assert [row["dice"] for row in logic.rows] == pytest.approx(expected, abs=1e-12)
    assert table.GetColumnTitle("dice") == "Dice" and table.GetColumnUnitLabel("hd95_mm") == "mm"
    assert table.GetTable().GetColumnName(0) == "label_name"
    # A label map volume node as the reference: the same numbers.
    labelmap = volume_to_node(grid_volume, scene, label_map=True)
    names = {s.name: s.label_value for s in described}
    again = logic.compute(pred_node, labelmap, labels=names, table_node=table)
    assert again is table and [row["dice"] for row in logic.rows] == pytest.approx(expected, abs=1e-12)
    path = logic.export_csv(table, tmp_path / "review.csv")
    with open(path, newline="") as handle:
        assert [float(row["dice"]) for row in csv.DictReader(handle)] == pytest.approx(expected, abs=1e-12)
    # The layout shows the table: the scene's layout and table view nodes point at it.
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    view = scene.AddNewNodeByClass("vtkMRMLTableViewNode")
    show_in_layout(scene, table)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView
    assert view.GetTableNodeID() == table.GetID()


def test_load_evaluation_gives_a_table_and_a_box_plot(scene, tmp_path):
    from SegCore.metrics import evaluate, write_report

    rng = np.random.default_rng(0)
    for case in range(4):
        reference = np.zeros((8, 10, 12), np.uint8)
        reference[2:6, 2:8, 2:9] = 1
        reference[5:7, 6:9, 8:11] = 2
        prediction = reference.copy()
        flip = rng.random(reference.shape) < 0.05 * (case + 1)
        prediction[flip] = rng.integers(0, 3, reference.shape, dtype=np.uint8)[flip]
        for folder, array in (("ref", reference), ("pred", prediction)):
            write_image(Volume.create(array, (1.0, 1.0, 2.0)), tmp_path / folder / f"case{case}.nii.gz")
    evaluation = evaluate([tmp_path / "pred"], tmp_path / "ref", labels={1: "liver", 2: "tumour"})
    write_report(evaluation, tmp_path / "eval", plots=False)
    table, chart = ReviewLogic(scene).load_evaluation(tmp_path / "eval", metric="dice")
    assert table.GetNumberOfRows() == len(evaluation.rows) == 8
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 2 * 4
    points = chart.GetNthPlotSeriesNode(0).GetTableNode().GetTable()
    for position, label in ((1, 1), (2, 2)):
        values = [row["dice"] for row in evaluation.rows if row["label"] == label]
        median = points.GetColumnByName(f"median{position}_y").GetValue(0)
        assert median == pytest.approx(float(np.median(values)), abs=1e-12)
        cases = points.GetColumnByName(f"cases{position}_y")
        assert sorted({cases.GetValue(i) for i in range(cases.GetNumberOfValues())}) == pytest.approx(sorted(
            set(values)))
    assert "1: liver (n=4)" in chart.GetXAxisTitle()
    with pytest.raises(SegCoreError, match="no metrics.json"):
        ReviewLogic(scene).load_evaluation(tmp_path / "pred")


# -- Models and dependencies ---------------------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_import_model_copies_checkpoints_and_refuses_the_rest(atrium, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("SEGSTUDIES_MODELS", str(tmp_path / "models"))
    copied = import_model(atrium["checkpoint"])
    assert copied == tmp_path / "models" / "atrium" / "atrium.pt"
    assert copied.read_bytes() == Path(atrium["checkpoint"]).read_bytes()
    assert import_model(atrium["checkpoint"]) == copied  # the same file again: no second copy
    (listed,) = list_models("atrium")
    assert Path(listed["path"]) == copied and listed["study"] == "atrium" and "left atrium" in listed["summary"]
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(SegCoreError, match="not a readable PyTorch checkpoint"):
        import_model(text)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "segstudies-checkpoint", "payload": _RunsCode(marker)}, evil)
    with pytest.raises(SegCoreError, match="pickled Python object"):
        import_model(evil)
    assert not marker.exists()  # refused unrun
    assert sorted(p.name for p in (tmp_path / "models").rglob("*")) == ["atrium", "atrium.json", "atrium.pt"]


def test_missing_requirements_reports_without_installing(monkeypatch):
    assert missing_requirements() == []
    fake = ["numpy>=1.0", "segstudies-no-such-package>=1.0", "numpy>=9999", "SimpleITK"]
    assert missing_requirements(fake) == ["segstudies-no-such-package>=1.0", "numpy>=9999"]
    assert importlib.util.find_spec("segstudies_no_such_package") is None  # nothing was installed
    if sys.version_info >= (3, 11):
        import tomllib

        declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        assert list(REQUIREMENTS) == [d.replace(" ", "") for d in declared]
    assert f"numpy=={np.__version__}" in constraints_text().splitlines()
    assert missing_requirements(["vtk", "slicer-core>=5"]) == []  # found by metadata, whatever the spelling
    # Without `packaging` (a bare Python), the release numbers are compared directly.
    monkeypatch.setitem(sys.modules, "packaging.specifiers", None)
    assert _satisfies("2.13.0+cpu", ">=2.1") and _satisfies("1.26.4", ">=1.24,<2")
    assert not _satisfies("2.0", "<2") and not _satisfies("1.9.9", ">=1.10")
    assert missing_requirements(fake) == ["segstudies-no-such-package>=1.0", "numpy>=9999"]
