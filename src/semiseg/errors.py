"""The one exception type for users' mistakes.

Anything raised as :class:`SemisegInputError` is the user's input (a file, a folder, a value) and
is shown by the CLI as one line with exit code 2. Every other exception is a bug in semiseg.
"""

from __future__ import annotations

from os import PathLike


class SemisegInputError(Exception):
    """Bad input found at ``path``: ``problem`` says what is wrong, in one sentence."""

    def __init__(self, path: str | PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):  # rebuilt from both fields when it crosses from a worker process
        return type(self), (self.path, self.problem)
