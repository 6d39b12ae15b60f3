"""dicomsafe.crypto public API with the age format: round trips, tampering, rekey, atomicity.

Real keys, real files, real `cryptography`; nothing mocked.
"""

from __future__ import annotations

import io
import os
import stat

import pytest

from dicomsafe import crypto
from dicomsafe.crypto import age, envelope, header, stream
from dicomsafe.crypto.armor import ArmorError
from dicomsafe.errors import (
    ConfigError,
    CryptoError,
    FormatError,
    IntegrityError,
    NoIdentityMatchedError,
)

CHUNK = stream.CHUNK_SIZE
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK]


def enc(data: bytes, recipients, **kw) -> bytes:
    out = io.BytesIO()
    n = crypto.encrypt_stream(io.BytesIO(data), out, recipients, **kw)
    assert n == len(data)
    return out.getvalue()


def dec(blob: bytes, identities) -> bytes:
    out = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(blob), out, identities)
    return out.getvalue()


@pytest.fixture(scope="module")
def x_ident():
    return age.X25519Identity.generate()


@pytest.fixture(scope="module")
def pq_ident():
    return age.HybridIdentity.generate()


@pytest.mark.parametrize("size", SIZES)
def test_x25519_round_trip(size, x_ident):
    data = os.urandom(size)
    blob = enc(data, [x_ident.recipient()])
    assert blob.startswith(b"age-encryption.org/v1\n-> X25519 ")
    assert dec(blob, [x_ident]) == data


@pytest.mark.parametrize("size", [0, CHUNK + 1])
def test_hybrid_round_trip(size, pq_ident):
    data = os.urandom(size)
    blob = enc(data, [pq_ident.recipient()])
    assert b"\n-> mlkem768x25519 " in blob
    assert dec(blob, [pq_ident]) == data
    assert age.HybridRecipient.parse(pq_ident.recipient().encode()) == pq_ident.recipient()


def test_scrypt_round_trip_and_wrong_passphrase():
    data = b"passphrase protected"
    blob = enc(data, [age.ScryptRecipient(b"correct horse", log_n=10)])
    assert dec(blob, [age.ScryptIdentity(b"correct horse")]) == data
    with pytest.raises(NoIdentityMatchedError):
        dec(blob, [age.ScryptIdentity(b"wrong horse")])


def test_scrypt_work_factor_above_limit_is_refused():
    blob = enc(b"x", [age.ScryptRecipient(b"pw", log_n=12)])
    with pytest.raises(header.HeaderError):
        dec(blob, [age.ScryptIdentity(b"pw", max_log_n=11)])


def test_armor_round_trip(x_ident):
    data = os.urandom(2 * CHUNK + 7)
    blob = enc(data, [x_ident.recipient()], armor=True)
    lines = blob.split(b"\n")
    assert lines[0] == b"-----BEGIN AGE ENCRYPTED FILE-----"
    assert lines[-2] == b"-----END AGE ENCRYPTED FILE-----"
    assert all(len(ln) <= 64 for ln in lines[1:-2])
    assert dec(blob, [x_ident]) == data
    # armor damage is an armor error, not a silent success
    with pytest.raises(ArmorError):
        dec(blob.replace(b"-----END AGE", b"-----END AgE"), [x_ident])


def test_keys_encode_and_parse_round_trip(x_ident, pq_ident):
    assert age.parse_identity(x_ident.encode()).secret == x_ident.secret
    assert age.parse_identity(pq_ident.encode()).seed == pq_ident.seed
    r = x_ident.recipient().encode()
    assert r.startswith("age1") and age.parse_recipient(r).public_key == x_ident.recipient().public_key
    assert pq_ident.recipient().encode().startswith("age1pq1")
    with pytest.raises(ConfigError):
        age.parse_recipient(r[:-1] + ("q" if r[-1] != "q" else "p"))  # checksum breaks
    with pytest.raises(ConfigError):
        age.parse_recipient(r.upper())  # recipients are lower case


