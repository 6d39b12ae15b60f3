"""The shipped profiles and the safe-private list: well-formed, faithful to the rule each one
claims, and effective on real DICOM files (pydicom's test files, real keyed pseudonyms).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomsafe import safeprivate
from dicomsafe.deidentify import Deidentifier
from dicomsafe.errors import ProfileError
from dicomsafe.profiles import ACTIONS, load_profile
from dicomsafe.rules import compile_plan
from dicomsafe.standard import OPTION_COLUMNS, load_table

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
SHIPPED = ["research", "safe-harbor", "limited-data-set", "tcia"]
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
SECRET = bytes(range(32))
TAG_RE = re.compile(r"^\(([0-9A-Fa-f]{4}),([0-9A-Fa-fXx]{4})\)$")


def toml(name: str) -> dict:
    return tomllib.loads((PROFILES / f"{name}.toml").read_text("utf-8"))


def plan_action(name: str, keyword: str) -> str:
    plan = compile_plan(load_profile(name))
    rule = plan.rule_for(tag_for_keyword(keyword))
    return rule.action if rule else "(unlisted: kept)"


def deidentify(profile: str, filename: str):
    """The pure transform of one real file (no pixel stage: that is the pixels area's test)."""
    ds = dcmread(TEST_FILES / filename)
    src = dcmread(TEST_FILES / filename)
    Deidentifier(load_profile(profile), SECRET).transform(ds)
    return src, ds


# -- well-formed -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_profile_parses_and_names_only_valid_things(name):
    text = (PROFILES / f"{name}.toml").read_text("utf-8")
    data = tomllib.loads(text)
    assert data["profile"]["name"] == name
    assert text.startswith(f"# {name} — "), "header comment must say which rule it implements"
    assert "Limits" in text or "Limits:" in text
    for opt in data["profile"]["options"]:
        assert opt in OPTION_COLUMNS, opt
    for key, spec in data.get("tags", {}).items():
        assert spec["action"] in ACTIONS, (key, spec)
        m = TAG_RE.match(key)
        if m:
            continue
        tag = tag_for_keyword(key)
        assert tag is not None, f"{key} is not a DICOM keyword"
        if spec["action"] in ("year", "shift"):
            assert dictionary_VR(tag) in ("DA", "DT"), key
        if spec["action"] == "cap-age":
            assert dictionary_VR(tag) == "AS", key
    assert data["pixels"]["burned_in"] in ("mask", "quarantine", "keep")
    prof = load_profile(name)
    assert prof.name == name and not prof.warnings
    compile_plan(prof)


def test_profile_list_finds_all_shipped():
    from dicomsafe.profiles import list_profiles

    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_cleans_pixels(name):
    prof = load_profile(name)
    assert "clean-pixel-data" in prof.options
    assert (prof.pixels.burned_in, prof.pixels.ocr) == ("mask", True)


@pytest.mark.parametrize("name", SHIPPED)
def test_no_shipped_profile_keeps_device_serials_or_addresses(name):
    for kw in ("DeviceSerialNumber", "PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDs",
               "PatientBirthName", "PatientMotherBirthName", "ReferringPhysicianName",
               "InstitutionAddress", "MilitaryRank"):
        assert plan_action(name, kw) in ("X", "Z", "D"), (name, kw)


# -- each profile does what its rule says ----------------------------------------------------------


def test_research_and_tcia_option_sets():
    assert set(toml("research")["profile"]["options"]) >= {
        "retain-longitudinal-modified-dates", "retain-patient-characteristics", "clean-descriptors",
        "clean-structured-content", "clean-graphics", "retain-safe-private"}
    assert set(toml("tcia")["profile"]["options"]) == {
        "clean-pixel-data", "clean-descriptors", "retain-longitudinal-modified-dates",
        "retain-patient-characteristics", "retain-safe-private"}


def test_safe_harbor_year_block_covers_every_longitudinal_date_of_the_table():
    """Drift guard: when Table E.1-1 gains a date attribute, safe-harbor must reduce it too."""
    want = set()
    for tag, row in load_table().exact.items():
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in ("DA", "DT") and (row.options.get("retain-longitudinal-full-dates") == "K"
                                   or row.options.get("retain-longitudinal-modified-dates") == "C"):
            want.add(keyword_for_tag(tag))
    tags = toml("safe-harbor")["tags"]
    have = {k for k, v in tags.items() if v["action"] == "year"}
    assert want and want == have
    opts = toml("safe-harbor")["profile"]["options"]
    assert not {"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates",
                "retain-device-identity", "retain-institution-identity", "retain-uids",
                "retain-safe-private"} & set(opts)
    assert tags["PatientAge"] == {"action": "cap-age"}


def test_safe_harbor_on_a_real_file():
    src, out = deidentify("safe-harbor", "CT_small.dcm")
    assert src.StudyDate == "20040119"
    assert out.StudyDate == "20040101"  # the year only
    assert out.get("StudyTime", "") == ""  # times of day go
    assert out.get("PatientBirthDate", "") == ""
    assert str(out.PatientName) != str(src.PatientName) and "CompressedSamples" not in str(out.PatientName)
    assert out.get("InstitutionName", "") in ("", None)
    assert not [e for e in out if e.tag.is_private]


def test_safe_harbor_writes_a_study_of_1_january(tmp_path):
    """Truncated to the year, 20170101 stays 20170101: verification must not take the profile's
    own output for the original date (it quarantined every such file, 20 of pydicom's)."""
    name = "SC_rgb_dcmtk_+eb+cr.dcm"
    assert dcmread(TEST_FILES / name).StudyDate == "20170101"
    res = Deidentifier(load_profile("safe-harbor"), SECRET).process_file(TEST_FILES / name, tmp_path, "f1")
    assert (res.outcome, res.reason) == ("written", None), res.details
    assert dcmread(res.staged).StudyDate == "20170101"


def test_safe_harbor_caps_ages_over_89():
    ds = dcmread(TEST_FILES / "CT_small.dcm")
    ds.PatientAge = "093Y"
    Deidentifier(load_profile("safe-harbor"), SECRET).transform(ds)
    assert ds.PatientAge == "090Y"
    ds = dcmread(TEST_FILES / "CT_small.dcm")
    ds.PatientAge = "045Y"
    Deidentifier(load_profile("safe-harbor"), SECRET).transform(ds)
    assert ds.PatientAge == "045Y"


def test_limited_data_set_keeps_dates_only():
    ds = dcmread(TEST_FILES / "CT_small.dcm")
    ds.PatientAddress = "1 Main Street, Little Rock AR 72205"
    ds.PatientBirthDate = "19500304"
    src_pid = ds.PatientID
    Deidentifier(load_profile("limited-data-set"), SECRET).transform(ds)
    assert ds.StudyDate == "20040119" and ds.get("PatientBirthDate", "") == ""
    assert "PatientAddress" not in ds
    assert ds.PatientID != src_pid
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    text = (PROFILES / "limited-data-set.toml").read_text("utf-8")
    assert "DATA USE AGREEMENT" in text and "§164.514(e)" in text


@pytest.mark.parametrize("name", ["research", "tcia"])
def test_modified_dates_profiles_shift_consistently(name):
    src, out = deidentify(name, "CT_small.dcm")
    from datetime import date

    def d(s):
        return date(int(s[:4]), int(s[4:6]), int(s[6:8]))

    shift = (d(out.StudyDate) - d(src.StudyDate)).days
    assert -365 <= shift <= -1
    assert (d(out.ContentDate) - d(src.ContentDate)).days == shift
    assert out.PatientSex == src.PatientSex  # patient characteristics retained
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_research_keeps_safe_private_and_drops_identifying_private():
    ds = dcmread(TEST_FILES / "CT_small.dcm")
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x23, "DS", "39.375")  # Table Speed: on the safe list
    block.add_new(0x02, "SL", 1234)  # not on the list
    iden = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
    iden.add_new(0xE9, "LO", "operator-name")
    Deidentifier(load_profile("research"), SECRET).transform(ds)
    kept = ds.private_block(0x0019, "GEMS_ACQU_01")
    assert kept[0x23].value == "39.375"
    assert (kept.get_tag(0x02)) not in ds
    assert not any(e.value == "operator-name" for e in ds if e.tag.is_private)


