"""The CLI with --format aes: round trips with PEM keys and certificates, tamper/wrong key → exit 3
with no output file, and the --fips refusals (exit 2). Real subprocesses, real keys."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from dicomsafe.crypto.age import X25519Identity

ROOT = Path(__file__).resolve().parent.parent
VERSION = b"dicomsafe.aes/v1\n"


def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DICOMSAFE_PASSPHRASE", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "dicomsafe", *args], capture_output=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def clean_failure(res: subprocess.CompletedProcess, code: int) -> None:
    err = res.stderr.decode()
    assert res.returncode == code, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("dicomsafe: error:")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p256 = ec.generate_private_key(ec.SECP256R1())
    out: dict[str, Path] = {}
    for name, key in (("rsa", rsa_key), ("p256", p256)):
        pub = d / f"{name}.pub.pem"
        pub.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        priv = d / f"{name}.key.pem"
        priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        priv.chmod(0o600)
        out[f"{name}_pub"], out[f"{name}_key"] = pub, priv
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archive")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(p256.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=9))
            .sign(p256, hashes.SHA256()))
    out["p256_cert"] = d / "p256.crt"
    out["p256_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    x = X25519Identity.generate()
    out["age_key"] = d / "age.txt"
    out["age_key"].write_text(f"# public key: {x.recipient().encode()}\n{x.encode()}\n")
    out["age_key"].chmod(0o600)
    out["age_recipient"] = Path(x.recipient().encode())  # not a path: the recipient string
    return out


@pytest.fixture
def plain(tmp_path) -> Path:
    p = tmp_path / "study.tar"
    p.write_bytes(os.urandom(2 * 65536 + 123))
    return p


def test_cli_round_trip_rsa_pem_and_cert_file(tmp_path, keys, plain):
    enc = tmp_path / "study.aes"
    rfile = tmp_path / "recipients.txt"
    rfile.write_bytes(b"# archive\n" + keys["p256_cert"].read_bytes())
    res = run("encrypt", "--format", "aes", "-r", str(keys["rsa_pub"]), "-R", str(rfile),
              "-o", str(enc), str(plain))
    assert res.returncode == 0, res.stderr.decode()
    assert enc.read_bytes().startswith(VERSION)
    for key in ("rsa_key", "p256_key"):
        out = tmp_path / f"out-{key}"
        res = run("decrypt", "-i", str(keys[key]), "-o", str(out), str(enc))
        assert res.returncode == 0, res.stderr.decode()
        assert out.read_bytes() == plain.read_bytes()
        assert (out.stat().st_mode & 0o077) == 0  # plaintext may hold PHI


def test_cli_tamper_and_wrong_key_exit_3_without_output(tmp_path, keys, plain):
    enc = tmp_path / "study.aes"
    assert run("encrypt", "--format", "aes", "-r", str(keys["p256_pub"]), "-o", str(enc), str(plain)).returncode == 0
    data = bytearray(enc.read_bytes())
    data[-70000] ^= 0x40  # inside the first chunk
    bad = tmp_path / "tampered.aes"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.bin"
    clean_failure(run("decrypt", "-i", str(keys["p256_key"]), "-o", str(out), str(bad)), 3)
    assert not out.exists()
    trunc = tmp_path / "truncated.aes"
    trunc.write_bytes(enc.read_bytes()[:-200])
    clean_failure(run("decrypt", "-i", str(keys["p256_key"]), "-o", str(out), str(trunc)), 3)
    assert not out.exists()
    clean_failure(run("decrypt", "-i", str(keys["rsa_key"]), "-o", str(out), str(enc)), 3)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.aes", "study.tar", "tampered.aes", "truncated.aes"]


def test_cli_passphrase_pbkdf2(tmp_path, plain):
    enc = tmp_path / "study.aes"
    env = {"DICOMSAFE_PASSPHRASE": "a long archive passphrase"}
    res = run("encrypt", "--format", "aes", "--passphrase", "-o", str(enc), str(plain), env_extra=env)
    assert res.returncode == 0, res.stderr.decode()
    assert enc.read_bytes().split(b"\n")[1].startswith(b"-> pbkdf2-sha256 ")
    out = tmp_path / "out"
    res = run("decrypt", "--fips", "-o", str(out), str(enc), env_extra=env)
    assert res.returncode == 0, res.stderr.decode()
    assert out.read_bytes() == plain.read_bytes()
    clean_failure(run("decrypt", "-o", str(out) + "2", str(enc), env_extra={"DICOMSAFE_PASSPHRASE": "wrong"}), 3)


def test_cli_fips_refusals(tmp_path, keys, plain):
    out = tmp_path / "o"
    # a non-approved recipient
    clean_failure(run("encrypt", "--fips", "-r", str(keys["age_recipient"]), "-o", str(out), str(plain)), 2)
    assert not out.exists()
    # the age format itself
    res = run("encrypt", "--fips", "--format", "age", "-r", str(keys["rsa_pub"]), "-o", str(out), str(plain))
    assert res.returncode == 2 and not out.exists()
    # an age file on decrypt, and an age identity
    age_file = tmp_path / "study.age"
    assert run("encrypt", "-r", str(keys["age_recipient"]), "-o", str(age_file), str(plain)).returncode == 0
    clean_failure(run("decrypt", "--fips", "-i", str(keys["rsa_key"]), "-o", str(out), str(age_file)), 2)
    clean_failure(run("decrypt", "--fips", "-i", str(keys["age_key"]), "-o", str(out), str(age_file)), 2)
    assert not out.exists()
    # approved keys work in FIPS mode (and --fips alone selects the aes format)
    enc = tmp_path / "study.aes"
    assert run("encrypt", "--fips", "-r", str(keys["rsa_pub"]), "-o", str(enc), str(plain)).returncode == 0
    assert enc.read_bytes().startswith(VERSION)
    assert run("decrypt", "--fips", "-i", str(keys["rsa_key"]), "-o", str(out), str(enc)).returncode == 0
    assert out.read_bytes() == plain.read_bytes()


def test_cli_no_armor_and_rekey(tmp_path, keys, plain):
    out = tmp_path / "o.aes"
    res = run("encrypt", "--format", "aes", "-a", "-r", str(keys["rsa_pub"]), "-o", str(out), str(plain))
    assert res.returncode == 2 and not out.exists()
    assert run("encrypt", "--format", "aes", "-r", str(keys["rsa_pub"]), "-o", str(out), str(plain)).returncode == 0
    before = out.read_bytes()
    res = run("rekey", "--fips", "-i", str(keys["rsa_key"]), "-r", str(keys["p256_pub"]), str(out))
    assert res.returncode == 0, res.stderr.decode()
    after = out.read_bytes()
    tail = lambda b: b[b.index(b"\n", b.index(b"\n--- ") + 1) + 1 :]  # noqa: E731
    assert tail(after) == tail(before)
    clean_failure(run("decrypt", "-i", str(keys["rsa_key"]), "-o", str(tmp_path / "x"), str(out)), 3)
    res = run("decrypt", "-i", str(keys["p256_key"]), "-o", str(tmp_path / "y"), str(out))
    assert res.returncode == 0 and (tmp_path / "y").read_bytes() == plain.read_bytes()
