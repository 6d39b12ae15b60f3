"""One run per destination: an ``flock`` on ``DST/.dicomsafe/lock``.

Why ``flock`` and not a PID file: the kernel releases the lock when the holding process dies,
even on ``kill -9`` or a power cut, so there is never a stale lock to clean up by hand, and no
PID-reuse race. The file itself may stay; only the lock on it counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from .errors import LockedError, OutputError

STATE_DIR = ".dicomsafe"
LOCK_NAME = "lock"
LOCKED_MESSAGE = "another dicomsafe run is using this destination"


def state_dir(dst: str | os.PathLike[str]) -> Path:
    """``DST/.dicomsafe``: ledger, lock, default report and audit log live here."""
    return Path(dst) / STATE_DIR


class DestinationLock:
    """Exclusive, non-blocking lock on a destination directory (a context manager)."""

    def __init__(self, dst: str | os.PathLike[str]):
        self.path = state_dir(dst) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "DestinationLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_CLOEXEC (Python's default) keeps worker processes from inheriting the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise OutputError(f"cannot create the destination lock ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(LOCKED_MESSAGE) from None
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"cannot lock the destination ({exc.strerror})") from None
        # Informational only (who holds it); correctness rests on flock alone.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "DestinationLock":
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
