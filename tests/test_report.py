"""dicomsafe.report: per-file entries spill to disk in sorted runs, and report.json is streamed
byte for byte as json.dumps of the whole report would write it."""

from __future__ import annotations

import json
import os
import random
from dataclasses import fields
from pathlib import Path

import pytest

from batch_corpus import SECRET, Tree, add_study
from dicomsafe import report as report_mod
from dicomsafe.deidentify import FileResult
from dicomsafe.errors import OutputError
from dicomsafe.report import FileEntries, Report, render_chunks, write_report


def _results(n: int, seed: int = 1) -> list[FileResult]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        out.append(FileResult(
            file_id=f"{rng.getrandbits(40):010x}",
            outcome=("written", "quarantined", "skipped", "written")[kind],
            reason={1: "verify-failed", 2: "not-dicom"}.get(kind),
            preamble_threat="elf" if i % 7 == 0 else None,
            details=[f"(0010,0010) PatientName: name {j} \u00e9" for j in range(i % 13)] if kind == 1 else [],
            size=i,
        ))
    return out


def _expected(rep: Report) -> bytes:
    """What the report writer wrote before entries were streamed: the whole report, dumped."""
    whole = {f.name: getattr(rep, f.name) for f in fields(rep) if f.name != "entries"}
    whole["files"] = sorted(rep.files, key=lambda e: e["id"])
    return json.dumps(whole, indent=2, sort_keys=True).encode() + b"\n"


@pytest.mark.parametrize("n, run_entries, max_runs", [(0, 4, 32), (1, 4, 32), (50, 1000, 32),
                                                      (50, 4, 32), (203, 3, 4)])
def test_streamed_report_is_the_json_dump_of_the_whole_report(tmp_path, monkeypatch, n, run_entries, max_runs):
    monkeypatch.setattr(report_mod, "MAX_RUNS", max_runs)
    rep = Report(profile="basic", profile_hash="abc", options=["x"],
                 entries=FileEntries(tmp_path, run_entries=run_entries))
    for res in _results(n):
        rep.add(res)
    write_report(rep, tmp_path / "report.json")
    got = (tmp_path / "report.json").read_bytes()
    assert got == _expected(rep)
    data = json.loads(got)
    assert len(data["files"]) == n == rep.counts["inputs"]
    ids = [e["id"] for e in data["files"]]
    assert ids == sorted(ids)
    assert sorted(ids) == sorted(r.file_id for r in _results(n))


def test_spilled_entries_leave_memory_and_no_named_file(tmp_path, monkeypatch):
    monkeypatch.setattr(report_mod, "MAX_RUNS", 5)
    entries = FileEntries(tmp_path, run_entries=10)
    for res in _results(1000):
        entries.append({"id": res.file_id, "outcome": res.outcome, "reason": res.reason})
    assert len(entries) == 1000
    assert len(entries._buffer) < 10  # noqa: SLF001 - the bound is the point
    assert len(entries._runs) < 5  # noqa: SLF001 - runs were merged, not left open by the hundred
    assert list(tmp_path.iterdir()) == []  # anonymous files: nothing to clean up after a kill
    first, second = iter(entries), iter(entries)
    a = [next(first) for _ in range(500)]
    b = list(second)  # a second reader does not disturb the first one's position
    a += list(first)
    assert a == b and len(a) == 1000
    assert [e["id"] for e in a] == sorted(r.file_id for r in _results(1000))


def test_in_memory_entries_need_no_directory():
    entries = FileEntries(None, run_entries=2)
    for i in (3, 1, 2):
        entries.append({"id": str(i)})
    assert [e["id"] for e in entries] == ["1", "2", "3"]


def test_a_spill_that_cannot_be_written_is_an_output_error(tmp_path):
    entries = FileEntries(tmp_path / "gone", run_entries=2)
    entries.append({"id": "a"})
    with pytest.raises(OutputError, match="spill file"):
        entries.append({"id": "b"})


def test_render_of_an_empty_report_matches_json_dumps():
    rep = Report()
    assert b"".join(render_chunks(rep)) == _expected(rep)
    assert json.loads(b"".join(render_chunks(rep)))["files"] == []


def _settings(src: Path, dst: Path, q: Path):
    from dicomsafe.pipeline import RunSettings
    from dicomsafe.profiles import load_profile

    return RunSettings(src=src, dst=dst, profile=load_profile("basic"), secret=SECRET, quarantine=q, quiet=True)


def _report_files(dst: Path) -> tuple[dict, list]:
    data = json.loads((dst / ".dicomsafe" / "report.json").read_bytes())
    return data["counts"], data["files"]


def test_a_run_that_spills_writes_the_same_report_as_one_that_does_not(tmp_path, monkeypatch):
    from dicomsafe.batchrun import run_deidentify

    tree = Tree(tmp_path / "src")
    for p in range(3):
        add_study(tree, p, 0, 5)
    (tmp_path / "src" / "notes.txt").write_text("not dicom")
    ref = run_deidentify(_settings(tmp_path / "src", tmp_path / "ref", tmp_path / "q0"), jobs=1)
    monkeypatch.setattr(report_mod, "RUN_ENTRIES", 2)
    monkeypatch.setattr(report_mod, "MAX_RUNS", 3)
    rep = run_deidentify(_settings(tmp_path / "src", tmp_path / "dst", tmp_path / "q1"), jobs=2)
    assert rep.counts == ref.counts == {"inputs": 16, "written": 15, "quarantined": 0, "skipped": 1}
    assert _report_files(tmp_path / "dst") == _report_files(tmp_path / "ref")
    assert rep.files == ref.files and len(rep.files) == 16
    assert [p for p in (tmp_path / "dst" / ".dicomsafe").iterdir() if "report" in p.name] == \
        [tmp_path / "dst" / ".dicomsafe" / "report.json"]


