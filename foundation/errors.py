"""The one family of errors meant for people, not tracebacks.

Anything that a user can fix (a recipe key, a file, a run directory, a missing text-tower folder) raises a
:class:`DomainfmError` whose message is one line: what is wrong, which file or key, and the way out.
``foundation.cli`` prints that line and exits 1 (``-v`` shows the traceback); everything else is a bug and
keeps its traceback.
"""
from __future__ import annotations


class DomainfmError(Exception):
    """A problem the user can fix; ``str(err)`` is the one line the CLI prints."""


class DataError(DomainfmError, ValueError):  # ValueError: what readers raised before, so callers catching it still do
    """A file or manifest row that cannot be used: names the file, the problem and the way out."""

    def __init__(self, path: object, problem: str | None = None, fix: str | None = None) -> None:
        # one argument is a whole message: how torch's DataLoader re-raises a worker's error in the main process
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(self.path if problem is None else f"{self.path}: {problem}" + (f" ({fix})" if fix else ""))


class RunDirError(DomainfmError):
    """A run directory that cannot be used as asked (finished, another recipe, in use by another process)."""
