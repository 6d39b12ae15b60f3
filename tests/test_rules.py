"""The rules engine: each action code, combined codes, wildcards, options, nesting, privates."""

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomsafe.profiles import load_profile
from dicomsafe.pseudonyms import Pseudonymizer
from dicomsafe.rules import Context, compile_plan
from dicomsafe.standard import load_table

SECRET = bytes(range(32))


def apply(ds, profile="basic", options=(), scrub=lambda s: "[scrubbed]"):
    prof = load_profile(profile, options)
    plan = compile_plan(prof)
    p = Pseudonymizer(SECRET)
    shift = p.date_shift_days("PID", *prof.shift_days)
    plan.apply(ds, Context(pseudo=p, patient_token="TOKEN", shift_days=shift, scrub=scrub))
    return ds, shift


def base_ds():
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "052Y"
    ds.AccessionNumber = "ACC123"
    ds.StudyDate = "20200115"
    ds.StudyTime = "101010"
    ds.InstanceCreationDate = "20200115"
    ds.StudyDescription = "CT chest for Jane Doe"
    ds.InstitutionName = "General Hospital"
    ds.DeviceSerialNumber = "SN-42"
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    ds.SliceThickness = "2.5"
    ds.OperatorsName = "Smith^Op"
    return ds


def test_table_has_all_rows():
    t = load_table()
    assert len(t.exact) + len(t.wildcards) + 1 == 621


def test_basic_action_codes():
    ds, _ = apply(base_ds())
    assert ds.PatientName == "TOKEN"                       # override: replace {pseudo_id}
    assert ds.PatientID == Pseudonymizer(SECRET).id_token("PID")  # override: pseudonym
    assert ds.PatientBirthDate == ""                       # Z
    assert ds.AccessionNumber == ""                        # Z
    assert "PatientAge" not in ds                          # X
    assert "StudyDescription" not in ds                    # X
    assert ds.OperatorsName == ""                          # X/Z/D resolved to Z
    assert ds.InstanceCreationDate == "19000101"            # X/D resolved to D
    assert ds.InstitutionName == ""                        # X/Z/D resolved to Z
    assert ds.StudyInstanceUID == Pseudonymizer(SECRET).uid("1.2.3.4.5")  # U
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"   # not in table: kept
    assert ds.Modality == "CT" and ds.SliceThickness == "2.5"  # outside the table: kept


def test_options_change_sample_rows():
    ds, shift = apply(base_ds(), options=("retain-patient-characteristics", "retain-longitudinal-modified-dates",
                                          "clean-descriptors", "retain-institution-identity",
                                          "retain-device-identity", "retain-uids"))
    assert ds.PatientSex == "F" and ds.PatientAge == "052Y"
    from dicomsafe.pseudonyms import shift_da
    assert ds.StudyDate == shift_da("20200115", shift) != "20200115"
    assert ds.StudyTime == "101010"
    assert ds.StudyDescription == "[scrubbed]"
    assert ds.InstitutionName == "General Hospital"
    assert ds.DeviceSerialNumber == "SN-42"
    assert ds.StudyInstanceUID == "1.2.3.4.5"


def test_full_dates_option_keeps_dates():
    ds, _ = apply(base_ds(), options=("retain-longitudinal-full-dates",))
    assert ds.StudyDate == "20200115"
    assert ds.PatientBirthDate == ""  # not a longitudinal date


def test_nested_sequences_at_depth():
    ds = base_ds()
    inner = Dataset()
    inner.PatientID = "OTHER-ID"
    inner.ReferencedSOPInstanceUID = "1.2.3.9"
    deeper = Dataset()
    deeper.ReferencedSOPInstanceUID = "1.2.3.10"
    deeper.PatientName = "Deep^Name"
    inner.ReferencedImageSequence = Sequence([deeper])
    req = Dataset()
    req.RequestedProcedureDescription = "for Jane"
    req.ReferencedStudySequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([req])
    src = Dataset()
    src.ReferencedSOPInstanceUID = "1.2.3.11"
    src.ReferencedImageSequence = Sequence([deeper.copy()])
    ds.SourceImageSequence = Sequence([src])
    ds, _ = apply(ds)
    assert "RequestAttributesSequence" not in ds            # X in basic
    p = Pseudonymizer(SECRET)
    item = ds.SourceImageSequence[0]                       # X/Z/U*: kept, UIDs keyed
    assert item.ReferencedSOPInstanceUID == p.uid("1.2.3.11")
    assert item.ReferencedImageSequence[0].ReferencedSOPInstanceUID == p.uid("1.2.3.10")
    assert item.ReferencedImageSequence[0].PatientName == "TOKEN"  # rules apply at depth 2


