"""`segcore run`: a study's whole published protocol (every stage, then testing and the report), resumable."""

from __future__ import annotations

from pathlib import Path

from SegCore.studies import STUDIES

HELP = "run a study's whole published protocol: every training stage, the tests, the report (resumable)"
DESCRIPTION = """\
Run the protocol a study published, stage by stage, into one folder --out (see docs/studies.md, "Protocols"):
thalamus: a 2D U-Net per view, fine-tuned, fused; atrium: the locator, then the segmenter on its crop;
pancreas: per fold and plane the RSTN's S, I and J stages, then coarse, oracle and coarse-to-fine testing;
decathlon: five folds, each tested; muscle: supervised, then self-distillation.

RUN/<stage>/ is a `segcore train` run folder for each training stage, and holds the predictions and the
evaluation for each test stage; RUN/report.json and RUN/report.md give every test's Dice per fold and over all
held-out cases. The same command again resumes where it stopped (a killed training continues from its last.pt;
finished stages are not redone). `segcore run --status RUN` says where it stands.

examples:
  segcore phantoms --study atrium --out LA-phantom --cases 6 --size 48
  segcore run --study atrium --data LA-phantom --out runs/la --tiny
  segcore run --status runs/la
  segcore run --study pancreas --data NIH --out runs/rstn --fold 0 --set training.epochs=4
  segcore run --study pancreas --data NIH --out runs/rstn --set '*-J:training.epochs=4'   # the J stages only
"""

INPUTS = ("data",)


def add_arguments(parser) -> None:
    parser.add_argument("--study", choices=list(STUDIES), help="the study whose protocol runs (required)")
    parser.add_argument("--data", type=Path, metavar="DIR", help="the study's dataset folder (required)")
    parser.add_argument("--out", type=Path, metavar="RUN", help="the protocol's folder (created, or resumed)")
    parser.add_argument("--status", type=Path, metavar="RUN", help="only say where the protocol in RUN stands")
    parser.add_argument("--fold", type=int, metavar="K", help="run the stages of cross-validation fold K only")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="[STAGES:]KEY=VALUE",
                        dest="overrides", help="override plan keys of every training stage, e.g. training.epochs=20, "
                                               "or of the stages matching a pattern: 'fold0-*:optim.lr=1e-4'")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--tiny", action="store_true",
                        help="small widths, patches and step counts: the whole protocol in minutes on a CPU")


def run(args, progress) -> dict:
    from SegCore.devices import prefer_passive_openmp

    prefer_passive_openmp()  # before torch loads: the loader workers get the cores the waiting threads spun on
    from SegCore.errors import SegCoreError
    from SegCore.protocol import format_status, read_status, run_protocol

    if args.status is not None:
        status = read_status(args.status)
        print(format_status(status))
        return {"status": status}
    missing = [f"--{name}" for name in ("study", "data", "out") if getattr(args, name) is None]
    if missing:
        raise SegCoreError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (or --status RUN)",
                           fix="e.g. segcore run --study atrium --data LA-phantom --out runs/la --tiny")
    result = run_protocol(args.study, args.data, args.out, tiny=args.tiny, fold=args.fold,
                          overrides=args.overrides, device=args.device, progress=progress)
    print(format_status(result["status"]))
    print(f"report: {', '.join(result['report'])}")
    return result
