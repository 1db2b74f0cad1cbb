"""The one exception type that means "the user gave us something we cannot use"."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad user input: a missing, unreadable or invalid file, or an invalid option.

    The command line turns it into one line on stderr and exit code 2. The message names the
    file (when there is one) and the problem.

    Parameters
    ----------
    message
        What is wrong, in one line.
    path
        The offending file or folder, if any; it is put in front of the message.
    """

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = message
        super().__init__(message if path is None else f"{path}: {message}")
