"""FIPS-approved recipient types of dicomsafe.aes/v1: RSA-OAEP-SHA256, P-256 ECDH, PBKDF2.

Why these three: strict sites audit archives against FIPS 140 / NIST SP 800-111, and the age key
types (X25519, scrypt, the ML-KEM+X25519 hybrid) are not approved algorithms. Each class follows
the Recipient/Identity protocol of :mod:`dicomsafe.crypto.keys`, so the shared envelope code
needs to know nothing about them. Byte-exact definitions: docs/format-aes.md §5.3–5.5.

Every primitive comes from ``cryptography`` (OAEP, ECDH, HKDF, RFC 3394 key wrap, PBKDF2); this
module only arranges them as the specification says. Keys are loaded from PEM / DER public keys,
X.509 certificates and PEM private keys (:func:`load_recipients_file`, :func:`load_identity_file`).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ..errors import ConfigError
from ..fsutil import read_secret_file
from .header import HeaderError, Stanza, b64decode, b64encode, hkdf_sha256

RSA_TYPE = "rsa-oaep-sha256"
P256_TYPE = "p256"
PBKDF2_TYPE = "pbkdf2-sha256"
#: Stanza types FIPS mode may process (docs/format-aes.md §8).
APPROVED_STANZA_TYPES = frozenset({RSA_TYPE, P256_TYPE, PBKDF2_TYPE})

RSA_LABEL = b"dicomsafe.aes/v1/rsa-oaep-sha256"
P256_INFO = b"dicomsafe.aes/v1/p256"
PBKDF2_SALT_PREFIX = b"dicomsafe.aes/v1/pbkdf2-sha256"

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
#: PBKDF2 iteration bounds: below the minimum is weak, above the maximum is a CPU-burning file.
MIN_ITERATIONS = 600_000
MAX_ITERATIONS = 10_000_000
DEFAULT_ITERATIONS = MIN_ITERATIONS
SALT_SIZE = 16
TAG_SIZE = 4
KW_OVERHEAD = 8  # RFC 3394 adds one 64-bit block: a 32-byte file key wraps to 40 bytes
P256_POINT_SIZE = 65

_DECIMAL_RE = re.compile(r"[1-9][0-9]{0,7}")
_PEM_RE = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)
_PUBLIC_PEM = {b"PUBLIC KEY", b"RSA PUBLIC KEY", b"CERTIFICATE"}
_PRIVATE_PEM = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}


class FipsPolicyError(ConfigError):
    """An operation that FIPS mode forbids: a non-approved key, stanza or format (exit 2)."""


class KeyRefusedError(ConfigError):
    """A key that this format refuses: RSA too small or too large, wrong curve, bad PEM (exit 2)."""


# --- key checks -----------------------------------------------------------------------------


def check_rsa_public_key(key: rsa.RSAPublicKey) -> None:
    """Refuse RSA keys outside 2048..16384 bits or with a non-FIPS public exponent."""
    bits = key.key_size
    if bits < MIN_RSA_BITS:
        raise KeyRefusedError(f"RSA key too small ({bits} bits; at least {MIN_RSA_BITS} required)")
    if bits > MAX_RSA_BITS:
        raise KeyRefusedError(f"RSA key too large ({bits} bits; at most {MAX_RSA_BITS} accepted)")
    e = key.public_numbers().e
    if e % 2 == 0 or not (1 << 16) < e < (1 << 256):
        raise KeyRefusedError("RSA public exponent not allowed (FIPS 186-5: odd, 2^16 < e < 2^256)")


def check_p256(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
    """Refuse every curve but P-256."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyRefusedError(f"unsupported elliptic curve {key.curve.name} (only P-256 is accepted)")


