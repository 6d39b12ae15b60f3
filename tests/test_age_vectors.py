"""The 143 C2SP/CCTV age test vectors, run through the public decryption API.

Each vector names the expected outcome; failures must be of the right *kind* (a parse error must
not be masked as a MAC error and so on), and the plaintext released before any failure must hash
to the vector's ``payload`` value (STREAM releases only authenticated chunks).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path

import pytest

from dicomsafe.crypto import age, decrypt_stream
from dicomsafe.crypto.armor import ArmorError
from dicomsafe.crypto.header import HeaderError, HeaderMacError
from dicomsafe.crypto.stream import PayloadError
from dicomsafe.errors import CryptoError, NoIdentityMatchedError

VECTORS = Path(__file__).parent / "data" / "age-vectors" / "testdata"
NAMES = sorted(p.name for p in VECTORS.iterdir())


def load_vector(name: str) -> tuple[dict[str, list[str]], bytes]:
    raw = (VECTORS / name).read_bytes()
    head, _, body = raw.partition(b"\n\n")
    meta: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        meta.setdefault(key, []).append(value)
    if meta.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return meta, body


def classify(exc: BaseException | None) -> str:
    if exc is None:
        return "success"
    if isinstance(exc, ArmorError):
        return "armor failure"
    if isinstance(exc, NoIdentityMatchedError):
        return "no match"
    if isinstance(exc, HeaderMacError):
        return "HMAC failure"
    if isinstance(exc, HeaderError):
        return "header failure"
    if isinstance(exc, PayloadError):
        return "payload failure"
    return f"unexpected {type(exc).__name__}"


def test_all_143_vectors_are_present():
    assert len(NAMES) == 143


@pytest.mark.parametrize("name", NAMES)
def test_vector(name):
    meta, body = load_vector(name)
    identities = [age.parse_identity(s) for s in meta.get("identity", [])]
    identities += [age.ScryptIdentity(p.encode()) for p in meta.get("passphrase", [])]
    out = io.BytesIO()
    error = None
    try:
        decrypt_stream(io.BytesIO(body), out, identities)
    except CryptoError as exc:
        error = exc
    expect = meta["expect"][0]
    assert classify(error) == expect, f"{name}: {error!r}"
    if "payload" in meta:
        assert hashlib.sha256(out.getvalue()).hexdigest() == meta["payload"][0]
    elif expect != "success":
        assert out.getvalue() == b"" or expect == "payload failure"


def test_armored_vectors_round_trip_the_armor():
    """Re-armoring the decoded bytes of each valid armored vector gives a file that decodes to
    the same bytes (encode/decode agree, modulo the whitespace/CRLF the decoder tolerates)."""
    from dicomsafe.crypto.armor import ArmorReader, ArmorWriter

    checked = 0
    for name in NAMES:
        meta, body = load_vector(name)
        if meta.get("armored") != ["yes"] or meta["expect"][0] == "armor failure":
            continue
        decoded = ArmorReader(io.BufferedReader(io.BytesIO(body))).read()
        again = io.BytesIO()
        w = ArmorWriter(again)
        w.write(decoded)
        w.close()
        assert ArmorReader(io.BufferedReader(io.BytesIO(again.getvalue()))).read() == decoded
        checked += 1
    assert checked >= 5


def test_header_encoder_round_trips_every_parsable_header():
    """CCTV: every vector whose header parses must re-encode to the identical bytes — the
    encoder and the strict parser agree on one canonical form."""
    from dicomsafe.crypto import header as hdr
    from dicomsafe.crypto import _input

    checked = 0
    for name in NAMES:
        meta, body = load_vector(name)
        if meta["expect"][0] in ("header failure", "armor failure"):
            continue
        parsed = hdr.parse_header(hdr.AGE_V1, _input(io.BytesIO(body)))
        again = hdr.encode_mac_input(parsed.version_line, parsed.stanzas)
        assert again == parsed.mac_input, name
        assert again + b" " + hdr.b64encode(parsed.mac).encode() + b"\n" == parsed.raw, name
        checked += 1
    assert checked == 59  # every vector that is not a header or armor failure


def test_stream_round_trips_every_success_vector():
    """CCTV: re-encrypting the released plaintext with the vector's file key and payload nonce
    reproduces the vector's payload byte for byte (unarmored vectors)."""
    from dicomsafe.crypto import header as hdr
    from dicomsafe.crypto import stream
    from dicomsafe.crypto.header import payload_key
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    checked = 0
    for name in NAMES:
        meta, body = load_vector(name)
        if meta["expect"][0] != "success" or meta.get("armored") == ["yes"]:
            continue
        reader = io.BytesIO(body)
        parsed = hdr.parse_header(hdr.AGE_V1, reader)
        nonce = reader.read(16)
        payload = reader.read()
        file_key = bytes.fromhex(meta["file key"][0])
        aead = ChaCha20Poly1305(payload_key(hdr.AGE_V1, file_key, nonce))
        plain = io.BytesIO()
        stream.decrypt(aead, io.BytesIO(payload), plain)
        again = io.BytesIO()
        stream.encrypt(aead, io.BytesIO(plain.getvalue()), again)
        assert again.getvalue() == payload, name
        assert parsed.raw == body[: len(parsed.raw)]
        checked += 1
    assert checked == 19  # every unarmored success vector
