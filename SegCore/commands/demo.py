"""`segcore demo`: the main job on a built-in default, end to end on synthetic data. What `make demo` runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from SegCore.commands.phantoms import add_size_argument, size_option
from SegCore.studies import STUDIES

HELP = "run the demo: a synthetic dataset, the study's protocol trained briefly, a held-out case segmented and scored"
DESCRIPTION = """\
End to end on synthetic data, on the CPU in a few minutes at most (the default, atrium, in about a minute):
1. write a small synthetic dataset in the study's real on-disk layout (DICOM for the CT studies, NRRD for the
   atrium, multi-channel NIfTI for thalamus and decathlon), read it back and print its fingerprint
   (fingerprint.png: the distributions);
2. run the study's published protocol (`segcore run`) with --tiny widths and a short training: run/ holds one
   training run per stage (checkpoints, history.csv, curves.png), the held-out cases' predictions and
   evaluation, and run/report.md;
3. segment one held-out case with the protocol's final models (segmentation.nii.gz and segmentation.seg.nrrd, on
   the case's own grid, with the study's segment names, colours and terminology);
4. evaluate it against its reference (evaluation/metrics.csv and plots) and draw segmentation.png: axial,
   coronal and sagittal slices in mm with orientation letters, the segmentation filled, the reference outlined.
It prints where these are and the held-out Dice. Everything goes under --out; the demo's own files there are
replaced on every run.

examples:
  segcore demo                              # atrium, into ./demo-output
  segcore demo --study pancreas --out /tmp/pancreas-demo
"""


def add_arguments(parser) -> None:
    parser.add_argument("--study", choices=list(STUDIES), default="atrium", help="which study (default atrium)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    parser.add_argument("--cases", type=int, help="number of synthetic cases, at least 3 (default: the study's)")
    add_size_argument(parser, default=None)
    parser.add_argument("--epochs", type=int, help="training epochs of every stage (default: the study's demo)")
    parser.add_argument("--seed", type=int, help="random seed of the phantoms (default 0) and of the training "
                                                    "(default: the study's)")


def _final_test(study, fold):
    from SegCore.protocol.stages import select_stages

    tests = [stage for stage in select_stages(study.protocol, fold) if stage.kind == "test"]
    return tests[-1]


def run(args, progress) -> dict:
    from SegCore.devices import prefer_passive_openmp

    prefer_passive_openmp()  # before torch loads: the loader workers get the cores the waiting threads spun on
    import json

    from SegCore.commands.inspect import report
    from SegCore.datasets import compute_fingerprint, load_case, open_dataset, write_case_preview, write_fingerprint
    from SegCore.errors import SegCoreError
    from SegCore.inference import Predictor
    from SegCore.inference.outputs import write_prediction
    from SegCore.io import write_image
    from SegCore.metrics import evaluate, write_report
    from SegCore.phantoms import write_phantom_dataset
    from SegCore.protocol import run_protocol
    from SegCore.protocol.stages import resolve_references
    from SegCore.protocol.testing import open_plan_dataset
    from SegCore.studies import get_study
    from SegCore.training.run_folder import RunFolder

    study = get_study(args.study)
    demo = study.demo
    cases = args.cases if args.cases is not None else int(demo.get("cases", 6))
    if cases < 3:
        raise SegCoreError(f"the demo needs at least 3 cases (train, validate, hold out), got {cases}",
                           fix="use --cases 6")
    size = size_option(args.size) if args.size is not None else demo.get("size")
    data = write_phantom_dataset(study.name, args.out / f"{study.name}-phantom", cases=cases, size_zyx=size,
                                 seed=args.seed or 0, overwrite=True, progress=progress, **demo.get("phantom", {}))
    dataset = open_dataset(data, **study.preset.get("data", {}).get("options", {}))  # as the study reads it
    fingerprint = compute_fingerprint(dataset, progress=progress)
    print(report(dataset, fingerprint))
    json_path, png_path = write_fingerprint(fingerprint, args.out)

    run_folder = args.out / "run"
    if run_folder.exists() and (run_folder / "protocol.json").is_file():
        shutil.rmtree(run_folder)  # the demo's own run of a previous call
    overrides = [*demo.get("overrides", []), *([] if args.seed is None else [f"training.seed={args.seed}"])]
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    fold = demo.get("fold")
    print(f"\nrunning the {study.name} protocol (--tiny{f', fold {fold}' if fold is not None else ''}) into "
          f"{run_folder}")
    result = run_protocol(study.name, data, run_folder, tiny=True, fold=fold, overrides=overrides, device="cpu",
                          progress=progress)
    test = _final_test(study, fold)
    record = json.loads((run_folder / test.name / "test.json").read_text(encoding="utf-8"))
    # the held-out case as the test read the dataset (the models' label source and subject lists, then the test's)
    plan = RunFolder(run_folder / test.models[0]).read_plan()
    held_out = next(case for case in open_plan_dataset(plan, test.plan.get("options")).cases
                    if case.case_id == record["cases"][0])
    image, reference = load_case(held_out)
    predictor = Predictor([run_folder / name / "best.pt" for name in test.models], device="cpu",
                          settings=resolve_references(test.plan.get("inference", {}), run_folder), progress=progress)
    prediction = predictor.predict(image, path=held_out.image_paths[0])
    written = []
    for name in ("segmentation.nii.gz", "segmentation.seg.nrrd"):
        written += write_prediction(prediction, args.out / name, None, predictor.labels)
    reference_file = write_image(reference, args.out / "reference.nii.gz")
    names = {int(label["value"]): label["name"] for label in predictor.labels if int(label["value"]) > 0}
    evaluation = evaluate(written[0], reference_file, labels=names, progress=progress)
    report_files = write_report(evaluation, args.out / "evaluation")
    dice = [row["dice"] for row in evaluation.rows if row.get("dice") is not None]
    headline = sum(dice) / len(dice) if dice else float("nan")
    picture = write_case_preview(image, reference, args.out / "segmentation.png", filled=prediction.label,
                                 title=f"{dataset.name}: held-out case {held_out.case_id}, segmentation filled, "
                                       f"reference outlined (Dice {headline:.3f})")
    preview = write_case_preview(image, reference, args.out / "case-preview.png",
                                 title=f"{dataset.name}: case {held_out.case_id}, label outlined")
    curves = run_folder / test.models[-1] / "curves.png"
    per_label = ", ".join(f"{row['label_name']} {row['dice']:.3f}" for row in evaluation.rows if row.get("dice")
                          is not None)
    print(f"\nheld-out case {held_out.case_id}: mean Dice {headline:.3f} ({per_label})")
    print(f"wrote the dataset to {data}\nthe protocol's runs and report to {run_folder} ({result['report'][1]})\n"
          f"the segmentation to {', '.join(str(p) for p in written)}\nthe metrics to {args.out / 'evaluation'}"
          f"\nthe pictures {picture}, {preview.name}, {png_path.name}, the training curve {curves}")
    models = " ".join(str(run_folder / name / "best.pt") for name in test.models)
    print(f"next: segcore predict --model {models} --input SCAN --output SEG.seg.nrrd")
    return {"files": [str(data), str(run_folder), *map(str, written), *map(str, report_files), str(picture),
                      str(preview), str(json_path), str(png_path), str(curves)], "dice": headline,
            "held_out": held_out.case_id, "study": study.name}
