"""Differential test: the optimised verifier reports exactly what the old one did.

Why: :func:`dicomsafe.verify.verify_file` is the fail-closed safety net in front of every commit.
It was made faster (fewer pydicom conversions, cached matchers, one walk less); a faster verifier
that misses one finding is a leak. ``verify_reference`` is the verifier as it was before, frozen,
and every input here — pydicom's own test files (valid, odd and not DICOM at all), the fake-PHI
corpus (plain and hostile), the seeded hostile mutants, and engine-style de-identified copies with
and without a planted value — must give the same harvest and the same findings, in the same order,
against its own harvest, against another patient's, and without one (pattern mode).
"""

from __future__ import annotations

import copy
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

import verify_reference as ref
from dicomsafe import verify as new
from dicomsafe.corpus import build_corpus, pydicom_test_files
from test_verify import clean_copy, identify

#: Kinds a profile with retain-uids/-device/-institution/-full-dates ignores: a second code path.
_IGNORE = frozenset({"uid", "device", "institution", "date"})


def _read(path: Path):
    """(dataset for the new code, dataset for the oracle) — two reads: conversion mutates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, force=True), pydicom.dcmread(path, force=True)
        except Exception:
            return None, None


def _harvests(ds_new, ds_old):
    """(new, old) harvests of one file, checked equal field by field."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            h_old = ref.harvest(ds_old)
        except Exception as exc:
            with pytest.raises(type(exc)):
                new.harvest(ds_new)
            return None
        h_new = new.harvest(ds_new)
    for f in ref._VALUE_FIELDS:
        assert getattr(h_new, f) == getattr(h_old, f), f"harvest differs in {f}"
    assert h_new.encodings == h_old.encodings
    return h_new, h_old


def _same(path: Path, h_new, h_old, **kw) -> None:
    try:
        want = [(f.path, f.kind) for f in ref.verify_file(path, h_old, **kw)]
    except Exception as exc:  # the old verifier fails on this input: the new one must fail alike
        with pytest.raises(type(exc)):
            new.verify_file(path, h_new, **kw)
        return
    got = [(f.path, f.kind) for f in new.verify_file(path, h_new, **kw)]
    assert got == want, f"{Path(path).name}: findings differ"


def _compare_all(path: Path, pairs) -> None:
    for h_new, h_old in pairs:
        _same(path, h_new, h_old)
        _same(path, h_new, h_old, ignore_kinds=_IGNORE)


def _fresh(pair):
    """The same harvests without their matcher caches: the engine's per-file case."""
    return tuple(None if h is None else type(h)(**{f: getattr(h, f) for f in ref._VALUE_FIELDS},
                                                   encodings=h.encodings) for h in pair)


@pytest.fixture(scope="module")
def identity():
    """(new, old) harvests of an identified MR file: values that may turn up anywhere."""
    ds_new, ds_old = _read(Path(get_testdata_file("MR_small.dcm")))
    return new.harvest(identify(ds_new)), ref.harvest(identify(ds_old))


@pytest.mark.parametrize("path", pydicom_test_files(), ids=lambda p: p.name)
def test_pydicom_files(path, identity, tmp_path):
    ds_new, ds_old = _read(path)
    pairs = [(None, None), identity]
    own = _harvests(ds_new, ds_old) if ds_new is not None else None
    if own is not None:
        pairs += [own, _fresh(own), (new.PhiValues.union([own[0], identity[0]]),
                                     ref.PhiValues.union([own[1], identity[1]]))]
    _compare_all(path, pairs)
    _same(path, *identity, pixel_range=(0, 0))  # every byte searched, pixels included


