"""Keyed, stateless pseudonyms (DESIGN.md §4).

Every derivation is HMAC-SHA256(secret, domain + "\\0" + input): the same secret gives the same
pseudonyms on every machine and in every batch without a lookup table, and without the secret
nobody can reverse or even confirm a guess. Domains keep the derivations independent.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import re
import secrets as _secrets
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SecretFileError
from .fsutil import read_secret_file

SECRET_BYTES = 32
_HEADER = b"# dicomsafe pseudonym secret: 32 random bytes as hex. Guard it like a private key.\n"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def generate_secret() -> bytes:
    """32 bytes from the OS CSPRNG."""
    return _secrets.token_bytes(SECRET_BYTES)


def format_secret_file(secret: bytes) -> bytes:
    """The on-disk form of a secret (a comment line, then 64 hex characters)."""
    if len(secret) != SECRET_BYTES:
        raise ValueError("a pseudonym secret is 32 bytes")
    return _HEADER + secret.hex().encode("ascii") + b"\n"


def parse_secret(data: bytes) -> bytes:
    """Parse the secret file format; comment and blank lines are ignored."""
    lines = [ln.strip() for ln in data.decode("ascii", "replace").splitlines()]
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(keys) != 1 or not _HEX64.fullmatch(keys[0]):
        raise SecretFileError("secret file must hold exactly one line of 64 hex characters "
                              "(create one with: dicomsafe keygen --secret -o FILE)")
    return bytes.fromhex(keys[0])


def load_secret(path: str | Path) -> bytes:
    """Read a secret file, refusing one readable by group or others."""
    return parse_secret(read_secret_file(path))


#: Most UIDs :meth:`Pseudonymizer.uid` keeps memoised (see the class docstring).
UID_CACHE_MAX = 4096


@dataclass
class Pseudonymizer:
    """All keyed derivations for one project secret.

    UID results are memoised per instance: one study repeats the same few UIDs (study, series,
    frame of reference) in every file, and HMAC on them is the hot path of a run. The memo is
    emptied when it reaches :data:`UID_CACHE_MAX` entries: every file also brings UIDs of its own
    (SOP Instance UID) that never come back, and a memo kept to 100,000 entries grew a long run's
    memory by ~37 MB; the few repeating UIDs are back in it after one file.
    """

    secret: bytes
    _uid_cache: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_BYTES:
            raise SecretFileError("a pseudonym secret is 32 bytes")
        self._base = hmac.new(self.secret, digestmod=hashlib.sha256)

    def _mac(self, domain: str, *parts: str) -> bytes:
        h = self._base.copy()
        h.update(domain.encode("utf-8") + b"\0" + "\0".join(parts).encode("utf-8", "surrogateescape"))
        return h.digest()

    def uid(self, uid: str) -> str:
        """``2.25.`` + decimal of the first 16 bytes of HMAC(secret, "uid\\0" + uid)."""
        uid = uid.strip().rstrip("\0")
        got = self._uid_cache.get(uid)
        if got is None:
            got = "2.25." + str(int.from_bytes(self._mac("uid", uid)[:16], "big"))
            if len(self._uid_cache) >= UID_CACHE_MAX:
                self._uid_cache.clear()
            self._uid_cache[uid] = got
        return got

    def id_token(self, value: str, issuer: str = "") -> str:
        """A short base32 token of HMAC(secret, "id\\0" + issuer + "\\0" + value): 16 characters,
        80 bits — fits SH/LO/CS and is collision-free for any realistic number of patients."""
        digest = self._mac("id", issuer.strip(), value.strip())
        return base64.b32encode(digest[:10]).decode("ascii")

    def date_shift_days(self, patient_id: str, lo: int, hi: int) -> int:
        """Per-patient shift in [lo, hi], from HMAC(secret, "date\\0" + patient id)."""
        if lo > hi:
            lo, hi = hi, lo
        span = hi - lo + 1
        n = int.from_bytes(self._mac("date", patient_id.strip())[:8], "big")
        return lo + n % span

    def keyed_id(self, kind: str, value: str) -> str:
        """A PHI-free handle (20 hex chars) for reports, ledgers and object names."""
        return self._mac(kind, value)[:10].hex()


def shift_da(value: str, days: int) -> str:
    """Shift a DA value (YYYYMMDD); values that are not full dates become empty (fail closed)."""
    v = value.strip()
    try:
        d = _dt.datetime.strptime(v[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (d + _dt.timedelta(days=days)).strftime("%Y%m%d")


def shift_dt(value: str, days: int) -> str:
    """Shift the date part of a DT value, keeping time and offset; partial dates → year-level shift."""
    v = value.strip()
    if len(v) >= 8 and v[:8].isdigit():
        shifted = shift_da(v[:8], days)
        return shifted + v[8:] if shifted else ""
    return ""
