"""`segcore phantoms`: write a synthetic dataset in a study's real on-disk layout."""

from __future__ import annotations

import textwrap
from pathlib import Path

from SegCore.errors import SegCoreError
from SegCore.phantoms.catalog import DECATHLON_TASKS, DEFAULT_TASK, DIFFICULTIES
from SegCore.studies import STUDIES, atrium, decathlon, muscle, pancreas, thalamus


def _layouts_written() -> str:
    """The 'layouts written' lines of the help, from the study files."""
    t, a, p, d = thalamus.LAYOUT, atrium.LAYOUT, pancreas.LAYOUT, decathlon.LAYOUT
    rows = {
        "thalamus": "<subject>/: " + ", ".join(channel.file for channel in thalamus.STUDY.channels)
                    + f", {t.label_source('freesurfer').file}; {t.training_list}, {t.testing_list}",
        "atrium": f"{a.training_folder}/<ID>/{a.image_file} + {a.label_file} (0/{a.mask_value}); "
                  f"{a.test_folder}/<ID>/...",
        "muscle": f"<scan>/ (DICOM series, HU) + <scan>{muscle.LAYOUT.label_suffix}",
        "pancreas": f"{p.images_folder}/{p.case_prefix}00XX/<study uid>/<series uid>/*.dcm "
                    f"+ {p.label_folder}/{p.label_prefix}00XX{p.label_suffix}",
        "decathlon": f"{d.description_file}, {d.training_images}/, {d.training_labels}/, {d.test_images}/ of an "
                     "MSD task (--task)",
    }
    return "\n".join(textwrap.fill(text, 100, initial_indent=f"  {name:<10} ", subsequent_indent=" " * 13,
                                    break_on_hyphens=False) for name, text in rows.items())


HELP = "write a synthetic dataset in a study's real layout (DICOM, NRRD, NIfTI, MSD)"
DESCRIPTION = f"""\
Write a synthetic ("phantom") dataset in the real on-disk layout and formats of a study, readable by
`segcore inspect` and by training: anatomy-like shapes with realistic intensities (CT in HU, LGE-MRI
grey values, diffusion maps), noise, anisotropic spacing, a non-zero origin and a rotated direction on
every second case. The same --seed gives the same dataset; --difficulty lowers the contrast between the
target and its surroundings and raises noise.

layouts written:
{_layouts_written()}

examples:
  segcore phantoms --study atrium --out LA2018-phantom
  segcore phantoms --study decathlon --task BrainTumour --out Task01_BrainTumour --cases 6 --seed 3
  segcore phantoms --study pancreas --out NIH-phantom --size 64 --difficulty hard
  segcore phantoms --study thalamus --out HCP-phantom --size 48 56 48 --overwrite
  segcore phantoms --study muscle --out sarco-phantom --cases 4 --unlabelled 2
"""


def add_arguments(parser) -> None:
    parser.add_argument("--study", required=True, choices=list(STUDIES), help="whose layout to write")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to create (must be new or empty)")
    parser.add_argument("--cases", type=int, default=3, help="number of cases (default 3; about 20%% of them "
                                                              "go to the layout's test subset)")
    add_size_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--difficulty", choices=list(DIFFICULTIES), default="easy",
                        help="target contrast and noise (default easy)")
    parser.add_argument("--task", choices=DECATHLON_TASKS, default=DEFAULT_TASK,
                        help=f"which Decathlon task to imitate with --study decathlon (default {DEFAULT_TASK})")
    parser.add_argument("--unlabelled", type=int, default=0, metavar="N",
                        help="muscle only: N more scans without a label (what self-distillation labels; default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")


def add_size_argument(parser, default: int | None = None) -> None:
    """--size as `segcore phantoms` and `segcore demo` both take it: N (the largest side) or Z Y X."""
    parser.add_argument("--size", type=int, nargs="+", metavar="N", default=None if default is None else [default],
                        help="image size: Z Y X, or one number for the largest side (default: "
                             f"{default if default is not None else 'small, 32-48'})")


def size_option(values: list[int] | None) -> int | tuple[int, int, int] | None:
    """The `size_zyx` that write_phantom_dataset takes, from --size's values."""
    if values is None:
        return None
    if len(values) not in (1, 3):
        raise SegCoreError(f"--size takes one number or three (Z Y X), got {len(values)}", fix="e.g. --size 64")
    return values[0] if len(values) == 1 else tuple(values)


def run(args, progress) -> dict:
    from SegCore.phantoms import resolve_shape, write_phantom_dataset

    size = size_option(args.size)
    out = write_phantom_dataset(args.study, args.out, cases=args.cases, size_zyx=size, seed=args.seed,
                                difficulty=args.difficulty, task=args.task, overwrite=args.overwrite,
                                unlabelled=args.unlabelled, progress=progress)
    shape = resolve_shape(args.study, size, args.task)
    what = f"decathlon {args.task}" if args.study == "decathlon" else args.study
    extra = f" and {args.unlabelled} unlabelled" if args.unlabelled else ""
    print(f"wrote {args.cases}{extra} {what} phantom case(s), {shape[0]}x{shape[1]}x{shape[2]} voxels (z,y,x), "
          f"difficulty {args.difficulty}, seed {args.seed}, to {out}")
    return {"files": [str(out)]}
