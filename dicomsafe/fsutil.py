"""File-system helpers shared by every writer: atomic writes and secret files.

Why here: "writes are atomic (temp file + rename)" and "secrets are 0600" are project-wide
guarantees; one implementation keeps every command honest about them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import OutputError, SecretFileError

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Yield a binary file that becomes ``path`` only if the block completes.

    The data goes to a temporary file in the same directory (so the rename is atomic), is
    fsynced, and then replaces ``path``. On any exception the temporary file is removed and
    ``path`` is left as it was: a reader never sees a half-written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot create a file in the output directory ({exc.strerror})") from None
    tmp_path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


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
