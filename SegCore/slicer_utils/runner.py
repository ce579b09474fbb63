"""Run `segcore` in a subprocess and read its JSON progress without blocking: the Slicer modules' process runner.

    runner = ProcessRunner()
    runner.start(["predict", "--model", "best.pt", "--input", "t1.nrrd", "--output", "pred.nrrd"],
                 on_event=lambda event: print(event["event"], event.get("step")),
                 on_finished=lambda returncode, last_event: print(returncode, last_event))
    timer = qt.QTimer(); timer.timeout.connect(runner.poll); timer.start(100)   # in Slicer: the GUI stays live
    runner.wait(timeout=600)                                                     # in tests and scripts: blocking
    runner.cancel()                                                              # the whole process tree

The command is `[python_executable(), "-m", "SegCore", "--progress", "json", *argv]`: stdout carries only JSON
lines (progress events, then one result or error event; SegCore/cli.py), stderr the text for people. Two reader
threads move the lines into queues, so nothing here waits on a pipe; `poll()`, called from the caller's thread (a
QTimer in Slicer), hands each event to `on_event` and, once the process has exited and its pipes are drained,
calls `on_finished(returncode, last_event)`, where last_event is the final result or error event (None if the
process printed none, e.g. when it was killed). The callbacks therefore run in the thread that polls, never in a
reader thread, which is what Qt needs. No Qt here: the runner runs in Slicer, in PythonSlicer and in plain Python.

The child runs in its own process group (POSIX: a new session; Windows: a new process group), so `cancel()`
reaches every process it started (data-loader workers, torchrun ranks): SIGTERM first, which SegCore turns into
a clean stop (temporary files removed, a training run's last.pt kept), then SIGKILL for the group after
`grace_s`. The log (stderr, plus any stdout line that is not an event) keeps only the last `log_limit_bytes`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_LOG_LIMIT_BYTES = 256 * 1024
DEFAULT_GRACE_S = 5.0
# After the process exits, how long its pipes may stay open (held by a child it left running) before it is
# reported finished anyway.
DRAIN_S = 2.0
_POSIX = os.name == "posix"


def python_executable() -> str:
    """The Python that runs SegCore: PythonSlicer inside 3D Slicer (beside the application's own executable,
    whose sys.executable is the Slicer launcher), sys.executable everywhere else."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app"):  # the application, not the slicer-core wheel
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        candidates = [Path(sys.executable).with_name(name)]
        with contextlib.suppress(AttributeError, TypeError):
            candidates.append(Path(slicer.app.slicerHome) / "bin" / name)
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def segcore_command(argv: Sequence[str], python: str | None = None) -> list[str]:
    """`[python, "-m", "SegCore", "--progress", "json", *argv]` (argv: a command and its options)."""
    return [python or python_executable(), "-m", "SegCore", "--progress", "json", *map(str, argv)]


