"""`segcore demo`: the main job on a built-in default, end to end on synthetic data. What `make demo` runs."""

from __future__ import annotations

import math
from pathlib import Path

from SegCore.commands.phantoms import add_size_argument, size_option
from SegCore.studies import STUDIES

HELP = "run the demo: a synthetic dataset, a short training, a segmentation of a held-out case, its metrics"
DESCRIPTION = """\
End to end on synthetic data, on the CPU in about a minute:
1. write a small synthetic dataset in a study's real on-disk layout (DICOM for the CT studies, NRRD for the
   atrium, multi-channel NIfTI for thalamus and decathlon), read it back and print its fingerprint
   (fingerprint.png: the distributions);
2. train a small 2D U-Net briefly on all cases but two (one validates, one is held out): run/ holds the
   checkpoints, history.csv and the training curve run/curves.png;
3. segment the held-out case (segmentation.nii.gz and segmentation.seg.nrrd, on the case's own grid);
4. evaluate it against its reference (evaluation/metrics.csv and plots) and draw segmentation.png: axial,
   coronal and sagittal slices in mm with orientation letters, the segmentation filled, the reference outlined.
It prints where these are and the held-out Dice. The network is the demo's, not the study's published one
(the study presets come with a later version). Everything goes under --out; the demo's own files there are
replaced on every run.

examples:
  segcore demo                              # atrium, into ./demo-output
  segcore demo --study pancreas --out /tmp/pancreas-demo --cases 6
"""

DEMO_PLAN = {"model": {"name": "unet2d"}, "optim": {"lr": 0.003}}  # with --tiny's sizes: learns in seconds
DEMO_EPOCHS, DEMO_STEPS, DEMO_BATCH = 14, 20, 8


def add_arguments(parser) -> None:
    parser.add_argument("--study", choices=list(STUDIES), default="atrium",
                        help="whose dataset layout (default atrium)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    parser.add_argument("--cases", type=int, default=6, help="number of synthetic cases, at least 3 (default 6)")
    add_size_argument(parser, default=48)
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"training epochs (default {DEMO_EPOCHS})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _plan(data: Path, study: str, cases: list[str], epochs: int, seed: int, out: Path) -> dict:
    """The demo's training plan: --tiny sizes, whole slices, cases[:-2] train, cases[-2] validates (the case
    lists are written to `out`, as a user's split files would be)."""
    import json

    from SegCore.atomic import atomic_file
    from SegCore.training.config import preprocessed_shape, resolve_plan
    from SegCore.training.derive import data_facts

    lists = {}
    for name, ids in (("train", cases[:-2]), ("validation", [cases[-2]])):
        lists[name] = out / f"{name}_cases.json"
        with atomic_file(lists[name]) as tmp:
            tmp.write_text(json.dumps(ids), encoding="utf-8")
    facts = data_facts(data)
    config = {**DEMO_PLAN, "study": study, "data": {"root": str(data)},
              "split": {"kind": "lists", "train_list": str(lists["train"]),
                        "validation_list": str(lists["validation"])}}
    flags = {"epochs": epochs, "steps_per_epoch": DEMO_STEPS, "batch": DEMO_BATCH, "seed": seed}
    # A first plan with the smallest slices only to learn the padded image size (--tiny's 32 x 32 may not fit).
    plan = resolve_plan(config, tiny=True, flags=flags, facts=facts, overrides=["sampler.size_yx=[8,8]"])
    padded = preprocessed_shape(plan["preprocessing"], facts) or (32, 32, 32)
    side = 8 * max(1, math.floor(min(padded[1:]) / 8))  # whole axial slices, a multiple of the U-Net's divisor
    return resolve_plan(config, tiny=True, flags=flags, facts=facts, overrides=[f"sampler.size_yx=[{side},{side}]"])


def run(args, progress) -> dict:
    from SegCore.commands.inspect import report
    from SegCore.datasets import compute_fingerprint, load_case, open_dataset, write_case_preview, write_fingerprint
    from SegCore.errors import SegCoreError
    from SegCore.inference import Predictor
    from SegCore.inference.outputs import write_prediction
    from SegCore.io import write_image
    from SegCore.metrics import evaluate, write_report
    from SegCore.phantoms import write_phantom_dataset
    from SegCore.training.trainer import train_from_plan

    if args.cases < 3:
        raise SegCoreError(f"the demo needs at least 3 cases (train, validate, hold out), got {args.cases}",
                           fix="use --cases 6 (the default)")
    data = write_phantom_dataset(args.study, args.out / f"{args.study}-phantom", cases=args.cases,
                                 size_zyx=size_option(args.size), seed=args.seed, overwrite=True, progress=progress)
    dataset = open_dataset(data)
    fingerprint = compute_fingerprint(dataset, progress=progress)
    print(report(dataset, fingerprint))
    json_path, png_path = write_fingerprint(fingerprint, args.out)

    cases = [case for case in dataset.cases if case.has_label]
    plan = _plan(data, args.study, [case.case_id for case in cases], args.epochs, args.seed, args.out)
    run_folder = args.out / "run"
    print(f"\ntraining a small 2D U-Net for {args.epochs} epochs of {DEMO_STEPS} steps on {len(cases) - 2} cases "
          f"(validating on {cases[-2].case_id}) into {run_folder}")
    trained = train_from_plan(plan, run_folder, overwrite=True, progress=progress)
    print(trained["summary"])

    held_out = cases[-1]
    image, reference = load_case(held_out)
    predictor = Predictor(run_folder / "best.pt", device="cpu", progress=progress)
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
    per_label = ", ".join(f"{row['label_name']} {row['dice']:.3f}" for row in evaluation.rows if row.get("dice")
                          is not None)
    print(f"\nheld-out case {held_out.case_id}: mean Dice {headline:.3f} ({per_label})")
    print(f"wrote the dataset to {data}\nthe run (checkpoints, history.csv, curves.png) to {run_folder}\n"
          f"the segmentation to {', '.join(str(p) for p in written)}\nthe metrics to {args.out / 'evaluation'}"
          f"\nthe pictures {picture}, {preview.name}, {png_path.name}")
    print(f"next: segcore predict --model {run_folder / 'best.pt'} --input SCAN --output SEG.seg.nrrd")
    return {"files": [str(data), str(run_folder), *map(str, written), *map(str, report_files), str(picture),
                      str(preview), str(json_path), str(png_path)], "dice": headline, "held_out": held_out.case_id}