def test_multiple_recipients_each_decrypts():
    a, b = age.X25519Identity.generate(), age.X25519Identity.generate()
    blob = enc(b"shared", [a.recipient(), b.recipient()])
    assert dec(blob, [a]) == b"shared"
    assert dec(blob, [b]) == b"shared"
    with pytest.raises(NoIdentityMatchedError):
        dec(blob, [age.X25519Identity.generate()])


def test_recipient_mixing_rules(x_ident, pq_ident):
    with pytest.raises(ConfigError):
        enc(b"x", [age.ScryptRecipient(b"pw", log_n=10), x_ident.recipient()])
    with pytest.raises(ConfigError):
        enc(b"x", [pq_ident.recipient(), x_ident.recipient()])


def test_short_reads_like_a_pipe(x_ident):
    """Readers that return fewer bytes than asked (pipes, sockets) still decrypt exactly."""

    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self._buf = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            chunk = self._buf.read(min(len(b), 997))
            b[: len(chunk)] = chunk
            return len(chunk)

    data = os.urandom(3 * CHUNK + 5)
    out = io.BytesIO()
    crypto.encrypt_stream(Trickle(data), out, [x_ident.recipient()])
    plain = io.BytesIO()
    crypto.decrypt_stream(Trickle(out.getvalue()), plain, [x_ident])
    assert plain.getvalue() == data


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 16 * CHUNK - 1, 16 * CHUNK, 16 * CHUNK + 1,
                               32 * CHUNK, 33 * CHUNK - 7])