def _spki_der(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_tag(key: rsa.RSAPublicKey) -> bytes:
    """First 4 bytes of SHA-256 over the DER SubjectPublicKeyInfo (spec §5.3)."""
    return hashlib.sha256(_spki_der(key)).digest()[:TAG_SIZE]


def _sec1(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=RSA_LABEL)


def _check_file_key(file_key: bytes) -> None:
    # AES-KW needs a multiple of 8 bytes >= 16; the aes format always uses 32.
    if len(file_key) != 32:
        raise ValueError("dicomsafe.aes/v1 file keys are 32 bytes")


# --- RSA-OAEP-SHA256 ------------------------------------------------------------------------


class RsaOaepRecipient:
    """Wraps the file key with RSA-OAEP-SHA256 for one RSA public key (spec §5.3)."""

    fips_approved = True
    stanza_type = RSA_TYPE

    def __init__(self, public_key: rsa.RSAPublicKey):
        check_rsa_public_key(public_key)
        self.public_key = public_key
        self.tag = key_tag(public_key)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        _check_file_key(file_key)
        body = self.public_key.encrypt(file_key, _oaep())
        return [Stanza(RSA_TYPE, (b64encode(self.tag),), body)]

    def __repr__(self) -> str:
        return f"RsaOaepRecipient({self.public_key.key_size} bits, tag {self.tag.hex()})"


class RsaOaepIdentity:
    """Unwraps ``rsa-oaep-sha256`` stanzas carrying this key's tag."""

    fips_approved = True
    stanza_type = RSA_TYPE

    def __init__(self, private_key: rsa.RSAPrivateKey):
        check_rsa_public_key(private_key.public_key())
        self.private_key = private_key
        self.tag = key_tag(private_key.public_key())
        self._size = (private_key.key_size + 7) // 8

    def recipient(self) -> RsaOaepRecipient:
        return RsaOaepRecipient(self.private_key.public_key())

    def unwrap(self, stanzas: Sequence[Stanza], *, file_key_size: int = 32) -> bytes | None:
        for s in stanzas:
            if s.type != RSA_TYPE:
                continue
            if len(s.args) != 1:
                raise HeaderError("malformed rsa-oaep-sha256 stanza (expected one argument)")
            tag = b64decode(s.args[0])
            if len(tag) != TAG_SIZE:
                raise HeaderError("malformed rsa-oaep-sha256 stanza (bad key tag)")
            if tag != self.tag:
                continue
            if len(s.body) != self._size:
                raise HeaderError("malformed rsa-oaep-sha256 stanza (body length)")
            try:
                return self.private_key.decrypt(s.body, _oaep())
            except ValueError:
                # One undistinguished failure: no padding oracle. A 4-byte tag may collide.
                continue
        return None


# --- P-256 ECDH + HKDF-SHA256 + AES-KW ------------------------------------------------------


def _p256_kek(shared: bytes, share: bytes, recipient: bytes) -> bytes:
    return hkdf_sha256(shared, share + recipient, P256_INFO, 32)


class P256Recipient:
    """Wraps the file key for a P-256 public key via an ephemeral ECDH (spec §5.4)."""

    fips_approved = True
    stanza_type = P256_TYPE

    def __init__(self, public_key: ec.EllipticCurvePublicKey):
        check_p256(public_key)
        self.public_key = public_key

    def wrap(self, file_key: bytes, *, _ephemeral: int | None = None) -> list[Stanza]:
        """``_ephemeral`` (a private scalar) exists only for deterministic test vectors."""
        _check_file_key(file_key)
        if _ephemeral is None:
            eph = ec.generate_private_key(ec.SECP256R1())
        else:
            eph = ec.derive_private_key(_ephemeral, ec.SECP256R1())
        share = _sec1(eph.public_key())
        shared = eph.exchange(ec.ECDH(), self.public_key)
        kek = _p256_kek(shared, share, _sec1(self.public_key))
        return [Stanza(P256_TYPE, (b64encode(share),), aes_key_wrap(kek, file_key))]

    def __repr__(self) -> str:
        return "P256Recipient()"


class P256Identity:
    """Unwraps ``p256`` stanzas with a P-256 private key."""

    fips_approved = True
    stanza_type = P256_TYPE

    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        check_p256(private_key)
        self.private_key = private_key
        self._own = _sec1(private_key.public_key())

    def recipient(self) -> P256Recipient:
        return P256Recipient(self.private_key.public_key())

    def unwrap(self, stanzas: Sequence[Stanza], *, file_key_size: int = 32) -> bytes | None:
        for s in stanzas:
            if s.type != P256_TYPE:
                continue
            if len(s.args) != 1:
                raise HeaderError("malformed p256 stanza (expected one argument)")
            share = b64decode(s.args[0])
            if len(share) != P256_POINT_SIZE or share[0] != 4:
                raise HeaderError("malformed p256 stanza (share is not an uncompressed P-256 point)")
            try:
                peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), share)
            except ValueError:
                raise HeaderError("malformed p256 stanza (share is not on the curve)") from None
            if len(s.body) != file_key_size + KW_OVERHEAD:
                raise HeaderError("malformed p256 stanza (body length)")
            shared = self.private_key.exchange(ec.ECDH(), peer)
            try:
                return aes_key_unwrap(_p256_kek(shared, share, self._own), s.body)
            except InvalidUnwrap:
                continue
        return None


# --- PBKDF2-HMAC-SHA256 + AES-KW ------------------------------------------------------------


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    data = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
    if not data:
        raise ConfigError("the passphrase is empty")
    return data


