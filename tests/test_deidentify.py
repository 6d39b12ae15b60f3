"""One file through the deidentifier: real pydicom test files, real writes, re-read."""

from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread

from dicomsafe.deidentify import Deidentifier
from dicomsafe.profiles import load_profile

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
SECRET = bytes(range(32))

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
           "test-SR.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "waveform_ecg.dcm", "rtplan.dcm",
           "rtstruct.dcm", "rtdose.dcm", "examples_overlay.dcm", "JPEG-lossy.dcm"]


def _run(name, tmp_path, secret=SECRET, profile="basic", options=()):
    d = Deidentifier(load_profile(profile, options), secret)
    res = d.process_file(TEST_FILES / name, tmp_path, "f")
    return res


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_is_written_valid_and_pixels_unchanged(name, tmp_path):
    src = dcmread(TEST_FILES / name, force=True)
    res = _run(name, tmp_path)
    assert res.outcome == "written", res.details
    out_path = Path(res.staged)
    raw = out_path.read_bytes()
    assert raw[:128] == b"\0" * 128 and raw[128:132] == b"DICM"
    out = dcmread(out_path)
    assert out.PatientIdentityRemoved == "YES"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != src.SOPInstanceUID
    assert out.SOPClassUID == src.SOPClassUID
    if "TransferSyntaxUID" in getattr(src, "file_meta", {}):
        assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    if "PixelData" in src:
        assert out.PixelData == src.PixelData
    for kw in ("Modality", "ImageType", "PixelSpacing", "SliceThickness", "ImagePositionPatient",
               "ImageOrientationPatient", "Rows", "Columns"):
        if kw in src:
            assert out[kw].value == src[kw].value, kw
    assert not [e for e in out if e.tag.is_private]
    assert res.out_relpath.endswith(f"/{out.SOPInstanceUID}.dcm")
    assert res.out_relpath.split("/")[1:3] == [out.StudyInstanceUID, out.SeriesInstanceUID]


def test_method_code_sequence_lists_options(tmp_path):
    res = _run("CT_small.dcm", tmp_path, options=("clean-descriptors", "retain-patient-characteristics"))
    out = dcmread(res.staged)
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113108"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)


def test_same_secret_same_bytes_other_secret_other_uids(tmp_path):
    a = Path(_run("CT_small.dcm", tmp_path / "a").staged).read_bytes()
    b = Path(_run("CT_small.dcm", tmp_path / "b").staged).read_bytes()
    assert a == b
    c = dcmread(_run("CT_small.dcm", tmp_path / "c", secret=bytes(32)).staged)
    o = dcmread(tmp_path / "a" / "f.dcm")
    uids = lambda ds: {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID}
    assert not uids(c) & uids(o)


def test_truncated_input_is_quarantined_with_code(tmp_path):
    res = _run("MR_truncated.dcm", tmp_path)
    assert res.outcome == "quarantined" and res.reason == "truncated"
    assert not list(tmp_path.glob("*.dcm"))


def test_input_is_never_modified(tmp_path):
    import hashlib
    before = hashlib.sha256((TEST_FILES / "CT_small.dcm").read_bytes()).hexdigest()
    _run("CT_small.dcm", tmp_path)
    assert hashlib.sha256((TEST_FILES / "CT_small.dcm").read_bytes()).hexdigest() == before


def test_a_file_with_a_huge_name_is_handled_on_its_own(tmp_path):
    """A 9,000-character patient name used to make verification raise RecursionError, which
    failed the whole work unit. It is now an ordinary file: written clean or quarantined alone."""
    from dicomsafe.corpus import build_ct_series
    from dicomsafe.deidentify import Deidentifier
    from dicomsafe.profiles import load_profile
    from dicomsafe.verify import harvest

    import pydicom

    files = build_ct_series(tmp_path / "src", 2, rows=8, cols=8)
    ds = pydicom.dcmread(files[0])
    ds.PatientName = "Q" * 9000
    ds.ImageComments = "Q" * 9000  # kept? then verification must catch it
    ds.save_as(files[0])
    deid = Deidentifier(load_profile("basic"), b"k" * 32)
    results = deid.process_files([(files[0], "a"), (files[1], "b")], tmp_path / "staging")
    assert [r.outcome for r in results][1] == "written"
    assert results[0].outcome in ("written", "quarantined")
    if results[0].outcome == "written":
        out = pydicom.dcmread(results[0].staged)
        assert "Q" * 100 not in str(out.get("PatientName", "")) + str(out.get("ImageComments", ""))
    assert "Q" * 9000 in {v.upper() for v in harvest(pydicom.dcmread(files[0])).patient_names}