def child_environment(extra: dict | None = None) -> dict:
    """The environment of a SegCore subprocess: this one, with the folder holding the SegCore package first on
    PYTHONPATH (inside Slicer, SegCore lies in the extension's module folder, which PythonSlicer does not search)
    and unbuffered output."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_parent]
    env["PYTHONPATH"] = os.pathsep.join([package_parent, *paths])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class CappedLog:
    """Text kept up to `limit_bytes` (UTF-8): the oldest lines go first; `text()` says how much was dropped."""

    def __init__(self, limit_bytes: int = DEFAULT_LOG_LIMIT_BYTES):
        self.limit_bytes = int(limit_bytes)
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0
        self.dropped_bytes = 0
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        line = line.rstrip("\r\n") + "\n"
        if len(line.encode("utf-8", "replace")) > self.limit_bytes:  # one huge line: keep its end
            line = line[-self.limit_bytes // 4:]
        size = len(line.encode("utf-8", "replace"))
        with self._lock:
            self._lines.append(line)
            self._size += size
            while self._size > self.limit_bytes and self._lines:
                gone = len(self._lines.popleft().encode("utf-8", "replace"))
                self._size -= gone
                self.dropped_bytes += gone

    def text(self) -> str:
        with self._lock:
            head = f"[... {self.dropped_bytes} bytes of earlier log dropped]\n" if self.dropped_bytes else ""
            return head + "".join(self._lines)


class ProcessRunner:
    """One subprocess at a time; see the module docstring. Not thread-safe: start, poll, wait and cancel from one
    thread (Slicer's main thread)."""

    def __init__(self, *, log_limit_bytes: int = DEFAULT_LOG_LIMIT_BYTES, env: dict | None = None,
                 cwd: str | os.PathLike | None = None):
        self.log = CappedLog(log_limit_bytes)
        self.env, self.cwd = env, cwd
        self.process: subprocess.Popen | None = None
        self.command: list[str] = []
        self.returncode: int | None = None
        self.last_event: dict | None = None
        self.cancelled = False
        self._events: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._on_event: Callable[[dict], None] | None = None
        self._on_finished: Callable[[int, dict | None], None] | None = None
        self._kill_at: float | None = None
        self._exited_at: float | None = None

    # -- starting ----------------------------------------------------------------------------------------------
    def start(self, argv: Sequence[str], on_event: Callable[[dict], None] | None = None,
              on_finished: Callable[[int, dict | None], None] | None = None) -> ProcessRunner:
        """Start `segcore --progress json ARGV...` (segcore_command) and return self."""
        return self.start_command(segcore_command(argv), on_event, on_finished)

    def start_command(self, command: Sequence[str], on_event: Callable[[dict], None] | None = None,
                      on_finished: Callable[[int, dict | None], None] | None = None) -> ProcessRunner:
        """Start any command that prints JSON events on stdout (what `start` builds; tests pass their own)."""
        if self.running:
            raise RuntimeError("a process is already running; cancel it or wait for it first")
        self.command = [str(part) for part in command]
        self.returncode, self.last_event, self.cancelled = None, None, False
        self._kill_at = self._exited_at = None
        self._events, self._on_event, self._on_finished = queue.Queue(), on_event, on_finished
        group = {"start_new_session": True} if _POSIX else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        self.log.add("$ " + " ".join(self.command))
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                        bufsize=1, env=self.env or child_environment(), cwd=self.cwd, **group)
        self._readers = [threading.Thread(target=self._read, args=(stream, kind), daemon=True)
                         for stream, kind in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr"))]
        for reader in self._readers:
            reader.start()
        return self

    def _read(self, stream, kind: str) -> None:
        """Reader thread: stdout lines that are JSON objects with an "event" go to the queue; the rest to the log."""
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us
            for line in stream:
                event = _parse_event(line) if kind == "stdout" else None
                if event is None:
                    if line.strip():
                        self.log.add(line)
                else:
                    self._events.put(event)
        stream.close()

    # -- progress ----------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True from start until on_finished has been called."""
        return self.process is not None and self.returncode is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def poll(self) -> bool:
        """Deliver the events read so far; at exit, finish. Returns whether the process is still running.
        Never blocks (but for the callbacks' own time)."""
        if self.process is None or self.returncode is not None:
            return False
        self._deliver()
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill_group()
            self._kill_at = None
        if self.process.poll() is None:
            return True
        self._exited_at = self._exited_at or time.monotonic()
        if any(reader.is_alive() for reader in self._readers) and time.monotonic() - self._exited_at < DRAIN_S:
            return True
        self._deliver()  # what the readers queued before they ended
        self._finish()
        return False

    def _deliver(self) -> None:
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if event.get("event") in ("result", "error"):
                self.last_event = event
                if event.get("event") == "error":
                    self.log.add(f"error: {event.get('message', '')}")
            if self._on_event is not None:
                self._on_event(event)

    def _finish(self) -> None:
        self.returncode = self.process.returncode
        if self.cancelled:  # whatever the group leader left behind (its children) goes with it
            self._kill_group()
        self.log.add(f"[exit code {self.returncode}]")
        if self._on_finished is not None:
            self._on_finished(self.returncode, self.last_event)

    def wait(self, timeout: float | None = None, interval_s: float = 0.05) -> int:
        """Poll until the process ends (callbacks included); returns its exit code. On timeout the process is
        cancelled and TimeoutError raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(grace_s=1.0)
                while self.poll():
                    time.sleep(interval_s)
                raise TimeoutError(f"{' '.join(self.command[:6])} ... did not end within {timeout} s; cancelled")
            time.sleep(interval_s)
        return int(self.returncode)

    # -- stopping ----------------------------------------------------------------------------------------------
    def terminate(self) -> None:
        """Ask the whole process group to stop (SIGTERM; CTRL_BREAK on Windows), with no deadline: a training run
        ends at its next step boundary and keeps last.pt."""
        if not self.running:
            return
        self.cancelled = True
        self.log.add("[stop requested]")
        self._signal_group(signal.SIGTERM if _POSIX else signal.CTRL_BREAK_EVENT)

    def cancel(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Stop the whole process tree: `terminate()`, then SIGKILL for the group if it still runs `grace_s`
        later (checked by poll/wait, so this returns at once)."""
        if not self.running:
            return
        self.terminate()
        self._kill_at = time.monotonic() + max(0.0, grace_s)

    def _signal_group(self, signum) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if _POSIX:
                os.killpg(self.process.pid, signum)  # the group id is the leader's pid (start_new_session)
            else:
                self.process.send_signal(signum)

    def _kill_group(self) -> None:
        if _POSIX:
            self._signal_group(signal.SIGKILL)
        elif self.process is not None:  # taskkill /T takes the children the leader started
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True, check=False)

    # -- results -----------------------------------------------------------------------------------------------
    def log_text(self) -> str:
        """The capped log: the command, stderr and non-event stdout lines, error messages, the exit code."""
        return self.log.text()

    def error_message(self) -> str | None:
        """"cancelled" after cancel/terminate; else the error event's message; else, for a failed run, the exit
        code and the log's last line; None when the run succeeded (or has not ended)."""
        if self.cancelled and self.returncode not in (None, 0):
            return "cancelled"
        if self.last_event is not None and self.last_event.get("event") == "error":
            return str(self.last_event.get("message") or "the command failed")
        if self.returncode in (None, 0):
            return None
        lines = [line for line in self.log.text().splitlines() if line.strip() and not line.startswith("[exit")]
        return f"the command ended with exit code {self.returncode}" + (f": {lines[-1]}" if lines else "")


def _parse_event(line: str) -> dict | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
