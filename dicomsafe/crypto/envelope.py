"""Format-agnostic file assembly: header + payload nonce + STREAM, for every FormatSpec.

Why separate from the formats: age v1 and dicomsafe.aes/v1 are the same envelope with different
parameters (header.FormatSpec) and different key types (keys.Recipient/Identity). Everything here
works for both; a format module only supplies its ``SPEC`` and its recipient/identity classes.

Format registry: a format module ``dicomsafe.crypto.<name>`` exposes ``SPEC: FormatSpec``. It is
imported lazily (only when a file of that format is written or read).
"""

from __future__ import annotations

import importlib
import io
import os
from dataclasses import dataclass
from typing import IO, Iterable, Sequence

from ..errors import FormatError, NoIdentityMatchedError
from . import stream
from .header import (
    FormatSpec,
    Header,
    HeaderError,
    encode_header,
    parse_rest,
    payload_key,
    read_version_line,
    verify_mac,
)
from .keys import Identity, Recipient, check_labels

#: version line → module that defines the format's SPEC.
VERSION_LINES = {
    "age-encryption.org/v1": "age",
    "dicomsafe.aes/v1": "aes",
}
FORMATS = ("age", "aes")


def get_spec(name: str) -> FormatSpec:
    """Return the FormatSpec of format ``name`` ("age" or "aes"), importing it lazily."""
    if name not in FORMATS:
        raise FormatError(f"unknown encryption format {name!r} (expected one of: {', '.join(FORMATS)})")
    module = importlib.import_module(f"{__package__}.{name}")
    return module.SPEC


@dataclass(frozen=True)
class OpenedHeader:
    """A header whose MAC verified under ``file_key``."""

    spec: FormatSpec
    header: Header
    file_key: bytes


def ensure_buffered(reader: IO[bytes]) -> IO[bytes]:
    """Header parsing needs readline(); raw unbuffered streams get a buffer."""
    if isinstance(reader, io.RawIOBase):
        return io.BufferedReader(reader, 1 << 16)
    return reader


def wrap_file_key(spec: FormatSpec, file_key: bytes, recipients: Sequence[Recipient]) -> list:
    """Wrap ``file_key`` for every recipient (after age's label compatibility check)."""
    check_labels(recipients)
    stanzas = []
    for r in recipients:
        stanzas.extend(r.wrap(file_key))
    return stanzas


def encrypt(
    spec: FormatSpec,
    reader: IO[bytes],
    writer: IO[bytes],
    recipients: Sequence[Recipient],
    *,
    file_key: bytes | None = None,
    nonce: bytes | None = None,
) -> int:
    """Write header, payload nonce and STREAM payload; return the plaintext length.

    ``file_key`` and ``nonce`` are for deterministic test vectors only; never pass them otherwise.
    """
    if file_key is None:
        file_key = os.urandom(spec.file_key_size)
    stanzas = wrap_file_key(spec, file_key, recipients)
    writer.write(encode_header(spec, stanzas, file_key))
    if nonce is None:
        nonce = os.urandom(16)
    writer.write(nonce)
    aead = spec.payload_aead(payload_key(spec, file_key, nonce))
    return stream.encrypt(aead, reader, writer)


def read_header(reader: IO[bytes], formats: Iterable[str] = FORMATS) -> tuple[FormatSpec, Header]:
    """Read a header of any known format, detected from its version line."""
    consumed: list[bytes] = []
    version = read_version_line(reader, consumed)
    name = VERSION_LINES.get(version)
    if name is None or name not in formats:
        raise HeaderError("not a supported encrypted file (unknown version line)")
    spec = get_spec(name)
    return spec, parse_rest(version, reader, consumed)


def unwrap_file_key(spec: FormatSpec, header: Header, identities: Sequence[Identity]) -> bytes:
    """Try each identity in turn; verify the header MAC with the file key found."""
    for s in header.stanzas:
        if s.type in spec.exclusive_types and len(header.stanzas) != 1:
            raise HeaderError(f"a {s.type} stanza must be the only one in the header")
    for identity in identities:
        file_key = identity.unwrap(header.stanzas, file_key_size=spec.file_key_size)
        if file_key is None:
            continue
        if len(file_key) != spec.file_key_size:
            raise HeaderError("unwrapped file key has the wrong length")
        verify_mac(header, file_key)
        return file_key
    raise NoIdentityMatchedError("no identity matched any of the file's recipients")


def open_header(reader: IO[bytes], identities: Sequence[Identity]) -> OpenedHeader:
    """Parse the header from ``reader`` and recover the file key."""
    spec, header = read_header(reader)
    return OpenedHeader(spec, header, unwrap_file_key(spec, header, identities))


def decrypt_payload(opened: OpenedHeader, reader: IO[bytes], writer: IO[bytes]) -> int:
    """Decrypt the payload that follows an opened header."""
    nonce = stream.read_full(reader, 16)
    if len(nonce) != 16:
        raise HeaderError("encrypted file is truncated (missing payload nonce)")
    aead = opened.spec.payload_aead(payload_key(opened.spec, opened.file_key, nonce))
    return stream.decrypt(aead, reader, writer)


def decrypt(reader: IO[bytes], writer: IO[bytes], identities: Sequence[Identity]) -> int:
    """Decrypt a complete (unarmored) file of any known format."""
    reader = ensure_buffered(reader)
    opened = open_header(reader, identities)
    return decrypt_payload(opened, reader, writer)


def rewrap_header(opened: OpenedHeader, recipients: Sequence[Recipient]) -> bytes:
    """A new header for the same file key: new stanzas, new MAC (for rekey)."""
    stanzas = wrap_file_key(opened.spec, opened.file_key, recipients)
    return encode_header(opened.spec, stanzas, opened.file_key)