@pytest.mark.parametrize("path", [p for p in pydicom_test_files() if p.suffix == ".dcm"][::3], ids=lambda p: p.name)
def test_engine_style_copies(path, tmp_path):
    """Identified, de-identified the way the engine does, then with the name planted in a private
    element and in free text: clean and dirty outputs verify the same."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            src = identify(pydicom.dcmread(path))
            out = clean_copy(src)
            if len(out) == 0:
                pytest.skip("nothing left once private elements are gone")
            p = tmp_path / "out.dcm"
            out.save_as(p, enforce_file_format=False)
            dirty = copy.deepcopy(out)
            dirty.private_block(0x0011, "PLANT", create=True).add_new(0x01, "LO", "pt Smith 123-45-6789")
            dirty.ImageComments = "seen by Jane Roe on 01/02/1980, mrn4455667"
            q = tmp_path / "dirty.dcm"
            dirty.save_as(q, enforce_file_format=False)
            # original instance UIDs in free text, at a boundary, glued to digits and in a list
            uids = [str(v.value) for v in src.iterall() if v.VR == "UI" and "Instance" in (v.keyword or "")]
            uid_files = []
            for i, text in enumerate((" ref {0}.", "x{0}", "{0}1", "{0}.7", "a\\{0}\\b", "({0})")):
                if uids:
                    leak = copy.deepcopy(out)
                    leak.StudyComments = text.format(uids[i % len(uids)])
                    uid_files.append(tmp_path / f"uid{i}.dcm")
                    leak.save_as(uid_files[-1], enforce_file_format=False)
        except Exception as exc:  # pydicom cannot read or write this fixture at all
            pytest.skip(f"fixture not usable: {type(exc).__name__}")
    src_new, src_old = _read(path)
    pairs = [(new.harvest(identify(src_new)), ref.harvest(identify(src_old))), (None, None)]
    for f in (p, q, *uid_files):
        _compare_all(f, pairs)


def _corpus_pairs(files):
    """Own harvest of each readable file, and the union over all of them (a study's identity)."""
    own = {}
    for f in files:
        ds_new, ds_old = _read(f)
        if ds_new is not None:
            got = _harvests(ds_new, ds_old)
            if got is not None:
                own[f] = got
    union = (new.PhiValues.union(h for h, _ in own.values()), ref.PhiValues.union(h for _, h in own.values()))
    return own, union


@pytest.mark.parametrize("hostile", [False, True])
def test_corpus_files(hostile, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = build_corpus(tmp_path / "c", seed=7, patients=2, hostile=hostile)
    files = [f for f in c.files if f.is_file()]  # the hostile tree has a dangling link
    own, union = _corpus_pairs(files)
    assert own
    for f in files:
        pairs = [(None, None), union] + ([own[f]] if f in own else [])
        _compare_all(f, pairs)


def test_mutants(corpus, mutants):
    _, union = _corpus_pairs([p for p in corpus.files if p.suffix == ".dcm"][:40])
    for f in mutants:
        own_new, own_old = _read(f)
        pairs = [(None, None), union]
        if own_new is not None:
            got = _harvests(own_new, own_old)
            if got is not None:
                pairs.append(got)
        _compare_all(f, pairs)


#: (tag, VR the file claims, value bytes): text where a number belongs, and numbers of the wrong
#: length. pydicom cannot convert them, so the verifier searches their raw bytes — the case a
#: "skip numeric VRs before converting" shortcut would lose.
_MALFORMED = [
    (0x00180050, "DS", b"SMITH^JOHN"),      # SliceThickness holding a name
    (0x00180088, "DS", b"123-45-6789 "),    # SpacingBetweenSlices holding an SSN
    (0x00200013, "IS", b"MRN4455667"),      # InstanceNumber holding the patient id
    (0x00280030, "DS", b"1\\springfield"),   # PixelSpacing, second value text
    (0x00181150, "IS", b"2.5 "),            # ExposureTime: a DS-shaped IS (fails as IS)
    (0x00280010, "US", b"123-45-6789"),     # Rows: 11 bytes, not a multiple of 2
    (0x00280011, "US", b"SSN 123456789"),   # Columns: a bare SSN by its label (bytes layer: no)
    (0x00081070, "US", b"ROE^JANE^Q"),      # OperatorsName (PN) written as a 10-byte US: converts
    (0x00081060, "US", b"ROE^JANE^QQ"),     # NameOfPhysiciansReadingStudy (PN) as an 11-byte US
    (0x00080080, "DS", b"Springfield General"),  # InstitutionName as DS: still harvested by keyword
    (0x00181000, "IS", b"SN-99887"),        # DeviceSerialNumber as IS
    (0x00189306, "FD", b"jane@roe.org"),    # a 12-byte FD: e-mail, wrong length
    (0x00280034, "IS", b"ROE^JANE"),        # PixelAspectRatio: IS text converts (kept as str)
    (0x00080030, "TM", b"SMITH"),           # StudyTime: TM text is kept as a string
    (0x00101010, "AS", b"080Y"),            # PatientAge, valid
    (0x00280100, "US", b"\x10\x00"),        # BitsAllocated, valid
]


def _malformed_file(path: Path, explicit: bool) -> None:
    """A small file whose numeric elements hold the bytes above, written byte by byte."""
    body = b""
    for tag, vr, value in sorted(_MALFORMED + [(0x00100010, "PN", b"SMITH^JOHN"), (0x00100020, "LO", b"MRN4455667")]):
        if len(value) % 2 and vr not in ("US", "FD"):
            value += b" "
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        head += vr.encode() + struct.pack("<H", len(value)) if explicit else struct.pack("<I", len(value))
        body += head + value
    ts = "1.2.840.10008.1.2.1" if explicit else "1.2.840.10008.1.2"
    meta = Dataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "2.25.1"
    meta.TransferSyntaxUID = ts
    pydicom.dataset.validate_file_meta(meta, enforce_standard=True)
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + body)


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "implicit"])
@pytest.mark.parametrize("to_un", [False, True], ids=["raise", "wrong-length-to-UN"])
def test_malformed_numeric_values(explicit, to_un, identity, tmp_path, monkeypatch):
    monkeypatch.setattr(pydicom.config, "convert_wrong_length_to_UN", to_un)
    p = tmp_path / "m.dcm"
    _malformed_file(p, explicit)
    own = _harvests(*_read(p))
    assert "springfield general" in own[0].institution
    for h_new, h_old in [identity, (None, None), own]:
        _compare_all(p, [(h_new, h_old)])
    found = new.verify_file(p, None)
    # A bare SSN by its label in a US of odd length: only the dataset layer's raw search of an
    # unconvertible element reports it (with wrong-length-to-UN pydicom keeps it as US bytes,
    # skipped like any US) — so this test fails if that search is ever skipped.
    assert (new.Finding("(0028,0011) Columns", "ssn") in found) is not to_un
    # With wrong-length-to-UN, an odd-length "US" on a PN tag becomes a PN of raw bytes, and the
    # name heuristic (dataset layer only) reports it (implicit VR: a PN anyway).
    reading = new.Finding("(0008,1060) NameOfPhysiciansReadingStudy", "person-name")
    assert (reading in found) is (to_un or not explicit)
