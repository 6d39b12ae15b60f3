"""Issue 3 acceptance on the identified corpus: nothing planted survives, utility survives."""

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomsafe.corpus import find_planted, match_outputs
from dicomsafe.pseudonyms import Pseudonymizer

from conftest import OTHER_SECRET, TEST_SECRET, secret_file_bytes


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dicomsafe", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


@pytest.fixture(scope="module")
def run(corpus, secret_file, tmp_path_factory):
    """One basic-profile run over the corpus, shared by the checks below."""
    work = tmp_path_factory.mktemp("deid")
    dst = work / "out"
    before = corpus.snapshot()
    r = run_cli("deidentify", corpus.root, dst, "--profile", "basic", "--secret-file", secret_file,
                "--quarantine", work / "q", cwd=work)
    return dict(result=r, dst=dst, q=work / "q", before=before)


def outputs(dst):
    return sorted(p for p in Path(dst).rglob("*.dcm") if ".dicomsafe" not in p.parts)


def test_exit_code_and_accounting(run, corpus):
    r = run["result"]
    assert r.returncode == 1, r.stderr  # the corpus holds broken files: they are quarantined
    report = json.loads((run["dst"] / ".dicomsafe" / "report.json").read_text())
    c = report["counts"]
    assert c["inputs"] == len(corpus.files) == c["written"] + c["quarantined"] + c["skipped"]
    expected = defaultdict(int)
    for outcome in corpus.expected.values():
        expected[outcome] += 1
    assert (c["written"], c["quarantined"], c["skipped"]) == (expected["written"], expected["quarantined"], expected["skipped"])
    assert len(report["files"]) == len(corpus.files)
    assert len(outputs(run["dst"])) == expected["written"]
    assert "Traceback" not in r.stderr
    polyglots = [p for p in corpus.files if any(f.startswith("polyglot-") for f in corpus.features.get(p, []))]
    assert polyglots and report["preamble_executables"] == len(polyglots)
    assert "of them executable/archive (CVE-2019-11687)" in r.stderr


def test_no_planted_value_anywhere(run, corpus):
    r = run["result"]
    hits = find_planted(corpus, run["dst"], text=r.stdout + r.stderr)
    assert hits == []


def test_no_original_uid_survives(run, corpus):
    blob = b"".join(p.read_bytes() for p in outputs(run["dst"]))
    survivors = [u for u in corpus.uids if u.encode() in blob]
    assert survivors == []


def test_inputs_unchanged(run, corpus):
    assert corpus.snapshot() == run["before"]


def test_every_output_readable_pixels_kept(run, corpus):
    for p in outputs(run["dst"]):
        ds = dcmread(p)
        assert ds.PatientIdentityRemoved == "YES"
        assert p.read_bytes()[:128] == bytes(128)
    written = corpus.with_outcome("written")
    matched = match_outputs(written, run["dst"])
    import hashlib
    keys = {s: hashlib.sha256(bytes(dcmread(s, force=True).PixelData)).digest()
            for s in written if "PixelData" in dcmread(s, force=True)}
    unique = [s for s, k in keys.items() if list(keys.values()).count(k) == 1]
    assert len(unique) > 10 and all(matched[s] is not None for s in unique)
    # an image reused for two patients has two outputs with its (unchanged) pixels
    outs_by_key = {}
    for p in outputs(run["dst"]):
        ds = dcmread(p)
        if "PixelData" in ds:
            k = hashlib.sha256(bytes(ds.PixelData)).digest()
            outs_by_key[k] = outs_by_key.get(k, 0) + 1
    for s, k in keys.items():
        assert outs_by_key.get(k, 0) == list(keys.values()).count(k)


