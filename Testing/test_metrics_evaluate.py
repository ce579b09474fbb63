"""`segcore evaluate` and `SegCore.metrics.evaluate` on predictions and references written to disk."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from SegCore.cli import main
from SegCore.errors import SegCoreError
from SegCore.io import write_image, write_segmentation
from SegCore.io.segmentation import Segment, segments_for_labels
from SegCore.metrics import compare_label_maps, evaluate, write_report
from SegCore.progress import ProgressEvent
from SegCore.volume import Volume

SPACING = (0.8, 0.8, 2.0)
ORIGIN = (10.0, -5.0, 3.0)


def sphere_labels(radius: float, shape=(16, 24, 24)) -> np.ndarray:
    """Label 1: a sphere; label 2: a small box beside it."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    labels = np.zeros(shape, np.uint8)
    labels[((z - 8) * 2.5) ** 2 + (y - 12) ** 2 + (x - 9) ** 2 <= radius ** 2] = 1
    labels[6:10, 10:14, 17:21] = 2
    return labels


def volume(array: np.ndarray) -> Volume:
    return Volume.create(array, spacing_xyz_mm=SPACING, origin_lps=ORIGIN)


@pytest.fixture
def cohort(tmp_path) -> dict:
    """refs/ (.nii.gz), model_a/ (.nrrd: one slice shifted), model_b/ (.seg.nrrd: eroded, case3 lacks label 2)."""
    folders = {name: tmp_path / name for name in ("refs", "model_a", "model_b")}
    arrays = {}
    for index, radius in enumerate((5.0, 6.0, 7.0)):
        case = f"case{index + 1}"
        ref = sphere_labels(radius)
        shifted = np.roll(ref, 1, axis=0)  # one slice (2 mm) along z
        eroded = sphere_labels(radius - 1.5)
        if case == "case3":
            eroded[eroded == 2] = 0
        write_image(volume(ref), folders["refs"] / f"{case}.nii.gz")
        write_image(volume(shifted), folders["model_a"] / f"{case}.nrrd")
        write_segmentation(volume(eroded), segments_for_labels([1, 2]), folders["model_b"] / f"{case}.seg.nrrd")
        arrays[case] = {"ref": ref, "model_a": shifted, "model_b": eroded}
    return {"tmp": tmp_path, **folders, "arrays": arrays}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_tables_and_plots_that_match_the_masks(cohort, capsys):
    out = cohort["tmp"] / "report"
    code = main(["evaluate", "--pred", str(cohort["model_a"]), "--ref", str(cohort["refs"]),
                 "--labels", "1=organ,2=box", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = read_csv(out / "metrics.csv")
    assert [(r["case"], r["label_name"]) for r in rows] == [
        (c, n) for c in ("case1", "case2", "case3") for n in ("organ", "box")]
    for row in rows:
        arrays = cohort["arrays"][row["case"]]
        label = int(row["label"])
        # A one-slice shift along z: the Hausdorff distance is the slice spacing (2 mm).
        assert float(row["hd_mm"]) == pytest.approx(2.0, abs=1e-4)
        expected = compare_label_maps(arrays["model_a"], arrays["ref"], SPACING, labels=[label])[0]
        assert float(row["dice"]) == pytest.approx(expected["dice"], abs=1e-9)
        assert float(row["volume_ref_ml"]) == pytest.approx(np.count_nonzero(arrays["ref"] == label) * 1.28e-3,
                                                            rel=1e-6)
    summary = read_csv(out / "summary.csv")
    dice_organ = next(s for s in summary if s["label_name"] == "organ" and s["metric"] == "dice")
    organ_dice = [float(r["dice"]) for r in rows if r["label_name"] == "organ"]
    assert float(dice_organ["mean"]) == pytest.approx(np.mean(organ_dice))
    assert float(dice_organ["std"]) == pytest.approx(np.std(organ_dice, ddof=1))
    assert int(dice_organ["n_valid"]) == 3
    document = json.loads((out / "metrics.json").read_text())
    assert document["settings"]["tolerance_mm"] == 2.0 and len(document["rows"]) == 6
    assert "hd95_mm" in document["metric_definitions"] and "both_empty" in document["statuses"]
    for png in ("boxplots.png", "cases_dice.png", "cases_hd95_mm.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "organ" in printed and "wrote 6 files" in printed


def test_groups_compare_two_models_in_one_table(cohort):
    events: list[ProgressEvent] = []
    evaluation = evaluate([cohort["model_a"], cohort["model_b"]], cohort["refs"], progress=events.append)
    assert evaluation.groups == ["model_a", "model_b"]
    assert len(evaluation.rows) == 2 * 3 * 2  # groups x cases x labels
    missing_box = next(r for r in evaluation.rows if r["group"] == "model_b" and r["case"] == "case3"
                       and r["label"] == 2)
    assert missing_box["status"] == "prediction_empty" and missing_box["dice"] == 0.0
    assert math.isnan(missing_box["precision"])
    summary = {(s["group"], s["label"], s["metric"]): s for s in evaluation.summary}
    assert summary[("model_b", 2, "precision")]["n_undefined"] == 1
    assert summary[("model_b", 2, "precision")]["n_valid"] == 2
    assert summary[("model_b", 2, "dice")]["n_prediction_empty"] == 1
    # Erosion by 1.5 voxels makes the prediction smaller than the reference.
    assert summary[("model_b", 1, "volume_diff_ml")]["max"] < 0
    assert events[-1].step == events[-1].total == 6 and events[0].step == 0
    files = write_report(evaluation, cohort["tmp"] / "groups")
    rows = read_csv(cohort["tmp"] / "groups" / "metrics.csv")
    assert {r["group"] for r in rows} == {"model_a", "model_b"} and len(files) == 6
    document = json.loads((cohort["tmp"] / "groups" / "metrics.json").read_text())
    nulls = [r for r in document["rows"] if r["precision"] is None]
    assert len(nulls) == 1  # NaN is written as null, never as a bare NaN


def test_single_files_and_segment_names_override_label_values(cohort):
    ref = cohort["arrays"]["case2"]["ref"]
    ref_path = cohort["tmp"] / "ref.seg.nrrd"
    write_segmentation(volume(ref), [Segment("liver", 1, (1.0, 0.0, 0.0)), Segment("box", 2, (0.0, 1.0, 0.0))],
                       ref_path)
    swapped = np.select([ref == 1, ref == 2], [2, 1], 0).astype(np.uint8)
    pred_path = cohort["tmp"] / "pred_swapped.seg.nrrd"
    write_segmentation(volume(swapped), [Segment("box", 1, (0.0, 1.0, 0.0)), Segment("liver", 2, (1.0, 0.0, 0.0))],
                       pred_path)
    evaluation = evaluate(pred_path, ref_path)
    assert [(r["label_name"], r["dice"]) for r in evaluation.rows] == [("liver", 1.0), ("box", 1.0)]
    assert evaluation.rows[0]["case"] == "ref"


def test_missing_cases_error_empty_or_skip(cohort, capsys):
    (cohort["model_a"] / "case2.nrrd").unlink()
    (cohort["model_a"] / "stray.nrrd").write_bytes((cohort["model_a"] / "case1.nrrd").read_bytes())
    code = main(["evaluate", "--pred", str(cohort["model_a"]), "--ref", str(cohort["refs"])])
    error = capsys.readouterr().err
    assert code == 1 and "case2" in error and "--missing empty" in error
    evaluation = evaluate(cohort["model_a"], cohort["refs"], missing="empty")
    scored_empty = [r for r in evaluation.rows if r["case"] == "case2"]
    assert {r["status"] for r in scored_empty} == {"prediction_missing"}
    assert all(r["dice"] == 0.0 and r["surface_dice"] == 0.0 for r in scored_empty)
    assert any("stray" in note for note in evaluation.notes)
    skipped = evaluate(cohort["model_a"], cohort["refs"], missing="skip")
    assert {r["case"] for r in skipped.rows} == {"case1", "case3"}


def test_mismatched_grids_are_an_error_unless_resampled(cohort, capsys):
    ref = cohort["arrays"]["case1"]["ref"]
    coarse = cohort["tmp"] / "coarse"
    write_image(Volume.create(ref[::2], spacing_xyz_mm=(0.8, 0.8, 4.0), origin_lps=ORIGIN), coarse / "case1.nii.gz")
    code = main(["evaluate", "--pred", str(coarse), "--ref", str(cohort["refs"] / "case1.nii.gz")])
    error = capsys.readouterr().err
    assert code == 1 and "case1" in error and "grids differ" in error and "--resample" in error
    code = main(["evaluate", "--pred", str(coarse), "--ref", str(cohort["refs"] / "case1.nii.gz"), "--resample"])
    assert code == 0, capsys.readouterr().err


def test_cropped_segmentation_is_placed_on_the_reference_grid(cohort):
    ref = cohort["arrays"]["case1"]["ref"]
    z, y, x = (slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(ref))
    origin = tuple(o + s * i for o, s, i in zip(ORIGIN, SPACING, (x.start, y.start, z.start), strict=True))
    crop = Volume.create(ref[z, y, x], spacing_xyz_mm=SPACING, origin_lps=origin)
    path = cohort["tmp"] / "cropped" / "case1.seg.nrrd"
    write_segmentation(crop, segments_for_labels([1, 2]), path)
    evaluation = evaluate(path, cohort["refs"] / "case1.nii.gz")
    assert [r["dice"] for r in evaluation.rows] == [1.0, 1.0]
    # The other way round: a cropped reference, a full-size prediction (measured on the prediction's lattice).
    reverse = evaluate(cohort["model_a"] / "case1.nrrd", path)
    expected = compare_label_maps(cohort["arrays"]["case1"]["model_a"], ref, SPACING, labels=[1, 2])
    assert [r["dice"] for r in reverse.rows] == pytest.approx([e["dice"] for e in expected])


def test_bad_inputs_are_explained(cohort, tmp_path, capsys):
    with pytest.raises(SegCoreError, match="not found"):
        evaluate(tmp_path / "nope", cohort["refs"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegCoreError, match="no prediction label files"):
        evaluate(tmp_path / "empty", cohort["refs"])
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "other.nrrd").write_bytes((cohort["model_a"] / "case1.nrrd").read_bytes())
    with pytest.raises(SegCoreError, match="no prediction matches"):
        evaluate(renamed, cohort["refs"])
    (renamed / "other.nii.gz").write_bytes(b"")
    with pytest.raises(SegCoreError, match="two prediction files are case 'other'"):
        evaluate(renamed, cohort["refs"])
    with pytest.raises(SegCoreError, match="group names"):
        evaluate([cohort["model_a"]], cohort["refs"], group_names=["a", "b"])
    for labels, message in ((["liver"], "does not start with a label value"), (["0"], "not a foreground label")):
        code = main(["evaluate", "--pred", str(cohort["model_a"]), "--ref", str(cohort["refs"]), "--labels", *labels])
        assert code == 1 and message in capsys.readouterr().err


def test_report_folder_is_never_written_over_other_files_or_inputs(cohort, capsys):
    busy = cohort["tmp"] / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code = main(["evaluate", "--pred", str(cohort["model_a"]), "--ref", str(cohort["refs"]), "--out", str(busy)])
    assert code == 1 and "not empty" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
    code = main(["evaluate", "--pred", str(cohort["model_a"]), "--ref", str(cohort["refs"]),
                 "--out", str(cohort["tmp"])])
    assert code == 1 and "holds an input" in capsys.readouterr().err
    report = cohort["tmp"] / "report"
    for _ in range(2):  # an earlier report is replaced
        assert main(["evaluate", "--pred", str(cohort["model_a"]), "--ref", str(cohort["refs"]), "--no-plots",
                     "--out", str(report)]) == 0
    assert sorted(p.name for p in report.iterdir()) == ["metrics.csv", "metrics.json", "summary.csv"]


def test_csv_round_trip_keeps_text_columns_and_undefined_values(tmp_path):
    from SegCore.metrics.tables import read_rows_csv, rows_to_csv

    rows = [{"group": "a", "case": "007", "label": 1, "label_name": "liver", "status": "reference_empty",
             "dice": 0.0, "recall": float("nan"), "hd_mm": 1 / 3}]
    rows_to_csv(rows, tmp_path / "rows.csv")
    (back,) = read_rows_csv(tmp_path / "rows.csv")
    assert back["case"] == "007" and back["label"] == 1 and back["status"] == "reference_empty"
    assert math.isnan(back["recall"]) and back["hd_mm"] == 1 / 3  # full precision survives
    assert "nan" not in (tmp_path / "rows.csv").read_text().lower()
