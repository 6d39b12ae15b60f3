"""File-system helpers shared by every writer: atomic writes and secret files.

Why here: "writes are atomic (temp file + rename)" and "secrets are 0600" are project-wide
guarantees; one implementation keeps every command honest about them.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import OutputError, SecretFileError

TMP_SUFFIX = ".tmp"

#: Bytes written between two write-back kicks (see :class:`_WritebackFile`).
WRITEBACK_WINDOW = 8 << 20

_fadvise = getattr(os, "posix_fadvise", None)


class _WritebackFile(io.FileIO):
    """A raw file that asks the kernel to start writing each 8 MiB to disk as soon as it is written.

    Why: every output is fsynced before its rename (a crash must never leave a half-written file
    under the final name). Left alone, the kernel starts write-back late and the final fsync then
    waits for the whole file — for a 1 GiB file that wait was 40% of the time. Starting write-back
    window by window (posix_fadvise DONTNEED, which queues the dirty range for write-out without
    waiting and later lets the clean pages go) overlaps the disk with our own work, so the fsync
    finds little left to do, and a large write does not fill the page cache with dirty pages.
    Small files (under one window) never make the call. A no-op where posix_fadvise is missing.
    """

    _kicked = 0

    def write(self, b: Any) -> int:  # type: ignore[override]
        n = super().write(b)
        if n and self.tell() - self._kicked >= WRITEBACK_WINDOW:
            self.kick_rest()
        return n or 0

    def kick_rest(self) -> None:
        """Queue everything written since the last kick for write-out, without waiting."""
        if _fadvise is None:
            return
        end = self.tell()
        with contextlib.suppress(OSError):
            _fadvise(self.fileno(), self._kicked, end - self._kicked, os.POSIX_FADV_DONTNEED)
        self._kicked = end


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a binary file that becomes ``path`` only if the block completes.

    The data goes to a temporary file in the same directory (so the rename is atomic), is
    fsynced, and then replaces ``path``. On any exception the temporary file is removed and
    ``path`` is left as it was: a reader never sees a half-written file. An existing device or
    named pipe (``/dev/null``, a FIFO) is written to directly instead: renaming over it would
    replace the device node itself (as root, ``-o /dev/full`` used to do exactly that).
    """
    target = Path(path)
    existing = _stat_or_none(target)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise OutputError("the output path is a directory")
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        # A device or a named pipe (-o /dev/null, a FIFO): there is nothing to replace, and a
        # rename would put a regular file in place of the device node. Write to it directly.
        with open(target, "wb") as fh:
            yield fh
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot create a file in the output directory ({exc.strerror})") from None
    tmp_path = Path(tmp)
    try:
        with io.BufferedWriter(_WritebackFile(fd, "wb")) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


