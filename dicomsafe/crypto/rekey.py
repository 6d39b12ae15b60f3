"""Rekey: new recipients for an encrypted file, payload bytes untouched.

Why this works: the payload is encrypted under a key derived from the file key and the payload
nonce only; recipients live in the header. Replacing the header (same file key, new stanzas, new
MAC) re-targets the file without touching a byte of the payload — a terabyte archive is rekeyed
in the time it takes to write a few hundred bytes.

Two strategies:
- *in place* when the new header has exactly the old header's length (recipients replaced one for
  one with keys of the same type — every age stanza type has a fixed size). The old header is
  first written to a side file ``.<name>.rekey-backup`` (0600, fsynced); then the new header is
  written over the old one with a single positioned write and fsynced; then the side file is
  removed. An interrupted rekey leaves either a fully valid old or new header, plus the side file
  to restore the old one from if the header write itself was torn.
- *copied* otherwise (and for armored files): a new file is written next to the old one —
  new header, then the unchanged payload bytes copied by the kernel (copy_file_range) — and
  renamed over it atomically.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, OutputError
from ..fsutil import atomic_writer, write_secret_file
from . import armor as _armor
from . import envelope, stream
from .keys import Identity, Recipient

log = logging.getLogger(__name__)

BACKUP_SUFFIX = ".rekey-backup"


def backup_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{BACKUP_SUFFIX}")


def rekey_file(
    path: str | os.PathLike[str],
    identities: Sequence[Identity],
    recipients: Sequence[Recipient],
    *,
    fips: bool = False,
) -> str:
    target = Path(path)
    if not target.is_file():
        raise ConfigError("file to rekey not found")
    if not recipients:
        raise ConfigError("no new recipients given")
    backup = backup_path(target)
    if backup.exists():
        raise OutputError(
            "an earlier rekey of this file was interrupted: check the file decrypts, then remove "
            "its .rekey-backup side file"
        )
    with open(target, "rb") as fh:
        prefix = stream.read_full(fh, 1024)
        if _armor.looks_armored(prefix):
            if fips:
                from .fips import FipsPolicyError

                raise FipsPolicyError("FIPS mode: refusing an ASCII-armored file (only the aes format is allowed)")
            return _rekey_armored(target, identities, recipients)
        fh.seek(0)
        reader = io.BufferedReader(fh, 1 << 16)  # type: ignore[arg-type]
        if fips:
            from . import aes

            opened = aes.open_header(reader, identities, fips=True)
        else:
            opened = envelope.open_header(reader, identities)
        new_header = envelope.rewrap_header(opened, recipients)
        old_len = len(opened.header.raw)
        mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        if len(new_header) == old_len:
            _rewrite_in_place(target, backup, opened.header.raw, new_header)
            log.info("rekey: header rewritten in place")
            return "in-place"
        try:
            with atomic_writer(target, mode) as out:
                out.write(new_header)
                out.flush()
                _copy_range(fh, old_len, out)
        except OSError as exc:
            raise OutputError(f"cannot write rekeyed file ({exc.strerror})") from None
    log.info("rekey: header size changed, payload copied into a new file")
    return "copied"


def _rewrite_in_place(target: Path, backup: Path, old_header: bytes, new_header: bytes) -> None:
    try:
        fd = os.open(target, os.O_WRONLY)
    except OSError as exc:  # nothing changed yet
        raise OutputError(f"cannot open the file for rewriting its header ({exc.strerror})") from None
    try:
        write_secret_file(backup, old_header)
        bfd = os.open(backup, os.O_RDONLY)
        try:
            os.fsync(bfd)
        finally:
            os.close(bfd)
        try:
            if os.pwrite(fd, new_header, 0) != len(new_header):
                raise OSError(5, "short write")
            os.fsync(fd)
        except OSError as exc:
            raise OutputError(
                f"cannot rewrite the file header ({exc.strerror}); the old header is kept in the "
                ".rekey-backup side file"
            ) from None
    finally:
        os.close(fd)
    backup.unlink()


def _copy_range(src, offset: int, out) -> None:
    """Copy ``src`` from ``offset`` to its end into ``out`` (kernel copy where available)."""
    src_fd, dst_fd = src.fileno(), out.fileno()
    size = os.fstat(src_fd).st_size
    pos = offset
    dst_pos = os.lseek(dst_fd, 0, os.SEEK_CUR)
    copy = getattr(os, "copy_file_range", None)
    if copy is not None:
        with contextlib.suppress(OSError):
            while pos < size:
                n = copy(src_fd, dst_fd, size - pos, pos, dst_pos)
                if n == 0:
                    break
                pos += n
                dst_pos += n
            os.lseek(dst_fd, dst_pos, os.SEEK_SET)
            if pos >= size:
                return
    os.lseek(dst_fd, dst_pos, os.SEEK_SET)
    src.seek(pos)
    shutil.copyfileobj(src, out, 1 << 20)


def _rekey_armored(target: Path, identities: Sequence[Identity], recipients: Sequence[Recipient]) -> str:
    """Armored files re-encode the whole body (armor lines shift with the header length)."""
    from . import _input  # the armor-stripping reader of the public API

    mode = stat.S_IMODE(target.stat().st_mode)
    with open(target, "rb") as fh:
        src = _input(fh)
        opened = envelope.open_header(src, identities)
        new_header = envelope.rewrap_header(opened, recipients)
        try:
            with atomic_writer(target, mode) as out:
                armored = _armor.ArmorWriter(out, opened.spec.armor_label or _armor.AGE_LABEL)
                armored.write(new_header)
                shutil.copyfileobj(src, armored, 1 << 16)
                armored.close()
        except OSError as exc:
            raise OutputError(f"cannot write rekeyed file ({exc.strerror})") from None
    return "copied"
