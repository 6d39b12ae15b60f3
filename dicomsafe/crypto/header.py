"""The text header shared by age v1 and dicomsafe.aes/v1: version line, stanzas, MAC.

Layout (age v1, https://age-encryption.org/v1)::

    <version line>\\n
    -> <type> <arg>…\\n
    <body: canonical unpadded base64, 64 columns per line, last line shorter (maybe empty)>\\n
    …more stanzas…
    --- <base64 HMAC-SHA256 over everything up to and including "---">\\n

Parsing is deliberately as strict as age's reference implementation: every line ends with LF (no
CR), arguments are non-empty runs of printable ASCII separated by single spaces, base64 must be
canonical and unpadded, body lines hold exactly 48 bytes except the last. Strictness matters
because the MAC covers the bytes: two parsers that disagree on what a header means are an attack
surface. Why parameterised: the aes format differs only in its version line and payload AEAD, so
both share this one parser (see FormatSpec).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from dataclasses import dataclass, field
from typing import IO, Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import FormatError, IntegrityError
from .stream import AEAD

#: File key length (both formats).
FILE_KEY_SIZE = 16
#: Random nonce between header and payload, the HKDF salt of the payload key.
PAYLOAD_NONCE_SIZE = 16
#: Bytes per full body line (64 base64 columns).
BYTES_PER_LINE = 48
#: Bounds that keep a hostile header from eating memory.
MAX_LINE = 1 << 20
MAX_HEADER = 16 << 20
MAX_STANZAS = 4096

_ARG_RE = re.compile(rb"[\x21-\x7e]+")
_B64_RE = re.compile(rb"[A-Za-z0-9+/]*")


class HeaderError(FormatError):
    """The header does not parse, or a stanza addressed to one of our identities is malformed."""


class HeaderMacError(IntegrityError):
    """A file key was recovered but the header MAC does not match: the header was modified."""


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: ``-> type args…`` plus a binary body."""

    type: str
    args: tuple[str, ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class FormatSpec:
    """What differs between the formats that share this header and STREAM.

    ``exclusive_types`` are stanza types that must be the only stanza in a header (age: scrypt —
    a passphrase file with a second recipient would let that recipient rewrite the header
    without knowing the passphrase).
    """

    name: str
    version_line: str
    payload_aead: Callable[[bytes], AEAD]
    payload_key_size: int = 32
    file_key_size: int = FILE_KEY_SIZE
    exclusive_types: frozenset[str] = field(default_factory=frozenset)
    armor_label: str | None = None


AGE_V1 = FormatSpec(
    name="age",
    version_line="age-encryption.org/v1",
    payload_aead=ChaCha20Poly1305,
    payload_key_size=32,
    exclusive_types=frozenset({"scrypt"}),
    armor_label="AGE ENCRYPTED FILE",
)


@dataclass(frozen=True)
class Header:
    """A parsed header. ``mac_input`` is the byte range the MAC covers; ``raw`` is the whole
    header including the MAC line (its length is where the payload nonce starts)."""

    version_line: str
    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes
    raw: bytes


# --- base64 as age uses it ------------------------------------------------------------------


def b64encode(data: bytes) -> str:
    """Standard alphabet, no padding."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str | bytes) -> bytes:
    """Strict canonical unpadded base64: no padding, no whitespace, no non-zero trailing bits."""
    raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    if not _B64_RE.fullmatch(raw) or len(raw) % 4 == 1:
        raise HeaderError("malformed base64 in header")
    padded = raw + b"=" * (-len(raw) % 4)
    try:
        data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise HeaderError("malformed base64 in header") from None
    if base64.b64encode(data).rstrip(b"=") != raw:
        raise HeaderError("non-canonical base64 in header")
    return data


# --- encoding -------------------------------------------------------------------------------


def encode_stanza(stanza: Stanza) -> bytes:
    """Encode one stanza: arguments line, then the body wrapped at 64 columns."""
    parts = [stanza.type, *stanza.args]
    for part in parts:
        if not part.isascii() or not _ARG_RE.fullmatch(part.encode("ascii")):
            raise ValueError("stanza arguments must be non-empty printable ASCII")
    lines = ["-> " + " ".join(parts)]
    body = b64encode(stanza.body)
    for i in range(0, len(body), 64):
        lines.append(body[i : i + 64])
    if len(body) % 64 == 0:
        lines.append("")  # a full last line is followed by an empty one
    return ("\n".join(lines) + "\n").encode("ascii")


def encode_mac_input(version_line: str, stanzas: list[Stanza] | tuple[Stanza, ...]) -> bytes:
    """The header bytes the MAC covers: version line, stanzas, and ``---``."""
    out = [version_line.encode("ascii") + b"\n"]
    out.extend(encode_stanza(s) for s in stanzas)
    out.append(b"---")
    return b"".join(out)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869) from `cryptography`."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def compute_mac(file_key: bytes, mac_input: bytes) -> bytes:
    """HMAC-SHA256 keyed with HKDF(file key, salt="", info="header") over the header."""
    key = hkdf_sha256(file_key, b"", b"header")
    return hmac.new(key, mac_input, "sha256").digest()


def payload_key(spec: FormatSpec, file_key: bytes, nonce: bytes) -> bytes:
    """HKDF(file key, salt=payload nonce, info="payload") → the STREAM key."""
    return hkdf_sha256(file_key, nonce, b"payload", spec.payload_key_size)


def encode_header(spec: FormatSpec, stanzas: list[Stanza] | tuple[Stanza, ...], file_key: bytes) -> bytes:
    """Encode a complete header including its MAC line."""
    mac_input = encode_mac_input(spec.version_line, stanzas)
    return mac_input + b" " + b64encode(compute_mac(file_key, mac_input)).encode("ascii") + b"\n"


def verify_mac(header: Header, file_key: bytes) -> None:
    """Raise HeaderMacError unless the header MAC matches (constant-time compare)."""
    if not hmac.compare_digest(compute_mac(file_key, header.mac_input), header.mac):
        raise HeaderMacError("header authentication failed: the file header was modified")


# --- parsing --------------------------------------------------------------------------------


def _readline(reader: IO[bytes], consumed: list[bytes]) -> bytes:
    line = reader.readline(MAX_LINE)
    consumed.append(line)
    if len(consumed) % 1024 == 0 and sum(map(len, consumed)) > MAX_HEADER:
        raise HeaderError("header too large")
    if not line.endswith(b"\n"):
        if len(line) >= MAX_LINE:
            raise HeaderError("header line too long")
        raise HeaderError("encrypted file header is truncated")
    return line[:-1]


def read_version_line(reader: IO[bytes], consumed: list[bytes]) -> str:
    """Read the first line; the caller decides whether it names a format it knows."""
    line = _readline(reader, consumed)
    try:
        return line.decode("ascii")
    except UnicodeDecodeError:
        raise HeaderError("not an encrypted file (unknown header)") from None


def parse_body(reader: IO[bytes], consumed: list[bytes]) -> bytes:
    """Read body lines until one holds fewer than 48 bytes."""
    body = []
    while True:
        line = _readline(reader, consumed)
        chunk = b64decode(line)
        if len(chunk) > BYTES_PER_LINE:
            raise HeaderError("stanza body line too long")
        body.append(chunk)
        if len(chunk) < BYTES_PER_LINE:
            return b"".join(body)


def parse_rest(version_line: str, reader: IO[bytes], consumed: list[bytes]) -> Header:
    """Parse stanzas and the MAC line after an already-read version line."""
    stanzas: list[Stanza] = []
    while True:
        line = _readline(reader, consumed)
        if line.startswith(b"---"):
            parts = line.split(b" ")
            if parts[0] != b"---" or len(parts) != 2:
                raise HeaderError("malformed header MAC line")
            mac = b64decode(parts[1])
            if len(mac) != 32:
                raise HeaderError("malformed header MAC line")
            raw = b"".join(consumed)
            mac_input = raw[: len(raw) - len(line) - 1 + 3]
            return Header(version_line, tuple(stanzas), mac, mac_input, raw)
        if line.startswith(b"->"):
            parts = line.split(b" ")
            if parts[0] != b"->" or len(parts) < 2:
                raise HeaderError("malformed stanza line")
            for part in parts[1:]:
                if not _ARG_RE.fullmatch(part):
                    raise HeaderError("malformed stanza argument")
            args = tuple(p.decode("ascii") for p in parts[1:])
            if len(stanzas) >= MAX_STANZAS:
                raise HeaderError("too many stanzas in header")
            stanzas.append(Stanza(args[0], args[1:], parse_body(reader, consumed)))
            continue
        raise HeaderError("malformed header line")


def parse_header(spec: FormatSpec, reader: IO[bytes]) -> Header:
    """Parse a header of format ``spec`` from ``reader`` (left positioned at the payload)."""
    consumed: list[bytes] = []
    version = read_version_line(reader, consumed)
    if version != spec.version_line:
        raise HeaderError(f"unsupported format version (expected {spec.version_line})")
    return parse_rest(version, reader, consumed)
