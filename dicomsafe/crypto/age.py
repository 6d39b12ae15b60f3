"""age v1 (https://age-encryption.org/v1, c2sp.org/age): key types and the format SPEC.

Native recipient types implemented on `cryptography` primitives only:
- X25519 (``age1…`` / ``AGE-SECRET-KEY-1…``): ephemeral X25519, HKDF-SHA256, ChaCha20-Poly1305.
- scrypt passphrases (N = 2**logN, r = 8, p = 1), always the only stanza of a file.
- MLKEM768-X25519 hybrid (``age1pq1…`` / ``AGE-SECRET-KEY-PQ-1…``): HPKE base mode with the
  MLKEM768-X25519 KEM, HKDF-SHA256, ChaCha20-Poly1305, info "age-encryption.org/mlkem768x25519".
  Why: archives must stay confidential for decades; harvest-now-decrypt-later is a real threat
  to anything protected only by elliptic curves.

Identity rules follow the specification's MUSTs: stanzas of other types are ignored; a stanza of
our type with the wrong argument count, non-canonical base64 or wrong lengths is a fatal header
error; the body length is checked before decrypting (partitioning-oracle mitigation); an
all-zero X25519 shared secret aborts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import ConfigError
from . import bech32
from .header import AGE_V1, FILE_KEY_SIZE, HeaderError, Stanza, b64decode, b64encode, hkdf_sha256

SPEC = AGE_V1

X25519_INFO = b"age-encryption.org/v1/X25519"
SCRYPT_SALT_LABEL = b"age-encryption.org/v1/scrypt"
HYBRID_INFO = b"age-encryption.org/mlkem768x25519"

#: age's default scrypt work factor for encryption (about one second) …
SCRYPT_DEFAULT_LOG_N = 18
#: … and the largest one we accept when decrypting (age's limit: 2**22 needs 4 GiB of memory).
SCRYPT_MAX_LOG_N = 22

_ZERO_NONCE = bytes(12)
_TAG = 16
_DECIMAL_RE = re.compile(r"[1-9][0-9]*")

HRP_RECIPIENT = "age"
HRP_IDENTITY = "AGE-SECRET-KEY-"
HRP_PQ_RECIPIENT = "age1pq"
HRP_PQ_IDENTITY = "AGE-SECRET-KEY-PQ-"

_HYBRID_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_HYBRID_ENC_SIZE = 1120
_MLKEM768_PK_SIZE = 1184
_HYBRID_PK_SIZE = _MLKEM768_PK_SIZE + 32


def _aead_wrap(key: bytes, file_key: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)


def _aead_unwrap(key: bytes, body: bytes) -> bytes | None:
    """Decrypt a wrapped file key; None on authentication failure (wrong key)."""
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        return None


# --- X25519 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class X25519Recipient:
    """An ``age1…`` public key."""

    public_key: bytes

    @classmethod
    def parse(cls, text: str) -> "X25519Recipient":
        hrp, data = _bech32_decode(text)
        if hrp != HRP_RECIPIENT or len(data) != 32 or text != text.lower():
            raise ConfigError("malformed age recipient")
        return cls(data)

    def encode(self) -> str:
        return bech32.encode(HRP_RECIPIENT, self.public_key)

    def wrap(self, file_key: bytes, *, _ephemeral: bytes | None = None) -> list[Stanza]:
        """Wrap ``file_key`` (any length: 16 bytes for age, 32 for dicomsafe.aes/v1).
        ``_ephemeral`` injects the ephemeral scalar, for deterministic test vectors only."""
        if _ephemeral is None:
            eph = x25519.X25519PrivateKey.generate()
        else:
            eph = x25519.X25519PrivateKey.from_private_bytes(_ephemeral)
        share = eph.public_key().public_bytes_raw()
        shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(self.public_key))
        key = hkdf_sha256(shared, share + self.public_key, X25519_INFO)
        return [Stanza("X25519", (b64encode(share),), _aead_wrap(key, file_key))]

    def __str__(self) -> str:
        return self.encode()


@dataclass(frozen=True, repr=False)
class X25519Identity:
    """An ``AGE-SECRET-KEY-1…`` private key."""

    secret: bytes

    @classmethod
    def generate(cls) -> "X25519Identity":
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> "X25519Identity":
        hrp, data = _bech32_decode(text)
        if hrp != HRP_IDENTITY or len(data) != 32 or text != text.upper():
            raise ConfigError("malformed age identity")
        return cls(data)

    def encode(self) -> str:
        return bech32.encode(HRP_IDENTITY, self.secret)

    def recipient(self) -> X25519Recipient:
        key = x25519.X25519PrivateKey.from_private_bytes(self.secret)
        return X25519Recipient(key.public_key().public_bytes_raw())

    def unwrap(self, stanzas: Sequence[Stanza], *, file_key_size: int = FILE_KEY_SIZE) -> bytes | None:
        for s in stanzas:
            if s.type != "X25519":
                continue
            if len(s.args) != 1:
                raise HeaderError("invalid X25519 stanza: wrong number of arguments")
            share = b64decode(s.args[0])
            if len(share) != 32:
                raise HeaderError("invalid X25519 stanza: share must be 32 bytes")
            if len(s.body) != file_key_size + _TAG:
                raise HeaderError("invalid X25519 stanza: wrong file key size")
            priv = x25519.X25519PrivateKey.from_private_bytes(self.secret)
            try:
                shared = priv.exchange(x25519.X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise HeaderError("invalid X25519 stanza: low-order share") from None
            if shared == bytes(32):
                raise HeaderError("invalid X25519 stanza: low-order share")
            recipient = priv.public_key().public_bytes_raw()
            file_key = _aead_unwrap(hkdf_sha256(shared, share + recipient, X25519_INFO), s.body)
            if file_key is not None:
                return file_key
        return None

    def __repr__(self) -> str:  # never print secrets
        return "X25519Identity(<secret>)"


# --- scrypt ---------------------------------------------------------------------------------


def _scrypt_key(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    kdf = Scrypt(salt=SCRYPT_SALT_LABEL + salt, length=32, n=1 << log_n, r=8, p=1)
    return kdf.derive(passphrase)


@dataclass(frozen=True, repr=False)
class ScryptRecipient:
    """A passphrase. Its label is unique, so it can never share a file with another recipient."""

    passphrase: bytes
    log_n: int = SCRYPT_DEFAULT_LOG_N
    _label: str = field(default_factory=lambda: os.urandom(16).hex(), compare=False)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset({self._label})

    def wrap(self, file_key: bytes) -> list[Stanza]:
        if not 1 <= self.log_n <= SCRYPT_MAX_LOG_N:
            raise ConfigError("scrypt work factor out of range")
        salt = os.urandom(16)
        key = _scrypt_key(self.passphrase, salt, self.log_n)
        return [Stanza("scrypt", (b64encode(salt), str(self.log_n)), _aead_wrap(key, file_key))]

    def __repr__(self) -> str:
        return "ScryptRecipient(<passphrase>)"


@dataclass(frozen=True, repr=False)
class ScryptIdentity:
    """A passphrase used to decrypt; refuses work factors above ``max_log_n``."""

    passphrase: bytes
    max_log_n: int = SCRYPT_MAX_LOG_N

    def unwrap(self, stanzas: Sequence[Stanza], *, file_key_size: int = FILE_KEY_SIZE) -> bytes | None:
        if any(s.type == "scrypt" for s in stanzas) and len(stanzas) != 1:
            raise HeaderError("a passphrase (scrypt) stanza must be the only one in the header")
        if len(stanzas) != 1 or stanzas[0].type != "scrypt":
            return None
        s = stanzas[0]
        if len(s.args) != 2:
            raise HeaderError("invalid scrypt stanza: wrong number of arguments")
        salt = b64decode(s.args[0])
        if len(salt) != 16:
            raise HeaderError("invalid scrypt stanza: salt must be 16 bytes")
        if not _DECIMAL_RE.fullmatch(s.args[1]):
            raise HeaderError("invalid scrypt stanza: malformed work factor")
        if len(s.args[1]) > 3 or int(s.args[1]) > self.max_log_n:
            raise HeaderError("scrypt work factor too large")
        if len(s.body) != file_key_size + _TAG:
            raise HeaderError("invalid scrypt stanza: wrong file key size")
        return _aead_unwrap(_scrypt_key(self.passphrase, salt, int(s.args[1])), s.body)

    def __repr__(self) -> str:
        return "ScryptIdentity(<passphrase>)"


# --- MLKEM768-X25519 hybrid -----------------------------------------------------------------


def _hybrid_halves(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """Expand the 32-byte seed as the MLKEM768-X25519 KEM does: SHAKE256(seed, 96) split into
    the ML-KEM-768 seed (d ‖ z, 64 bytes) and the X25519 private key (32 bytes)."""
    h = hashes.Hash(hashes.SHAKE256(96))
    h.update(seed)
    expanded = h.finalize()
    return (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


def _hybrid_private_key(seed: bytes) -> hpke.MLKEM768X25519PrivateKey:
    return hpke.MLKEM768X25519PrivateKey(*_hybrid_halves(seed))


@dataclass(frozen=True)
class HybridRecipient:
    """An ``age1pq1…`` post-quantum hybrid public key (ML-KEM-768 key ‖ X25519 key)."""

    public_key: bytes
    labels: frozenset[str] = frozenset({"postquantum"})

    @classmethod
    def parse(cls, text: str) -> "HybridRecipient":
        hrp, data = _bech32_decode(text)
        if hrp != HRP_PQ_RECIPIENT or len(data) != _HYBRID_PK_SIZE or text != text.lower():
            raise ConfigError("malformed age post-quantum recipient")
        recipient = cls(data)
        recipient._hpke_key()  # validate the key now, not at encryption time
        return recipient

    def encode(self) -> str:
        return bech32.encode(HRP_PQ_RECIPIENT, self.public_key)

    def _hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        try:
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(self.public_key[:_MLKEM768_PK_SIZE]),
                x25519.X25519PublicKey.from_public_bytes(self.public_key[_MLKEM768_PK_SIZE:]),
            )
        except ValueError:
            raise ConfigError("malformed age post-quantum recipient") from None

    def wrap(self, file_key: bytes) -> list[Stanza]:
        sealed = _HYBRID_SUITE.encrypt(file_key, self._hpke_key(), HYBRID_INFO)
        enc, body = sealed[:_HYBRID_ENC_SIZE], sealed[_HYBRID_ENC_SIZE:]
        return [Stanza("mlkem768x25519", (b64encode(enc),), body)]

    def __str__(self) -> str:
        return self.encode()


@dataclass(frozen=True, repr=False)
class HybridIdentity:
    """An ``AGE-SECRET-KEY-PQ-1…`` identity: a 32-byte seed."""

    seed: bytes

    @classmethod
    def generate(cls) -> "HybridIdentity":
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> "HybridIdentity":
        hrp, data = _bech32_decode(text)
        if hrp != HRP_PQ_IDENTITY or len(data) != 32 or text != text.upper():
            raise ConfigError("malformed age post-quantum identity")
        return cls(data)

    def encode(self) -> str:
        return bech32.encode(HRP_PQ_IDENTITY, self.seed)

    def recipient(self) -> HybridRecipient:
        # MLKEM768X25519PublicKey has no serializer; the encoding is ML-KEM key ‖ X25519 key.
        m, x = _hybrid_halves(self.seed)
        pk_m = m.public_key().public_bytes_raw()
        pk_x = x.public_key().public_bytes_raw()
        return HybridRecipient(pk_m + pk_x)

    def unwrap(self, stanzas: Sequence[Stanza], *, file_key_size: int = FILE_KEY_SIZE) -> bytes | None:
        key = None
        halves = None
        for s in stanzas:
            if s.type != "mlkem768x25519":
                continue
            if len(s.args) != 1:
                raise HeaderError("invalid mlkem768x25519 stanza: wrong number of arguments")
            enc = b64decode(s.args[0])
            if len(enc) != _HYBRID_ENC_SIZE:
                raise HeaderError("invalid mlkem768x25519 stanza: encapsulated key size")
            if len(s.body) != file_key_size + _TAG:
                raise HeaderError("invalid mlkem768x25519 stanza: wrong file key size")
            if key is None:
                halves = _hybrid_halves(self.seed)
                key = hpke.MLKEM768X25519PrivateKey(*halves)
            # The KEM would only report a low-order X25519 share as a decryption failure; the
            # spec requires aborting on an all-zero shared secret, so check the X25519 half.
            share = enc[_HYBRID_ENC_SIZE - 32 :]
            try:
                zero = halves[1].exchange(x25519.X25519PublicKey.from_public_bytes(share)) == bytes(32)
            except ValueError:
                zero = True
            if zero:
                raise HeaderError("invalid mlkem768x25519 stanza: low-order X25519 share")
            try:
                return _HYBRID_SUITE.decrypt(enc + s.body, key, HYBRID_INFO)
            except InvalidTag:
                continue
            except ValueError:
                raise HeaderError("invalid mlkem768x25519 stanza: bad encapsulated key") from None
        return None

    def __repr__(self) -> str:
        return "HybridIdentity(<secret>)"


# --- parsing helpers ------------------------------------------------------------------------


def _bech32_decode(text: str) -> tuple[str, bytes]:
    try:
        hrp, data = bech32.decode(text)
    except bech32.Bech32Error:
        raise ConfigError("malformed age key (bad Bech32 encoding)") from None
    return hrp.lower() if text == text.lower() else hrp, data


def parse_recipient(text: str):
    """Parse an ``age1…`` or ``age1pq1…`` recipient string."""
    text = text.strip()
    if text.startswith("age1pq1"):
        return HybridRecipient.parse(text)
    if text.startswith("age1"):
        return X25519Recipient.parse(text)
    raise ConfigError("not an age recipient (expected age1…)")


def parse_identity(text: str):
    """Parse an ``AGE-SECRET-KEY-1…`` or ``AGE-SECRET-KEY-PQ-1…`` identity string."""
    text = text.strip()
    if text.startswith("AGE-SECRET-KEY-PQ-1"):
        return HybridIdentity.parse(text)
    if text.startswith("AGE-SECRET-KEY-1"):
        return X25519Identity.parse(text)
    raise ConfigError("not an age identity (expected AGE-SECRET-KEY-1…)")
