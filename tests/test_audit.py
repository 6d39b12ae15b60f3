"""Audit log: hash chain detects edits, deletions, insertions, reordering and truncation."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import pytest

from dicomsafe import audit
from dicomsafe.errors import OutputError


def _make_log(path, n=5):
    for i in range(n):
        audit.append_run(
            path,
            event="archive",
            run_id=f"run{i}",
            command=audit.command_record("archive", ["--jobs"], jobs=2),
            counts={"inputs": i, "written": i, "quarantined": 0, "skipped": 0},
        )
    return path.read_bytes().splitlines(keepends=True)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dicomsafe", *args], capture_output=True, text=True)


def test_intact_log_verifies_and_chains(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    assert len(lines) == 5
    first = json.loads(lines[0])
    assert first["prev"] == audit.GENESIS and first["seq"] == 1
    for a, b in zip(lines, lines[1:]):
        assert json.loads(b)["prev"] == audit.line_digest(a)
    res = audit.verify(log)
    ok, bad, reason = res
    assert ok and bad is None and res.lines == 5
    assert res.head == audit.line_digest(lines[-1])
    r = _cli("audit", "verify", str(log))
    assert r.returncode == 0, r.stderr
    assert "intact" in r.stdout


def test_records_have_required_fields(tmp_path):
    log = tmp_path / "a.jsonl"
    _make_log(log, 1)
    rec = json.loads(log.read_text())
    for key in ("run_id", "time", "user", "command", "tool_version", "counts", "prev", "event"):
        assert key in rec
    assert rec["time"].endswith("Z")
    assert rec["command"] == {"name": "archive", "options": ["--jobs"], "values": {"jobs": 2}}


def _rewrite(log, lines):
    log.write_bytes(b"".join(lines))


@pytest.mark.parametrize("line_no", [1, 3, 5])
def test_one_character_edit_is_detected_at_that_line(tmp_path, line_no):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    edited = lines[line_no - 1].replace(b'"inputs":', b'"inputz":')
    assert edited != lines[line_no - 1]
    lines[line_no - 1] = edited
    _rewrite(log, lines)
    ok, bad, reason = audit.verify(log)
    assert not ok and bad == line_no, reason
    r = _cli("audit", "verify", str(log))
    assert r.returncode == 1
    assert f"line {line_no}" in r.stderr


def test_digit_edit_is_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    lines[2] = lines[2].replace(b'"written":2', b'"written":9')
    _rewrite(log, lines)
    ok, bad, _ = audit.verify(log)
    assert (ok, bad) == (False, 3)


def test_edit_with_recomputed_digest_still_breaks_the_chain(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    rec = json.loads(lines[1])
    rec["counts"]["written"] = 99
    rec["digest"] = audit.record_digest(rec)
    lines[1] = audit._canonical(rec)
    _rewrite(log, lines)
    ok, bad, reason = audit.verify(log)
    assert not ok and bad == 3 and "chain" in reason


def test_deleted_line_is_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    del lines[2]
    _rewrite(log, lines)
    ok, bad, _ = audit.verify(log)
    assert (ok, bad) == (False, 3)


def test_deleted_first_line_is_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    _rewrite(log, lines[1:])
    ok, bad, _ = audit.verify(log)
    assert (ok, bad) == (False, 1)


def test_swapped_lines_are_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(log, lines)
    ok, bad, _ = audit.verify(log)
    assert (ok, bad) == (False, 2)


def test_inserted_copy_is_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    lines.insert(2, lines[1])
    _rewrite(log, lines)
    ok, bad, _ = audit.verify(log)
    assert (ok, bad) == (False, 3)


def test_truncated_last_line_is_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    lines[-1] = lines[-1][:-10]
    _rewrite(log, lines)
    ok, bad, reason = audit.verify(log)
    assert (ok, bad) == (False, 5)
    # and a further append refuses rather than chaining onto a broken tail
    with pytest.raises(OutputError):
        audit.AuditLog(log).append("archive")


def test_appended_garbage_is_detected(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    _rewrite(log, lines + [b'{"hello": "world"}\n'])
    ok, bad, _ = audit.verify(log)
    assert (ok, bad) == (False, 6)
    _rewrite(log, lines + [b"\x00\xffjunk"])
    ok, bad, _ = audit.verify(log)
    assert (ok, bad) == (False, 6)


def test_cut_tail_detected_only_with_expected_head(tmp_path):
    log = tmp_path / "audit.jsonl"
    lines = _make_log(log)
    head = audit.verify(log).head
    _rewrite(log, lines[:-1])
    assert audit.verify(log).ok  # a hash chain alone cannot see a removed tail
    res = audit.verify(log, expect_head=head)
    assert not res.ok
    r = _cli("audit", "verify", "--expect-head", head, str(log))
    assert r.returncode == 1


def test_missing_log_is_an_error_not_a_traceback(tmp_path):
    r = _cli("audit", "verify", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr


def _appender(path, n):
    for i in range(n):
        audit.AuditLog(path).append("test", counts={"i": i})


def test_concurrent_appenders_keep_the_chain(tmp_path):
    log = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(str(log), 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    res = audit.verify(log)
    assert res.ok, res
    assert res.lines == 45


def test_command_record_holds_no_values_unless_declared_safe():
    rec = audit.command_record("export", ["--profile", "-r", "--profile"])
    assert rec == {"name": "export", "options": ["--profile", "-r"]}