class BackgroundWriter:
    """Hand writes to a thread, so copying them into the kernel overlaps the caller's work.

    Why: the AEADs of `cryptography` hold the GIL while they seal a chunk, but a file write
    releases it; with one thread writing while the other encrypts, a 1 GiB encryption takes the
    longer of the two instead of their sum (docs/benchmarks.md). The first ``start_after`` bytes
    are written directly (small payloads never pay for a thread); after that writes are handed
    over in batches of ``batch`` (one queue hand-off per batch, not per chunk), each written with
    one call, and at most ``depth`` batches are in flight (bounded memory: depth × batch × chunk
    size, 4 MiB for 64 KiB chunks, plus the one batch being joined). One call per batch matters:
    every write releases the GIL and takes it back from the encrypting thread, and 16 of them per
    MiB made 1 GiB take 0.85-0.99 s instead of 0.47-0.63 s (measured). Only immutable ``bytes``
    may be passed: the caller must not change a buffer the thread has not written yet.

    Errors raised by the target's ``write`` come back to the caller on its next ``write`` or at
    :meth:`close`; :meth:`abort` stops the thread and drops what was not yet written.
    """

    def __init__(self, target: IO[bytes], *, depth: int = 4, batch: int = 16, start_after: int = 1 << 20):
        self._target = target
        self._depth = depth
        self._batch = batch
        self._pending: list[bytes] = []
        self._direct_left = start_after
        self._queue: queue.Queue[list[bytes] | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._aborted = False

    def write(self, data: bytes) -> int:
        if self._thread is None:
            if self._direct_left > 0:
                self._direct_left -= len(data)
                return self._target.write(data) or len(data)
            self._start()
        if self._error is not None:
            self._raise()
        self._pending.append(data)
        if len(self._pending) >= self._batch:
            assert self._queue is not None
            self._queue.put(self._pending)
            self._pending = []
        return len(data)

    def close(self) -> None:
        """Wait until everything queued is written; re-raise the first write error."""
        if self._pending and self._queue is not None:
            self._queue.put(self._pending)
            self._pending = []
        self._stop()
        if self._error is not None:
            self._raise()

    def abort(self) -> None:
        """Stop without writing what is still queued (the caller is failing anyway)."""
        self._aborted = True
        self._stop()

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self._depth)
        self._thread = threading.Thread(target=self._run, name="dicomsafe-writer", daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            items = self._queue.get()
            if items is None:
                return
            if self._error is not None or self._aborted:
                continue  # drain, so the producer never blocks on a full queue
            try:
                self._target.write(items[0] if len(items) == 1 else b"".join(items))
            except BaseException as exc:  # noqa: BLE001 - handed back to the producer
                self._error = exc

    def _raise(self) -> None:
        error, self._error = self._error, None
        self._aborted = True
        assert error is not None
        raise error


@contextlib.contextmanager
def background_writes(target: IO[bytes], **options: int) -> Iterator[BackgroundWriter]:
    """Context manager around :class:`BackgroundWriter`: close on success, abort on failure."""
    writer = BackgroundWriter(target, **options)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.close()


@contextlib.contextmanager
def staging_writer(path: str | os.PathLike[str], mode: int = 0o600) -> Iterator[IO[bytes]]:
    """Yield a file at ``path`` in a private staging directory, without fsync or rename.

    Why a second writer: a de-identified output is written to staging, verified there, and only
    then renamed into the output tree by the single writer; staging is wiped at the start of
    every run, so a half-written staging file can never become an output and needs no temporary
    name of its own. Durability is batched instead: :func:`sync_files` fsyncs a whole work unit
    before its files are committed (the first fsync commits the file system journal for all of
    them, the rest find nothing left to do), where one fsync per file cost ~0.6 ms each.
    On any exception the partial file is removed. Write-back is started as the file closes.
    """
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, flags, mode)
    except OSError as exc:
        raise OutputError(f"cannot create a file in the staging directory ({exc.strerror})") from None
    try:
        raw = _WritebackFile(fd, "wb")
        with io.BufferedWriter(raw, 1 << 16) as fh:
            yield fh
            fh.flush()
            raw.kick_rest()  # the tail since the last 8 MiB window
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise


def sync_files(paths: Iterable[str | os.PathLike[str]]) -> None:
    """fsync each file (see :func:`staging_writer`): their data is on disk when this returns."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    try:
        with atomic_writer(path, mode) as fh:
            fh.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write output file ({exc.strerror})") from None


def write_secret_file(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> None:
    """Create a secret file with mode 0600; refuse to overwrite an existing one."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise SecretFileError(f"refusing to overwrite existing file {target.name!s}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        if overwrite and target.exists():
            target.unlink()
        fd = os.open(target, flags, 0o600)
    except OSError as exc:
        raise SecretFileError(f"cannot create secret file ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(target, 0o600)


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Read a key or secret file, refusing one that group or others can read.

    A secret readable by other accounts is already leaked; failing loudly is the only safe answer.
    """
    target = Path(path)
    try:
        st = target.stat()
    except FileNotFoundError:
        raise SecretFileError("secret file not found") from None
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError("secret file is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(
            f"secret file is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "run: chmod 600 on it"
        )
    try:
        return target.read_bytes()
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file ({exc.strerror})") from None
