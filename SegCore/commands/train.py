"""`segcore train`: train a network from a plan (defaults, a config file, --set overrides) into a run folder."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from SegCore.studies import STUDIES

HELP = "train a segmentation network into a run folder (resumable, reproducible, distributed with torchrun)"
DESCRIPTION = """\
Train one network on a dataset folder (any layout `segcore inspect` reads) into the run folder --out:
plan.json (the resolved configuration, every default filled in: enough to reproduce the run), last.pt and
best.pt (self-describing checkpoints), status.json (state, epoch, step, loss, metrics, ETA; a GUI polls it),
history.csv (one row per epoch), curves.png and train.log.

What is trained comes from the plan: the defaults, then --config FILE (JSON or TOML with the keys of
plan.json), then --tiny, then each --set KEY=VALUE (a dotted key of plan.json; an unknown key is an error
that lists the valid ones), then the options below. --resume continues with the run's own plan.json (only
--device and --workers may differ). --plan RUN/plan.json repeats a run exactly. A folder that
holds a previous run is refused unless --resume (continue from last.pt, bit-exact on the CPU with
--deterministic) or --overwrite. Ctrl-C or SIGTERM stops at the next step, writes last.pt and prints the
command that resumes. --study S starts from the study's published settings (its preset in
SegCore/studies/S.py: preprocessing, network, loss, sampler, optimiser, schedule, inference; docs/studies.md);
a configuration file and --set change any of them. `segcore run --study S` runs the study's whole protocol.

Under `torchrun --nproc_per_node N` (and its multi-node flags) the same command trains with
DistributedDataParallel (NCCL on GPUs, gloo on the CPU); only rank 0 writes. `python SegCore/train.py ...`
is the same command as a plain script (for `Slicer --no-main-window --python-script SegCore/train.py ...`).
See docs/training.md.

examples:
  segcore phantoms --study atrium --out LA-phantom --cases 4 --size 32
  segcore train --data LA-phantom --out runs/la --config SegCore/configs/example.json --tiny
  segcore train --study atrium --data LA-phantom --out runs/la-seg --tiny      # the study's published settings
  segcore train --data LA-phantom --out runs/la --config my.toml --set optim.lr=1e-3 model.arguments.base_channels=4
  segcore train --data LA-phantom --out runs/la --resume
  segcore train --plan runs/la/plan.json --out runs/la-again
  segcore train --data LA-phantom --out runs/ft --config my.json --init runs/la/best.pt --freeze encoder
  torchrun --nproc_per_node 2 -m SegCore train --data LA-phantom --out runs/ddp --config my.json
