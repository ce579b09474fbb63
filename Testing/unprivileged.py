"""Run code as an unprivileged user, for tests of permission errors (root reads and writes anything).

The interpreter of the test environment may live where that user cannot go (/root), so the child is forked and
switches user without exec: everything it needs must be imported before the call.
"""

from __future__ import annotations

import os
import signal
import sys

NOBODY = 65534


def as_another_user(function) -> tuple[int, str]:
    """Run `function()` (returning an exit code) in a forked child that cannot read mode-000 files: as user
    nobody when this test runs as root (root reads anything), else as this user. Returns (code, stderr)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the interpreter's own files may be unreachable for nobody, so no exec
        code = 99
        try:
            signal.alarm(120)  # a child stuck after fork (a library's lost thread pool) dies instead of hanging
            os.close(read_end)
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(write_end, "w", buffering=1)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            code = function()
        except BaseException as error:  # noqa: BLE001 - reported to the parent through stderr
            print(f"child failed: {type(error).__name__}: {error}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        stderr = stream.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), stderr