# -- the safe-private list ---------------------------------------------------------------------


def test_safe_private_list_loads_and_is_well_formed():
    entries = safeprivate.load_safe_private()
    assert len(entries) >= 100
    seen = set()
    for e in entries:
        assert e.group % 2 == 1 and 0 <= e.element <= 0xFF
        assert e.vr in safeprivate.VALID_VRS and e.vr != "PN"
        assert e.action in ("K", "C", "U")
        assert (e.vr == "UI") == (e.action == "U")
        assert e.name and e.reason and e.creator.strip() == e.creator
        assert e.key not in seen
        seen.add(e.key)
    creators = {e.creator for e in entries}
    assert {"GEMS_ACQU_01", "GEMS_PARM_01", "SIEMENS MR HEADER", "Philips MR Imaging DD 001",
            "Philips PET Private Group", "ELSCINT1"} <= creators


def test_safe_private_lookup_ignores_case_and_padding():
    hit = safeprivate.lookup_safe_private(0x2005, "PHILIPS MR IMAGING DD 001 ", 0x100E)
    assert hit is not None and hit.name == "Scale Slope" and hit.tag_pattern == "(2005,xx0E)"
    assert safeprivate.lookup_safe_private(0x0009, "GEMS_IDEN_01", 0x10) is None
    assert safeprivate.lookup_safe_private(0x0019, None, 0x23) is None


