"""Each study's demo (`segcore demo --study S`) as a user runs it: its wall time and held-out Dice.

    .venv/bin/python benchmarks/studies.py                  # all five studies, a markdown table on stdout
    .venv/bin/python benchmarks/studies.py --study atrium   # one

Every demo runs in a fresh process (`segcore --progress json demo --study S --out TMP`): a phantom dataset in
the study's real layout, the study's protocol with --tiny widths and its demo settings, one held-out case
segmented and scored. The Dice is the held-out case's, from the demo's result event; the time is the whole
process (set-up, phantoms, every stage, testing, pictures). The table goes into benchmarks/RESULTS.md
("## Studies: demo time and held-out Dice") with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from SegCore.studies import STUDIES  # noqa: E402


def run_demo(study: str, out: Path) -> dict:
    """One demo in its own process; returns {"study", "seconds", "dice", "held_out", "chance"}."""
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "SegCore", "--progress", "json", "demo", "--study", study,
                              "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    events = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    last = events[-1] if events else {"event": "error", "message": process.stderr[-400:]}
    if last["event"] != "result":
        return {"study": study, "seconds": seconds, "dice": None, "error": last.get("message")}
    return {"study": study, "seconds": seconds, "dice": last["dice"], "held_out": last["held_out"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=list(STUDIES), action="append", help="default: all five")
    args = parser.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for study in args.study or list(STUDIES):
            rows.append(run_demo(study, Path(tmp) / study))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}, torch {torch.__version__}, CPU only.")
    print(f"Command: `{Path(sys.executable).name} benchmarks/studies.py`\n")
    print("| study | demo time (s) | held-out case | held-out Dice |\n|---|---|---|---|")
    for row in rows:
        dice = "failed: " + str(row.get("error")) if row["dice"] is None else f"{row['dice']:.3f}"
        print(f"| {row['study']} | {row['seconds']:.0f} | {row.get('held_out', '')} | {dice} |")


if __name__ == "__main__":
    main()
