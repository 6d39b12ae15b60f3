"""Issue 9: hostile trees. Every input accounted, no traceback, no hang, no planted PHI out."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomsafe.corpus import find_planted
from dicomsafe.deidentify import Deidentifier
from dicomsafe.errors import InputFileError
from dicomsafe.mutants import build_mutants
from dicomsafe.profiles import load_profile

from conftest import TEST_SECRET

PYDICOM_DATA = Path(pydicom.data.__file__).parent
#: CI budget; a longer run: DICOMSAFE_FUZZ_EXAMPLES=20000 DICOMSAFE_MUTANTS=5000 (docs/robustness.md)
FUZZ_EXAMPLES = int(os.environ.get("DICOMSAFE_FUZZ_EXAMPLES", "60"))
N_MUTANTS = int(os.environ.get("DICOMSAFE_MUTANTS", "300"))


def cli(*args, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "dicomsafe", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def hostile_tree(corpus, tmp_path_factory):
    """pydicom's bundled files (test and charset) + 300 seeded mutants of the PHI corpus."""
    root = tmp_path_factory.mktemp("hostile") / "src"
    shutil.copytree(PYDICOM_DATA / "test_files", root / "pydicom")
    shutil.copytree(PYDICOM_DATA / "charset_files", root / "charset")
    sources = [p for p in corpus.with_outcome("written")]
    mutants = build_mutants(sources, root / "mutants", n=N_MUTANTS, seed=int(os.environ.get("DICOMSAFE_MUTANT_SEED", "7")))
    assert len(mutants) >= N_MUTANTS
    return root


def test_hostile_tree_every_input_accounted_no_leak(hostile_tree, corpus, secret_file, tmp_path):
    dst = tmp_path / "dst"
    r = cli("deidentify", hostile_tree, dst, "--secret-file", secret_file, "--quarantine", tmp_path / "q")
    assert r.returncode in (0, 1), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    report = json.loads((dst / ".dicomsafe" / "report.json").read_text())
    c = report["counts"]
    assert c["inputs"] == count_files(hostile_tree)
    assert c["inputs"] == c["written"] + c["quarantined"] + c["skipped"]
    assert c["written"] > 100 and c["quarantined"] > 50
    outs = [p for p in dst.rglob("*.dcm") if ".dicomsafe" not in p.parts]
    assert len(outs) == c["written"]
    for p in outs:
        with open(p, "rb") as fh:
            assert fh.read(132) == bytes(128) + b"DICM"
    assert find_planted(corpus, dst, text=r.stdout + r.stderr) == []
    assert not list(dst.rglob("*.tmp"))
    for entry in report["files"]:
        assert set(entry) <= {"id", "outcome", "reason", "preamble", "details"}


def test_odd_names_and_links_are_accounted(tmp_path, secret_file):
    src = tmp_path / "src"
    src.mkdir()
    ct = PYDICOM_DATA / "test_files" / "CT_small.dcm"
    shutil.copy(ct, src / "name with spaces.dcm")
    shutil.copy(PYDICOM_DATA / "test_files" / "MR_small.dcm", src / "new\nline.dcm")
    with open(os.path.join(os.fsencode(src), b"latin1-\xe9.dcm"), "wb") as fh:
        fh.write((PYDICOM_DATA / "test_files" / "rtplan.dcm").read_bytes())
    (src / "empty.dcm").write_bytes(b"")
    (src / "notes.txt").write_text("not dicom")
    (src / "loop").symlink_to(src)
    outside = tmp_path / "outside.dcm"
    shutil.copy(ct, outside)
    (src / "escape.dcm").symlink_to(outside)
    dst = tmp_path / "dst"
    r = cli("deidentify", src, dst, "--secret-file", secret_file, "--quarantine", tmp_path / "q")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr
    c = json.loads((dst / ".dicomsafe" / "report.json").read_text())["counts"]
    assert c["inputs"] == 5  # the loop and the link out of SRC are not inputs
    assert c["written"] == 3
    assert c["inputs"] == c["written"] + c["quarantined"] + c["skipped"]


def test_sigterm_stops_cleanly_with_130(tmp_path, secret_file):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(400):
        shutil.copy(PYDICOM_DATA / "test_files" / "CT_small.dcm", src / f"{i:04d}.dcm")
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, "-m", "dicomsafe", "deidentify", str(src), str(dst),
                             "--secret-file", str(secret_file), "--quarantine", str(tmp_path / "q")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (dst / ".dicomsafe" / "staging").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not (dst / ".dicomsafe" / "staging").exists()
    assert not list(dst.rglob("*.tmp"))


PLANT = "Quixwortle^Zanthippe"


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bytes_never_crash_never_leak(data, tmp_path_factory):
    """Random structural damage to a real file: the deidentifier returns a result, never raises,
    and a written output never holds the planted name."""
    base = pydicom.dcmread(PYDICOM_DATA / "test_files" / "CT_small.dcm")
    base.PatientName = PLANT
    base.StudyDescription = "for " + PLANT
    work = tmp_path_factory.mktemp("fz")
    clean = work / "in.dcm"
    base.save_as(clean, enforce_file_format=True)
    raw = bytearray(clean.read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "junk", "len"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[pos:]
        elif op == "junk":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "len" and pos + 4 <= len(raw):
            raw[pos:pos + 4] = data.draw(st.sampled_from([b"\xff\xff\xff\xff", b"\xf0\xff\xff\xff", b"\x00\x00\x01\x00"]))
        if not raw:
            break
    bad = work / "bad.dcm"
    bad.write_bytes(bytes(raw))
    deid = Deidentifier(load_profile("basic"), TEST_SECRET)
    res = deid.process_file(bad, work, "out")
    assert res.outcome in ("written", "quarantined")
    if res.outcome == "written":
        assert PLANT.split("^")[0].encode() not in Path(res.staged).read_bytes()
        assert PLANT.split("^")[0].lower().encode() not in Path(res.staged).read_bytes().lower()
