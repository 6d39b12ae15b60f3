"""Encryption at rest: age v1 and dicomsafe.aes/v1 (docs/encryption.md, DESIGN.md §7).

The small public API the pipeline and the CLI use. Recipients and identities are objects from
:mod:`dicomsafe.crypto.age` (X25519, scrypt, ML-KEM hybrid) or :mod:`dicomsafe.crypto.fips`
(RSA-OAEP, P-256, PBKDF2; aes format only); strings are parsed with :func:`parse_recipient`.

Guarantees:
- decryption never leaves unauthenticated plaintext in a file: :func:`decrypt_file` writes to a
  temporary file and renames it only after the final chunk authenticated;
- both directions stream in constant memory;
- every failure is a :class:`dicomsafe.errors.CryptoError` subclass (exit 3) with a PHI-free
  one-line message, or a ConfigError (exit 2) for unusable keys and arguments.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

from ..errors import (
    ConfigError,
    CryptoError,
    FormatError,
    IntegrityError,
    NoIdentityMatchedError,
    OutputError,
    SecretFileError,
)
from ..fsutil import atomic_writer, read_secret_file
from . import armor as _armor
from . import envelope, stream
from .keys import Identity, Recipient

__all__ = [
    "Identity",
    "Recipient",
    "encrypt_stream",
    "decrypt_stream",
    "encrypt_file",
    "decrypt_file",
    "rekey_file",
    "parse_recipient",
    "parse_identity",
    "load_recipients_file",
    "load_identities",
    "detect_format",
    "CryptoError",
    "FormatError",
    "IntegrityError",
    "NoIdentityMatchedError",
]

_DETECT_BYTES = 1024


# --- keys -----------------------------------------------------------------------------------


def parse_recipient(text: str) -> Recipient:
    """Parse one recipient: ``age1…`` (X25519), ``age1pq1…`` (hybrid), or — for the aes format —
    a path to a PEM public key or X.509 certificate."""
    from . import age

    value = text.strip()
    if value.startswith("age1"):
        return age.parse_recipient(value)
    if os.path.isfile(value):
        from . import fips

        found = fips.parse_recipient_arg(value)
        if len(found) != 1:
            raise ConfigError("a recipient file given with -r must hold exactly one public key")
        return found[0]
    raise ConfigError("unrecognised recipient (expected age1…, age1pq1… or a PEM public key file)")


def parse_identity(text: str) -> Identity:
    """Parse one ``AGE-SECRET-KEY-1…`` / ``AGE-SECRET-KEY-PQ-1…`` identity string."""
    from . import age

    return age.parse_identity(text)


def _key_lines(data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("key file is not text") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def load_recipients_file(path: str | os.PathLike[str]) -> list[Recipient]:
    """Recipients from a file: one ``age1…`` per line (``#`` comments and blank lines ignored),
    plus any PEM public keys / certificates (aes format)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read recipients file ({exc.strerror})") from None
    recipients: list[Recipient] = []
    if b"-----BEGIN" in data:
        from . import fips

        pem, rest = fips.load_recipients_file(path)
        recipients.extend(pem)
        lines = [ln.strip() for ln in rest if ln.strip() and not ln.strip().startswith("#")]
    else:
        lines = _key_lines(data)
    from . import age

    for n, line in enumerate(lines, 1):
        try:
            recipients.append(age.parse_recipient(line))
        except ConfigError:
            raise ConfigError(f"recipients file: line {n} is not a valid recipient") from None
    if not recipients:
        raise ConfigError("recipients file holds no recipient")
    return recipients


def load_identities(path: str | os.PathLike[str]) -> list[Identity]:
    """Identities from a key file (mode 0600 enforced): age identity lines as written by
    ``dicomsafe keygen`` / ``age-keygen``, or a PEM private key (aes format)."""
    data = read_secret_file(path)
    from . import fips

    if fips.is_pem(data):
        return list(fips.load_identity_file(path))
    from . import age

    identities: list[Identity] = []
    for n, line in enumerate(_key_lines(data), 1):
        try:
            identities.append(age.parse_identity(line))
        except ConfigError:
            raise SecretFileError(f"identity file: line {n} is not a valid identity") from None
    if not identities:
        raise SecretFileError("identity file holds no identity")
    return identities


def _as_recipients(recipients: Iterable[Recipient | str]) -> list[Recipient]:
    return [parse_recipient(r) if isinstance(r, str) else r for r in recipients]


# --- streams --------------------------------------------------------------------------------


class _Prefixed(io.RawIOBase):
    """A reader that first replays bytes already consumed for format detection."""

    def __init__(self, prefix: bytes, rest: IO[bytes]):
        super().__init__()
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buf), len(self._prefix))
            buf[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buf))
        if not data:
            return 0
        buf[: len(data)] = data
        return len(data)


def _armor_labels() -> list[str]:
    labels = [_armor.AGE_LABEL]
    for name in envelope.FORMATS:
        try:
            label = envelope.get_spec(name).armor_label
        except ImportError:
            continue
        if label and label not in labels:
            labels.append(label)
    return labels


