"""`segcore inspect`: recognise a dataset's layout, list its cases and write its fingerprint."""

from __future__ import annotations

from pathlib import Path

from SegCore.commands.text import format_table
from SegCore.datasets.registry import LAYOUTS as DATASET_LAYOUTS
from SegCore.errors import SegCoreError

LAYOUTS = ("auto", *DATASET_LAYOUTS)

HELP = "list a dataset's cases and write its fingerprint (sizes, spacings, intensities, classes)"
DESCRIPTION = """\
Recognise the layout of a dataset folder (Medical Segmentation Decathlon, LA 2018, NIH Pancreas-CT,
HCP thalamus, muscle CT, or generic images/ + labels/), read every case, and print one line per case
(size, spacing, orientation, channels, label values) and a summary. Writes fingerprint.json and
fingerprint.png (spacing, size, intensity and class distributions) into --out, by default
./<dataset name>-fingerprint/ in the current folder; never inside the dataset.

examples:
  segcore inspect Task01_BrainTumour
  segcore inspect LA2018 --layout atrium --out la-fingerprint
  segcore phantoms --study muscle --out muscle-phantom && segcore inspect muscle-phantom
"""


INPUTS = ("data",)


def add_arguments(parser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA", help="the dataset's top folder")
    parser.add_argument("--layout", choices=LAYOUTS, default="auto", help="dataset layout (default: detect)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for fingerprint.json / .png (default ./<dataset name>-fingerprint)")


def _numbers(values, digits: int = 3) -> str:
    return " x ".join(f"{v:.{digits}g}" for v in values)


def _stats(stats: dict | None) -> str:
    if stats is None:
        return "-"
    return (f"mean {stats['mean']:.4g} sd {stats['std']:.4g}  p0.5/50/99.5 {stats['percentile_00_5']:.4g} / "
            f"{stats['percentile_50_0']:.4g} / {stats['percentile_99_5']:.4g}  "
            f"range {stats['min']:.4g}..{stats['max']:.4g}")


def _check_out(out: Path, data: Path) -> None:
    data, target = data.resolve(), out.resolve()
    if target == data or data in target.parents:
        raise SegCoreError("the fingerprint would be written inside the dataset", path=out,
                           fix="pass --out with a folder outside the dataset")


def report(dataset, fingerprint) -> str:
    """The text `segcore inspect` prints: one row per case, then the dataset summary."""
    # People read both in the same (x, y, z) order, as Slicer shows them; the JSON keeps shape_zyx.
    rows = [["case", "subset", "size (x,y,z)", "spacing (x,y,z mm)", "orient.", "channels", "labels"]]
    for case in fingerprint.cases:
        rows.append([case["case_id"], case["subset"], " x ".join(str(s) for s in reversed(case["shape_zyx"])),
                     _numbers(case["spacing_xyz_mm"]), case["orientation"] + ("*" if case["oblique"] else ""),
                     ",".join(case["channels"]), ",".join(str(v) for v in case["label_values"]) or "-"])
    lines = [f"{dataset.name}: {dataset.layout} layout, {dataset.modality}, {fingerprint.num_cases} cases "
                      f"({fingerprint.num_labelled} labelled) in {dataset.root}", format_table(rows)]
    if any(case["oblique"] for case in fingerprint.cases):
        lines.append("(* oblique: the image axes are rotated against the patient axes)")
    rule = _label_rule_note(dataset.layout)
    if rule:
        lines.append(rule)
    lines.append("")
    lines.append(f"median size (x,y,z): {_numbers(fingerprint.shape_zyx['median'][::-1])}   "
                 f"median spacing (x,y,z mm): {_numbers(fingerprint.spacing_xyz_mm['median'])}   orientations: "
          + ", ".join(f"{code} {count}" for code, count in sorted(fingerprint.orientations.items())))
    for name, every, foreground in zip(fingerprint.channel_names, fingerprint.intensity_all,
                                       fingerprint.intensity_foreground, strict=True):
        lines.append(f"intensity {name}:\n  all voxels  {_stats(every)}\n  foreground  {_stats(foreground)}")
    if fingerprint.class_fraction:
        lines.append("class frequency (fraction of labelled voxels): " + ", ".join(
            f"{value} {fingerprint.label_names.get(value, '?')} {fraction:.4g}"
            for value, fraction in fingerprint.class_fraction.items()))
    return "\n".join(lines)


def _label_rule_note(layout: str) -> str | None:
    """'labels: stored 255 is read as 1 ...' where the layout's label files store other values than the labels."""
    from SegCore.studies import STUDIES

    for study in STUDIES.values():
        if study.layout.name == layout:
            changed = [(stored, label) for stored, label in study.layout.label_mapping if stored != label]
            if changed:
                pairs = ", ".join(f"stored {stored} is read as {label}" for stored, label in changed)
                return f"(labels: {pairs}; the label column shows the values as read)"
    return None


def run(args, progress) -> dict:
    from SegCore.datasets import compute_fingerprint, open_dataset, write_fingerprint
    from SegCore.datasets.registry import enclosing_dataset

    dataset = open_dataset(args.data, args.layout)
    enclosing = enclosing_dataset(args.data)
    if enclosing is not None:  # e.g. 'Training Set/' of LA 2018 reads as a dataset, but only part of one
        print(f"note: {enclosing[1]}; for the whole dataset run: segcore inspect {enclosing[0]}")
    out = args.out if args.out is not None else Path.cwd() / f"{dataset.name}-fingerprint"
    _check_out(out, args.data)
    fingerprint = compute_fingerprint(dataset, progress=progress)

    print(report(dataset, fingerprint))
    json_path, png_path = write_fingerprint(fingerprint, out)
    print(f"wrote {json_path} and {png_path.name}")
    return {"files": [str(json_path), str(png_path)]}
