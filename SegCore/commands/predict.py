"""`segcore predict`: segment images with trained checkpoints, one case or a folder of cases."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "segment images with trained checkpoints (one case, or a folder of cases; resumable; torchrun)"
DESCRIPTION = """\
Predict a label map with one checkpoint, or with several (an ensemble: their probabilities are averaged).
--input is one case: an image file (3D, or 4D = channels), a DICOM series folder, or one file per channel
(in the checkpoint's channel order); --output is then the output file, its format taken from its suffix
(.nii.gz, .nrrd or .seg.nrrd; a name without one gets --format's). --input may instead be a folder of
cases: a dataset folder (any layout `segcore inspect` reads), a folder of image files (nnU-Net channel files
case_0000, case_0001 form one case) or a folder of DICOM series folders; --output is then a folder with one
output per case, named by case id, and predictions.json (per case: status, seconds, output, error,
warnings; the model id and settings). A failing case is reported and the others go on; the exit code is 1
if any case failed. --resume skips the cases already predicted by the same checkpoints and settings.
--probabilities and --uncertainty add NAME_probabilities.nii.gz (K, Z, Y, X) and NAME_uncertainty.nii.gz.
Outputs lie on the input's grid exactly. Under `torchrun --nproc_per_node N` the ranks share the cases
(cuda:LOCAL_RANK each on GPUs) and rank 0 merges their records. See docs/inference.md.

examples:
  segcore predict --model runs/la/best.pt --input case01.nii.gz --output case01_pred.nii.gz
  segcore predict --model runs/la/best.pt --input ct_dicom/ --output ct_pred.seg.nrrd
  segcore predict --model f0/best.pt f1/best.pt f2/best.pt --input t1.nii.gz t2.nii.gz --output pred.nrrd
  segcore predict --model runs/la/best.pt --input LA-phantom --output predictions/ --tta --resume
  segcore predict --model runs/la/best.pt --input scan.nii.gz --output pred.nii.gz --device cuda --no-tta
  segcore predict --model runs/la/best.pt --input scans/ --output out/ --probabilities --format seg.nrrd
  torchrun --nproc_per_node 2 -m SegCore predict --model runs/la/best.pt --input scans/ --output out/
"""

INPUTS = ("model", "input", "locator")
# SegCore.inference.outputs.FORMATS, spelled out so that `segcore --help` imports no torch (a test compares them).
FORMATS = ("nii.gz", "nrrd", "seg.nrrd")


def add_arguments(parser) -> None:
    parser.add_argument("--model", nargs="+", type=Path, required=True, metavar="CKPT",
                        help="checkpoint(s); several are an ensemble")
    parser.add_argument("--input", nargs="+", type=Path, required=True, metavar="FILE_OR_DIR",
                        help="an image, a DICOM folder, one file per channel, or a folder of cases")
    parser.add_argument("--output", type=Path, required=True, metavar="PATH",
                        help="the output file (one case) or folder (a folder of cases)")
    parser.add_argument("--device", default="auto", metavar="D", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time mirroring on or off (default: the plan's inference.tta; its \"auto\": on "
                             "for CUDA, off on the CPU)")
    parser.add_argument("--overlap", type=float, metavar="F", help="sliding-window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--batch", type=int, metavar="N", help="windows or slices per forward pass")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="skip the checkpoint's postprocessing (largest component, hole filling)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write the class probabilities as NAME_probabilities.nii.gz")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write a voxel uncertainty map as NAME_uncertainty.nii.gz")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="label map format (default: the output's suffix, else nii.gz)")
    parser.add_argument("--resume", action="store_true",
                        help="skip cases whose output exists from the same checkpoints and settings")
    parser.add_argument("--locator", type=Path, metavar="CKPT",
                        help="a coarse localisation checkpoint: locate, then segment a crop around it")
    parser.add_argument("--resample", action="store_true",
                        help="resample channel files onto the first channel's grid instead of refusing")


def requested_settings(args) -> dict:
    """The inference settings the options set (None values are left to the checkpoint's plan)."""
    settings = {"overlap": args.overlap, "tta": args.tta, "batch": args.batch}
    return {key: value for key, value in settings.items() if value is not None}


def _one_case(args, predictor, case) -> dict:
    from SegCore.errors import SegCoreError
    from SegCore.inference.outputs import output_paths, write_prediction

    if args.output.is_dir():
        raise SegCoreError("the output is a folder, but the input is one case", path=args.output,
                           fix=f"give a file path, e.g. {args.output / (case.case_id + '.nii.gz')}")
    label_path = output_paths(args.output, None, args.format)["label"]
    # the Predictor reads the case itself, so that it can release the image it read once preprocessing has a copy
    prediction = predictor.predict_files(list(case.paths), resample=args.resample, probabilities=args.probabilities,
                                         uncertainty=args.uncertainty)
    files = write_prediction(prediction, label_path, args.format, predictor.labels)
    for warning in prediction.warnings:
        print(f"warning: {warning}")
    print(f"wrote {', '.join(str(p) for p in files)}")
    return {"files": [str(p) for p in files], "warnings": list(prediction.warnings), "info": prediction.info,
            "model_id": predictor.model_id}


def _batch(args, predictor, cases, info, settings: dict, progress) -> dict:
    from SegCore.errors import SegCoreError
    from SegCore.inference.batch import RECORD_NAME, merge_records, predict_batch, summary
    from SegCore.inference.outputs import format_of
    from SegCore.training.distributed import barrier, broadcast_object

    if (args.output.exists() and not args.output.is_dir()) or format_of(args.output) is not None:
        raise SegCoreError("the input is a folder of cases, so the output must be a folder", path=args.output,
                           fix="give a folder path for --output (one file per case goes there)")
    record = predict_batch(predictor, cases, args.output, fmt=args.format, probabilities=args.probabilities,
                           uncertainty=args.uncertainty, resample=args.resample, resume=args.resume,
                           settings=settings, progress=progress, rank=info.rank, world_size=info.world_size)
    where = f"[rank {info.rank}] " if info.enabled else ""
    for entry in record["cases"]:
        if entry["status"] == "failed":
            print(f"{where}{entry['case_id']}: failed: {entry['error']}")
    if info.enabled:
        barrier(info)
        record = merge_records(args.output, info.world_size, predictor.model_id, settings) if info.is_main else None
        record = broadcast_object(record, info)
    counts = summary(record)
    path = args.output / RECORD_NAME
    if info.is_main:
        seconds = sum(entry["seconds"] for entry in record["cases"])
        print(f"predicted {len(record['cases'])} case(s) into {args.output}: {counts['done']} done, "
              f"{counts['skipped']} skipped (--resume), {counts['failed']} failed; {seconds:.1f} s of work; "
              f"record: {path}")
    if counts["failed"]:
        failed = [entry["case_id"] for entry in record["cases"] if entry["status"] == "failed"]
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        raise SegCoreError(f"{counts['failed']} of {len(record['cases'])} case(s) failed ({shown}); the others "
                           "were written", path=path,
                           fix="see each case's error above (or in the record), repair those inputs and rerun "
                               "with --resume")
    return {"output": str(args.output), "record": str(path), "model_id": predictor.model_id, **counts}


def run(args, progress) -> dict:
    import torch

    from SegCore.inference import Predictor
    from SegCore.inference.batch import find_cases
    from SegCore.progress import no_progress
    from SegCore.training.distributed import device_for, init_distributed, launched_by_torchrun, shutdown

    cases, batch = find_cases(args.input, exclude=args.output)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    info = init_distributed("cuda" if cuda and launched_by_torchrun() else "cpu")
    try:
        settings = requested_settings(args)
        # Batch mode reports one event per case; the windows within each would drown them.
        predictor = Predictor(args.model, device=device_for(info, args.device), settings=settings,  # cuda:LOCAL_RANK
                              postprocess=not args.no_postprocess, locator=args.locator,
                              progress=no_progress if batch else progress)
        recorded = {"requested": settings, "postprocess": not args.no_postprocess, "resolved": predictor.settings,
                    "models": [str(p.resolve()) for p in args.model],
                    "locator": None if args.locator is None else str(args.locator.resolve())}
        if not batch:
            return _one_case(args, predictor, cases[0]) if info.is_main else {}
        return _batch(args, predictor, cases, info, recorded, progress)
    finally:
        shutdown(info)
