"""`segcore`: the command line. One subcommand per job; each lives in `SegCore/commands/<name>.py`.

A command module has `HELP` (one line), `DESCRIPTION` (what it does, with examples), `add_arguments(parser)`
and `run(args, progress)`, which prints text for people and may return a JSON-able dict for programs. It may
name its input arguments in `INPUTS` (argparse destinations): no output of the command may then be, hold or
contain one of them (`SegCore.atomic.guard_outputs`). Command modules import heavy stages (torch, SimpleITK)
inside `run`, so `segcore --help` is instant.

Every failure ends as one line on stderr and exit code 1 (2 for usage errors, 130/143 when interrupted by
SIGINT/SIGTERM); the traceback of an unexpected one goes to a log file named in that line, or to stderr with
`--debug`. With `--progress json` stdout carries only JSON lines (progress events, then one
`{"event": "result", ...}` or `{"event": "error", ...}`), for the Slicer process runner; the text for people goes
to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import signal
import sys
import threading
import traceback

from SegCore.progress import make_progress

COMMANDS = ("demo", "phantoms", "inspect", "convert", "evaluate", "models", "train", "run", "predict", "export")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every writer's clean-up runs."""


def _json_requested(argv: list[str]) -> bool:
    pairs = zip(argv, argv[1:], strict=False)
    return "--progress=json" in argv or any(a == "--progress" and b == "json" for a, b in pairs)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line that lists the valid choices, exit code 2 (and an error event in JSON mode)."""

    json_mode = False

    def error(self, message: str):
        if "the following arguments are required: COMMAND" in message:
            message = f"a command is required, one of: {', '.join(COMMANDS)}"
        message = message.replace("invalid choice: ", "invalid choice ").replace("(choose from ", "(valid: ")
        line = f"{self.prog}: error: {message}. See '{self.prog} --help'."
        if _Parser.json_mode:
            print(json.dumps({"event": "error", "message": line, "kind": "usage"}), flush=True)
        print(line, file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="segcore",
        description="SegStudies core: segmentation studies from the command line. "
                    "Run 'segcore COMMAND --help' for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--progress", choices=("bar", "json", "none"), default=None,
                        help="how to report progress: a bar on stderr (default on a terminal), JSON lines on "
                             "stdout (for the Slicer runner), or none")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an unexpected error on stderr instead of to a log file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"SegCore.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run, inputs=getattr(module, "INPUTS", ()))
    return parser


def _input_paths(args) -> list[str]:
    paths = []
    for dest in args.inputs:
        value = getattr(args, dest, None)
        if value is not None:
            paths.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return paths


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within the command, SIGTERM raises `Terminated` (only the main thread may set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 any failure, 2 bad usage, 130 SIGINT, 143 SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    _Parser.json_mode = _json_requested(argv)
    args = parser.parse_args(argv)
    kind = args.progress or ("bar" if sys.stderr.isatty() else "none")
    progress = make_progress(kind)  # a JSON renderer binds the real stdout here, before the redirect below
    json_mode = kind == "json"

    def emit(event: dict) -> None:
        if json_mode:
            print(json.dumps(event), flush=True)

    from SegCore.atomic import guard_outputs

    try:
        with _sigterm_as_interrupt(), guard_outputs(_input_paths(args)) as scope, \
                contextlib.redirect_stdout(sys.stderr) if json_mode else contextlib.nullcontext():
            result = args.run(args, progress) or {}
    except KeyboardInterrupt as interrupt:
        name = "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C (SIGINT)"
        message = f"interrupted by {name}; temporary files were removed and no output was half-written"
        emit({"event": "error", "message": message, "kind": "interrupted"})
        print(f"segcore {args.command}: {message}", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130
    except Exception as error:  # every failure, expected or not, ends as one line (and one JSON error event)
        from SegCore.failures import describe, write_traceback

        failure = describe(error)
        log = None
        if failure.kind != "input":
            if args.debug:
                traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            else:
                log = write_traceback(error, args.command)
        emit(failure.as_event(log))
        suffix = f" (traceback in {log})" if log else ""
        print(f"segcore {args.command}: error: {failure.message}{suffix}", file=sys.stderr)
        return 1
    created = set(scope.created_folders)  # the top-most ones: what was missing above the outputs
    created = [p for p in scope.created_folders if not created.intersection(p.parents)]
    if created:
        print("created folder(s): " + ", ".join(str(p) for p in created), file=sys.stderr)
        result = {**result, "created_folders": [str(p) for p in created]}
    emit({"event": "result", "command": args.command, **result})
    return 0


def main_exit() -> None:
    """Console-script entry point: `segcore`."""
    sys.exit(main())
