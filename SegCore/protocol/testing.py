"""A test stage: the trained models predict the held-out cases, which are evaluated against each reference.

    result = run_test_stage(stage, run=Path("RUN"), device="cpu", progress=callback)

RUN/<stage>/ then holds:
    predictions/<case>.nii.gz                the label maps, on each case's own grid
    predictions-<variant>/<case>.nii.gz      further label maps a strategy returns (`Prediction.extras`, e.g.
                                             the RSTN's mask at each inter-round threshold)
    references/<reference>/<case>.nii.gz     the reference label maps (the dataset's label rule applied)
    evaluation/<reference>/                  segcore evaluate's report: metrics.csv, summary.csv, metrics.json,
                                             plots; one group per prediction folder
    cases.json                               per case: what the Predictor reports (strategy, rounds, seconds)
    test.json                                the stage's summary, written last: its presence marks it done

The cases are the validation cases of the first model's split (its plan.json), or with the stage's "cases"
"test" the labelled cases of the layout's test subset (never in a split), the dataset opened with the model's
data.options updated by the stage's "options" (thalamus: every subject, not the fine-tuning list). A reference
is that dataset with the options further updated by the stage's "references" entry (thalamus: one per label
source); by default the one the model was trained against.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from SegCore.atomic import atomic_file
from SegCore.errors import SegCoreError
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress
from SegCore.protocol.stages import resolve_references
from SegCore.studies.schema import Stage

DONE_FILE = "test.json"
DEFAULT_REFERENCE = "reference"


def _models(stage: Stage, run: Path) -> list[Path]:
    paths = [run / name / "best.pt" for name in stage.models]
    for path in paths:
        if not path.is_file():
            raise SegCoreError(f"test stage {stage.name!r} needs {path.parent.name}'s best.pt, which is missing",
                               path=path, fix="run the protocol again: it trains the missing stage first")
    return paths


def model_signature(paths: list[Path]) -> list[list]:
    """(file, size, mtime_ns) per model: a test stage whose models changed since is run again."""
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def is_done(stage: Stage, run: Path) -> bool:
    done = run / stage.name / DONE_FILE
    if not done.is_file():
        return False
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
        return record.get("models") == model_signature(_models(stage, run))
    except (OSError, ValueError, SegCoreError):
        return False


def open_plan_dataset(plan: dict, options: dict | None = None):
    """The dataset as a run's plan opens it (data.root, layout, options), `options` updating data.options."""
    from SegCore.datasets import open_dataset

    data = plan["data"]
    return open_dataset(data["root"], data["layout"], **{**data["options"], **(options or {})})


TEST_CASES = ("held_out", "test")  # a test stage's "cases": the split's validation cases, or the test subset


def _cases(plan: dict, which: str, options: dict):
    from SegCore.training.components import labelled_test_cases, split_cases

    if which not in TEST_CASES:
        raise SegCoreError(f"a test stage's cases must be one of {', '.join(TEST_CASES)}, got {which!r}")
    dataset = open_plan_dataset(plan, options)
    if which == "test":
        return dataset, labelled_test_cases(dataset)
    _, held_out = split_cases(dataset, plan["split"])
    return dataset, held_out


def _write_label(volume, path: Path) -> Path:
    from SegCore.io import write_image

    return write_image(volume, path)


def run_test_stage(stage: Stage, *, run: Path, device: str = "auto",
                   progress: ProgressCallback = no_progress) -> dict:
    """Predict and evaluate; returns the stage's summary (also written to RUN/<stage>/test.json)."""
    from SegCore.datasets import load_case
    from SegCore.inference import Predictor
    from SegCore.metrics import evaluate, write_report
    from SegCore.training.run_folder import RunFolder

    paths = _models(stage, run)
    plan = RunFolder(paths[0].parent).read_plan()
    settings = resolve_references(stage.plan.get("inference", {}), run)
    references = stage.plan.get("references") or {DEFAULT_REFERENCE: {}}
    folder = run / stage.name
    if folder.exists():  # an interrupted test: its files are ours, made again from the start
        shutil.rmtree(folder)
    predictor = Predictor(paths, device=device, settings=settings)
    which, case_options = stage.plan.get("cases", "held_out"), stage.plan.get("options") or {}
    dataset, cases = _cases(plan, which, case_options)
    if not cases and which == "test":
        raise SegCoreError(f"test stage {stage.name!r}: the dataset's test subset holds no labelled case",
                           path=dataset.root, fix="give the layout's test cases label files, or run --data on "
                                                  "the whole dataset (segcore inspect shows each case's subset)")
    if not cases:
        raise SegCoreError(f"test stage {stage.name!r}: the split holds out no case to test", path=dataset.root,
                           fix="add cases (a held-out case needs a label), or change split.fold / split.folds")
    rows, variants = [], ["predictions"]
    oracle = bool(stage.plan.get("oracle"))
    for i, case in enumerate(cases):
        image, label = load_case(case)
        prediction = predictor.predict(image, path=case.image_paths[0], reference=label if oracle else None)
        _write_label(prediction.label, folder / "predictions" / f"{case.case_id}.nii.gz")
        for name, volume in (getattr(prediction, "extras", None) or {}).items():
            variant = f"predictions-{name}"
            variants += [variant] if variant not in variants else []
            _write_label(volume, folder / variant / f"{case.case_id}.nii.gz")
        rows.append({"case": case.case_id, "warnings": prediction.warnings, **prediction.info})
        progress(ProgressEvent(f"test {stage.name}", i + 1, len(cases), case.case_id))
    for name, options in references.items():
        # the same held-out cases, labelled as this reference labels them (by id: a label source may cover only
        # some subjects, so the reopened dataset is not split again)
        by_id = {case.case_id: case for case in
                 (open_plan_dataset(plan, {**case_options, **options}).cases if options else cases)}
        for case in cases:
            if case.case_id in by_id and by_id[case.case_id].label_path is not None:
                _write_label(load_case(by_id[case.case_id])[1], folder / "references" / name / f"{case.case_id}.nii.gz")
    labels = {int(item["value"]): str(item["name"]) for item in predictor.labels if int(item["value"]) > 0}
    dice: dict[str, dict] = {}
    per_case: dict[str, dict] = {}
    for name in references:
        ref_folder = folder / "references" / name
        if not ref_folder.is_dir():
            raise SegCoreError(f"test stage {stage.name!r}: reference {name!r} has none of the held-out cases",
                               path=dataset.root, fix="check the dataset's label files for that reference")
        evaluation = evaluate([folder / v for v in variants], ref_folder, labels=labels,
                              group_names=[v.replace("predictions-", "") if v != "predictions" else "model"
                                           for v in variants], missing="skip")
        write_report(evaluation, folder / "evaluation" / name)
        dice[name] = {f"{row['group']}/{row['label_name']}": row["mean"] for row in evaluation.summary
                      if row["metric"] == "dice"}
        per_case[name] = {}
        for row in evaluation.rows:
            per_case[name].setdefault(f"{row['group']}/{row['label_name']}", {})[row["case"]] = row.get("dice")
    result = {"stage": stage.name, "fold": stage.fold, "models": model_signature(paths),
              "cases": [case.case_id for case in cases], "dice_mean": dice, "dice_per_case": per_case,
              "strategy": predictor.settings["strategy"]}
    with atomic_file(folder / "cases.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    with atomic_file(folder / DONE_FILE) as tmp:
        tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


__all__ = ["DONE_FILE", "is_done", "model_signature", "open_plan_dataset", "run_test_stage"]