def test_duplicate_of_an_output_a_resume_skipped_is_still_caught(tmp_path, monkeypatch):
    """--resume marks the outputs of the units it skips as committed (kept as digests): an input
    added since, with the SOP Instance UID of one of them, is quarantined as the duplicate, as in
    a fresh run."""
    import pydicom

    import dicomsafe.batchrun as br

    monkeypatch.setattr(br, "UNIT_MAX_FILES", 2)
    tree = Tree(tmp_path / "src")
    folder = Path(add_study(tree, 0, 0, 5))
    dst = tmp_path / "dst"
    first = br.run_deidentify(_settings(tmp_path / "src", dst, tmp_path / "q0"), jobs=1)
    assert first.counts["written"] == 5
    ds = pydicom.dcmread(folder / "img0000.dcm")
    ds.InstanceNumber = 99  # same SOP Instance UID as img0000 (whose unit the resume skips)
    ds.save_as(folder / "zzz-duplicate.dcm", enforce_file_format=True)
    before = {p: p.read_bytes() for p in dst.rglob("*.dcm")}
    rep = br.run_deidentify(_settings(tmp_path / "src", dst, tmp_path / "q1"), jobs=1, resume=True)
    fresh = br.run_deidentify(_settings(tmp_path / "src", tmp_path / "fresh", tmp_path / "q2"), jobs=1)
    assert rep.reasons == fresh.reasons == {"duplicate-sop-instance": 1}
    assert rep.counts == fresh.counts
    assert {p: p.read_bytes() for p in dst.rglob("*.dcm")} == before  # img0000's output untouched
    (dup,) = [f["id"] for f in rep.files if f["reason"] == "duplicate-sop-instance"]
    assert sorted(os.listdir(tmp_path / "q1")) == sorted(["index.jsonl", f"{dup}.dcm"])


def test_a_report_that_cannot_be_written_fails_the_run_exit_4(tmp_path, secret_file):
    """--report pointing at a directory: the run used to exit 0 with no report (the error was
    swallowed). Now exit 4 with a clear message, and the audit line says the run failed."""
    import subprocess
    import sys

    tree = Tree(tmp_path / "src")
    add_study(tree, 0, 0, 3)
    (tmp_path / "taken").mkdir()
    r = subprocess.run([sys.executable, "-m", "dicomsafe", "deidentify", tmp_path / "src", tmp_path / "dst",
                        "--profile", "basic", "--secret-file", secret_file, "--quarantine", tmp_path / "q",
                        "--report", tmp_path / "taken"], capture_output=True, text=True)
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "directory" in r.stderr and "Traceback" not in r.stderr
    audit = [json.loads(line) for line in (tmp_path / "dst" / ".dicomsafe" / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["status"] == "failed" and "report_sha256" not in audit[-1].get("outputs", {})
    assert list((tmp_path / "taken").iterdir()) == []


def test_a_quarantine_index_that_cannot_be_written_fails_the_run_and_resume_writes_it(tmp_path):
    from dicomsafe.batchrun import run_deidentify

    tree = Tree(tmp_path / "src")
    add_study(tree, 0, 0, 2)
    (tmp_path / "src" / "cut.dcm").write_bytes((tmp_path / "src" / "ZZTESTNAME000" / "study0" / "img0000.dcm")
                                               .read_bytes()[:705])  # cut inside an element: quarantined
    q = tmp_path / "q"
    q.mkdir()
    (q / "index.jsonl").mkdir()  # the index cannot be replaced by a file
    with pytest.raises(OutputError):
        run_deidentify(_settings(tmp_path / "src", tmp_path / "dst", q), jobs=1)
    (q / "index.jsonl").rmdir()
    rep = run_deidentify(_settings(tmp_path / "src", tmp_path / "dst", q), jobs=1, resume=True)
    assert rep.counts == {"inputs": 3, "written": 2, "quarantined": 1, "skipped": 0}
    index = [json.loads(line) for line in (q / "index.jsonl").read_text().splitlines()]
    (entry,) = [f for f in rep.files if f["outcome"] == "quarantined"]
    assert entry["id"] in {e["id"] for e in index}


def test_a_quarantine_path_that_is_a_file_is_refused_before_any_work(tmp_path):
    """It used to surface as 'error: File exists' (exit 4) from the first quarantined file's
    mkdir, after the outputs before it had been written."""
    from dicomsafe.batchrun import run_deidentify
    from dicomsafe.errors import ConfigError

    tree = Tree(tmp_path / "src")
    add_study(tree, 0, 0, 2)
    (tmp_path / "qfile").write_text("not a directory")
    with pytest.raises(ConfigError, match="quarantine path exists and is not a directory"):
        run_deidentify(_settings(tmp_path / "src", tmp_path / "dst", tmp_path / "qfile"), jobs=1)
    assert not (tmp_path / "dst").exists()


def test_a_quarantine_directory_that_cannot_be_made_is_an_output_error(tmp_path):
    from dicomsafe.batchrun import run_deidentify

    tree = Tree(tmp_path / "src")
    add_study(tree, 0, 0, 2)
    (tmp_path / "src" / "cut.dcm").write_bytes((tmp_path / "src" / "ZZTESTNAME000" / "study0" / "img0000.dcm")
                                               .read_bytes()[:705])
    (tmp_path / "block").write_text("a file where a parent directory should be")
    with pytest.raises(OutputError, match="cannot create the quarantine directory"):
        run_deidentify(_settings(tmp_path / "src", tmp_path / "dst", tmp_path / "block" / "q"), jobs=1)