"""

INPUTS = ("data", "config", "init", "plan")



def add_arguments(parser) -> None:
    parser.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (required unless --plan)")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder to create or resume")
    parser.add_argument("--plan", type=Path, metavar="PLAN", help="repeat a run from its plan.json")
    parser.add_argument("--study", choices=list(STUDIES),
                        help="start from the study's published settings (its preset) and dataset layout")
    parser.add_argument("--config", type=Path, metavar="FILE", help="JSON or TOML file with keys of plan.json")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override plan keys, e.g. optim.lr=1e-3 model.arguments.features=[8,16]")
    parser.add_argument("--fold", type=int, metavar="K", help="cross-validation fold to train")
    parser.add_argument("--epochs", type=int, metavar="N")
    parser.add_argument("--steps-per-epoch", type=int, metavar="N")
    parser.add_argument("--batch", type=int, metavar="N", help="batch size per process")
    parser.add_argument("--memory-budget", type=float, metavar="MB",
                        help="MiB per device for one training step: derive what the plan leaves \"auto\" (patch, "
                             "batch) to fit, and check the rest (docs/training.md, Automatic plan)")
    parser.add_argument("--seed", type=int, metavar="N")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms only (bit-exact resume on the CPU; slower on GPUs)")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--workers", type=int, metavar="N", help="data loader worker processes")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    group.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    parser.add_argument("--init", type=Path, metavar="CKPT", help="start from this checkpoint's weights")
    parser.add_argument("--freeze", nargs="+", metavar="PREFIX",
                        help="keep parameters whose names start with PREFIX fixed (e.g. encoder)")
    parser.add_argument("--tiny", action="store_true",
                        help="small widths, patches and step counts: check a set-up in a minute on a CPU")


def build_plan(args) -> dict:
    """The fully resolved plan for these arguments: SegCore.training.config.resolve_plan with --config (or
    --plan), --tiny, --set and the options (config.CLI_FLAGS says which plan key each sets)."""
    from SegCore.errors import SegCoreError
    from SegCore.training.config import CLI_FLAGS, resolve_plan

    if args.plan is not None:
        given = [f"--{name}" for name in ("data", "config", "study") if getattr(args, name) is not None]
        if given or args.tiny:
            raise SegCoreError(f"--plan is a complete configuration: it takes no {', '.join(given) or '--tiny'}",
                               path=args.plan, fix="change a key of the plan with --set KEY=VALUE")
    elif args.data is None:
        raise SegCoreError("--data DIR is required (or --plan RUN/plan.json)",
                           fix="e.g. segcore train --data LA-phantom --out runs/la --config my.json")
    flags = {name: getattr(args, name, None) for name in CLI_FLAGS}
    # Absolute paths, so that plan.json reproduces the run from any working directory.
    flags["data"] = None if args.data is None else os.path.abspath(args.data)
    flags["init"] = None if args.init is None else os.path.abspath(args.init)
    flags["deterministic"] = True if args.deterministic else None
    overrides = list(args.overrides)
    if args.study is not None:  # the study's own dataset layout reads the data (its labels and channels)
        overrides.insert(0, f"data.layout={args.study}")
    return resolve_plan(args.plan if args.plan is not None else args.config, overrides=overrides, flags=flags,
                        tiny=args.tiny)


def resume_command(argv: list[str] | None = None) -> str:
    """The command that resumes this run: the same arguments with --resume (and without --overwrite)."""
    argv = list(sys.argv if argv is None else argv)
    if Path(argv[0]).name == "train.py":  # the plain script
        head, rest = ["python", argv[0]], argv[1:]
    else:
        at = argv.index("train") if "train" in argv else len(argv)
        head, rest = ["segcore", *argv[1:at], "train"], argv[at + 1:]
    rest = [a for a in rest if a not in ("--overwrite", "--resume")] + ["--resume"]
    return shlex.join(head + rest)


def stored_plan(out: Path) -> dict:
    """The plan of the run in `out` (its plan.json), for --resume."""
    from SegCore.errors import SegCoreError
    from SegCore.training.run_folder import RunFolder

    if not (Path(out) / "plan.json").is_file():
        raise SegCoreError("cannot resume: the run folder has no plan.json", path=out,
                           fix="start the run without --resume (or with --overwrite)")
    return RunFolder(Path(out)).read_plan()


def run(args, progress) -> dict:
    from SegCore.devices import prefer_passive_openmp

    prefer_passive_openmp()  # before torch loads: the loader workers get the cores the waiting threads spun on
    from SegCore.training.distributed import rank_from_environment
    from SegCore.training.trainer import train_from_plan

    # --resume continues with the plan the run started with (its plan.json). Only where it runs may change:
    # --device and --workers (the batches do not depend on the number of workers).
    plan = stored_plan(args.out) if args.resume else build_plan(args)
    if args.resume:
        plan["device"] = args.device or plan["device"]
        plan["training"]["workers"] = plan["training"]["workers"] if args.workers is None else args.workers
    result = train_from_plan(plan, args.out, resume=args.resume, overwrite=args.overwrite, progress=progress,
                             resume_command=resume_command())
    summary = result.pop("summary")
    if rank_from_environment() == 0:  # under torchrun, rank 0 speaks for the run
        print(summary)
    return result
