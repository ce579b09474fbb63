"""`segcore demo`: the main job on a built-in default, end to end on synthetic data. What `make demo` runs."""

from __future__ import annotations

from pathlib import Path

from SegCore.commands.phantoms import add_size_argument, size_option
from SegCore.studies import STUDIES

HELP = "run the demo: a synthetic dataset in a study's real layout, its fingerprint and pictures"
DESCRIPTION = """\
Write a small synthetic dataset in a study's real on-disk layout (DICOM for the CT studies, NRRD for the
atrium, multi-channel NIfTI for thalamus and decathlon), read it back through the dataset reader, print its
fingerprint (sizes, spacings, orientations, intensities, class frequencies) and write pictures:
fingerprint.png (the distributions) and case-preview.png (axial, coronal and sagittal slices of one
case as 3D Slicer shows them, in mm, with its label outlined).
Everything goes under --out; the demo's own dataset folder there is replaced on every run.

examples:
  segcore demo                              # atrium, into ./demo-output
  segcore demo --study pancreas --out /tmp/pancreas-demo --cases 6
"""


def add_arguments(parser) -> None:
    parser.add_argument("--study", choices=list(STUDIES), default="atrium",
                        help="whose dataset layout (default atrium)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    parser.add_argument("--cases", type=int, default=4, help="number of synthetic cases (default 4)")
    add_size_argument(parser, default=96)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args, progress) -> dict:
    from SegCore.commands.inspect import report
    from SegCore.datasets import compute_fingerprint, load_case, open_dataset, write_case_preview, write_fingerprint
    from SegCore.phantoms import write_phantom_dataset

    data = write_phantom_dataset(args.study, args.out / f"{args.study}-phantom", cases=args.cases,
                                 size_zyx=size_option(args.size), seed=args.seed, overwrite=True, progress=progress)
    dataset = open_dataset(data)
    fingerprint = compute_fingerprint(dataset, progress=progress)
    print(report(dataset, fingerprint))
    json_path, png_path = write_fingerprint(fingerprint, args.out)
    case = next(c for c in dataset.cases if c.has_label)
    image, label = load_case(case)
    preview = write_case_preview(image, label, args.out / "case-preview.png",
                                 title=f"{dataset.name}: case {case.case_id}, label outlined")
    print(f"\nwrote the dataset to {data}\nwrote {json_path}, {png_path.name} and {preview.name}")
    print(f"next: segcore inspect {data} --out fingerprint    segcore convert --help    segcore models")
    return {"files": [str(data), str(json_path), str(png_path), str(preview)]}
