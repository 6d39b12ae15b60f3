"""Append-only, hash-chained audit log (DESIGN.md §8).

Every run of deidentify/export/archive/restore/rekey appends one JSON line. Each line carries
``prev`` = SHA-256 of the previous line's bytes (including its newline; the first line holds 64
zeros), plus ``seq`` (its 1-based line number) and ``digest`` (SHA-256 of the record itself),
so editing, deleting, inserting or reordering any line breaks the chain at that point and
:func:`verify` names the first bad line.

Why a hash chain and not signatures: the log must be verifiable by anyone with no key, and the
threat it answers is silent after-the-fact editing by someone who can write the file. A chain
cannot stop a writer from truncating the *tail*; for that, :func:`verify` returns the digest of
the last line (the "head") so monitoring can record it elsewhere and check it with
``audit verify --expect-head``.

The log is PHI-free by construction: the caller passes counts, digests, profile names and
option *names*; :func:`command_record` never records argument values that may be paths.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import getpass
import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import __version__
from .errors import OutputError

GENESIS = "0" * 64
#: Format version of one audit line.
LINE_VERSION = 1
_TAIL_CHUNK = 64 * 1024


def new_run_id() -> str:
    """A random run id: links the audit line, the report and the ledger of one run."""
    return uuid.uuid4().hex


def utc_now() -> str:
    """UTC time with second precision and a Z suffix, e.g. ``2026-11-25T12:00:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def line_digest(line: bytes) -> str:
    """SHA-256 (hex) of one complete line, newline included."""
    return hashlib.sha256(line).hexdigest()


def _canonical(record: Mapping[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, ASCII, newline-terminated."""
    return (json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


def record_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 of a record's canonical form without its own ``digest`` field.

    Why both ``digest`` and ``prev``: ``prev`` chains the lines; ``digest`` lets verify name
    the edited line itself rather than the line after it.
    """
    body = {k: v for k, v in record.items() if k != "digest"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


def command_record(name: str, option_names: Iterable[str] = (), **safe_values: Any) -> dict[str, Any]:
    """Describe a command without any value that could be a path or PHI.

    ``option_names`` are the option *names* given (``--jobs``), never their values;
    ``safe_values`` are values the caller knows to be PHI-free (a job count, a format name).
    """
    rec: dict[str, Any] = {"name": name, "options": sorted(set(option_names))}
    if safe_values:
        rec["values"] = {k: v for k, v in sorted(safe_values.items())}
    return rec


def _read_last_line(fd: int) -> bytes | None:
    """Return the last line (with its newline, if present) of the file open on ``fd``."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end == 0:
        return None
    buf = b""
    pos = end
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        # Look for the newline that ends the line *before* the last one.
        idx = buf.rfind(b"\n", 0, len(buf) - 1)
        if idx >= 0:
            return buf[idx + 1 :]
    return buf


class AuditLog:
    """One audit log file. Appends are serialised across processes with ``flock``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record and return it (with ``prev`` filled in).

        The line is written with a single ``write`` on an ``O_APPEND`` descriptor while an
        exclusive ``flock`` is held, then fsynced: concurrent appenders cannot interleave,
        and each sees the true previous line when computing ``prev``.
        """
        record: dict[str, Any] = {
            "v": LINE_VERSION,
            "event": event,
            "run_id": fields.pop("run_id", None) or new_run_id(),
            "time": fields.pop("time", None) or utc_now(),
            "user": _current_user(),
            "host": socket.gethostname(),
            "tool_version": __version__,
        }
        record.update(fields)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise OutputError(f"cannot open the audit log ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            rfd = os.open(self.path, os.O_RDONLY)
            try:
                last = _read_last_line(rfd)
            finally:
                os.close(rfd)
            if last is not None and not last.endswith(b"\n"):
                raise OutputError(
                    "the audit log ends with an incomplete line; run 'dicomsafe audit verify' on it"
                )
            if last is None:
                record["seq"], record["prev"] = 1, GENESIS
            else:
                try:
                    record["seq"] = int(json.loads(last)["seq"]) + 1
                except (ValueError, KeyError, TypeError):
                    raise OutputError(
                        "the audit log's last line is damaged; run 'dicomsafe audit verify' on it"
                    ) from None
                record["prev"] = line_digest(last)
            record.pop("digest", None)
            record["digest"] = record_digest(record)
            data = _canonical(record)
            written = os.write(fd, data)
            if written != len(data):  # a short write on a full disk: the tail is now broken
                raise OutputError("short write to the audit log (disk full?)")
            os.fsync(fd)
        except OSError as exc:
            raise OutputError(f"cannot append to the audit log ({exc.strerror})") from None
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return record


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    first_bad_line: int | None
    reason: str
    lines: int
    head: str  # digest of the last good line (GENESIS for an empty log)

    def __iter__(self):  # allows ``ok, bad, reason = verify(path)``
        return iter((self.ok, self.first_bad_line, self.reason))


def verify(path: str | os.PathLike[str], expect_head: str | None = None) -> VerifyResult:
    """Check the chain of an audit log.

    Returns ``(ok, first_bad_line, reason)`` (1-based line numbers) plus the line count and
    the head digest. Detects any edit, deletion, insertion, reordering, a truncated last line
    and appended garbage; a deleted *tail* only when ``expect_head`` is given.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return VerifyResult(False, None, f"cannot read the log ({exc.strerror})", 0, GENESIS)
    prev = GENESIS
    n = 0
    pos = 0
    while pos < len(data):
        n += 1
        nl = data.find(b"\n", pos)
        if nl < 0:
            return VerifyResult(False, n, "incomplete last line (truncated or garbage appended)", n - 1, prev)
        line = data[pos : nl + 1]
        pos = nl + 1
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return VerifyResult(False, n, "not a JSON record (edited or garbage)", n - 1, prev)
        if not isinstance(rec, dict) or not isinstance(rec.get("prev"), str):
            return VerifyResult(False, n, "record without a 'prev' digest", n - 1, prev)
        if _canonical(rec) != line or rec.get("digest") != record_digest(rec):
            return VerifyResult(False, n, "line was edited (its digest does not match)", n - 1, prev)
        if rec.get("seq") != n:
            return VerifyResult(
                False, n, f"line holds record {rec.get('seq')!r}: lines deleted, inserted or reordered", n - 1, prev
            )
        if rec["prev"] != prev:
            return VerifyResult(False, n, "chain broken: the previous line was replaced", n - 1, prev)
        prev = line_digest(line)
    if expect_head is not None and expect_head != prev:
        return VerifyResult(False, n + 1 if n else 1, "head digest differs: lines missing at the end", n, prev)
    return VerifyResult(True, None, "intact", n, prev)


def append_run(
    log_path: str | os.PathLike[str],
    *,
    event: str,
    run_id: str,
    command: Mapping[str, Any],
    counts: Mapping[str, int] | None = None,
    profile: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    status: str = "ok",
    started: str | None = None,
) -> dict[str, Any]:
    """Convenience wrapper used by the commands: one line per finished (or stopped) run."""
    fields: dict[str, Any] = {"run_id": run_id, "command": dict(command), "status": status}
    if started:
        fields["started"] = started
    if counts is not None:
        fields["counts"] = dict(counts)
    if profile is not None:
        fields["profile"] = dict(profile)
    if outputs is not None:
        fields["outputs"] = dict(outputs)
    return AuditLog(log_path).append(event, **fields)