def _seekable(reader: IO[bytes]) -> bool:
    try:
        return bool(reader.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _input(reader: IO[bytes]) -> IO[bytes]:
    """Buffer ``reader`` and transparently remove ASCII armor if present."""
    buffered: IO[bytes]
    if _seekable(reader):
        # Files: peek by seeking back, so payload reads go straight to the file object.
        start = reader.tell()
        prefix = stream.read_full(reader, _DETECT_BYTES)
        reader.seek(start)
        buffered = reader if hasattr(reader, "readline") else io.BufferedReader(reader)  # type: ignore[arg-type]
    else:
        prefix = stream.read_full(reader, _DETECT_BYTES)
        buffered = io.BufferedReader(_Prefixed(prefix, reader), 1 << 17)
    if _armor.looks_armored(prefix):
        return io.BufferedReader(_armor.ArmorReader(buffered, _armor_labels()), 1 << 17)
    return buffered


def encrypt_stream(
    reader: IO[bytes],
    writer: IO[bytes],
    recipients: Sequence[Recipient | str],
    *,
    format: str = "age",
    armor: bool = False,
    fips: bool = False,
) -> int:
    """Encrypt ``reader`` to ``writer`` for ``recipients``; return the plaintext length.

    ``fips=True`` (aes format only) refuses every non-approved recipient type.
    """
    spec = envelope.get_spec(format)
    recips = _as_recipients(recipients)
    if fips and format != "aes":
        raise ConfigError("FIPS mode requires --format aes")
    if armor and not spec.armor_label:
        raise ConfigError(f"the {format} format has no ASCII armor")
    if format == "aes":
        from . import aes

        return aes.encrypt_stream(reader, writer, recips, fips=fips)
    if not armor:
        return envelope.encrypt(spec, reader, writer, recips)
    armored = _armor.ArmorWriter(writer, spec.armor_label or _armor.AGE_LABEL)
    n = envelope.encrypt(spec, reader, armored, recips)
    armored.close()
    return n


def decrypt_stream(
    reader: IO[bytes], writer: IO[bytes], identities: Sequence[Identity], *, fips: bool = False
) -> int:
    """Decrypt an age or aes file (armored or not) from ``reader`` into ``writer``.

    Plaintext reaches ``writer`` chunk by chunk, each only after it authenticated; if a later
    chunk fails, what was written cannot be retracted — use :func:`decrypt_file` for files.
    ``fips=True`` accepts only aes files and approved identities.
    """
    src = _input(reader)
    if fips:
        from . import aes

        return aes.decrypt_stream(src, writer, identities, fips=True)
    opened = envelope.open_header(src, identities)
    if opened.spec.name == "aes":
        from . import aes

        return aes.decrypt_payload(opened, src, writer)
    return envelope.decrypt_payload(opened, src, writer)


def detect_format(reader: IO[bytes]) -> str:
    """Return "age" or "aes" from a file's first line (armor removed), without keys."""
    src = _input(reader)
    spec, _ = envelope.read_header(src)
    return spec.name


# --- files ----------------------------------------------------------------------------------


def _refuse_same_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Writing the output over the input would destroy the input (inputs are never modified)."""
    try:
        same = os.path.samefile(src, dst)
    except OSError:
        return
    if same:
        raise ConfigError("the output file is the input file")


def open_input(path: str | os.PathLike[str]) -> IO[bytes]:
    """Open an input file for reading; a missing or unreadable one is a ConfigError (exit 2)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise ConfigError("input file not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read input file ({exc.strerror})") from None


@contextlib.contextmanager
def _source(src, dst) -> Iterator[IO[bytes]]:
    """A path is opened (and refused if it is the output); a file object (stdin) is used as is."""
    if hasattr(src, "read"):
        yield src
        return
    _refuse_same_file(src, dst)
    with open_input(src) as fin:
        yield fin


def encrypt_file(
    src: str | os.PathLike[str] | IO[bytes],
    dst: str | os.PathLike[str],
    recipients: Sequence[Recipient | str],
    *,
    format: str = "age",
    armor: bool = False,
    fips: bool = False,
) -> int:
    """Encrypt ``src`` (a path, or a readable binary file such as stdin) to file ``dst``
    atomically (``dst`` appears only when complete)."""
    with _source(src, dst) as fin:
        try:
            with atomic_writer(dst, 0o644) as fout:
                return encrypt_stream(fin, fout, recipients, format=format, armor=armor, fips=fips)
        except OSError as exc:
            raise OutputError(f"cannot write encrypted file ({exc.strerror})") from None


def decrypt_file(
    src: str | os.PathLike[str] | IO[bytes],
    dst: str | os.PathLike[str],
    identities: Sequence[Identity],
    *,
    fips: bool = False,
) -> int:
    """Decrypt ``src`` (a path, or a readable binary file such as stdin) to ``dst``: plaintext goes
    to a temporary file (mode 0600: it may hold PHI) that is renamed to ``dst`` only after the
    final chunk authenticated. On any failure nothing is left at ``dst``."""
    with _source(src, dst) as fin:
        try:
            with atomic_writer(dst, 0o600) as fout:
                return decrypt_stream(fin, fout, identities, fips=fips)
        except OSError as exc:
            raise OutputError(f"cannot write decrypted file ({exc.strerror})") from None


def rekey_file(
    path: str | os.PathLike[str],
    identities: Sequence[Identity],
    recipients: Sequence[Recipient | str],
    *,
    fips: bool = False,
) -> str:
    """Give an encrypted file new recipients without touching its payload bytes.

    The file key is recovered with ``identities`` (the header MAC is verified), a new header is
    built for ``recipients`` under the same file key, and only the header is rewritten. Returns
    "in-place" when the new header has the old header's length — the usual case of replacing
    recipients one for one: the header bytes are overwritten in place (microseconds for any file
    size), after the old header was saved to a side file so an interrupted rewrite can be
    undone — or "copied" when the length differs and the payload bytes had to be copied into a
    new file (still atomic: temp file + rename).
    """
    from .rekey import rekey_file as _rekey

    recips = _as_recipients(recipients)
    if fips:
        from . import fips as _fips

        _fips.require_approved(identities, "identity")
        _fips.require_approved(recips, "recipient")
    return _rekey(path, identities, recips, fips=fips)
