"""ASCII armor: strict PEM (RFC 7468 §3) around an encrypted file, as age's ``-a``.

Why strict: armor is outside the header MAC, so a lenient decoder makes armored files malleable.
Like age, we accept only: optional whitespace before the BEGIN line and after the END line, LF or
CRLF line endings, canonical padded base64 in lines of exactly 64 columns except the last data
line (shorter, non-empty), no PEM headers, no empty lines, and matching labels. Decoding and
encoding are streaming (one line at a time).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import IO, Iterable

from ..errors import FormatError

AGE_LABEL = "AGE ENCRYPTED FILE"
COLUMNS = 64
BYTES_PER_LINE = COLUMNS // 4 * 3
_WHITESPACE = b" \t\r\n"
_MAX_WHITESPACE = 1 << 16


class ArmorError(FormatError):
    """The ASCII armor is malformed."""


def _begin(label: str) -> bytes:
    return f"-----BEGIN {label}-----".encode("ascii")


def _end(label: str) -> bytes:
    return f"-----END {label}-----".encode("ascii")


def looks_armored(prefix: bytes) -> bool:
    """True if ``prefix`` (the first bytes of a file) looks like ASCII armor.

    Deliberately broad (any PEM BEGIN marker near the start, or only whitespace): the strict
    ArmorReader then rejects leading garbage with an armor error instead of the confusing
    "unknown version line" a binary parse would give."""
    stripped = prefix.lstrip(_WHITESPACE)
    if stripped.startswith(b"-----") or (not stripped and bool(prefix)):
        return True
    return b"\n-----BEGIN " in prefix and not prefix.startswith((b"age-encryption.org/", b"dicomsafe."))


class ArmorReader(io.RawIOBase):
    """Decode an armored stream lazily; raises ArmorError on any deviation."""

    def __init__(self, src: IO[bytes], labels: Iterable[str] = (AGE_LABEL,)):
        super().__init__()
        self._src = src
        self._labels = tuple(labels)
        self._label: str | None = None
        self._pending = b""
        self._finished = False

    def readable(self) -> bool:
        return True

    def _line(self) -> tuple[bytes, bool]:
        """Next line without its EOL; the flag says whether an EOL was present."""
        line = self._src.readline(COLUMNS + 3)
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            return line, True
        if len(line) > COLUMNS + 1:
            raise ArmorError("armor line too long")
        return line, False

    def _start(self) -> None:
        skipped = 0
        while True:
            c = self._src.read(1)
            if not c:
                raise ArmorError("armored file is empty")
            if c not in _WHITESPACE:
                break
            skipped += 1
            if skipped > _MAX_WHITESPACE:
                raise ArmorError("too much whitespace before the armor")
        rest, eol = self._line()
        first = c + rest
        for label in self._labels:
            if first == _begin(label):
                self._label = label
                break
        else:
            raise ArmorError("invalid armor header line")
        if not eol:
            raise ArmorError("armored file is truncated")

    def _finish(self, end_line: bytes) -> None:
        if end_line != _end(self._label or ""):
            raise ArmorError("invalid armor footer line")
        self._finished = True
        trailing = self._src.read(_MAX_WHITESPACE + 1)
        if trailing.strip(_WHITESPACE) or len(trailing) > _MAX_WHITESPACE:
            raise ArmorError("trailing data after the armored file")

    def _next_block(self) -> bytes:
        if self._label is None:
            self._start()
        line, eol = self._line()
        if line == _end(self._label or ""):
            self._finish(line)
            return b""
        if not eol:
            raise ArmorError("armored file is truncated (no end line)")
        if not line or len(line) > COLUMNS:
            raise ArmorError("malformed armor line")
        data = _strict_b64(line)
        if len(line) < COLUMNS:
            end_line, _ = self._line()
            self._finish(end_line)
        return data

    def readinto(self, buf) -> int:  # type: ignore[override]
        while not self._pending and not self._finished:
            self._pending = self._next_block()
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _strict_b64(line: bytes) -> bytes:
    if len(line) % 4:
        raise ArmorError("malformed base64 in armor")
    try:
        data = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise ArmorError("malformed base64 in armor") from None
    if base64.b64encode(data) != line:
        raise ArmorError("non-canonical base64 in armor")
    return data


class ArmorWriter(io.RawIOBase):
    """Encode into ``dst`` as armor; ``close()`` (or the ``with`` block's end) writes the footer
    but does not close ``dst``."""

    def __init__(self, dst: IO[bytes], label: str = AGE_LABEL):
        super().__init__()
        self._dst = dst
        self._label = label
        self._buf = bytearray()
        self._dst.write(_begin(label) + b"\n")

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self._buf += data
        full = len(self._buf) - len(self._buf) % BYTES_PER_LINE
        if full:
            chunk = bytes(self._buf[:full])
            del self._buf[:full]
            enc = base64.b64encode(chunk)
            self._dst.write(
                b"".join(enc[i : i + COLUMNS] + b"\n" for i in range(0, len(enc), COLUMNS))
            )
        return len(data)

    def close(self) -> None:
        if not self.closed:
            if self._buf:
                self._dst.write(base64.b64encode(bytes(self._buf)) + b"\n")
                self._buf.clear()
            self._dst.write(_end(self._label) + b"\n")
        super().close()
