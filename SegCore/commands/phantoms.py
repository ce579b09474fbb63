"""`segcore phantoms`: write a synthetic dataset in a study's real on-disk layout."""

from __future__ import annotations

from pathlib import Path

from SegCore.errors import SegCoreError

# Kept here (not imported from SegCore.phantoms, which pulls in scipy) so `segcore --help` stays instant;
# Testing/test_phantoms_cli.py checks they match the library.
STUDIES = ("thalamus", "atrium", "muscle", "pancreas", "decathlon")
DECATHLON_TASKS = ("BrainTumour", "Heart", "Prostate", "Spleen")
DIFFICULTIES = ("easy", "medium", "hard")

HELP = "write a synthetic dataset in a study's real layout (DICOM, NRRD, NIfTI, MSD)"
DESCRIPTION = """\
Write a synthetic ("phantom") dataset in the real on-disk layout and formats of a study, readable by
`segcore inspect` and by training: anatomy-like shapes with realistic intensities (CT in HU, LGE-MRI
grey values, diffusion maps), noise, anisotropic spacing, a non-zero origin and a rotated direction on
every second case. The same --seed gives the same dataset; --difficulty lowers the contrast between the
target and its surroundings and raises noise.

layouts written:
  thalamus   <subject>/diffusion/{evalue1,FA,RD,MD}.nii.gz, T1w_acpc_dc_restore_1.25.nii.gz,
             FreeSurfer/aparc+aseg_1.25_nearest.nii.gz; training_subjects.txt, testing_subjects.txt
  atrium     Training Set/<ID>/lgemri.nrrd + laendo.nrrd (0/255); Testing Set/<ID>/...
  muscle     <scan>/ (DICOM series, HU) + <scan>.nii.gz
  pancreas   Pancreas-CT/PANCREAS_00XX/<study uid>/<series uid>/*.dcm
             + TCIA_pancreas_labels-02-05-2017/label00XX.nii.gz
  decathlon  dataset.json, imagesTr/, labelsTr/, imagesTs/ of an MSD task (--task)

examples:
  segcore phantoms --study atrium --out LA2018-phantom
  segcore phantoms --study decathlon --task BrainTumour --out Task01_BrainTumour --cases 6 --seed 3
  segcore phantoms --study pancreas --out NIH-phantom --size 64 --difficulty hard
  segcore phantoms --study thalamus --out HCP-phantom --size 48 56 48 --overwrite
"""


def add_arguments(parser) -> None:
    parser.add_argument("--study", required=True, choices=STUDIES, help="whose layout to write")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to create (must be new or empty)")
    parser.add_argument("--cases", type=int, default=3, help="number of cases (default 3; about 20%% of them "
                                                              "go to the layout's test subset)")
    parser.add_argument("--size", type=int, nargs="+", metavar="N",
                        help="image size: Z Y X, or one number for the largest side (default: small, 32-48)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="easy",
                        help="target contrast and noise (default easy)")
    parser.add_argument("--task", choices=DECATHLON_TASKS, default="BrainTumour",
                        help="which Decathlon task to imitate with --study decathlon (default BrainTumour)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")


def run(args, progress) -> dict:
    from SegCore.phantoms import resolve_shape, write_phantom_dataset

    if args.size is not None and len(args.size) not in (1, 3):
        raise SegCoreError(f"--size takes one number or three (Z Y X), got {len(args.size)}", fix="e.g. --size 64")
    size = None if args.size is None else (args.size[0] if len(args.size) == 1 else tuple(args.size))
    out = write_phantom_dataset(args.study, args.out, cases=args.cases, size=size, seed=args.seed,
                                difficulty=args.difficulty, task=args.task, overwrite=args.overwrite,
                                progress=progress)
    shape = resolve_shape(args.study, size, args.task)
    what = f"decathlon {args.task}" if args.study == "decathlon" else args.study
    print(f"wrote {args.cases} {what} phantom case(s), {shape[0]}x{shape[1]}x{shape[2]} voxels (z,y,x), "
          f"difficulty {args.difficulty}, seed {args.seed}, to {out}")
    return {"files": [str(out)]}