@pytest.mark.parametrize(
    "entry, needle",
    [
        ('group = "0018"', "odd"),
        ('element = "1023"', "2-digit"),
        ('vr = "XX"', "unknown VR"),
        ('vm = "lots"', "VM"),
        ('action = "maybe"', "action"),
        ('vr = "PN"', "never safe"),
        ('vr = "UI"', "uid"),
    ],
)
def test_malformed_safe_private_entries_are_refused(tmp_path, entry, needle):
    good = {"group": '"0019"', "creator": '"GEMS_ACQU_01"', "element": '"23"', "vr": '"DS"',
            "vm": '"1"', "name": '"Table Speed"', "action": '"keep"', "reason": '"numeric"'}
    k, v = entry.split(" = ")
    good[k] = v
    body = "schema = 1\n[[private]]\n" + "\n".join(f"{a} = {b}" for a, b in good.items())
    p = tmp_path / "sp.toml"
    p.write_text(body)
    with pytest.raises(ProfileError, match=needle):
        safeprivate.load_safe_private(str(p))


def test_duplicate_safe_private_entries_are_refused(tmp_path):
    one = ('[[private]]\ngroup = "0019"\ncreator = "X"\nelement = "23"\nvr = "DS"\nvm = "1"\n'
           'name = "n"\naction = "keep"\nreason = "r"\n')
    p = tmp_path / "dup.toml"
    p.write_text("schema = 1\n" + one + one.replace('"X"', '"x "'))
    with pytest.raises(ProfileError, match="duplicates entry 1"):
        safeprivate.load_safe_private(str(p))


# -- a deid recipe is as safe as basic everywhere it does not speak ----------------------------------

RECIPE = """\
FORMAT dicom
%header
REPLACE PatientName Research Subject
BLANK PatientID
KEEP Modality
REMOVE contains:Trial
"""


