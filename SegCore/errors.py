"""The one exception type of SegCore: errors written for people.

Every problem with user input (a file, a folder, an argument) raises `SegCoreError` naming *where* it is,
*what* is wrong and *what to do*. The CLI prints `str(error)` on one line and exits non-zero.
"""

from __future__ import annotations

import os


class SegCoreError(Exception):
    """Bad input or a failed step, explained.

    Args:
        problem: what is wrong, as a sentence ("spacing is 0 mm along z").
        path: the file or folder concerned, if any.
        fix: what the user can do about it ("re-export the image with a valid header").
    """

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None, fix: str | None = None):
        self.problem = problem.rstrip(".")
        self.path = os.fspath(path) if path is not None else None
        self.fix = fix.rstrip(".") if fix else None
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.problem}." if self.path else f"{self.problem}."
        if self.fix:
            text += f" Fix: {self.fix}."
        return " ".join(text.split())
