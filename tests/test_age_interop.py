"""Interoperability with the reference `age` command-line tool, both directions.

X25519 recipients and scrypt passphrases, for the sizes at the STREAM edges (empty, 1 byte,
exactly one chunk, one chunk + 1) and a ~50 MB file generated at test time. age reads
passphrases only from a terminal, so it is driven through a pseudo-terminal (pty.fork).
"""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import shutil
import subprocess
import sys

import pytest

from dicomsafe import crypto
from dicomsafe.crypto import age
from dicomsafe.errors import NoIdentityMatchedError

AGE = shutil.which("age")
AGE_KEYGEN = shutil.which("age-keygen")
pytestmark = [pytest.mark.tools, pytest.mark.skipif(AGE is None, reason="age CLI not installed")]

CHUNK = 64 * 1024
SIZES = [0, 1, CHUNK, CHUNK + 1]
BIG = 50 * 1000 * 1000
PASSPHRASE = "interop test passphrase ✓"
_PROMPT = re.compile(rb"passphrase[^:\n]*:", re.IGNORECASE)


def run_age_with_tty(args: list[str], passphrase: str, timeout: float = 300) -> tuple[int, bytes]:
    """Run age with a pseudo-terminal as its controlling terminal, answering each passphrase
    prompt. Returns (exit status, terminal output)."""
    return run_with_tty([AGE, *args], passphrase, timeout)


def run_with_tty(argv: list[str], passphrase: str, timeout: float = 300, env=None) -> tuple[int, bytes]:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal, answering each
    passphrase prompt. Returns (exit status, terminal output)."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execve(argv[0], argv, env or os.environ)
        finally:
            os._exit(127)
    seen = b""
    answered = 0
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                os.kill(pid, 9)
                raise AssertionError("age did not finish (no prompt answered?)")
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
            while len(_PROMPT.findall(seen)) > answered:
                os.write(fd, passphrase.encode() + b"\n")
                answered += 1
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen


def make_input(path, size: int) -> bytes:
    """Write ``size`` pseudo-random bytes; return their SHA-256 (the big file is not kept in
    memory twice)."""
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            fh.write(block)
            h.update(block)
            left -= len(block)
    return h.digest()