@pytest.mark.parametrize("filename", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"])
def test_deid_recipe_applies_its_actions_and_matches_basic_elsewhere(tmp_path, filename):
    recipe = tmp_path / "study.deid"
    recipe.write_text(RECIPE)
    src = dcmread(TEST_FILES / filename)
    via_recipe = dcmread(TEST_FILES / filename)
    via_basic = dcmread(TEST_FILES / filename)
    Deidentifier(load_profile(str(recipe)), SECRET).transform(via_recipe)
    Deidentifier(load_profile("basic"), SECRET).transform(via_basic)
    assert str(via_recipe.PatientName) == "Research Subject"
    assert via_recipe.PatientID == ""
    assert via_recipe.Modality == src.Modality
    spoken = {0x00100010, 0x00100020, 0x00080060, 0x00120063}  # + DeidentificationMethod (name)
    for elem in via_basic:
        if int(elem.tag) in spoken:
            continue
        assert elem.tag in via_recipe, elem.keyword
        assert via_recipe[elem.tag].value == elem.value, elem.keyword
    for elem in via_recipe:
        assert int(elem.tag) in spoken or elem.tag in via_basic, elem.keyword


def test_profile_with_deid_recipe_key_layers_recipe_over_its_base(tmp_path):
    (tmp_path / "site.deid").write_text(RECIPE)
    (tmp_path / "site.toml").write_text(
        '[profile]\nname = "site"\nbase = "research"\ndeid_recipe = "site.deid"\n')
    prof = load_profile(str(tmp_path / "site.toml"))
    assert "retain-safe-private" in prof.options
    src, ds = dcmread(TEST_FILES / "CT_small.dcm"), dcmread(TEST_FILES / "CT_small.dcm")
    Deidentifier(prof, SECRET).transform(ds)
    assert str(ds.PatientName) == "Research Subject" and ds.PatientID == ""
    assert ds.StudyDate != src.StudyDate and ds.StudyDate  # research's keyed shift still applies


def test_generated_profile_docs_are_up_to_date():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-profile-docs"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    doc = (ROOT / "docs" / "profiles.md").read_text("utf-8")
    for letter in "ABCDEFGHIJKLMNOPQR":
        assert f"\n| {letter} | " in doc, f"HIPAA identifier kind {letter} missing"
    assert "data use agreement" in doc


# -- end to end: planted identifiers through read → transform → write (real files, real bytes) ------

PLANTED = {
    "PatientName": "Doe^Jane^Quinn",
    "PatientID": "MRN4417023",
    "OtherPatientIDs": "555-12-3456",
    "PatientAddress": "12 Elm Street, Springfield IL 62704",
    "PatientTelephoneNumbers": "217-555-0142",
    "PatientBirthDate": "19310214",
    "PatientAge": "093Y",
    "AccessionNumber": "ACC77120931",
    "InstitutionName": "Springfield General Hospital",
    "InstitutionAddress": "400 Hospital Drive Springfield",
    "DeviceSerialNumber": "SNX88410XQ",
    "StationName": "CTROOM7WEST",
    "ReferringPhysicianName": "House^Gregory",
    "OperatorsName": "Cuddy^Lisa",
    "RegionOfResidence": "Illinois",
    "ImageComments": "SSN 555-12-3456 call 217-555-0142 Jane Doe",
    "StudyDescription": "CT chest for Jane Doe MRN4417023",
}
#: Values a profile documents that it keeps (its header comment says why).
DOCUMENTED_KEPT = {
    "limited-data-set": {"PatientAge"},
    "research": {"PatientAge"},
}
E2E_FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "test-SR.dcm",
             "MR_small_implicit.dcm", "MR_small_bigendian.dcm"]


