"""dicomsafe.aes/v1: round trips per recipient type, key loading, refusals, FIPS policy, rekey,
byte-level conformance to docs/format-aes.md, and the age CLI refusing aes files.

Real keys throughout (RSA, P-256, X25519, ML-KEM hybrid), real PBKDF2 at 600,000 iterations.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from cryptography.x509.oid import NameOID

import dicomsafe.crypto as crypto
from dicomsafe.crypto import aes, fips
from dicomsafe.crypto.age import HybridIdentity, X25519Identity
from dicomsafe.crypto.header import HeaderError, HeaderMacError, b64decode
from dicomsafe.crypto.stream import CHUNK_SIZE, READ_CHUNKS, PayloadError
from dicomsafe.errors import ConfigError, IntegrityError, NoIdentityMatchedError, SecretFileError

SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def enc(data: bytes, recipients, **kw) -> bytes:
    out = io.BytesIO()
    n = aes.encrypt_stream(io.BytesIO(data), out, recipients, **kw)
    assert n == len(data)
    return out.getvalue()


def dec(blob: bytes, identities, **kw) -> bytes:
    out = io.BytesIO()
    aes.decrypt_stream(io.BytesIO(blob), out, identities, **kw)
    return out.getvalue()


def pem_public(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pem_private(key, fmt=serialization.PrivateFormat.PKCS8, encryption=None) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, fmt, encryption or serialization.NoEncryption()
    )


def write_secret(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def self_signed(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dicomsafe test archive key")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_rsa_round_trip_from_pem_files(tmp_path, rsa_key, size):
    pub = tmp_path / "archive.pub.pem"
    pub.write_bytes(pem_public(rsa_key))
    priv = write_secret(tmp_path / "archive.key.pem", pem_private(rsa_key))
    data = os.urandom(size)
    blob = enc(data, fips.parse_recipient_arg(str(pub)))
    assert dec(blob, fips.load_identity_file(priv)) == data
    assert dec(blob, crypto.load_identities(priv)) == data  # the public API takes the same file


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_rsa_round_trip_from_x509_certificate(tmp_path, rsa_key, encoding):
    cert = tmp_path / "archive.crt"
    cert.write_bytes(self_signed(rsa_key).public_bytes(encoding))
    (recipient,) = fips.parse_recipient_arg(str(cert))
    assert isinstance(recipient, fips.RsaOaepRecipient)
    blob = enc(b"study bytes", [recipient])
    pkcs1 = write_secret(tmp_path / "k.pem", pem_private(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL))
    assert dec(blob, fips.load_identity_file(pkcs1)) == b"study bytes"


@pytest.mark.parametrize("size", [0, CHUNK_SIZE + 1])
def test_p256_round_trip_from_certificate_and_sec1_key(tmp_path, p256_key, size):
    cert = tmp_path / "p256.crt"
    cert.write_bytes(self_signed(p256_key).public_bytes(serialization.Encoding.PEM))
    sec1 = write_secret(tmp_path / "p256.pem", pem_private(p256_key, serialization.PrivateFormat.TraditionalOpenSSL))
    data = os.urandom(size)
    blob = enc(data, fips.parse_recipient_arg(str(cert)))
    assert dec(blob, fips.load_identity_file(sec1)) == data


def test_pbkdf2_round_trip_real_iterations():
    blob = enc(b"x" * 1000, [fips.Pbkdf2Recipient("long enough passphrase")])
    stanza_line = blob.split(b"\n")[1].split(b" ")
    assert stanza_line[:2] == [b"->", b"pbkdf2-sha256"] and stanza_line[3] == b"600000"
    assert dec(blob, [fips.Pbkdf2Identity("long enough passphrase")]) == b"x" * 1000
    with pytest.raises(NoIdentityMatchedError):
        dec(blob, [fips.Pbkdf2Identity("another passphrase")])


def test_age_key_pair_serves_both_formats():
    x = X25519Identity.generate()
    hy = HybridIdentity.generate()
    for ident in (x, hy):
        for fmt in ("age", "aes"):
            out = io.BytesIO()
            crypto.encrypt_stream(io.BytesIO(b"payload"), out, [ident.recipient()], format=fmt)
            assert crypto.detect_format(io.BytesIO(out.getvalue())) == fmt
            plain = io.BytesIO()
            crypto.decrypt_stream(io.BytesIO(out.getvalue()), plain, [ident])
            assert plain.getvalue() == b"payload"


def test_multiple_recipients_each_open(rsa_key, p256_key):
    x = X25519Identity.generate()
    blob = enc(b"multi", [fips.RsaOaepRecipient(rsa_key.public_key()),
                          fips.P256Recipient(p256_key.public_key()), x.recipient()])
    for ident in (fips.RsaOaepIdentity(rsa_key), fips.P256Identity(p256_key), x):
        assert dec(blob, [ident]) == b"multi"


def test_reads_are_bounded_to_one_read_block(p256_key):
    """Constant memory: the encryptor never asks its reader for more than one read block
    (READ_CHUNKS chunks, 1 MiB), however long the input."""
    sizes: list[int] = []

    class Recording(io.BytesIO):
        def read(self, n=-1):
            sizes.append(n)
            return super().read(n)

    out = io.BytesIO()
    aes.encrypt_stream(Recording(os.urandom(40 * CHUNK_SIZE + 3)), out, [fips.P256Recipient(p256_key.public_key())])
    assert sizes and all(0 < n <= READ_CHUNKS * CHUNK_SIZE for n in sizes)


# --- conformance with the written specification ----------------------------------------------


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def test_p256_file_matches_the_specification_byte_for_byte(p256_key):
    """Re-derive every key of a p256 file from docs/format-aes.md with raw primitives."""
    data = os.urandom(CHUNK_SIZE + 5)
    blob = enc(data, [fips.P256Recipient(p256_key.public_key())])
    head, rest = blob.split(b"\n--- ", 1)
    lines = head.split(b"\n")
    assert lines[0] == b"dicomsafe.aes/v1"
    kind, share_b64 = lines[1].split(b" ")[1:]
    assert kind == b"p256"
    share = b64decode(share_b64.decode())
    assert len(share) == 65 and share[0] == 4
    body = b64decode(lines[2].decode())
    assert len(body) == 40 and len(lines) == 3
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), share)
    z = p256_key.exchange(ec.ECDH(), peer)
    own = p256_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    file_key = aes_key_unwrap(_hkdf(z, share + own, b"dicomsafe.aes/v1/p256"), body)
    assert len(file_key) == 32
    mac_b64, payload = rest.split(b"\n", 1)
    expected_mac = hmac.new(_hkdf(file_key, b"", b"header"), head + b"\n---", "sha256").digest()
    assert b64decode(mac_b64.decode()) == expected_mac
    nonce, chunks = payload[:16], payload[16:]
    gcm = AESGCM(_hkdf(file_key, nonce, b"payload"))
    first = gcm.decrypt(bytes(11) + b"\x00", chunks[: CHUNK_SIZE + 16], None)
    last = gcm.decrypt((1).to_bytes(11, "big") + b"\x01", chunks[CHUNK_SIZE + 16 :], None)
    assert first + last == data


def test_rsa_stanza_matches_the_specification(rsa_key):
    blob = enc(b"", [fips.RsaOaepRecipient(rsa_key.public_key())])
    lines = blob.split(b"\n")
    _, kind, tag_b64 = lines[1].split(b" ")
    assert kind == b"rsa-oaep-sha256"
    spki = rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert b64decode(tag_b64.decode()) == hashlib.sha256(spki).digest()[:4]
    body = b64decode(b"".join(lines[2:8]).decode())  # 342 base64 columns: 5 full lines + 1
    assert len(body) == 256
    from cryptography.hazmat.primitives.asymmetric import padding

    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                        label=b"dicomsafe.aes/v1/rsa-oaep-sha256")
    assert len(rsa_key.decrypt(body, oaep)) == 32


# --- refusals ----------------------------------------------------------------------------


def test_rsa_key_bounds_and_exponent():
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(fips.KeyRefusedError, match="too small"):
        fips.RsaOaepRecipient(small.public_key())
    with pytest.raises(fips.KeyRefusedError, match="too small"):
        fips.RsaOaepIdentity(small)
    e3 = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(fips.KeyRefusedError, match="exponent"):
        fips.RsaOaepRecipient(e3.public_key())


def test_other_curves_and_key_types_refused(tmp_path):
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(fips.KeyRefusedError, match="P-256"):
        fips.P256Recipient(p384.public_key())
    edpem = tmp_path / "ed.pem"
    edpem.write_bytes(pem_public(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(fips.KeyRefusedError):
        fips.parse_recipient_arg(str(edpem))


def test_private_key_in_recipient_file_refused(tmp_path, rsa_key):
    leaked = tmp_path / "oops.pem"
    leaked.write_bytes(pem_private(rsa_key))
    with pytest.raises(fips.KeyRefusedError, match="private key"):
        fips.parse_recipient_arg(str(leaked))


def test_identity_file_rules(tmp_path, rsa_key):
    loose = tmp_path / "loose.pem"
    loose.write_bytes(pem_private(rsa_key))
    loose.chmod(0o644)
    with pytest.raises(SecretFileError):
        fips.load_identity_file(loose)
    locked = write_secret(
        tmp_path / "enc.pem",
        pem_private(rsa_key, encryption=serialization.BestAvailableEncryption(b"pw")),
    )
    with pytest.raises(fips.KeyRefusedError, match="password-protected"):
        fips.load_identity_file(locked)
    public_only = write_secret(tmp_path / "pub.pem", pem_public(rsa_key))
    with pytest.raises(ConfigError):
        fips.load_identity_file(public_only)


def test_recipients_file_mixes_pem_and_age_lines(tmp_path, rsa_key, p256_key):
    x = X25519Identity.generate()
    f = tmp_path / "recipients.txt"
    f.write_bytes(b"# archive keys\n" + pem_public(rsa_key) + str(x.recipient()).encode() + b"\n"
                  + self_signed(p256_key).public_bytes(serialization.Encoding.PEM))
    pem, rest = fips.load_recipients_file(f)
    assert [type(r) for r in pem] == [fips.RsaOaepRecipient, fips.P256Recipient]
    assert rest == ["# archive keys", str(x.recipient())]
    assert len(crypto.load_recipients_file(f)) == 3


def test_passphrase_rules(rsa_key):
    with pytest.raises(ConfigError):
        fips.Pbkdf2Recipient("")
    with pytest.raises(ConfigError):
        fips.Pbkdf2Recipient("pw", iterations=100_000)
    with pytest.raises(ConfigError, match="passphrase"):
        enc(b"x", [fips.Pbkdf2Recipient("pw"), fips.RsaOaepRecipient(rsa_key.public_key())])


def test_hybrid_and_classic_recipients_not_mixed(rsa_key):
    with pytest.raises(ConfigError, match="post-quantum"):
        enc(b"x", [HybridIdentity.generate().recipient(), fips.RsaOaepRecipient(rsa_key.public_key())])


def test_no_armor_for_aes():
    with pytest.raises(ConfigError, match="armor"):
        crypto.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), [X25519Identity.generate().recipient()],
                              format="aes", armor=True)


# --- FIPS policy -------------------------------------------------------------------------


def test_fips_refuses_non_approved_recipients_and_identities(p256_key):
    x = X25519Identity.generate()
    with pytest.raises(fips.FipsPolicyError):
        enc(b"x", [x.recipient()], fips=True)
    with pytest.raises(fips.FipsPolicyError):
        enc(b"x", [HybridIdentity.generate().recipient()], fips=True)
    blob = enc(b"x", [x.recipient(), fips.P256Recipient(p256_key.public_key())])
    with pytest.raises(fips.FipsPolicyError):
        dec(blob, [x], fips=True)
    assert dec(blob, [fips.P256Identity(p256_key)], fips=True) == b"x"
    with pytest.raises(ConfigError, match="FIPS"):
        crypto.encrypt_stream(io.BytesIO(b"x"), io.BytesIO(), [fips.P256Recipient(p256_key.public_key())],
                              format="age", fips=True)


def test_fips_refuses_age_files(p256_key):
    x = X25519Identity.generate()
    age_file = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(b"x"), age_file, [x.recipient()], format="age")
    with pytest.raises(fips.FipsPolicyError, match="age"):
        dec(age_file.getvalue(), [fips.P256Identity(p256_key)], fips=True)
    with pytest.raises(HeaderError):  # without --fips the aes reader just does not know it
        dec(age_file.getvalue(), [fips.P256Identity(p256_key)])


# --- tampering and files --------------------------------------------------------------------


def test_decrypt_file_leaves_nothing_on_failure(tmp_path, p256_key, rsa_key):
    src = tmp_path / "plain"
    src.write_bytes(os.urandom(2 * CHUNK_SIZE + 9))
    blob_path = tmp_path / "enc.aes"
    crypto.encrypt_file(src, blob_path, [fips.P256Recipient(p256_key.public_key())], format="aes")
    blob = blob_path.read_bytes()
    hl = blob.index(b"\n--- ")
    hl = blob.index(b"\n", hl + 1) + 1
    cases = {
        "flipped": blob[: hl + 40] + bytes([blob[hl + 40] ^ 1]) + blob[hl + 41 :],
        "truncated": blob[:-1],
        "trailing": blob + b"\x00",
        "last_chunk_dropped": blob[: hl + 16 + 2 * (CHUNK_SIZE + 16)],
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.aes"
        bad.write_bytes(data)
        out = tmp_path / f"{name}.out"
        with pytest.raises(IntegrityError):
            crypto.decrypt_file(bad, out, [fips.P256Identity(p256_key)])
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.out")], name
    out = tmp_path / "wrong.out"
    with pytest.raises(NoIdentityMatchedError):
        crypto.decrypt_file(blob_path, out, [fips.RsaOaepIdentity(rsa_key)])
    assert not out.exists()
    crypto.decrypt_file(blob_path, tmp_path / "ok.out", [fips.P256Identity(p256_key)])
    assert (tmp_path / "ok.out").read_bytes() == src.read_bytes()


def test_header_mac_covers_stanzas(p256_key):
    blob = enc(b"x", [fips.P256Recipient(p256_key.public_key())])
    tampered = blob.replace(b"-> p256 ", b"-> p256 ", 1).replace(b"\n---", b"\n-> grease\n\n---", 1)
    with pytest.raises(HeaderMacError):
        dec(tampered, [fips.P256Identity(p256_key)])


def test_gcm_chunk_limit_is_enforced(p256_key):
    r = [fips.P256Recipient(p256_key.public_key())]
    enc(os.urandom(2 * CHUNK_SIZE), r, _max_chunks=2)  # exactly at the limit
    with pytest.raises(PayloadError, match="2\\^32"):
        enc(os.urandom(2 * CHUNK_SIZE + 1), r, _max_chunks=2)
    blob = enc(os.urandom(2 * CHUNK_SIZE), r)
    reader = io.BytesIO(blob)
    opened = aes.open_header(reader, [fips.P256Identity(p256_key)])
    with pytest.raises(PayloadError, match="2\\^32"):
        aes.decrypt_payload(opened, reader, io.BytesIO(), _max_chunks=1)


def test_rekey_rsa_to_p256_keeps_payload(tmp_path, rsa_key, p256_key):
    path = tmp_path / "study.aes"
    src = tmp_path / "plain"
    src.write_bytes(os.urandom(CHUNK_SIZE * 2 + 1))
    crypto.encrypt_file(src, path, [fips.RsaOaepRecipient(rsa_key.public_key())], format="aes")
    before = path.read_bytes()
    old_hl = before.index(b"\n", before.index(b"\n--- ") + 1) + 1
    new_header, hl = aes.rekey_header(io.BytesIO(before), [fips.RsaOaepIdentity(rsa_key)],
                                      [fips.P256Recipient(p256_key.public_key())], fips=True)
    assert hl == old_hl and new_header.startswith(b"dicomsafe.aes/v1\n-> p256 ")
    crypto.rekey_file(path, [fips.RsaOaepIdentity(rsa_key)], [fips.P256Recipient(p256_key.public_key())], fips=True)
    after = path.read_bytes()
    new_hl = after.index(b"\n", after.index(b"\n--- ") + 1) + 1
    assert after[new_hl:] == before[old_hl:]  # payload bytes untouched
    with pytest.raises(NoIdentityMatchedError):
        dec(after, [fips.RsaOaepIdentity(rsa_key)])
    assert dec(after, [fips.P256Identity(p256_key)]) == src.read_bytes()


# --- the real age CLI -----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("age") is None, reason="age CLI not installed")
def test_age_cli_refuses_aes_file_cleanly(tmp_path):
    ident = X25519Identity.generate()
    keyfile = write_secret(tmp_path / "key.txt", (ident.encode() + "\n").encode())
    blob = tmp_path / "study.aes"
    blob.write_bytes(enc(b"secret study", [ident.recipient()]))
    out = tmp_path / "out.bin"
    res = subprocess.run(["age", "-d", "-i", str(keyfile), "-o", str(out), str(blob)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "panic" not in res.stderr and "goroutine" not in res.stderr
    assert res.stderr.strip()  # a message, not silence
    assert not out.exists() or out.read_bytes() == b""


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_keys_made_by_the_openssl_cli_work(tmp_path):
    """Sites make their keys with openssl; its default PEM output must load as is."""
    for name, args in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"]),
                       ("ec", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        key = tmp_path / f"{name}.pem"
        pub = tmp_path / f"{name}.pub"
        subprocess.run(["openssl", "genpkey", *args, "-out", str(key)], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)], check=True,
                       capture_output=True)
        key.chmod(0o600)
        blob = enc(b"from openssl keys", fips.parse_recipient_arg(str(pub)))
        assert dec(blob, fips.load_identity_file(key), fips=True) == b"from openssl keys"


def test_every_single_bit_flip_is_detected(p256_key):
    """Exhaustive: flipping any one bit anywhere in a file (header, MAC, nonce, chunks) fails
    with a CryptoError — it never yields plaintext."""
    from dicomsafe.errors import CryptoError

    blob = enc(b"sixteen byte msg", [fips.P256Recipient(p256_key.public_key())])
    ident = [fips.P256Identity(p256_key)]
    for pos in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = blob[:pos] + bytes([blob[pos] ^ bit]) + blob[pos + 1 :]
            with pytest.raises(CryptoError):
                dec(bad, ident)