def pbkdf2_kek(passphrase: bytes, salt: bytes, iterations: int) -> bytes:
    """PBKDF2-HMAC-SHA256 with the format's salt prefix (spec §5.5)."""
    kdf = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=PBKDF2_SALT_PREFIX + salt, iterations=iterations
    )
    return kdf.derive(passphrase)


def parse_iterations(text: str) -> int:
    """Parse the canonical decimal iteration count and enforce the bounds (header failure)."""
    if not _DECIMAL_RE.fullmatch(text):
        raise HeaderError("malformed pbkdf2-sha256 stanza (iteration count)")
    value = int(text)
    if value < MIN_ITERATIONS:
        raise HeaderError(f"pbkdf2-sha256 iteration count too low (minimum {MIN_ITERATIONS})")
    if value > MAX_ITERATIONS:
        raise HeaderError(f"pbkdf2-sha256 iteration count too high (maximum {MAX_ITERATIONS})")
    return value


class Pbkdf2Recipient:
    """Wraps the file key under a passphrase with PBKDF2 (spec §5.5); must be the only recipient."""

    fips_approved = True
    stanza_type = PBKDF2_TYPE

    def __init__(self, passphrase: str | bytes, *, iterations: int = DEFAULT_ITERATIONS):
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise ConfigError(
                f"PBKDF2 iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"
            )
        self._passphrase = _passphrase_bytes(passphrase)
        self.iterations = iterations
        # A fresh label per passphrase recipient: keys.check_labels then refuses to combine it
        # with any other recipient (spec: the stanza must be alone).
        self._label = frozenset({"passphrase-" + os.urandom(8).hex()})

    def labels(self) -> frozenset[str]:
        return self._label

    def wrap(self, file_key: bytes, *, _salt: bytes | None = None) -> list[Stanza]:
        """``_salt`` exists only for deterministic test vectors."""
        _check_file_key(file_key)
        salt = os.urandom(SALT_SIZE) if _salt is None else _salt
        if len(salt) != SALT_SIZE:
            raise ValueError("PBKDF2 salt must be 16 bytes")
        kek = pbkdf2_kek(self._passphrase, salt, self.iterations)
        args = (b64encode(salt), str(self.iterations))
        return [Stanza(PBKDF2_TYPE, args, aes_key_wrap(kek, file_key))]

    def __repr__(self) -> str:
        return "Pbkdf2Recipient(<passphrase>)"


class Pbkdf2Identity:
    """Unwraps a ``pbkdf2-sha256`` stanza with a passphrase."""

    fips_approved = True
    stanza_type = PBKDF2_TYPE

    def __init__(self, passphrase: str | bytes):
        self._passphrase = _passphrase_bytes(passphrase)

    def unwrap(self, stanzas: Sequence[Stanza], *, file_key_size: int = 32) -> bytes | None:
        for s in stanzas:
            if s.type != PBKDF2_TYPE:
                continue
            if len(stanzas) != 1:
                raise HeaderError("a pbkdf2-sha256 stanza must be the only one in the header")
            if len(s.args) != 2:
                raise HeaderError("malformed pbkdf2-sha256 stanza (expected two arguments)")
            salt = b64decode(s.args[0])
            if len(salt) != SALT_SIZE:
                raise HeaderError("malformed pbkdf2-sha256 stanza (salt must be 16 bytes)")
            iterations = parse_iterations(s.args[1])
            if len(s.body) != file_key_size + KW_OVERHEAD:
                raise HeaderError("malformed pbkdf2-sha256 stanza (body length)")
            try:
                return aes_key_unwrap(pbkdf2_kek(self._passphrase, salt, iterations), s.body)
            except InvalidUnwrap:
                return None  # wrong passphrase
        return None

    def __repr__(self) -> str:
        return "Pbkdf2Identity(<passphrase>)"


# --- loading keys ---------------------------------------------------------------------------


def is_pem(data: bytes) -> bool:
    """True if ``data`` holds at least one PEM block (public, certificate or private)."""
    return _PEM_RE.search(data) is not None