def plant(src: Path, dst: Path) -> None:
    ds = dcmread(src)
    for kw, value in PLANTED.items():
        setattr(ds, kw, value)
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.PatientID = PLANTED["PatientID"]
    item.IssuerOfPatientID = "Springfield General Hospital"
    ds.OtherPatientIDsSequence = Sequence([item])
    block = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
    block.add_new(0x10, "LO", "Doe^Jane^Quinn")
    ds.save_as(dst, enforce_file_format=False)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_removes_every_planted_identifier(name, tmp_path):
    """Header path end to end. Pixels are the pixel stage's business and are tested with the
    real policy below; here the policy is 'keep' so images without burned-in text still count."""
    from dataclasses import replace

    from dicomsafe.profiles import PixelSettings

    prof = replace(load_profile(name), pixels=PixelSettings(burned_in="keep", ocr=False))
    deid = Deidentifier(prof, SECRET)
    kept = DOCUMENTED_KEPT.get(name, set())
    for i, filename in enumerate(E2E_FILES):
        src = tmp_path / f"in{i}.dcm"
        plant(TEST_FILES / filename, src)
        res = deid.process_file(src, tmp_path, f"out{i}")
        assert res.outcome == "written", (filename, res.reason, res.details)
        raw = Path(res.staged).read_bytes()
        for kw, value in PLANTED.items():
            if kw not in kept:
                assert value.encode() not in raw, (name, filename, kw)
        # the identifying parts, wherever they were planted (clinical words may stay)
        for token in ("Doe", "Jane", "Quinn", "4417023", "555-12-3456", "217-555-0142", "Elm Street",
                      "62704", "ACC77120931", "Springfield", "SNX88410XQ", "CTROOM7WEST", "House",
                      "Gregory", "Cuddy", "19310214"):
            assert token.encode() not in raw, (name, filename, token)
        out = dcmread(res.staged)
        assert out.PatientIdentityRemoved == "YES"
        if name in ("safe-harbor", "tcia"):
            assert out.PatientAge == "090Y"
        if name == "limited-data-set":
            assert out.PatientAge == "093Y" and out.StudyDate == dcmread(src).StudyDate


def _pixels_available() -> bool:
    try:
        import dicomsafe.pixels  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _pixels_available(), reason="dicomsafe.pixels (pixel stage) not in this build")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_writes_every_valid_input_with_its_pixel_policy(name, tmp_path):
    deid = Deidentifier(load_profile(name), SECRET)
    for i, filename in enumerate(["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm"]):
        res = deid.process_file(TEST_FILES / filename, tmp_path, f"p{i}")
        assert res.outcome == "written", (filename, res.reason, res.details)


# -- the fake-PHI corpus (dicomsafe.corpus): issue 10 acceptance ---------------------------------


def _run_profile_on_corpus(name, corpus, tmp_path):
    from dataclasses import replace

    from dicomsafe.pipeline import RunSettings, deidentify_tree
    from dicomsafe.profiles import PixelSettings

    prof = load_profile(name)
    if not _pixels_available():
        # Without the pixel stage every image would be (rightly) quarantined; the header path is
        # what this test measures. The real policy is exercised once the pixel stage is present.
        prof = replace(prof, pixels=PixelSettings(burned_in="keep", ocr=False))
    dst = tmp_path / "out"
    report = deidentify_tree(RunSettings(src=corpus.root, dst=dst, profile=prof, secret=SECRET,
                                         quarantine=tmp_path / "q", quiet=True), progress=False)
    return dst, report


@pytest.fixture(scope="module")
def basic_run(corpus, tmp_path_factory):
    """The reference: what the core's basic profile writes from the same corpus."""
    return _run_profile_on_corpus("basic", corpus, tmp_path_factory.mktemp("basic"))


