"""Ledger (SQLite, keyed ids only) and the destination lock, on the real file system."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from dicomsafe.errors import LockedError
from dicomsafe.ledger import FileRecord, Ledger, OutputRecord, sha256_file
from dicomsafe.lock import LOCKED_MESSAGE, DestinationLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _py(code: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_second_lock_refuses_with_clear_message(tmp_path):
    with DestinationLock(tmp_path):
        p = _py(f"""
            from dicomsafe.lock import DestinationLock
            from dicomsafe.errors import LockedError
            try:
                DestinationLock({str(tmp_path)!r}).acquire()
            except LockedError as e:
                print("LOCKED", e)
            else:
                print("GOT IT")
        """)
        out, err = p.communicate(timeout=60)
        assert "LOCKED " + LOCKED_MESSAGE in out, err
        with pytest.raises(LockedError):
            DestinationLock(tmp_path).acquire()
    # released: can take it again
    with DestinationLock(tmp_path) as lk:
        assert lk.held


def test_kill_9_leaves_no_stale_lock(tmp_path):
    p = _py(f"""
        import sys, time
        from dicomsafe.lock import DestinationLock
        DestinationLock({str(tmp_path)!r}).acquire()
        print("held", flush=True)
        time.sleep(600)
    """)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(LockedError):
        DestinationLock(tmp_path).acquire()
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert (tmp_path / ".dicomsafe" / "lock").exists()  # the file stays, the lock does not
    with DestinationLock(tmp_path) as lk:
        assert lk.held


def _files(n, unit="u"):
    return [FileRecord(f"{unit}-f{i}", 100 + i, 1_000 + i, f"{i:064x}", "written") for i in range(n)]


def test_unit_done_requires_same_files_and_stats(tmp_path):
    with Ledger.for_destination(tmp_path) as led:
        files = _files(3)
        led.record_unit("u", files, run_id="r1")
        cur = [(f.file, f.size, f.mtime_ns) for f in files]
        assert led.unit_done("u", cur)
        assert not led.unit_done("other", cur)
        assert not led.unit_done("u", cur[:2])  # a file vanished
        assert not led.unit_done("u", cur + [("u-new", 1, 1)])  # a file was added
        changed = list(cur)
        changed[1] = (changed[1][0], changed[1][1], changed[1][2] + 1)
        assert not led.unit_done("u", changed)  # mtime changed
        hashes = {f.file: f.sha256 for f in files}
        assert led.unit_done("u", cur, hashes=hashes)
        hashes["u-f0"] = "f" * 64
        assert not led.unit_done("u", cur, hashes=hashes)


def test_unit_not_done_when_output_missing_or_damaged(tmp_path):
    out = tmp_path / "a" / "b.dcm"
    out.parent.mkdir()
    out.write_bytes(b"output bytes")
    with Ledger.for_destination(tmp_path) as led:
        files = _files(1)
        cur = [(f.file, f.size, f.mtime_ns) for f in files]
        led.record_unit("u", files, [OutputRecord("a/b.dcm", sha256_file(out), out.stat().st_size)])
        assert led.unit_done("u", cur, dst=tmp_path)
        out.write_bytes(b"output byteZ")  # same size, other content
        assert not led.unit_done("u", cur, dst=tmp_path)
        out.unlink()
        assert not led.unit_done("u", cur, dst=tmp_path)


def test_record_unit_replaces_previous_rows(tmp_path):
    with Ledger.for_destination(tmp_path) as led:
        led.record_unit("u", _files(3), version=1)
        led.record_unit("u", _files(2), version=2)
        st = led.unit("u")
        assert st.version == 2 and len(st.files) == 2
        assert len(led.file_records()) == 2


def test_failed_transaction_leaves_nothing(tmp_path):
    with Ledger.for_destination(tmp_path) as led:
        led.record_unit("u", _files(2))
        dup = _files(1)
        with pytest.raises(RuntimeError):
            with led.transaction() as db:
                db.execute("DELETE FROM files")
                raise RuntimeError("boom")
        assert len(led.unit("u").files) == 2
        assert led.unit("nothing") is None
        del dup


def test_ledger_holds_no_clear_identifiers(tmp_path):
    """Only what callers pass (keyed ids) is stored; nothing else sneaks in."""
    with Ledger.for_destination(tmp_path) as led:
        led.record_unit("k3y3d", [FileRecord("f1d", 1, 2, None, "written")], run_id="r")
    raw = b"".join(p.read_bytes() for p in (tmp_path / ".dicomsafe").iterdir() if p.is_file())
    assert b"k3y3d" in raw
    assert oct((tmp_path / ".dicomsafe" / "ledger.sqlite").stat().st_mode & 0o777) == "0o600"


def test_kill_9_during_writes_keeps_ledger_consistent(tmp_path):
    p = _py(f"""
        from dicomsafe.ledger import Ledger, FileRecord
        led = Ledger.for_destination({str(tmp_path)!r})
        i = 0
        while True:
            files = [FileRecord(f"u{{i}}-f{{j}}", j, j, None, "written") for j in range(20)]
            led.record_unit(f"u{{i}}", files)
            i += 1
            if i == 5:
                print("going", flush=True)
    """)
    assert p.stdout.readline().strip() == "going"
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    db = sqlite3.connect(tmp_path / ".dicomsafe" / "ledger.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    units = [r[0] for r in db.execute("SELECT unit FROM units")]
    assert len(units) >= 5
    for u in units:  # every recorded unit has all of its files: no half transaction
        assert db.execute("SELECT count(*) FROM files WHERE unit=?", (u,)).fetchone()[0] == 20
    assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 20 * len(units)


LEDGER_FULL = """
import resource, signal, sys
from dicomsafe.ledger import FileRecord, Ledger
from dicomsafe.errors import OutputError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
led = Ledger(sys.argv[1])
led.record_unit("small", [FileRecord("a" * 20, 1, 1, None, "written", None)])
resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))
big = [FileRecord(f"{i:020d}" * 2, 1, 1, None, "written", None) for i in range(100_000)]
try:
    led.record_unit("big", big)
except OutputError as exc:
    print("OutputError", exc)
print(sorted(led._db.execute("SELECT unit FROM units").fetchall()))
"""


def test_a_full_disk_inside_a_ledger_transaction_is_an_output_error(tmp_path):
    """A transaction that cannot spill its pages (disk full, file too large) used to escape as a
    raw sqlite3 error and a traceback; it is an OutputError (exit 4) and nothing of it stays."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", LEDGER_FULL, str(tmp_path / "ledger.sqlite")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    first, units = r.stdout.splitlines()
    assert first.startswith("OutputError cannot write to the ledger (")
    assert units == "[('small',)]"
