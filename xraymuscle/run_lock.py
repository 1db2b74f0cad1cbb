"""One run at a time per output folder.

Every command that writes an output folder (``phantom``, ``generate-drr``, ``train``,
``train-cyclegan``, ``adapt``, ``clinical-style``, ``evaluate``, ``predict`` and ``screen``) holds an
exclusive lock on ``<out>/.xraymuscle.lock`` while it writes. A second run into the same folder is
refused at once (exit code 2) instead of redoing the first one's work beside it, appending to the
same journal and overwriting the same checkpoints. The operating system drops the lock when its
process ends, killed or not, so a killed run leaves no stale lock behind: the file stays, empty, and
the next run takes it. A run that fails leaves no lock file it made, and removes the folder it
created if it wrote nothing else there. The lock is ``flock``; where a file system has none (some
network mounts), runs go unlocked with a warning rather than fall back to a marker file, which a
killed run would leave behind to refuse every later one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from xraymuscle.errors import InputError

try:
    import fcntl
except ImportError:  # not a POSIX system: runs go unlocked
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "is_empty", "locks_output", "run_lock"]

LOCK_FILE = ".xraymuscle.lock"
BUSY = "another run is writing to this folder; wait for it to end, or give another --out"

P = ParamSpec("P")
R = TypeVar("R")


def is_empty(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but a run's lock file (an absent folder is empty)."""
    folder = Path(folder)
    return not folder.is_dir() or all(p.name == LOCK_FILE for p in folder.iterdir())


def _take(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock, or ``None`` where files cannot be
    locked (no ``fcntl``, or a file system without ``flock``, as some network mounts)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(f"cannot write to this folder ({exc.strerror})", path.parent) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise InputError(BUSY, path.parent) from None
    except OSError as exc:
        os.close(fd)
        warnings.warn(
            f"{path.parent}: files cannot be locked here ({exc.strerror}); make sure no other run "
            "writes into this folder",
            stacklevel=3,
        )
        return None
    return fd


@contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its run lock until the block ends.

    Raises:
        InputError: when ``folder`` is a file or cannot be written, or another run holds the lock.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError("output exists and is not a folder", folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / LOCK_FILE
    lock_existed = lock_file.exists()
    try:
        fd = _take(lock_file)
    except InputError:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield folder
    except BaseException:
        if not lock_existed:
            # removed while still locked, so no other run can hold a lock on a removed file
            lock_file.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when nothing else was written there
        raise
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


def locks_output(
    parameter: str = "out", *, rank_zero_only: bool = False
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that it runs holding the run lock of its ``parameter`` folder.

    ``rank_zero_only``: in a distributed run (``RANK`` set) only rank 0 writes, and only it locks.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if rank_zero_only and os.environ.get("RANK", "0") != "0":
                return func(*args, **kwargs)
            folder = signature.bind(*args, **kwargs).arguments[parameter]
            with run_lock(folder):
                return func(*args, **kwargs)

        return run

    return decorate
