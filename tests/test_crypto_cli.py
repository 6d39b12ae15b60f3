"""The keygen / encrypt / decrypt / rekey commands, run as a user would (subprocess)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
ENV.pop("DICOMSAFE_PASSPHRASE", None)
CHUNK = 64 * 1024


def ds(*args, input: bytes | None = None, pass_fds=(), env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dicomsafe", *map(str, args)],
        input=input,
        capture_output=True,
        pass_fds=pass_fds,
        env=env or ENV,
        timeout=300,
    )


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int = 3) -> None:
    assert proc.returncode == code, proc.stderr
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("dicomsafe: error: ")


@pytest.fixture()
def key(tmp_path):
    path = tmp_path / "key.txt"
    proc = ds("keygen", "-o", path)
    assert proc.returncode == 0, proc.stderr
    recipient = proc.stderr.decode().strip().removeprefix("Public key: ")
    return path, recipient


def test_keygen_writes_private_file_and_refuses_overwrite(tmp_path, key):
    path, recipient = key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# created: ")
    assert lines[1] == f"# public key: {recipient}"
    assert recipient.startswith("age1") and lines[2].startswith("AGE-SECRET-KEY-1")
    before = path.read_bytes()
    proc = ds("keygen", "-o", path)
    assert_clean_failure(proc, 2)
    assert path.read_bytes() == before
    shown = ds("keygen", "-y", path)
    assert shown.stdout.decode().strip() == recipient


def test_keygen_pq_and_secret(tmp_path):
    pq = tmp_path / "pq.txt"
    proc = ds("keygen", "--pq", "-o", pq)
    assert proc.returncode == 0
    text = pq.read_text()
    assert "# public key: age1pq1" in text and "\nAGE-SECRET-KEY-PQ-1" in text
    secret = tmp_path / "secret.txt"
    assert ds("keygen", "--secret", "-o", secret).returncode == 0
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    lines = secret.read_text().splitlines()
    assert lines[0].startswith("# dicomsafe pseudonym secret")
    assert len(lines[1]) == 64 and int(lines[1], 16) >= 0 and lines[1] == lines[1].lower()


def test_keygen_to_stdout(tmp_path):
    proc = ds("keygen")
    assert proc.returncode == 0
    assert b"AGE-SECRET-KEY-1" in proc.stdout and proc.stderr.startswith(b"Public key: age1")


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1])
def test_file_round_trip(tmp_path, key, size):
    path, recipient = key
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    assert ds("encrypt", "-r", recipient, "-o", ct, src).returncode == 0
    proc = ds("decrypt", "-i", path, "-o", out, ct)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_pipe_round_trip_and_armor(tmp_path, key):
    path, recipient = key
    data = os.urandom(CHUNK * 2 + 3)
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# team\n{recipient}\n")
    enc = ds("encrypt", "-R", rfile, "-a", input=data)
    assert enc.returncode == 0
    assert enc.stdout.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    dec = ds("decrypt", "-i", path, "-", input=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == data


def test_wrong_key_exit_3_and_no_output(tmp_path, key):
    _, recipient = key
    other = tmp_path / "other.txt"
    ds("keygen", "-o", other)
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    src.write_bytes(b"secret study")
    ds("encrypt", "-r", recipient, "-o", ct, src)
    proc = ds("decrypt", "-i", other, "-o", out, ct)
    assert_clean_failure(proc)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["flip-last", "flip-first-chunk", "truncate", "trailing", "truncate-chunk"])
def test_damaged_file_exit_3_and_no_output(tmp_path, key, damage):
    path, recipient = key
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    src.write_bytes(os.urandom(3 * CHUNK + 10))
    ds("encrypt", "-r", recipient, "-o", ct, src)
    blob = bytearray(ct.read_bytes())
    if damage == "flip-last":
        blob[-1] ^= 1
    elif damage == "flip-first-chunk":
        blob[400] ^= 1
    elif damage == "truncate":
        del blob[-7:]
    elif damage == "trailing":
        blob += b"\n"
    else:
        del blob[-(10 + 16) :]  # drop the whole final chunk: ends on a non-final chunk
    ct.write_bytes(bytes(blob))
    proc = ds("decrypt", "-i", path, "-o", out, ct)
    assert_clean_failure(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.age", "in.bin", "key.txt"]


def test_stdout_failure_still_exits_3(tmp_path, key):
    """On stdout, authenticated chunks before the damage are already released (documented);
    the exit status is what tells the pipeline to discard them."""
    path, recipient = key
    data = os.urandom(2 * CHUNK + 5)
    enc = ds("encrypt", "-r", recipient, input=data).stdout
    bad = enc[:-1] + bytes([enc[-1] ^ 1])
    proc = ds("decrypt", "-i", path, input=bad)
    assert_clean_failure(proc)
    assert data.startswith(proc.stdout) and len(proc.stdout) < len(data)


def test_reader_of_stdout_stopping_early_is_a_silent_141(tmp_path, key):
    """`dicomsafe decrypt … | head`: like any Unix filter (and the age CLI), stop silently with
    128 + SIGPIPE instead of printing an I/O error and exiting 4."""
    path, recipient = key
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(40 * CHUNK))
    enc = tmp_path / "big.age"
    assert ds("encrypt", "-r", recipient, "-o", enc, src).returncode == 0
    p = subprocess.Popen([sys.executable, "-m", "dicomsafe", "decrypt", "-i", str(path), str(enc)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    head = p.stdout.read(100)
    p.stdout.close()  # the reader goes away with 2.5 MB still to come
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert err == ""
    assert head == src.read_bytes()[:100]
    full = subprocess.run([sys.executable, "-m", "dicomsafe", "decrypt", "-i", str(path), str(enc)],
                          stdout=open("/dev/full", "wb"), stderr=subprocess.PIPE, env=ENV, timeout=120)
    assert full.returncode == 4 and b"No space left" in full.stderr  # a real write error is still one


def test_passphrase_from_fd(tmp_path):
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    src.write_bytes(b"passphrase data")

    def with_fd(passphrase: bytes, *args):
        r, w = os.pipe()
        os.write(w, passphrase + b"\n")
        os.close(w)
        try:
            return ds(*args, "--passphrase-fd", r, pass_fds=(r,))
        finally:
            os.close(r)

    assert with_fd(b"tr0ub4dor", "encrypt", "-p", "-o", ct, src).returncode == 0
    assert b"\n-> scrypt " in ct.read_bytes()[:100]
    proc = with_fd(b"tr0ub4dor", "decrypt", "-o", out, ct)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == b"passphrase data"
    out.unlink()
    assert_clean_failure(with_fd(b"wrong", "decrypt", "-o", out, ct))
    assert not out.exists()


def test_passphrase_without_terminal_is_a_usage_error(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"x")
    proc = subprocess.run(
        [sys.executable, "-m", "dicomsafe", "encrypt", "-p", "-o", str(tmp_path / "c.age"), str(src)],
        capture_output=True, env=ENV, start_new_session=True,  # no controlling terminal
    )
    assert_clean_failure(proc, 2)
    assert not (tmp_path / "c.age").exists()


def test_usage_errors(tmp_path, key):
    _, recipient = key
    src = tmp_path / "in.bin"
    src.write_bytes(b"x")
    assert ds("encrypt", "-o", tmp_path / "c", src).returncode == 2  # no recipient
    assert ds("encrypt", "-r", "age1bogus", "-o", tmp_path / "c", src).returncode == 2
    assert ds("encrypt", "-r", recipient, "-a", "--format", "aes", "-o", tmp_path / "c", src).returncode == 2
    assert ds("decrypt", "-i", tmp_path / "missing.txt", src).returncode == 2
    assert not (tmp_path / "c").exists()


def test_not_encrypted_input_exit_3(tmp_path, key):
    path, _ = key
    src = tmp_path / "plain.txt"
    src.write_bytes(b"just text\n")
    assert_clean_failure(ds("decrypt", "-i", path, "-o", tmp_path / "o", src))


def test_rekey(tmp_path, key):
    old_path, old_recipient = key
    new_path = tmp_path / "new.txt"
    new_recipient = ds("keygen", "-o", new_path).stderr.decode().strip().removeprefix("Public key: ")
    files = []
    for n in range(2):
        src, ct = tmp_path / f"in{n}.bin", tmp_path / f"c{n}.age"
        src.write_bytes(os.urandom(CHUNK + n))
        ds("encrypt", "-r", old_recipient, "-o", ct, src)
        files.append((src, ct, ct.read_bytes()))
    proc = ds("rekey", "-i", old_path, "-r", new_recipient, *(ct for _, ct, _ in files))
    assert proc.returncode == 0, proc.stderr
    for n, (src, ct, before) in enumerate(files):
        after = ct.read_bytes()
        assert len(after) == len(before)
        cut = before.index(b"\n--- ") + 5 + 43 + 1  # end of the MAC line
        assert after[cut:] == before[cut:]  # payload nonce and chunks untouched
        assert_clean_failure(ds("decrypt", "-i", old_path, "-o", tmp_path / "o", ct))
        dec = ds("decrypt", "-i", new_path, "-o", tmp_path / f"o{n}", ct)
        assert dec.returncode == 0 and (tmp_path / f"o{n}").read_bytes() == src.read_bytes()
    assert_clean_failure(ds("rekey", "-i", old_path, "-r", new_recipient, files[0][1]))


def test_rekey_fips_refuses_armored_age_file(tmp_path, key):
    """FIPS mode refuses an armored (hence age) file by policy (exit 2), even when the
    identities and recipients given are themselves approved RSA keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, recipient = key
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pem.chmod(0o600)
    pub = tmp_path / "rsa.pub"
    pub.write_bytes(priv.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    src, ct = tmp_path / "in.bin", tmp_path / "c.age"
    src.write_bytes(b"x")
    ds("encrypt", "-a", "-r", recipient, "-o", ct, src)
    before = ct.read_bytes()
    proc = ds("rekey", "--fips", "-i", pem, "-r", pub, ct)
    assert_clean_failure(proc, 2)
    assert b"FIPS" in proc.stderr
    assert ct.read_bytes() == before


def test_decrypt_without_identity_of_key_file_is_a_usage_error(tmp_path, key):
    _, recipient = key
    src, ct = tmp_path / "in.bin", tmp_path / "c.age"
    src.write_bytes(b"x")
    ds("encrypt", "-r", recipient, "-o", ct, src)
    proc = ds("decrypt", "-o", tmp_path / "o", ct)
    assert_clean_failure(proc, 2)
    assert b"-i" in proc.stderr
    assert not (tmp_path / "o").exists()
