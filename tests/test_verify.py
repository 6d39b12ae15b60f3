"""Fail-closed verification on real pydicom test files with planted PHI.

Each test takes a real file, gives it an identity, makes a de-identified copy the way the engine
would (keyed 2.25 UIDs, dummy names, shifted dates), checks the copy verifies clean, then hides a
value somewhere a careless de-identifier would miss it and checks the Finding names the place and
the kind — and never the value.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import struct

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomsafe.verify import (
    Finding,
    PhiValues,
    date_forms,
    find_in_bytes,
    find_in_dataset,
    harvest,
    ignore_kinds_for_options,
    verify_file,
)

PLANTED = ("smith", "john", "4455667", "19800102", "springfield", "555")


def _keyed_uid(uid: str) -> str:
    return "2.25." + str(int.from_bytes(hashlib.sha256(b"uid\0" + uid.encode()).digest()[:16], "big"))


def identify(ds: Dataset) -> Dataset:
    """Give a pydicom test file a realistic identity."""
    ds.PatientName = "SMITH^JOHN^Q"
    ds.PatientID = "MRN4455667"
    ds.PatientBirthDate = "19800102"
    ds.PatientAddress = "123 Main Street^Springfield"
    ds.PatientTelephoneNumbers = "555-867-5309"
    ds.OtherPatientNames = "SMYTHE^JOHNNY"
    ds.ReferringPhysicianName = "ROE^JANE"
    ds.AccessionNumber = "ACC99887766"
    ds.InstitutionName = "Springfield General Hospital"
    return ds


def clean_copy(ds: Dataset, shift_days: int = -17) -> Dataset:
    """De-identify the way the rules engine does: dummy names, keyed UIDs, shifted dates."""
    out = copy.deepcopy(ds)

    def walk(d: Dataset) -> None:
        for elem in list(d):
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.tag.is_private:
                del d[elem.tag]
            elif elem.VR == "PN":
                elem.value = "ANONYMOUS" if elem.keyword == "PatientName" else ""
            elif elem.VR == "UI" and not elem.keyword.endswith(("ClassUID", "TransferSyntaxUID")):
                vals = elem.value if elem.VM > 1 else [elem.value]
                new = [v if str(v).startswith("1.2.840.10008.") else _keyed_uid(str(v)) for v in vals if v]
                elem.value = new if elem.VM > 1 else (new[0] if new else "")
            elif elem.VR == "DA" and elem.value:
                d0 = datetime.datetime.strptime(str(elem.value)[:8], "%Y%m%d") + datetime.timedelta(days=shift_days)
                elem.value = d0.strftime("%Y%m%d")
            elif elem.VR == "DT" and elem.value:
                elem.value = ""
            elif elem.keyword in (
                "PatientID", "AccessionNumber", "StudyID", "PatientAddress", "PatientTelephoneNumbers",
                "InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber",
                "OtherPatientIDs", "InstitutionalDepartmentName",
            ):
                elem.value = "PSEUDO" if elem.keyword == "PatientID" else ""

    walk(out)
    if "PatientBirthDate" in out:
        del out.PatientBirthDate
    if getattr(out, "file_meta", None) is not None and "SOPInstanceUID" in out:
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.preamble = b"\0" * 128
    return out


def _write(ds: Dataset, path) -> None:
    ds.save_as(path, enforce_file_format=False)


def _assert_phi_free(findings) -> None:
    for f in findings:
        text = (repr(f) + str(f)).lower()
        for v in PLANTED:
            assert v not in text, "a Finding must never carry a value"


@pytest.fixture
def mr():
    src = identify(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    return src, harvest(src)


def test_harvest_groups_values_and_hides_them_in_repr(mr):
    src, phi = mr
    assert {"smith", "john", "smith^john^q", "john smith", "smith, john", "j. smith"} <= phi.names
    assert "smith" in phi.patient_names and "roe" in phi.names and "roe" not in phi.patient_names
    assert "mrn4455667" in phi.patient_ids and "acc99887766" in phi.ids
    assert {"19800102", "1980-01-02", "01/02/1980", "02.01.1980", "2 jan 1980", "january 2, 1980"} <= phi.dates
    assert str(src.SOPInstanceUID).lower() in phi.uids and str(src.StudyInstanceUID).lower() in phi.uids
    assert not any(u.startswith("1.2.840.10008.") for u in phi.uids)
    assert str(src.SOPClassUID) not in phi.uids
    assert "springfield" in phi.addresses and "555-867-5309" in phi.phones
    assert "springfield general hospital" in phi.institution
    r = repr(phi).lower()
    assert "smith" not in r and "4455667" not in r and "names=" in r


def test_dummies_are_never_harvested():
    ds = Dataset()
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = "[removed]"
    ds.ReferringPhysicianName = ""
    phi = harvest(ds)
    assert phi.is_empty()


def test_date_forms_cover_many_written_forms():
    forms = date_forms("19800102")
    for f in ("19800102", "1980-01-02", "1980/01/02", "01/02/1980", "1/2/1980", "02/01/1980", "02.01.1980",
              "2.1.1980", "01-02-1980", "01/02/80", "2 jan 1980", "02-jan-1980", "january 2, 1980",
              "jan 2, 1980", "2nd january 1980"):
        assert f in forms, f
    assert date_forms("1980013") == set() and date_forms("19801345") == set()


def test_clean_copy_verifies_clean(mr, tmp_path):
    src, phi = mr
    out = tmp_path / "out.dcm"
    _write(clean_copy(src), out)
    assert verify_file(out, phi) == []


def test_identified_file_is_caught_everywhere(mr, tmp_path):
    src, phi = mr
    p = tmp_path / "id.dcm"
    _write(src, p)
    found = verify_file(p, phi)
    kinds = {f.kind for f in found}
    assert {"patient-name", "patient-id", "birth-date", "uid", "address", "phone", "id", "institution",
            "person-name"} <= kinds
    assert Finding("(0010,0010) PatientName", "patient-name") in found
    assert Finding("(0010,0030) PatientBirthDate", "birth-date") in found
    assert Finding("file-meta (0002,0003) MediaStorageSOPInstanceUID", "uid") in found
    _assert_phi_free(found)


def test_name_in_private_element(mr, tmp_path):
    src, phi = mr
    out = clean_copy(src)
    block = out.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "Smith^John")
    p = tmp_path / "priv.dcm"
    _write(out, p)
    found = verify_file(p, phi)
    assert Finding("(0009,1010) private", "patient-name") in found
    _assert_phi_free(found)


def test_name_in_preamble(mr, tmp_path):
    src, phi = mr
    out = clean_copy(src)
    out.preamble = b"MZ\0\0SMITH^JOHN".ljust(128, b"\0")
    p = tmp_path / "pre.dcm"
    _write(out, p)
    found = verify_file(p, phi)
    assert found == [Finding("preamble", "patient-name")]


def test_name_and_ssn_in_trailing_bytes(mr, tmp_path):
    src, phi = mr
    p = tmp_path / "trail.dcm"
    _write(clean_copy(src), p)
    with open(p, "ab") as fh:
        fh.write(b"\x00\x00notes: John Smith 123456789")
    found = verify_file(p, phi)
    assert Finding("trailing-bytes", "patient-name") in found
    assert Finding("trailing-bytes", "ssn") in found
    assert all(f.path == "trailing-bytes" for f in found)
    _assert_phi_free(found)


def test_value_swallowed_by_corrupted_length(mr, tmp_path):
    """A name sits in the next element, but the StudyDescription length was enlarged so the
    parser reads the name as part of StudyDescription's value: the hit must name that element."""
    src, phi = mr
    out = clean_copy(src)
    out.StudyDescription = "CT CHEST"
    out.SeriesDescription = "JOHN SMITH"
    p = tmp_path / "swallow.dcm"
    _write(out, p)
    data = bytearray(p.read_bytes())
    hdr = b"\x08\x00\x30\x10LO" + struct.pack("<H", 8) + b"CT CHEST"
    at = data.index(hdr)
    # swallow the following element: its 8-byte header and 10-byte value
    data[at + 6:at + 8] = struct.pack("<H", 8 + 8 + 10)
    p.write_bytes(bytes(data))
    found = verify_file(p, phi)
    assert Finding("(0008,1030) StudyDescription", "patient-name") in found
    assert not any("SeriesDescription" in f.path for f in found)
    _assert_phi_free(found)


