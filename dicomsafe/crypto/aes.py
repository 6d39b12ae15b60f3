"""The dicomsafe.aes/v1 container: age v1's envelope with a 32-byte file key and AES-256-GCM.

Why a thin module: header grammar, MAC and STREAM are shared with age (header.py, stream.py,
envelope.py); this module supplies the format parameters (:data:`SPEC`) and the two things only
this format has — the FIPS policy (``fips=True``) and the AES-GCM per-key chunk limit.
Specification: docs/format-aes.md.
"""

from __future__ import annotations

import logging
import os
from typing import IO, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import envelope, stream
from .fips import PBKDF2_TYPE, FipsPolicyError, require_approved
from .header import (
    FormatSpec,
    Header,
    HeaderError,
    encode_header,
    parse_rest,
    payload_key,
    read_version_line,
)
from .keys import Identity, Recipient

log = logging.getLogger(__name__)

VERSION_LINE = "dicomsafe.aes/v1"
FILE_KEY_SIZE = 32
NONCE_SIZE = 16
#: At most 2**32 chunks (256 TiB) under one payload key (spec §6).
MAX_CHUNKS = 1 << 32

SPEC = FormatSpec(
    name="aes",
    version_line=VERSION_LINE,
    payload_aead=AESGCM,
    payload_key_size=32,
    file_key_size=FILE_KEY_SIZE,
    exclusive_types=frozenset({PBKDF2_TYPE}),
    armor_label=None,
)


class _ByteLimit:
    """A reader that fails once more than ``limit`` bytes came through it.

    Why: the AES-GCM chunk limit is a property of the whole stream; counting bytes at the reader
    enforces it without touching the shared STREAM code. Reads stay chunk-sized (no buffering).
    """

    def __init__(self, reader: IO[bytes], limit: int, error: Exception):
        self._reader = reader
        self._limit = limit
        self._error = error
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        if data:
            self.count += len(data)
            if self.count > self._limit:
                raise self._error
        return data or b""


def _log_fips() -> None:
    from cryptography.hazmat.backends.openssl import backend

    log.info("FIPS mode: approved algorithms only (OpenSSL: %s)", backend.openssl_version_text())


def encrypt_stream(
    reader: IO[bytes],
    writer: IO[bytes],
    recipients: Sequence[Recipient],
    *,
    fips: bool = False,
    _file_key: bytes | None = None,
    _nonce: bytes | None = None,
    _max_chunks: int = MAX_CHUNKS,
) -> int:
    """Encrypt ``reader`` to ``writer`` as dicomsafe.aes/v1; return the plaintext length.

    ``fips=True`` refuses every recipient that is not RSA-OAEP, P-256 or PBKDF2
    (FipsPolicyError). Underscored parameters exist only for deterministic test vectors.
    """
    if fips:
        _log_fips()
        require_approved(recipients, "recipient")
    file_key = os.urandom(FILE_KEY_SIZE) if _file_key is None else _file_key
    nonce = os.urandom(NONCE_SIZE) if _nonce is None else _nonce
    if len(file_key) != FILE_KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ValueError("file key must be 32 bytes and nonce 16 bytes")
    stanzas = envelope.wrap_file_key(SPEC, file_key, recipients)
    writer.write(encode_header(SPEC, stanzas, file_key))
    writer.write(nonce)
    aead = AESGCM(payload_key(SPEC, file_key, nonce))
    limited = _ByteLimit(
        reader,
        _max_chunks * stream.CHUNK_SIZE,
        stream.PayloadError("input too large for one dicomsafe.aes/v1 file (2^32 chunks)"),
    )
    return stream.encrypt(aead, limited, writer)  # type: ignore[arg-type]


def read_header(reader: IO[bytes], *, fips: bool = False) -> Header:
    """Parse a dicomsafe.aes/v1 header; an age file is a header failure (FIPS: a refusal)."""
    consumed: list[bytes] = []
    version = read_version_line(reader, consumed)
    if version != VERSION_LINE:
        if fips and version in envelope.VERSION_LINES:
            raise FipsPolicyError(
                f"FIPS mode: refusing this {envelope.VERSION_LINES[version]}-format file "
                "(its algorithms are not FIPS-approved; only dicomsafe.aes/v1 is allowed)"
            )
        raise HeaderError(f"not a {VERSION_LINE} file (unknown version line)")
    return parse_rest(version, reader, consumed)


def open_header(
    reader: IO[bytes], identities: Sequence[Identity], *, fips: bool = False
) -> envelope.OpenedHeader:
    """Parse the header and recover the file key (MAC verified).

    In FIPS mode only approved identities are accepted, so non-approved stanzas (X25519, hybrid)
    are never processed: each identity looks only at its own stanza type.
    """
    if fips:
        _log_fips()
        require_approved(identities, "identity")
    header = read_header(reader, fips=fips)
    file_key = envelope.unwrap_file_key(SPEC, header, identities)
    return envelope.OpenedHeader(SPEC, header, file_key)


def decrypt_payload(
    opened: envelope.OpenedHeader, reader: IO[bytes], writer: IO[bytes], *, _max_chunks: int = MAX_CHUNKS
) -> int:
    """Decrypt the nonce + STREAM after an opened header; return the plaintext length."""
    nonce = stream.read_full(reader, NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        # age's vectors class a missing nonce as a header failure; we follow them.
        raise HeaderError("encrypted file is truncated (missing payload nonce)")
    aead = AESGCM(payload_key(SPEC, opened.file_key, nonce))
    limited = _ByteLimit(
        reader,
        _max_chunks * stream.ENC_CHUNK_SIZE,
        stream.PayloadError("encrypted file exceeds 2^32 chunks"),
    )
    return stream.decrypt(aead, limited, writer)  # type: ignore[arg-type]


def decrypt_stream(
    reader: IO[bytes], writer: IO[bytes], identities: Sequence[Identity], *, fips: bool = False
) -> int:
    """Decrypt a dicomsafe.aes/v1 file from ``reader`` into ``writer``.

    ``writer`` receives each chunk once it authenticates; callers that must never expose partial
    plaintext write to a temporary file and rename on success (the package's decrypt_file does).
    """
    reader = envelope.ensure_buffered(reader)
    opened = open_header(reader, identities, fips=fips)
    return decrypt_payload(opened, reader, writer)


def rekey_header(
    reader: IO[bytes],
    identities: Sequence[Identity],
    recipients: Sequence[Recipient],
    *,
    fips: bool = False,
) -> tuple[bytes, int]:
    """Open the header with ``identities`` and re-wrap the same file key for ``recipients``.

    Returns ``(new_header, old_header_length)``: the payload (nonce + chunks) starts at
    ``old_header_length`` in the old file and is copied unchanged after ``new_header``.
    """
    reader = envelope.ensure_buffered(reader)
    opened = open_header(reader, identities, fips=fips)
    if fips:
        require_approved(recipients, "recipient")
    return envelope.rewrap_header(opened, recipients), len(opened.header.raw)
