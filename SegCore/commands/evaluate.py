"""`segcore evaluate`: score predictions against references, per case, label and cohort, as tables and plots."""

from __future__ import annotations

HELP = "score predicted segmentations against references (Dice, HD95, ASSD, surface Dice, volumes, ...)"
DESCRIPTION = """\
Pair prediction and reference label files by case name (the file name without its format suffix; any
format SegCore reads, .seg.nrrd included, so case01.seg.nrrd pairs with case01.nii.gz), compute every metric
per case and label (overlap, volumes in ml, surface distances in mm), and summarise the cohort (mean, std,
median, IQR, min, max and the number of valid cases per metric). Several --pred folders are compared as
groups (models, raters, label sources) against the same references in one table and one plot.

With --out DIR: DIR/metrics.csv (per case and label), DIR/summary.csv (per group, label and metric),
DIR/metrics.json (both, with settings, definitions and notes) and plots: DIR/metrics.png (bars) for a single
case, else DIR/boxplots.png and DIR/cases_<metric>.png. A short summary is printed either way, with notes on
the inputs (values not scored, requested labels in neither file, predictions pasted onto the reference's voxel
lattice). An image (CT, MR) given instead of a label map is refused. Definitions, the empty-mask policy and
the notes: docs/metrics.md.

examples:
  segcore evaluate --pred predictions/ --ref labels/ --out eval/
  segcore evaluate --pred case01_pred.nii.gz --ref case01.seg.nrrd
  segcore evaluate --pred unet/ vnet/ --ref labels/ --labels 1=liver 2=tumour --out compare/
  segcore evaluate --pred rater_a/ rater_b/ --group-names A B --ref consensus/ --tolerance-mm 1 --out raters/
"""


INPUTS = ("pred", "ref")


def add_arguments(parser) -> None:
    from SegCore.metrics.cases import MISSING_CHOICES
    from SegCore.metrics.definitions import DEFAULT_TOLERANCE_MM

    parser.add_argument("--pred", nargs="+", required=True, metavar="DIR_OR_FILE",
                        help="prediction folder or file; several are compared as groups")
    parser.add_argument("--ref", required=True, metavar="DIR_OR_FILE", help="reference folder or file")
    parser.add_argument("--labels", nargs="+", default=None, metavar="VALUE[=NAME]",
                        help="labels to score, e.g. '1=liver 2=tumour' or '1,2' (default: the reference "
                             ".seg.nrrd segments and every non-zero value present)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write tables and plots here (a new or empty folder, or an earlier report)")
    parser.add_argument("--group-names", nargs="+", default=None, metavar="NAME",
                        help="one name per --pred path (default: the folder names)")
    parser.add_argument("--tolerance-mm", type=float, default=DEFAULT_TOLERANCE_MM,
                        help=f"surface Dice tolerance in mm (default {DEFAULT_TOLERANCE_MM:g})")
    parser.add_argument("--resample", action="store_true",
                        help="resample predictions on another grid onto the reference grid (nearest neighbour) "
                             "instead of stopping with an error")
    parser.add_argument("--missing", choices=MISSING_CHOICES, default="error",
                        help="a reference case without prediction: stop (error, default), score it as an empty "
                             "prediction (empty), or leave it out (skip)")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")


def parse_labels(items: list[str] | None) -> dict[int, str] | None:
    """'1=liver', '2:tumour', '3' or comma-separated lists of those -> {value: name}; None when not given."""
    from SegCore.commands.text import parse_label_names
    from SegCore.errors import SegCoreError

    if items is None:
        return None
    table = parse_label_names(items, option="--labels")
    if not table:
        raise SegCoreError("--labels is empty", fix="give at least one label value")
    return table


def _format(value: float, digits: int) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def summary_lines(evaluation) -> list[str]:
    """A compact text summary: per group and label, the cases and the main metrics (mean +- std, median)."""
    stats = {(s["group"], s["label"], s["metric"]): s for s in evaluation.summary}
    lines = [f"{'group':<14} {'label':<16} {'n':>3}  {'Dice mean+-std':>15}  {'HD95 median':>11}  "
             f"{'ASSD mean':>9}  {'surf.Dice':>9}  not ok"]
    for group in evaluation.groups:
        for label, name in evaluation.labels.items():
            dice, hd95 = stats[(group, label, "dice")], stats[(group, label, "hd95_mm")]
            assd, nsd = stats[(group, label, "assd_mm")], stats[(group, label, "surface_dice")]
            not_ok = dice["n_cases"] - dice["n_ok"]
            lines.append(f"{group[:14]:<14} {name[:16]:<16} {dice['n_cases']:>3}  "
                         f"{_format(dice['mean'], 3):>7}+-{_format(dice['std'], 3):<6}  "
                         f"{_format(hd95['median'], 2):>8} mm  {_format(assd['mean'], 2):>6} mm  "
                         f"{_format(nsd['mean'], 3):>9}  {not_ok}")
    return lines


def run(args, progress) -> dict:
    from SegCore.metrics import evaluate, write_report

    evaluation = evaluate(args.pred, args.ref, labels=parse_labels(args.labels), group_names=args.group_names,
                          tolerance_mm=args.tolerance_mm, resample=args.resample, missing=args.missing,
                          progress=progress)
    written = write_report(evaluation, args.out, plots=not args.no_plots) if args.out else []
    print("\n".join(summary_lines(evaluation)))
    print(f"surface Dice tolerance {args.tolerance_mm:g} mm; 'not ok' counts rows with an empty mask "
          "(see the status column)")
    for note in evaluation.notes:
        print(f"note: {note}")
    if written:
        print(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}")
    return {"files": [str(p) for p in written], "notes": evaluation.notes}