def test_value_in_nested_sr_text(tmp_path):
    src = identify(pydicom.dcmread(get_testdata_file("test-SR.dcm")))
    phi = harvest(src)
    out = clean_copy(src)
    item = out.ContentSequence[1]
    inner = Dataset()
    inner.ValueType = "TEXT"
    inner.TextValue = "Follow-up advised. Call the patient (Mr Smith) at home."
    item.ContentSequence = Sequence([inner])
    found = find_in_dataset(out, phi)
    assert Finding("(0040,A730)[1].(0040,A730)[0].(0040,A160) TextValue", "patient-name") in found
    _assert_phi_free(found)


def test_birth_date_written_in_free_text(mr):
    src, phi = mr
    out = clean_copy(src)
    out.ImageComments = "pt born 2 Jan 1980, see chart"
    found = find_in_dataset(out, phi)
    assert Finding("(0020,4000) ImageComments", "birth-date") in found


def test_file_meta_element(mr, tmp_path):
    src, phi = mr
    out = clean_copy(src)
    out.file_meta.SourceApplicationEntityTitle = "SMITH_WS"
    p = tmp_path / "meta.dcm"
    _write(out, p)
    found = verify_file(p, phi)
    assert found == [Finding("file-meta (0002,0016) SourceApplicationEntityTitle", "patient-name")]


