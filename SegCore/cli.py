"""`segcore`: the command line. One subcommand per job; each lives in `SegCore/commands/<name>.py`.

A command module has `HELP` (one line), `DESCRIPTION` (what it does, with examples), `add_arguments(parser)`
and `run(args, progress)`, which prints text for people and may return a JSON-able dict for programs. Command
modules import heavy stages (torch, SimpleITK) inside `run`, so `segcore --help` is instant.

With `--progress json` stdout carries only JSON lines (progress events, then `{"event": "result", ...}` or
`{"event": "error", ...}`), for the Slicer process runner; the text for people goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys

from SegCore.errors import SegCoreError
from SegCore.progress import make_progress

COMMANDS = ("demo", "phantoms", "inspect", "convert", "evaluate", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segcore",
        description="SegStudies core: segmentation studies from the command line. "
                    "Run 'segcore COMMAND --help' for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--progress", choices=("bar", "json", "none"), default=None,
                        help="how to report progress: a bar on stderr (default on a terminal), JSON lines on "
                             "stdout (for the Slicer runner), or none")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"SegCore.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 a SegCoreError, 2 bad usage, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    kind = args.progress or ("bar" if sys.stderr.isatty() else "none")
    progress = make_progress(kind)  # a JSON renderer binds the real stdout here, before the redirect below
    try:
        with contextlib.redirect_stdout(sys.stderr) if kind == "json" else contextlib.nullcontext():
            result = args.run(args, progress)
    except SegCoreError as error:
        if kind == "json":
            print(json.dumps({"event": "error", "message": str(error)}), flush=True)
        print(f"segcore {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"segcore {args.command}: interrupted", file=sys.stderr)
        return 130
    if kind == "json":
        print(json.dumps({"event": "result", "command": args.command, **(result or {})}), flush=True)
    return 0


def main_exit() -> None:
    """Console-script entry point: `segcore`."""
    sys.exit(main())