def test_clean_descriptors_recurses_into_request_attributes():
    ds = base_ds()
    req = Dataset()
    req.RequestedProcedureDescription = "for Jane"
    req.ScheduledProcedureStepDescription = "x"
    ds.RequestAttributesSequence = Sequence([req])
    ds, _ = apply(ds, options=("clean-descriptors",))
    assert ds.RequestAttributesSequence[0].RequestedProcedureDescription == "[scrubbed]"


def test_wildcard_overlay_and_curve_rows():
    ds = base_ds()
    ds.add_new(0x60003000, "OW", b"\x01\x02")      # (60xx,3000) Overlay Data: X
    ds.add_new(0x60004000, "LT", "overlay comment")  # (60xx,4000): X
    ds.add_new(0x60020022, "LO", "Jane Doe label")   # overlay text not in table: handled like comments
    ds.add_new(0x60000010, "US", 512)                # overlay rows: kept
    ds.add_new(0x50000005, "US", 1)                  # (50xx,xxxx) curve: X
    ds, _ = apply(ds)
    for tag in (0x60003000, 0x60004000, 0x60020022, 0x50000005):
        assert tag not in ds
    assert ds[0x60000010].value == 512
    ds2 = base_ds()
    ds2.add_new(0x60020022, "LO", "Jane Doe label")
    ds2.add_new(0x60003000, "OW", b"\x01\x02")
    ds2, _ = apply(ds2, options=("clean-graphics",))
    assert ds2[0x60020022].value == "[scrubbed]"
    assert ds2[0x60003000].value == b"\x01\x02"


def test_private_removed_unless_overridden(tmp_path):
    ds = base_ds()
    block = ds.private_block(0x0009, "ACME_1", create=True)
    block.add_new(0x10, "LO", "Jane Doe")
    block.add_new(0x11, "LO", "keep me")
    ds, _ = apply(ds)
    assert not [e for e in ds if e.tag.is_private]
    prof = tmp_path / "p.toml"
    prof.write_text('[profile]\nname="p"\nbase="basic"\n[tags]\n"(0009,xx11)" = { action = "keep", private_creator = "ACME_1" }\n')
    ds = base_ds()
    block = ds.private_block(0x0009, "ACME_1", create=True)
    block.add_new(0x10, "LO", "Jane Doe")
    block.add_new(0x11, "LO", "keep me")
    ds, _ = apply(ds, profile=str(prof))
    kept = [e.value for e in ds if e.tag.is_private]
    assert kept == ["ACME_1", "keep me"]


def test_sr_content_dummy_in_basic_and_scrub_with_clean_structured_content():
    def sr():
        ds = dcmread(get_testdata_file("test-SR.dcm"))
        return ds
    def texts(ds):
        out = []
        def walk(d):
            for e in d:
                if e.VR == "SQ":
                    for i in e.value:
                        walk(i)
                elif e.keyword == "TextValue":
                    out.append(e.value)
        walk(ds)
        return out
    original = texts(sr())
    assert original
    basic, _ = apply(sr())
    assert set(texts(basic)) == {"ANONYMIZED"}
    cleaned, _ = apply(sr(), options=("clean-structured-content",))
    assert set(texts(cleaned)) == {"[scrubbed]"}


def test_real_file_keeps_pixels_and_geometry():
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    before = (ds.PixelData, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing)
    ds, _ = apply(ds)
    assert (ds.PixelData, ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing) == before
    assert ds.PatientName == "TOKEN"


def test_year_and_cap_age_actions(tmp_path):
    prof = tmp_path / "p.toml"
    prof.write_text('[profile]\nname="p"\nbase="basic"\noptions=["retain-longitudinal-full-dates","retain-patient-characteristics"]\n'
                    '[tags]\n"StudyDate" = { action = "year" }\n"PatientAge" = "cap-age"\n')
    ds = base_ds()
    ds.PatientAge = "093Y"
    ds, _ = apply(ds, profile=str(prof))
    assert ds.StudyDate == "20200101" and ds.PatientAge == "090Y"