def test_ignore_kinds_for_retained_uids(mr, tmp_path):
    src, phi = mr
    out = clean_copy(src)
    out.SOPInstanceUID = src.SOPInstanceUID
    found = find_in_dataset(out, phi)
    assert Finding("(0008,0018) SOPInstanceUID", "uid") in found
    assert find_in_dataset(out, phi, ignore_kinds=ignore_kinds_for_options(["retain-uids"])) == []


def test_patterns_without_harvested_values(mr):
    src, _ = mr
    out = clean_copy(src)
    assert find_in_dataset(out, None) == []
    out.ImageComments = "SSN 123-45-6789, reach me at jane.roe@example.org or (555) 867-5309"
    out.ReferringPhysicianName = "Roe^Jane"
    found = set(find_in_dataset(out, None))
    assert {
        Finding("(0020,4000) ImageComments", "ssn"),
        Finding("(0020,4000) ImageComments", "email"),
        Finding("(0020,4000) ImageComments", "phone"),
        Finding("(0008,0090) ReferringPhysicianName", "person-name"),
    } <= found


def test_pseudonym_pn_is_not_name_like():
    ds = Dataset()
    ds.PatientName = "K7Q2XW4M"
    ds.OtherPatientNames = "ANONYMOUS"
    assert find_in_dataset(ds, None) == []


def test_invalid_ssn_areas_are_not_reported():
    ds = Dataset()
    ds.ImageComments = "lot 000-12-3456 / 666-12-3456 / 923-45-6789 / 123-00-4567"
    assert find_in_dataset(ds, None) == []


@pytest.mark.parametrize("name", ["chrX2.dcm", "chrH31.dcm", "chrI2.dcm", "chrRuss.dcm", "chrFren.dcm"])
def test_non_latin_name_found_in_bytes(name, tmp_path):
    src = pydicom.dcmread(get_charset_files(name)[0])
    phi = harvest(src)
    out = clean_copy(src)
    p = tmp_path / "clean.dcm"
    _write(out, p)
    assert verify_file(p, phi) == []
    # the ideographic/native family name, encoded in the file's own character set, hidden in the
    # preamble where no parser looks
    group = str(src.PatientName).split("=")[1 if "=" in str(src.PatientName) else 0]
    family, given = (group.split("^") + [""])[:2]
    name = family + given if len(family) < 2 else family  # one-ideograph surnames: whole name
    enc = [e for e in phi.encodings if e not in ("iso8859",)][-1]
    raw = pydicom.charset.encode_string(name, [enc])
    out.preamble = (b"\0" * 8 + raw).ljust(128, b"\0")
    _write(out, p)
    assert Finding("preamble", "patient-name") in verify_file(p, phi)


def test_non_latin_name_in_text_element():
    src = pydicom.dcmread(get_charset_files("chrX2.dcm")[0])
    phi = harvest(src)
    out = clean_copy(src)
    out.StudyDescription = "胸部CT 王小东 复查"
    assert Finding("(0008,1030) StudyDescription", "patient-name") in find_in_dataset(out, phi)


def test_ssn_in_pixel_data_but_not_pixel_noise(mr, tmp_path):
    src, phi = mr
    out = clean_copy(src)
    px = bytearray(out.PixelData)
    px[100:111] = b"123-45-6789"
    out.PixelData = bytes(px)
    p = tmp_path / "px.dcm"
    _write(out, p)
    assert verify_file(p, phi) == [Finding("(7FE0,0010) PixelData", "ssn")]


def test_unreadable_output_fails_closed(tmp_path):
    p = tmp_path / "bad.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    assert Finding("file", "unreadable") in verify_file(p, PhiValues())
    p.write_bytes(b"plain text, not DICOM: 078-05-1120")
    assert verify_file(p, PhiValues()) == [Finding("file", "unreadable"), Finding("file", "ssn")]


def test_find_in_bytes_without_structure():
    phi = PhiValues(names=frozenset({"smith"}), patient_names=frozenset({"smith"}))
    data = b"random\x00bytes SMITH, blacksmith, Smith."
    assert find_in_bytes(data, phi) == [Finding("file", "patient-name")]
    assert find_in_bytes(b"blacksmiths", phi) == []
    assert find_in_bytes(b"x" * 200 + b" 078-05-1120 ", None) == [Finding("file", "ssn")]
    assert find_in_bytes(b"x" * 200 + b" 078051120 ", None) == [Finding("file", "ssn")]


def test_union_of_harvests(mr):
    _, phi = mr
    other = harvest(pydicom.dcmread(get_charset_files("chrX2.dcm")[0]))
    both = PhiValues.union([phi, other])
    assert phi.names <= both.names and other.names <= both.names
    assert "GB18030" in both.encodings