def recipient_for_public_key(key: object) -> RsaOaepRecipient | P256Recipient:
    """The recipient type matching a loaded public key; other key types are refused."""
    if isinstance(key, rsa.RSAPublicKey):
        return RsaOaepRecipient(key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return P256Recipient(key)
    raise KeyRefusedError(
        f"unsupported public key type {type(key).__name__} (RSA or P-256 expected)"
    )


def identity_for_private_key(key: object) -> RsaOaepIdentity | P256Identity:
    """The identity type matching a loaded private key; other key types are refused."""
    if isinstance(key, rsa.RSAPrivateKey):
        return RsaOaepIdentity(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return P256Identity(key)
    raise KeyRefusedError(
        f"unsupported private key type {type(key).__name__} (RSA or P-256 expected)"
    )


def _public_key_from_block(kind: bytes, block: bytes) -> object:
    try:
        if kind == b"CERTIFICATE":
            return x509.load_pem_x509_certificate(block).public_key()
        return serialization.load_pem_public_key(block)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyRefusedError(f"unreadable PEM {kind.decode()} block") from None


def parse_recipients_pem(data: bytes) -> list[RsaOaepRecipient | P256Recipient]:
    """Recipients from every PEM ``PUBLIC KEY`` / ``CERTIFICATE`` block in ``data``.

    A private key among them is refused: a recipients file is meant to be shared, and a private
    key inside it is almost certainly a mistake that is about to leak it.
    """
    out = []
    for m in _PEM_RE.finditer(data):
        kind = m.group(1)
        if kind in _PRIVATE_PEM or kind.endswith(b"PRIVATE KEY"):
            raise KeyRefusedError("a private key was given where a public key or certificate belongs")
        if kind not in _PUBLIC_PEM:
            raise KeyRefusedError(f"unsupported PEM block {kind.decode()}")
        out.append(recipient_for_public_key(_public_key_from_block(kind, m.group(0))))
    return out


def parse_recipient_bytes(data: bytes) -> list[RsaOaepRecipient | P256Recipient]:
    """Recipients from a PEM file, or from a single DER certificate / DER public key."""
    if is_pem(data):
        return parse_recipients_pem(data)
    for loader in (lambda d: x509.load_der_x509_certificate(d).public_key(),
                   serialization.load_der_public_key):
        try:
            return [recipient_for_public_key(loader(data))]
        except (ValueError, UnsupportedAlgorithm):
            continue
    raise KeyRefusedError("not a PEM/DER public key or X.509 certificate")


def parse_recipient_arg(value: str) -> list[RsaOaepRecipient | P256Recipient]:
    """``-r VALUE`` that is not an age recipient: a path to a public key or certificate file."""
    path = Path(value)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("recipient is neither an age recipient nor a readable key file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipient key file ({exc.strerror})") from None
    recipients = parse_recipient_bytes(data)
    if not recipients:
        raise ConfigError("the recipient key file holds no public key or certificate")
    return recipients


def load_recipients_file(path: str | os.PathLike[str]) -> tuple[list[RsaOaepRecipient | P256Recipient], list[str]]:
    """Split a ``-R`` file into FIPS recipients (from PEM blocks) and the remaining text lines.

    The remaining lines (age recipients, comments) are returned untouched for the age parser.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read recipients file ({exc.strerror})") from None
    if not is_pem(data):
        try:
            return parse_recipient_bytes(data), []
        except KeyRefusedError:
            return [], data.decode("utf-8", "replace").splitlines()
    recipients = parse_recipients_pem(data)
    rest = _PEM_RE.sub(b"", data).decode("utf-8", "replace").splitlines()
    return recipients, [line for line in rest if line.strip()]


def parse_identities_pem(data: bytes) -> list[RsaOaepIdentity | P256Identity]:
    """Identities from every PEM private-key block in ``data`` (unencrypted keys only)."""
    out = []
    for m in _PEM_RE.finditer(data):
        kind = m.group(1)
        if kind == b"ENCRYPTED PRIVATE KEY":
            raise KeyRefusedError("password-protected PEM keys are not supported; store it decrypted with mode 0600")
        if kind not in _PRIVATE_PEM:
            continue
        try:
            key = serialization.load_pem_private_key(m.group(0), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyRefusedError(f"unreadable PEM {kind.decode()} block") from None
        out.append(identity_for_private_key(key))
    return out


def load_identity_file(path: str | os.PathLike[str]) -> list[RsaOaepIdentity | P256Identity]:
    """Identities from a PEM private-key file (mode 0600 enforced like every secret file)."""
    identities = parse_identities_pem(read_secret_file(path))
    if not identities:
        raise ConfigError("the identity file holds no PEM private key")
    return identities


# --- FIPS policy ----------------------------------------------------------------------------


def is_approved(key: object) -> bool:
    """True for recipients/identities built only from FIPS-approved algorithms."""
    return getattr(key, "fips_approved", False) is True


def require_approved(keys: Iterable[object], what: str) -> None:
    """Raise FipsPolicyError naming the first non-approved key type (no key material)."""
    for key in keys:
        if not is_approved(key):
            raise FipsPolicyError(
                f"FIPS mode: {what} of type {type(key).__name__} uses a non-approved algorithm "
                "(only RSA-OAEP, P-256 and PBKDF2 passphrases are allowed)"
            )