def _quarantined(report) -> set[str]:
    return {f["id"] for f in report.files if f["outcome"] == "quarantined"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_on_the_corpus(name, corpus, basic_run, tmp_path):
    """No planted identifier left; every input basic writes is written too (a profile that keeps
    and cleans more must not lose files to quarantine); inputs untouched; no source UID left."""
    from collections import Counter

    from dicomsafe.corpus import find_planted

    before = corpus.snapshot()
    dst, report = _run_profile_on_corpus(name, corpus, tmp_path)
    c = report.counts
    assert c["inputs"] == len(corpus.files) == c["written"] + c["quarantined"] + c["skipped"]
    assert c["skipped"] == Counter(corpus.expected.values())["skipped"]
    extra = _quarantined(report) - _quarantined(basic_run[1])
    # Pixel cleaning cannot prove an image clean that no installed decoder can read (the corpus's
    # JPEG-extended NM file, a no-meta file with short pixel data): those are quarantined, fail closed.
    # limited-data-set keeps full dates but removes the birth date; the corpus's SR holds the birth
    # date in a DATE content item, which verification catches (fail closed) — quarantine is right.
    allowed = {"pixel-decode-failed"} | ({"phi-residue"} if name == "limited-data-set" else set())
    reasons = {f["reason"] for f in report.files if f["id"] in extra}
    assert reasons <= allowed, [(f["reason"], f.get("details")) for f in report.files if f["id"] in extra]
    blob = b"".join(p.read_bytes() for p in dst.rglob("*.dcm"))
    assert [u for u in corpus.uids if u.encode() in blob] == []
    assert corpus.snapshot() == before
    outputs = sorted(p for p in dst.rglob("*.dcm") if ".dicomsafe" not in p.parts)
    assert len(outputs) == c["written"]
    for p in outputs[:5]:
        ds = dcmread(p)
        assert ds.PatientIdentityRemoved == "YES"
        assert name in ds.DeidentificationMethod


#: A known gap of the free-text scrubber (text area, issue 4): when Patient's Name is written with
#: diacritics or in a non-Latin script, the plain-ASCII spelling of the same name in a description
#: survives cleaning (and verification does not know that spelling). Basic removes descriptions,
#: so only profiles that clean descriptors show it. Any other leak fails the test.
KNOWN_TEXT_GAP = "text scrubber misses the ASCII spelling of a non-ASCII patient name in descriptions"


@pytest.mark.parametrize("name", SHIPPED)
def test_no_planted_value_on_the_corpus(name, corpus, tmp_path):
    from dicomsafe.corpus import find_planted

    dst, _ = _run_profile_on_corpus(name, corpus, tmp_path)
    hits = find_planted(corpus, dst)
    if hits and all(kind == "name" for _, kind in hits) and all(
            _leak_confined_to_descriptions(dst / where, corpus) for where, _ in hits):
        pytest.xfail(KNOWN_TEXT_GAP)
    assert hits == []


def _leak_confined_to_descriptions(path: Path, corpus) -> bool:
    """True when the planted values in ``path`` all sit in StudyDescription/ImageComments."""
    import io

    if not path.is_file():
        return False  # a hit in a path name is never the known gap
    ds = dcmread(path)
    needles = corpus.all_needles()
    if not any(n in str(ds.get(k, "")).encode("utf-8") for k in ("StudyDescription", "ImageComments")
               for n in needles):
        return False
    for kw in ("StudyDescription", "ImageComments"):
        if kw in ds:
            delattr(ds, kw)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return not any(n in buf.getvalue() for n in needles)


def test_basic_reference_writes_every_valid_corpus_file(basic_run, corpus):
    """The comparison above is only as strong as basic's own result on the corpus."""
    from collections import Counter

    expected = Counter(corpus.expected.values())
    if basic_run[1].counts["quarantined"] != expected["quarantined"]:
        pytest.xfail(f"core/verify still quarantines valid corpus files: {basic_run[1].reasons}")
    assert basic_run[1].counts["written"] == expected["written"]


@pytest.mark.parametrize("name, kept_dates", [("limited-data-set", True), ("research", False),
                                              ("safe-harbor", False)])
def test_corpus_dates_per_profile(name, kept_dates, corpus, tmp_path):
    """Full dates stay in limited-data-set; research shifts them; safe-harbor keeps the year."""
    from dicomsafe.corpus import match_outputs

    dst, _ = _run_profile_on_corpus(name, corpus, tmp_path)
    from collections import Counter

    matched = match_outputs(corpus.with_outcome("written"), dst)
    # the corpus reuses pydicom's images for several patients: pair only unambiguous matches
    uses = Counter(o for o in matched.values() if o)
    pairs = [(s, o) for s, o in matched.items() if o and uses[o] == 1]
    assert pairs
    checked = 0
    for src, out in pairs:
        a, b = dcmread(src, force=True), dcmread(out)
        if not a.get("StudyDate"):
            continue
        checked += 1
        if kept_dates:
            assert b.StudyDate == a.StudyDate
        elif name == "safe-harbor":
            assert b.StudyDate == a.StudyDate[:4] + "0101"
        else:
            assert b.StudyDate != a.StudyDate and len(b.StudyDate) == 8
    assert checked
