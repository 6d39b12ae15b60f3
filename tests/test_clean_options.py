"""Issue 4 acceptance: the retain-and-clean options on the fake-PHI corpus."""

import datetime as dt
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomsafe.corpus import find_planted
from dicomsafe.pseudonyms import Pseudonymizer

OPTIONS = ["clean-descriptors", "clean-structured-content", "retain-safe-private",
           "retain-longitudinal-modified-dates", "retain-patient-characteristics"]


@pytest.fixture(scope="module")
def cleaned(corpus, secret_file, tmp_path_factory):
    work = tmp_path_factory.mktemp("clean")
    src = work / "src"
    shutil.copytree(corpus.root, src, symlinks=True)
    # one CT gains a safe private element (PS3.15 E.3.10 list) and an unsafe one in the same group
    ct = next(p for p in corpus.with_outcome("written") if "ct" in p.name.lower())
    target = src / ct.relative_to(corpus.root)
    ds = dcmread(target)
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "1.2345")
    block.add_new(0x77, "LO", "Zyxfiddock private note")
    ds.save_as(target)
    args = ["deidentify", src, work / "out", "--secret-file", secret_file, "--quarantine", work / "q"]
    for o in OPTIONS:
        args += ["--option", o]
    r = subprocess.run([sys.executable, "-m", "dicomsafe", *map(str, args)], capture_output=True, text=True)
    return dict(r=r, src=src, dst=work / "out", target=target)


def outputs(dst):
    return [p for p in dst.rglob("*.dcm") if ".dicomsafe" not in p.parts]


def test_written_and_nothing_planted_survives(cleaned, corpus):
    r = cleaned["r"]
    assert r.returncode == 1 and "Traceback" not in r.stderr  # only the 2 broken files quarantined
    assert len(outputs(cleaned["dst"])) == len(corpus.with_outcome("written"))
    assert find_planted(corpus, cleaned["dst"], text=r.stdout + r.stderr) == []


def test_descriptions_keep_their_clinical_words(cleaned):
    descs = [str(dcmread(p, stop_before_pixels=True).get("StudyDescription", "")) for p in outputs(cleaned["dst"])]
    kept = [d for d in descs if d]
    assert kept and all("[removed]" in d for d in kept)
    assert any(d.split(" for ")[0].strip() for d in kept)  # e.g. "CT CHEST" survives before the removal


def test_dates_shifted_consistently_per_patient(cleaned, corpus, secret):
    p = Pseudonymizer(secret)
    shifts = defaultdict(set)
    for src in corpus.with_outcome("written"):
        a = dcmread(src, force=True, stop_before_pixels=True)
        if not a.get("StudyDate") or "SOPInstanceUID" not in a:
            continue
        out = next(o for o in outputs(cleaned["dst"]) if o.name == f"{p.uid(a.SOPInstanceUID)}.dcm")
        b = dcmread(out, stop_before_pixels=True)
        d0 = dt.datetime.strptime(a.StudyDate, "%Y%m%d")
        d1 = dt.datetime.strptime(b.StudyDate, "%Y%m%d")
        shifts[str(a.PatientID)].add((d1 - d0).days)
        assert b.LongitudinalTemporalInformationModified == "MODIFIED"
    assert len(shifts) == 3
    for days in shifts.values():
        assert len(days) == 1 and -365 <= next(iter(days)) <= -1


def test_patient_characteristics_kept(cleaned):
    sexes = {str(dcmread(p, stop_before_pixels=True).get("PatientSex", "")) for p in outputs(cleaned["dst"])}
    assert sexes & {"F", "M", "O"}


def test_safe_private_kept_rest_removed(cleaned, secret):
    p = Pseudonymizer(secret)
    src = dcmread(cleaned["target"])
    out = next(o for o in outputs(cleaned["dst"]) if o.name == f"{p.uid(src.SOPInstanceUID)}.dcm")
    ds = dcmread(out)
    from dicomsafe.safeprivate import lookup_safe_private

    private = {(e.tag.group, e.tag.element & 0xFF): e.value for e in ds if e.tag.is_private and e.tag.element > 0xFF}
    assert (0x7053, 0x00) in private and float(private[(0x7053, 0x00)]) == pytest.approx(1.2345)
    assert (0x7053, 0x77) not in private
    for e in ds:
        if e.tag.is_private and e.tag.element > 0xFF:
            creator = ds[(e.tag.group << 16) | (e.tag.element >> 8)].value
            assert lookup_safe_private(e.tag.group, creator, e.tag.element & 0xFF) is not None


def test_sr_references_resolve(cleaned, corpus, secret):
    p = Pseudonymizer(secret)
    for ref in corpus.references:
        s = dcmread(ref.source, force=True, stop_before_pixels=True).SOPInstanceUID
        t = dcmread(ref.target, force=True, stop_before_pixels=True).SOPInstanceUID
        out = next(o for o in outputs(cleaned["dst"]) if o.name == f"{p.uid(s)}.dcm")
        assert p.uid(t).encode() in out.read_bytes()


def test_scan_agrees(cleaned):
    r = subprocess.run([sys.executable, "-m", "dicomsafe", "scan", str(cleaned["dst"]), "--against",
                        str(cleaned["src"])], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:]
