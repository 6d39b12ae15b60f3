"""`dicomsafe scan` on real pydicom test files: identified trees, clean trees, one planted SSN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from dicomsafe.cli import main
from test_verify import PLANTED, clean_copy, identify

SOURCES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm"]
REPO = Path(__file__).resolve().parents[1]


def _run(*args: str):
    return CliRunner().invoke(main, ["scan", *args], catch_exceptions=False)


@pytest.fixture
def trees(tmp_path):
    """An identified source tree and its de-identified counterpart (keyed names, like the engine)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i, name in enumerate(SOURCES):
        ds = pydicom.dcmread(get_testdata_file(name))
        if i % 2 == 0:
            identify(ds)
        d = src / f"case{i}"
        d.mkdir(parents=True)
        ds.save_as(d / "1.dcm", enforce_file_format=False)
        o = dst / f"p{i:03d}"
        o.mkdir(parents=True)
        clean_copy(ds).save_as(o / "1.dcm", enforce_file_format=False)
    (src / "readme.txt").write_text("scanner export\n")
    return src, dst


def test_identified_tree_exits_1(trees):
    src, _ = trees
    res = _run(str(src))
    assert res.exit_code == 1
    assert "PatientName: person-name" in res.output
    res = _run(str(src), "--against", str(src))
    assert res.exit_code == 1
    assert "patient-name" in res.output and "uid" in res.output


def test_clean_tree_exits_0(trees):
    src, dst = trees
    res = _run(str(dst))
    assert res.exit_code == 0, res.output
    assert "no residual PHI" in res.output
    res = _run(str(dst), "--against", str(src))
    assert res.exit_code == 0, res.output


def test_single_planted_ssn_exits_1(trees):
    src, dst = trees
    target = dst / "p001" / "1.dcm"
    ds = pydicom.dcmread(target)
    ds.ImageComments = "history reviewed, SSN 219-09-9999"
    ds.save_as(target, enforce_file_format=False)
    for extra, name in (([], "#2"), (["--show-paths"], "p001/1.dcm"), (["--against", str(src)], "p001/1.dcm")):
        res = _run(str(dst), "--format", "json", *extra)
        assert res.exit_code == 1
        report = json.loads(res.output)
        assert report["files_with_findings"] == 1
        assert report["files"] == [
            {"file": name, "findings": [{"path": "(0020,4000) ImageComments", "kind": "ssn"}]}
        ]
        assert "219-09-9999" not in res.output and "9999" not in res.output


def test_leaked_notes_file_is_found(trees):
    src, dst = trees
    (dst / "notes.txt").write_text("Follow-up for John Smith, MRN4455667\n")
    res = _run(str(dst), "--against", str(src), "--format", "json")
    assert res.exit_code == 1
    report = json.loads(res.output)
    (entry,) = report["files"]
    assert entry["file"] == "notes.txt"
    assert {"path": "file", "kind": "patient-name"} in entry["findings"]
    assert {"path": "file", "kind": "patient-id"} in entry["findings"]
    for v in PLANTED:
        assert v not in res.output.lower()


def test_phi_in_a_file_path_hides_the_path(trees):
    src, dst = trees
    (dst / "p000" / "1.dcm").rename(dst / "p000" / "SMITH_JOHN.dcm")
    res = _run(str(dst), "--against", str(src))
    assert res.exit_code == 1
    assert "smith" not in res.output.lower()
    assert "file-path: patient-name" in res.output


def test_ignore_kind_for_retained_values(trees):
    src, dst = trees
    target = dst / "p002" / "1.dcm"
    ds = pydicom.dcmread(target)
    ds.SOPInstanceUID = pydicom.dcmread(src / "case2" / "1.dcm").SOPInstanceUID  # as with retain-uids
    ds.save_as(target, enforce_file_format=False)
    assert _run(str(dst), "--against", str(src)).exit_code == 1
    assert _run(str(dst), "--against", str(src), "--ignore-kind", "uid").exit_code == 0


def test_missing_paths_exit_2_without_echoing_them(tmp_path):
    missing = tmp_path / "SMITH_JOHN"
    res = _run(str(missing))
    assert res.exit_code == 2 and "SMITH" not in res.output
    res = _run(str(tmp_path), "--against", str(missing))
    assert res.exit_code == 2 and "SMITH" not in res.output


def test_module_entry_point_and_no_progress_bar_off_tty(trees):
    _, dst = trees
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "dicomsafe", "scan", str(dst)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # not a TTY: no progress bar
    proc = subprocess.run([sys.executable, "-m", "dicomsafe", "--quiet", "scan", str(dst / "p000" / "1.dcm")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "1 file(s) scanned" in proc.stdout


def test_binary_non_dicom_files_need_longer_values(trees):
    """A JPEG or zip next to the images is searched for long values only: a 3-letter token in
    compressed bytes is chance, a full name is a leak."""
    src, dst = trees
    (dst / "thumb.bin").write_bytes(b"\x00\xff" * 50 + b" Q " + b"\x00\x01" * 50 + b" Roe " + b"\x00" * 10)
    assert _run(str(dst), "--against", str(src)).exit_code == 0
    (dst / "thumb.bin").write_bytes(b"\x00\xff" * 50 + b" SMITH^JOHN " + b"\x00" * 10)
    res = _run(str(dst), "--against", str(src), "--format", "json")
    assert res.exit_code == 1
    assert json.loads(res.output)["files"][0]["file"] == "thumb.bin"


def test_pattern_mode_hides_paths_that_hold_the_files_own_name(trees):
    src, dst = trees
    case = src / "case0"
    named = src / "SMITH^JOHN_4455667"
    case.rename(named)
    res = _run(str(src), "--show-paths")
    assert res.exit_code == 1
    assert "smith" not in res.output.lower()
    assert "file-path: patient-name" in res.output
    # dicomsafe output: the pseudonym is both PatientName and the first path component
    out = dst / "K7QZXWBN"
    (dst / "p000").rename(out)
    ds = pydicom.dcmread(out / "1.dcm")
    ds.PatientName = ds.PatientID = "K7QZXWBN"
    ds.save_as(out / "1.dcm", enforce_file_format=False)
    res = _run(str(dst))
    assert res.exit_code == 0, res.output
