"""`segcore train` as a plain script, for 3D Slicer and for Python without an installed SegCore.

    Slicer --no-main-window --python-script SegCore/train.py --data DIR --out RUN --config my.json
    python SegCore/train.py --data DIR --out RUN --config my.json        # from any working directory
    torchrun --nproc_per_node 2 SegCore/train.py --data DIR --out RUN --config my.json

It finds SegCore from its own location (the folder above this file goes first on sys.path), imports nothing
from Slicer (training runs in PythonSlicer's interpreter only), and runs the same command line as
`segcore train` (its options: `python SegCore/train.py --help`).
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # Python puts this file's own folder (SegCore/) first on sys.path; SegCore/io would then shadow the standard
    # library's io for later imports, so that entry goes.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]

    from SegCore.cli import main

    # The CLI's own options (--progress, --debug) go before the command name; here they may come anywhere.
    arguments, cli_options = sys.argv[1:], []
    for option in ("--debug", "--progress"):
        while option in arguments:
            at = arguments.index(option)
            width = 2 if option == "--progress" else 1
            cli_options += arguments[at:at + width]
            del arguments[at:at + width]
    cli_options += [a for a in arguments if a.startswith("--progress=")]
    arguments = [a for a in arguments if not a.startswith("--progress=")]
    sys.exit(main([*cli_options, "train", *arguments]))
