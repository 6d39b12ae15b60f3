"""Run every dicomsafe.aes/v1 test vector in tests/data/aes-vectors/ (docs/format-aes.md §12).

Each vector names its expected outcome; for payload failures the plaintext released before the
failure must hash to the vector's ``payload`` (the STREAM releases only authenticated chunks).
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from dicomsafe.crypto import aes, fips
from dicomsafe.crypto.age import parse_identity
from dicomsafe.crypto.header import HeaderError, HeaderMacError
from dicomsafe.crypto.stream import PayloadError
from dicomsafe.errors import NoIdentityMatchedError

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "data" / "aes-vectors"
NAMES = sorted(p.name for p in VECTORS.iterdir())

EXPECT = {
    "no match": NoIdentityMatchedError,
    "HMAC failure": HeaderMacError,
    "header failure": HeaderError,
    "payload failure": PayloadError,
    "key failure": fips.KeyRefusedError,
    "fips refusal": fips.FipsPolicyError,
}


def parse_vector(path: Path) -> tuple[dict[str, list[str]], bytes]:
    raw = path.read_bytes()
    head, data = raw.split(b"\n\n", 1)
    meta: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, value = line.split(": ", 1)
        meta.setdefault(key, []).append(value)
    return meta, data


def load_identities(meta: dict[str, list[str]]) -> list:
    ids: list = [parse_identity(v) for v in meta.get("identity", [])]
    for der in meta.get("pkcs8", []):
        key = serialization.load_der_private_key(base64.b64decode(der), password=None)
        ids.append(fips.identity_for_private_key(key))
    ids.extend(fips.Pbkdf2Identity(p) for p in meta.get("passphrase", []))
    return ids


def test_vector_set_is_complete():
    # the list: one success per recipient type, sizes, every failure class, FIPS
    required = {
        "rsa_oaep", "p256", "pbkdf2", "x25519", "hybrid", "stream_empty", "stream_one_byte",
        "stream_64k", "stream_64k_plus_1", "rsa_no_match", "hmac_bad", "payload_flipped_byte",
        "payload_truncated", "payload_trailing_data", "payload_reordered_chunks", "version_v2",
        "pbkdf2_iterations_weak", "rsa_1024_identity", "fips_x25519_identity", "fips_age_file",
    }
    assert required <= set(NAMES)
    expects = {parse_vector(VECTORS / n)[0]["expect"][0] for n in NAMES}
    assert expects == {"success", *EXPECT}


@pytest.mark.parametrize("name", NAMES)
def test_vector(name: str):
    meta, data = parse_vector(VECTORS / name)
    expect = meta["expect"][0]
    fips_mode = meta.get("fips", ["no"])[0] == "yes"
    out = io.BytesIO()
    if expect == "success":
        aes.decrypt_stream(io.BytesIO(data), out, load_identities(meta), fips=fips_mode)
        assert hashlib.sha256(out.getvalue()).hexdigest() == meta["payload"][0]
        return
    with pytest.raises(EXPECT[expect]):
        aes.decrypt_stream(io.BytesIO(data), out, load_identities(meta), fips=fips_mode)
    if expect == "payload failure":
        assert hashlib.sha256(out.getvalue()).hexdigest() == meta["payload"][0]
    else:
        assert out.getvalue() == b""  # nothing released before the payload


def test_success_vectors_reencrypt_identically():
    """STREAM round trip (CCTV's advice): the file key re-encrypts the payload byte for byte."""
    for name in NAMES:
        meta, data = parse_vector(VECTORS / name)
        if meta["expect"][0] != "success":
            continue
        opened = aes.open_header(io.BytesIO(data), load_identities(meta), fips=False) if "fips" not in meta else None
        if opened is None:
            continue
        assert opened.file_key.hex() == meta["file key"][0]
        plain = io.BytesIO()
        aes.decrypt_stream(io.BytesIO(data), plain, load_identities(meta))
        stanzas = list(opened.header.stanzas)

        class Same:
            def wrap(self, file_key: bytes) -> list:
                return stanzas

        hl = len(opened.header.raw)
        again = io.BytesIO()
        aes.encrypt_stream(io.BytesIO(plain.getvalue()), again, [Same()],
                           _file_key=opened.file_key, _nonce=data[hl : hl + 16])
        assert again.getvalue() == data, name


def test_generator_is_deterministic_and_matches_checked_in_vectors():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-aes-vectors"), "--check"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