def sha256_file(path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.digest()


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    ident = age.X25519Identity.generate()
    key_file = d / "key.txt"
    key_file.write_text(f"# public key: {ident.recipient().encode()}\n{ident.encode()}\n")
    key_file.chmod(0o600)
    return ident, key_file


def _sizes():
    return [pytest.param(s, id=str(s)) for s in SIZES] + [
        pytest.param(BIG, id="50MB", marks=pytest.mark.slow)
    ]


@pytest.mark.parametrize("size", _sizes())
def test_dicomsafe_encrypts_age_decrypts(tmp_path, keypair, size):
    ident, key_file = keypair
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    digest = make_input(src, size)
    crypto.encrypt_file(src, ct, [ident.recipient()])
    # stdout, not -o: age creates an -o file lazily, on the first plaintext byte
    with open(out, "wb") as fh:
        subprocess.run([AGE, "-d", "-i", str(key_file), str(ct)], check=True, stdout=fh)
    assert sha256_file(out) == digest


@pytest.mark.parametrize("size", _sizes())
def test_age_encrypts_dicomsafe_decrypts(tmp_path, keypair, size):
    ident, _ = keypair
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    digest = make_input(src, size)
    subprocess.run([AGE, "-r", ident.recipient().encode(), "-o", str(ct), str(src)], check=True)
    crypto.decrypt_file(ct, out, [ident])
    assert sha256_file(out) == digest


@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armor"])
def test_armor_both_ways(tmp_path, keypair, armor):
    ident, key_file = keypair
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    digest = make_input(src, 3 * CHUNK + 17)
    crypto.encrypt_file(src, ct, [ident.recipient()], armor=armor)
    subprocess.run([AGE, "-d", "-i", str(key_file), "-o", str(out), str(ct)], check=True)
    assert sha256_file(out) == digest
    args = [AGE, "-r", ident.recipient().encode(), "-o", str(ct)] + (["-a"] if armor else []) + [str(src)]
    subprocess.run(args, check=True)
    out.unlink()
    crypto.decrypt_file(ct, out, [ident])
    assert sha256_file(out) == digest


@pytest.mark.skipif(AGE_KEYGEN is None, reason="age-keygen not installed")
def test_age_keygen_identity_file_works_with_dicomsafe_cli(tmp_path):
    key_file = tmp_path / "k.txt"
    subprocess.run([AGE_KEYGEN, "-o", str(key_file)], check=True, capture_output=True)
    key_file.chmod(0o600)
    recipient = next(
        line.split(": ")[1] for line in key_file.read_text().splitlines() if "public key" in line
    )
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    src.write_bytes(b"keygen interop")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-m", "dicomsafe", "encrypt", "-r", recipient, "-o", str(ct), str(src)],
                   check=True, env=env)
    subprocess.run([sys.executable, "-m", "dicomsafe", "decrypt", "-i", str(key_file), "-o", str(out), str(ct)],
                   check=True, env=env)
    assert out.read_bytes() == b"keygen interop"


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1])
def test_passphrase_dicomsafe_to_age(tmp_path, size):
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    digest = make_input(src, size)
    # age's default work factor (18) so that nothing about the file is unusual
    crypto.encrypt_file(src, ct, [age.ScryptRecipient(PASSPHRASE.encode(), log_n=18)])
    code, tty = run_age_with_tty(["-d", "-o", str(out), str(ct)], PASSPHRASE)
    assert code == 0, tty
    if size == 0:  # age opens its -o file lazily, on the first plaintext byte
        assert not out.exists() or out.stat().st_size == 0
        return
    assert sha256_file(out) == digest


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1])
def test_passphrase_age_to_dicomsafe(tmp_path, size):
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    digest = make_input(src, size)
    code, tty = run_age_with_tty(["-p", "-o", str(ct), str(src)], PASSPHRASE)
    assert code == 0, tty
    assert b"-> scrypt " in ct.read_bytes()[:200]
    crypto.decrypt_file(ct, out, [age.ScryptIdentity(PASSPHRASE.encode())])
    assert sha256_file(out) == digest
    with pytest.raises(NoIdentityMatchedError):
        crypto.decrypt_file(ct, tmp_path / "wrong.bin", [age.ScryptIdentity(b"not it")])
    assert not (tmp_path / "wrong.bin").exists()


def test_age_rejects_our_tampered_file(tmp_path, keypair):
    """The reference implementation agrees that a flipped payload byte is fatal."""
    ident, key_file = keypair
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    make_input(src, CHUNK + 5)
    crypto.encrypt_file(src, ct, [ident.recipient()])
    data = bytearray(ct.read_bytes())
    data[-3] ^= 0x40
    ct.write_bytes(bytes(data))
    proc = subprocess.run([AGE, "-d", "-i", str(key_file), "-o", str(out), str(ct)], capture_output=True)
    assert proc.returncode != 0


def test_cli_terminal_passphrase_both_ways(tmp_path):
    """The dicomsafe CLI's own terminal prompts (with confirmation) against age's."""
    env = {k: v for k, v in os.environ.items() if k != "DICOMSAFE_PASSPHRASE"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    ds = [sys.executable, "-m", "dicomsafe"]
    src, ct, out = tmp_path / "in.bin", tmp_path / "c.age", tmp_path / "out.bin"
    digest = make_input(src, CHUNK + 1)
    code, tty = run_with_tty(ds + ["encrypt", "-p", "-o", str(ct), str(src)], PASSPHRASE, env=env)
    assert code == 0, tty
    assert tty.count(b"assphrase:") == 2  # asked, then confirmed
    assert PASSPHRASE.encode() not in tty  # not echoed
    code, tty = run_age_with_tty(["-d", "-o", str(out), str(ct)], PASSPHRASE)
    assert code == 0, tty
    assert sha256_file(out) == digest
    out.unlink()
    code, tty = run_age_with_tty(["-p", "-o", str(ct), str(src)], PASSPHRASE)
    assert code == 0, tty
    code, tty = run_with_tty(ds + ["decrypt", "-o", str(out), str(ct)], PASSPHRASE, env=env)
    assert code == 0, tty
    assert tty.count(b"assphrase:") == 1
    assert sha256_file(out) == digest
    out.unlink()
    code, tty = run_with_tty(ds + ["decrypt", "-o", str(out), str(ct)], "wrong", env=env)
    assert code == 3, tty
    assert not out.exists()
