"""deid recipe import: parsed by deid's own parser, translated into dicomsafe overrides.

Every error case asserts the exact line number, because "file:line" is the contract authors
rely on (issue 10: profiles check names the line, no traceback).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pydicom.datadict import tag_for_keyword

from dicomsafe.deidrecipe import (
    ACTIONS,
    Override,
    RecipeFilter,
    basic_profile_actions,
    override_table_entry,
    summarize,
    translate_recipe,
)
from dicomsafe.errors import ConfigError, ProfileError

GOOD = """\
FORMAT dicom

%filter graylist

LABEL Ultrasound with burned-in text   # a comment
  contains Modality US
  + contains ImageType SECONDARY || equals BurnedInAnnotation YES
  coordinates 0,0,512,40
  ctpcoordinates 10,10,100,20

%fields trialfields
FIELD contains:Trial

%header

REPLACE PatientName Research Subject
BLANK PatientID
KEEP Modality
JITTER StudyDate var:jitter
JITTER AcquisitionDate 30
REMOVE contains:Trial
ADD PatientIdentityRemoved YES
REPLACE StudyInstanceUID deid_func:dicom_uuid
KEEP (0019,"GEMS_ACQU_01",23)
REPLACE OtherPatientIDs var:pseudo_id
"""


def write(tmp_path: Path, text: str, name: str = "recipe.deid") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def by_selector(tr):
    return {o.selector: o for o in tr.overrides}


def kw(keyword: str) -> tuple:
    return ("tag", tag_for_keyword(keyword))


@pytest.fixture()
def good(tmp_path):
    return translate_recipe(write(tmp_path, GOOD))


def test_header_actions_map_to_our_vocabulary(good):
    ov = by_selector(good)
    name = ov[kw("PatientName")]
    assert (name.action, name.value, name.source_line) == ("replace", "Research Subject", 16)
    assert ov[kw("PatientID")].action == "Z"
    assert ov[kw("PatientID")].source_line == 17
    assert ov[kw("Modality")].action == "K"
    assert ov[kw("StudyInstanceUID")].action == "U"
    add = ov[kw("PatientIdentityRemoved")]
    assert (add.action, add.value, add.create) == ("replace", "YES", True)
    assert ov[kw("OtherPatientIDs")].value == "{pseudo_id}"
    assert all(o.action in ACTIONS for o in good.overrides)
    # duck-compatible with the profile layer's TagOverride
    assert name.key == "PatientName" and name.source == "recipe.deid:16"


def test_jitter_becomes_shift(good):
    ov = by_selector(good)
    # var: -> the profile's keyed per-patient shift; a fixed number of days is never used as such
    assert (ov[kw("StudyDate")].action, ov[kw("StudyDate")].value) == ("shift", None)
    assert (ov[kw("AcquisitionDate")].action, ov[kw("AcquisitionDate")].value) == ("shift", None)
    assert any("line 20" in w and "fixed 30 days" in w for w in good.warnings)


def test_expander_is_expanded_over_the_dictionary_and_kept_as_runtime_pattern(good):
    trial = [o for o in good.overrides if o.expanded_from == "contains:Trial"]
    kws = {o.key for o in trial}
    assert {"ClinicalTrialSponsorName", "ClinicalTrialSubjectID", "ClinicalTrialSiteName"} <= kws
    assert all(o.action == "X" and o.source_line == 21 for o in trial)
    # UIDs matching the expander stay with the base profile's keyed UID (removing breaks files)
    assert "ClinicalTrialTimePointID" in kws
    assert not any(o.key.endswith("UID") for o in trial)
    assert not any(o.selector[0] == "pattern" for o in good.overrides)
    assert good.patterns == [Override("contains:Trial", ("pattern", "contains", "Trial"), "X", None,
                                      "recipe.deid:21", 21, False, "REMOVE contains:Trial",
                                      "contains:Trial")]


def test_private_creator_syntax(good):
    ov = by_selector(good)
    keep = ov[("private", 0x0019, "GEMS_ACQU_01", 0x23)]
    assert keep.action == "K"
    assert override_table_entry(keep) == ("(0019,xx23)", {"action": "keep",
                                                          "private_creator": "GEMS_ACQU_01"})
    # on the safe-private list: no weakening warning for it
    assert not any("GEMS_ACQU_01" in w for w in good.warnings)


def test_filter_section_goes_to_the_pixel_stage(good):
    assert len(good.filters) == 1
    f = good.filters[0]
    assert isinstance(f, RecipeFilter)
    assert (f.section, f.label, f.source_line) == ("graylist", "Ultrasound with burned-in text", 5)
    assert f.criteria[0].tests[0].op == "contains"
    assert f.criteria[0].tests[0].field == "Modality" and f.criteria[0].tests[0].value == "US"
    second = f.criteria[1]
    assert second.operator == "and" and second.inner_operators == ("or",)
    assert [t.field for t in second.tests] == ["ImageType", "BurnedInAnnotation"]
    # ctpcoordinates (x, y, width, height) are converted by deid to x0,y0,x1,y1
    assert f.coordinates == ((False, "0,0,512,40"), (False, "10,10,110,30"))


def test_fields_list(tmp_path):
    tr = translate_recipe(write(tmp_path, """\
        FORMAT dicom
        %fields names
        FIELD PatientName
        FIELD endswith:PhysicianName
        %header
        BLANK fields:names
        """))
    kws = {o.key for o in tr.overrides}
    assert {"PatientName", "ReferringPhysicianName"} <= kws
    assert all(o.action == "Z" and o.expanded_from == "fields:names" for o in tr.overrides)


def test_keep_of_direct_identifier_is_allowed_with_a_loud_warning(tmp_path):
    tr = translate_recipe(write(tmp_path, """\
        FORMAT dicom
        %header
        KEEP PatientName
        KEEP (0009,"GEMS_IDEN_01",10)
        """))
    assert by_selector(tr)[kw("PatientName")].action == "K"
    assert any(w.startswith("line 3:") and "DIRECT IDENTIFIER" in w for w in tr.warnings)
    assert any(w.startswith("line 4:") and "safe-private" in w for w in tr.warnings)


def test_conflicts_follow_deid_precedence(tmp_path):
    tr = translate_recipe(write(tmp_path, """\
        FORMAT dicom
        %header
        REPLACE StudyDescription Research
        REMOVE endswith:Description
        """))
    desc = by_selector(tr)[kw("StudyDescription")]
    assert (desc.action, desc.source_line) == ("replace", 3)  # REPLACE > REMOVE in deid
    assert by_selector(tr)[kw("SeriesDescription")].action == "X"


def test_replacement_values_never_appear_in_summaries(good):
    text = "\n".join(summarize(good))
    assert "PatientName" in text and "Research Subject" not in text


def test_keyword_case_and_tag_forms(tmp_path):
    tr = translate_recipe(write(tmp_path, """\
        FORMAT dicom
        %header
        REMOVE patientname
        REMOVE (0010,1040)
        REMOVE 00101000
        """))
    sels = {o.selector for o in tr.overrides}
    assert sels == {kw("PatientName"), ("tag", 0x00101040), ("tag", 0x00101000)}
    assert {o.key for o in tr.overrides} == {"PatientName", "PatientAddress", "OtherPatientIDs"}


def test_basic_table_loaded():
    acts = basic_profile_actions()
    assert acts[0x00100010] == "Z" and acts[0x00080018] == "U"


@pytest.mark.parametrize(
    "body, line, needle",
    [
        ("%header\nFROB PatientName\n", 3, "unknown action 'FROB'"),
        ("%header\nremove PatientName\n", 3, "upper case"),
        ("%header\nREMOVE PatientNmae\n", 3, "unknown field 'PatientNmae'"),
        ("%header\nKEEP Modality\nREPLACE PatientName var:entity_id\n", 4, "var:entity_id"),
        ("%header\nREPLACE PatientName func:my_function\n", 3, "func:my_function"),
        ("%header\nJITTER PatientName 3\n", 3, "JITTER applies to dates"),
        ("%header\nJITTER StudyDate soon\n", 3, "whole number of days"),
        ("%header\nREMOVE values:cohort\n", 3, "values: lists"),
        ("%header\nREMOVE fields:nothere\n", 3, "no %fields section"),
        ("%header\nREMOVE sometimes:Date\n", 3, "unknown field expander 'sometimes'"),
        ("%header\nKEEP all\n", 3, "every attribute"),
        ("%header\nADD contains:Date 20200101\n", 3, "one explicit field"),
        ("%header\nREPLACE StudyDate yesterday\n", 3, "YYYYMMDD"),
        ("%header\nREMOVE ReferencedImageSequence__ReferencedSOPInstanceUID\n", 3, "nested"),
        ("%hdr\nREMOVE PatientName\n", 2, "unknown section"),
        ("%filter\nLABEL x\n  contains Modality CT\n", 2, "needs a name"),
        ("%filter whitelist\nLABEL x\n  resembles Modality CT\n", 4, "unknown filter test"),
        ("%filter whitelist\nLABEL x\n  contains Modalty CT\n", 4, "unknown field 'Modalty'"),
        ("%filter whitelist\nLABEL x\n  coordinates 1,2,3\n", 4, "four integers"),
        ("REMOVE PatientName\n", 2, "before any section"),
    ],
)
def test_broken_recipes_name_the_line(tmp_path, body, line, needle):
    p = write(tmp_path, "FORMAT dicom\n" + body)
    with pytest.raises(ProfileError) as exc:
        translate_recipe(p)
    assert exc.value.line == line
    assert needle in str(exc.value)
    assert str(exc.value).startswith(f"recipe.deid:{line}: ")
    assert isinstance(exc.value, ConfigError)  # exit code 2 via the CLI's map


def test_missing_format_and_bad_format(tmp_path):
    with pytest.raises(ProfileError, match="FORMAT dicom"):
        translate_recipe(write(tmp_path, "%header\nREMOVE PatientName\n"))
    with pytest.raises(ProfileError, match=r":1: FORMAT nifti is not supported"):
        translate_recipe(write(tmp_path, "FORMAT nifti\n%header\nREMOVE PatientName\n"))


def test_unreadable_recipe(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        translate_recipe(tmp_path / "absent.deid")
    bad = tmp_path / "latin.deid"
    bad.write_bytes(b"FORMAT dicom\n%header\nREPLACE PatientName M\xfcller\n")
    with pytest.raises(ProfileError, match="not UTF-8"):
        translate_recipe(bad)


def test_deid_parser_output_is_silenced(tmp_path, capfd):
    translate_recipe(write(tmp_path, GOOD))
    out, err = capfd.readouterr()
    assert "Research Subject" not in out + err


def test_conditional_remove_is_applied_unconditionally(tmp_path):
    tr = translate_recipe(write(tmp_path, """\
        FORMAT dicom
        %header
        REMOVE PatientComments func:is_long
        """))
    assert by_selector(tr)[kw("PatientComments")].action == "X"
    assert any("unconditionally" in w for w in tr.warnings)


def test_typos_get_a_suggestion(tmp_path):
    with pytest.raises(ProfileError, match=r"recipe.deid:3: unknown field 'PatientsName'.*did you mean PatientName\?"):
        translate_recipe(write(tmp_path, "FORMAT dicom\n%header\nREMOVE PatientsName\n"))


def test_overlay_group_keywords(tmp_path):
    # accepted as filter fields (deid's own recipes test OverlayDescription) ...
    tr = translate_recipe(write(tmp_path, """\
        FORMAT dicom
        %filter graylist
        LABEL Overlay
          contains Modality PT
          + contains OverlayDescription Graphics
          coordinates 0,0,512,90
        """))
    assert tr.filters[0].criteria[1].tests[0].field == "OverlayDescription"
    # ... but a header action on one group member is refused: the base handles 60xx as a whole
    with pytest.raises(ProfileError, match=r":3: OverlayData is in a repeating"):
        translate_recipe(write(tmp_path, "FORMAT dicom\n%header\nKEEP OverlayData\n"))


def test_deid_bundled_filter_recipe_imports():
    """A real recipe shipped with deid (filters only): every LABEL reaches the pixel stage."""
    import deid

    path = Path(deid.__file__).parent / "data" / "deid.dicom.xray.chest"
    if not path.is_file():
        pytest.skip("this deid version ships no chest x-ray recipe")
    tr = translate_recipe(path)
    labels = sum(1 for line in path.read_text().splitlines() if line.strip().startswith("LABEL"))
    assert labels and len(tr.filters) == labels
    assert {f.section for f in tr.filters} == {"whitelist", "blacklist"}
    assert all(f.source_line > 0 and f.criteria for f in tr.filters)