def test_chunking_across_read_blocks(x_ident, n):
    """The encryptor reads 16 chunks at a time; around those blocks every chunk is still 64 KiB
    but the last, a non-empty input never ends in an empty chunk, and the age CLI's rules hold:
    payload size = n + 16 per chunk, chunks = max(1, ceil(n / 64 KiB))."""
    data = os.urandom(n)
    blob = enc(data, [x_ident.recipient()])
    chunks = max(1, -(-n // CHUNK))
    assert len(blob) - _payload_start(blob) == n + 16 * chunks
    assert dec(blob, [x_ident]) == data


# --- tampering ------------------------------------------------------------------------------


def _payload_start(blob: bytes) -> int:
    return len(header.parse_header(header.AGE_V1, io.BytesIO(blob)).raw) + 16


def test_flipped_payload_byte_fails(x_ident):
    blob = bytearray(enc(os.urandom(CHUNK + 10), [x_ident.recipient()]))
    blob[-5] ^= 1
    with pytest.raises(IntegrityError):
        dec(bytes(blob), [x_ident])


def test_flipped_header_byte_fails(x_ident):
    blob = enc(b"data", [x_ident.recipient()])
    # change the stanza's share argument: fails as a header/MAC/no-match error, never success
    i = blob.index(b"X25519 ") + 10
    bad = blob[:i] + (b"A" if blob[i : i + 1] != b"A" else b"B") + blob[i + 1 :]
    with pytest.raises(CryptoError):
        dec(bad, [x_ident])
    # a changed MAC is an integrity error
    j = blob.index(b"--- ") + 6
    bad = blob[:j] + (b"A" if blob[j : j + 1] != b"A" else b"B") + blob[j + 1 :]
    with pytest.raises(CryptoError):
        dec(bad, [x_ident])


def test_truncations_fail(x_ident):
    data = os.urandom(2 * CHUNK)
    blob = enc(data, [x_ident.recipient()])
    start = _payload_start(blob)
    enc_chunk = CHUNK + 16
    for cut in (len(blob) - 1, start + enc_chunk, start + 5, start):
        with pytest.raises(CryptoError):
            dec(blob[:cut], [x_ident])
    with pytest.raises(FormatError):
        dec(blob[: start - 20], [x_ident])


def test_trailing_data_fails(x_ident):
    blob = enc(b"hello", [x_ident.recipient()])
    with pytest.raises(stream.PayloadError):
        dec(blob + b"\x00", [x_ident])


def test_reordered_and_duplicated_chunks_fail(x_ident):
    blob = enc(os.urandom(3 * CHUNK + 100), [x_ident.recipient()])
    s, n = _payload_start(blob), CHUNK + 16
    c0, c1, c2, c3 = (blob[s + k * n : s + (k + 1) * n] for k in range(4))
    head = blob[:s]
    assert head + c0 + c1 + c2 + c3 == blob
    for body in (c1 + c0 + c2 + c3, c0 + c0 + c1 + c2 + c3, c0 + c1 + c1 + c2 + c3, c0 + c2 + c3):
        with pytest.raises(stream.PayloadError):
            dec(head + body, [x_ident])


def test_wrong_format_input_is_a_format_error(x_ident):
    with pytest.raises(FormatError):
        dec(b"this is not an encrypted file\n", [x_ident])
    with pytest.raises(FormatError):
        dec(b"", [x_ident])


# --- files: atomic decrypt, rekey ------------------------------------------------------------


def test_decrypt_file_is_atomic_and_private(tmp_path, x_ident):
    src = tmp_path / "plain.bin"
    data = os.urandom(2 * CHUNK + 3)
    src.write_bytes(data)
    ct = tmp_path / "c.age"
    crypto.encrypt_file(src, ct, [x_ident.recipient()])
    out = tmp_path / "out.bin"
    assert crypto.decrypt_file(ct, out, [x_ident]) == len(data)
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    # last chunk damaged: the first chunks authenticate, but no file may appear
    bad = bytearray(ct.read_bytes())
    bad[-1] ^= 0xFF
    ct.write_bytes(bytes(bad))
    out2 = tmp_path / "out2.bin"
    with pytest.raises(IntegrityError):
        crypto.decrypt_file(ct, out2, [x_ident])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.age", "out.bin", "plain.bin"]


def test_rekey_in_place_keeps_payload(tmp_path):
    old, new = age.X25519Identity.generate(), age.X25519Identity.generate()
    data = os.urandom(CHUNK * 2 + 11)
    ct = tmp_path / "c.age"
    ct.write_bytes(enc(data, [old.recipient()]))
    before = ct.read_bytes()
    assert crypto.rekey_file(ct, [old], [new.recipient()]) == "in-place"
    after = ct.read_bytes()
    hs_before, hs_after = _payload_start(before) - 16, _payload_start(after) - 16
    assert before[hs_before:] == after[hs_after:]  # nonce + every payload byte identical
    assert before[:hs_before] != after[:hs_after]
    with pytest.raises(NoIdentityMatchedError):
        dec(after, [old])
    assert dec(after, [new]) == data
    assert [p.name for p in tmp_path.iterdir()] == ["c.age"]  # no side file left


def test_rekey_with_more_recipients_copies_payload(tmp_path, pq_ident):
    old = age.X25519Identity.generate()
    new1, new2 = age.X25519Identity.generate(), age.X25519Identity.generate()
    data = os.urandom(CHUNK + 1)
    ct = tmp_path / "c.age"
    ct.write_bytes(enc(data, [old.recipient()]))
    before = ct.read_bytes()
    assert crypto.rekey_file(ct, [old], [new1.recipient(), new2.recipient()]) == "copied"
    after = ct.read_bytes()
    assert before[_payload_start(before) - 16 :] == after[_payload_start(after) - 16 :]
    assert dec(after, [new2]) == data
    with pytest.raises(NoIdentityMatchedError):
        dec(after, [old])
    # classic → post-quantum
    crypto.rekey_file(ct, [new1], [pq_ident.recipient()])
    assert dec(ct.read_bytes(), [pq_ident]) == data


def test_rekey_armored_file(tmp_path):
    old, new = age.X25519Identity.generate(), age.X25519Identity.generate()
    ct = tmp_path / "c.age"
    ct.write_bytes(enc(b"armored data", [old.recipient()], armor=True))
    crypto.rekey_file(ct, [old], [new.recipient()])
    assert ct.read_bytes().startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    assert dec(ct.read_bytes(), [new]) == b"armored data"


def test_rekey_with_wrong_identity_leaves_file_untouched(tmp_path):
    old = age.X25519Identity.generate()
    ct = tmp_path / "c.age"
    ct.write_bytes(enc(b"data", [old.recipient()]))
    before = ct.read_bytes()
    with pytest.raises(NoIdentityMatchedError):
        crypto.rekey_file(ct, [age.X25519Identity.generate()], [old.recipient()])
    assert ct.read_bytes() == before


def test_identity_and_recipient_files(tmp_path, x_ident, pq_ident):
    idf = tmp_path / "id.txt"
    idf.write_text(f"# comment\n\n{x_ident.encode()}\n{pq_ident.encode()}\n")
    idf.chmod(0o600)
    ids = crypto.load_identities(idf)
    assert [type(i).__name__ for i in ids] == ["X25519Identity", "HybridIdentity"]
    idf.chmod(0o644)
    with pytest.raises(ConfigError):  # readable by others: refused
        crypto.load_identities(idf)
    rf = tmp_path / "r.txt"
    rf.write_text(f"# team\n{x_ident.recipient().encode()}\n")
    assert crypto.load_recipients_file(rf)[0].public_key == x_ident.recipient().public_key
    rf.write_text("age1notakey\n")
    with pytest.raises(ConfigError):
        crypto.load_recipients_file(rf)


def test_envelope_is_deterministic_given_key_and_nonce(x_ident):
    """Same file key + nonce give the same payload bytes (STREAM is a pure function)."""
    fk, nonce = os.urandom(16), os.urandom(16)
    outs = []
    for _ in range(2):
        out = io.BytesIO()
        envelope.encrypt(header.AGE_V1, io.BytesIO(b"z" * 1000), out, [x_ident.recipient()], file_key=fk, nonce=nonce)
        outs.append(out.getvalue())
    assert outs[0][_payload_start(outs[0]) :] == outs[1][_payload_start(outs[1]) :]


def test_output_over_input_is_refused(tmp_path, x_ident):
    src = tmp_path / "plain.bin"
    src.write_bytes(b"keep me")
    with pytest.raises(ConfigError):
        crypto.encrypt_file(src, src, [x_ident.recipient()])
    assert src.read_bytes() == b"keep me"
    ct = tmp_path / "c.age"
    crypto.encrypt_file(src, ct, [x_ident.recipient()])
    before = ct.read_bytes()
    with pytest.raises(ConfigError):
        crypto.decrypt_file(ct, ct, [x_ident])
    assert ct.read_bytes() == before


def test_oversized_header_is_refused_without_reading_it_all(x_ident):
    """A hostile header of endless stanza body lines stops at the header size bound."""
    line = b"A" * 64 + b"\n"
    blob = b"age-encryption.org/v1\n-> junk\n" + line * ((header.MAX_HEADER // len(line)) + 2048)
    with pytest.raises(header.HeaderError, match="too large"):
        dec(blob, [x_ident])



def test_rekey_refuses_after_an_interrupted_rekey(tmp_path):
    from dicomsafe.crypto.rekey import backup_path
    from dicomsafe.errors import OutputError

    old, new = age.X25519Identity.generate(), age.X25519Identity.generate()
    ct = tmp_path / "c.age"
    ct.write_bytes(enc(b"data", [old.recipient()]))
    before = ct.read_bytes()
    backup_path(ct).write_bytes(before[:200])  # what an interrupted rekey leaves behind
    with pytest.raises(OutputError):
        crypto.rekey_file(ct, [old], [new.recipient()])
    assert ct.read_bytes() == before
