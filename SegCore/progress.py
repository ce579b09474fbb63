"""Progress is an event stream: long work reports `ProgressEvent`s to a callback.

The library never prints. The CLI turns events into a progress bar on stderr (people) or JSON lines on stdout
(`--progress json`, read by the Slicer process runner).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TextIO


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long job.

    stage: what is running ("evaluate", "phantoms", ...); step: steps done so far (0..total);
    total: number of steps, None when unknown; message: a short human note (a case id);
    metrics: numbers worth showing (loss, dice), JSON-able.
    """

    stage: str
    step: int
    total: int | None = None
    message: str = ""
    metrics: dict = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: ignore events."""


class JsonLinesProgress:
    """Write each event as one JSON object per line (machine-readable)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def __call__(self, event: ProgressEvent) -> None:
        self.stream.write(json.dumps({"event": "progress", **asdict(event)}) + "\n")
        self.stream.flush()


class BarProgress:
    """Draw a one-line progress bar per stage on a terminal stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self._stage: str | None = None
        self._start = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage != self._stage:
            if self._stage is not None:
                self.stream.write("\n")
            self._stage, self._start = event.stage, time.monotonic()
        if event.total:
            done = min(event.step / event.total, 1.0)
            bar = "#" * int(done * self.width)
            head = f"{event.stage:<10} [{bar:<{self.width}}] {event.step}/{event.total}"
        else:
            head = f"{event.stage:<10} {event.step}"
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in event.metrics.items())
        elapsed = time.monotonic() - self._start
        self.stream.write(f"\r{head} {elapsed:6.1f}s {event.message} {extra}".rstrip()[:160])
        if event.total and event.step >= event.total:
            self.stream.write("\n")
            self._stage = None
        self.stream.flush()


def make_progress(kind: str) -> ProgressCallback:
    """The callback for a CLI `--progress` choice: 'bar', 'json' or 'none'."""
    return {"bar": BarProgress, "json": JsonLinesProgress}.get(kind, lambda: no_progress)()