def test_studies_and_series_grouping_kept(run, corpus, secret):
    p = Pseudonymizer(secret)
    out_by_sop = {}
    for f in outputs(run["dst"]):
        ds = dcmread(f, stop_before_pixels=True)
        out_by_sop[ds.SOPInstanceUID] = ds
    for kind, groups in (("StudyInstanceUID", corpus.studies), ("SeriesInstanceUID", corpus.series)):
        seen = set()
        for original, files in groups.items():
            outs = {str(out_by_sop[p.uid(dcmread(f, force=True, stop_before_pixels=True).SOPInstanceUID)][kind])
                    for f in files}
            assert len(outs) == 1, kind
            assert outs.isdisjoint(seen)
            seen |= outs


def test_references_resolve(run, corpus, secret):
    p = Pseudonymizer(secret)
    assert corpus.references
    for ref in corpus.references:
        src_uid = dcmread(ref.source, force=True, stop_before_pixels=True).SOPInstanceUID
        tgt_uid = dcmread(ref.target, force=True, stop_before_pixels=True).SOPInstanceUID
        out = next(f for f in outputs(run["dst"]) if f.name == f"{p.uid(src_uid)}.dcm")
        assert p.uid(tgt_uid).encode() in out.read_bytes(), ref.where


def test_attributes_outside_table_kept(run, corpus, secret):
    matched = match_outputs(corpus.with_outcome("written"), run["dst"])
    checked = 0
    for src, out in matched.items():
        if out is None:
            continue
        a, b = dcmread(src, force=True), dcmread(out)
        for kw in ("Modality", "ImageType", "PixelSpacing", "SliceThickness", "ImagePositionPatient",
                   "ImageOrientationPatient", "Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
            if kw in a:
                assert b[kw].value == a[kw].value, kw
                checked += 1
    assert checked > 20


def test_quarantine_is_operator_side(run):
    index = (run["q"] / "index.jsonl").read_text().splitlines()
    assert len(index) == 2
    assert all("source" in json.loads(line) for line in index)
    assert not (run["dst"] / "index.jsonl").exists()


def _tree_bytes(dst):
    return {p.relative_to(dst).as_posix(): p.read_bytes() for p in outputs(dst)}


def test_same_secret_identical_other_secret_disjoint(run, corpus, tmp_path):
    again = tmp_path / "again"
    sf = tmp_path / "s1"
    sf.write_bytes(secret_file_bytes(TEST_SECRET))
    sf.chmod(0o600)
    r = run_cli("deidentify", corpus.root, again, "--secret-file", sf, "--quarantine", tmp_path / "q1")
    assert r.returncode == 1
    assert _tree_bytes(again) == _tree_bytes(run["dst"])
    other = tmp_path / "other"
    sf2 = tmp_path / "s2"
    sf2.write_bytes(secret_file_bytes(OTHER_SECRET))
    sf2.chmod(0o600)
    run_cli("deidentify", corpus.root, other, "--secret-file", sf2, "--quarantine", tmp_path / "q2")
    instance = {"SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                "ReferencedSOPInstanceUID", "MediaStorageSOPInstanceUID"}
    uids = lambda dst: {str(e.value) for f in outputs(dst) for e in dcmread(f).iterall()
                        if e.keyword in instance and e.value}
    a, b = uids(run["dst"]), uids(other)
    assert a and b and not (a & b)


@pytest.mark.parametrize("case", ["missing-src", "bad-secret", "unknown-profile", "open-secret"])
def test_config_errors_are_one_line_exit_2(case, corpus, secret_file, tmp_path):
    args = {"missing-src": [tmp_path / "nope", tmp_path / "o", "--secret-file", secret_file],
            "bad-secret": [corpus.root, tmp_path / "o", "--secret-file", tmp_path / "missing"],
            "unknown-profile": [corpus.root, tmp_path / "o", "--secret-file", secret_file, "--profile", "nope"],
            "open-secret": [corpus.root, tmp_path / "o", "--secret-file", tmp_path / "open"]}[case]
    (tmp_path / "open").write_bytes(secret_file_bytes(TEST_SECRET))
    (tmp_path / "open").chmod(0o644)
    r = run_cli("deidentify", *args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("dicomsafe: error:")
    assert not (tmp_path / "o").exists() or not outputs(tmp_path / "o")
