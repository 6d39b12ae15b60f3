"""The raw lane (dicomsafe.rawds + dicomsafe.rawlane) against the full pydicom lane.

Why these tests: the raw lane is a second way to produce the same output, added for speed. The
contract is that it changes nothing a user can observe except the time: for every input the
result (written or quarantined, the reason, the findings, the output path) is the full lane's,
and a written output decodes to the same elements, meta and pixel bytes. So each test runs both
lanes on real files — pydicom's own test files, the fake-PHI corpus (plain and hostile), the
seeded hostile mutants, and outputs with planted leaks — and compares.
"""

from __future__ import annotations

import copy
import dataclasses
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import tag_for_keyword

from dicomsafe import rawds, rawlane
from dicomsafe import verify as V
from dicomsafe.corpus import build_corpus, build_ct_series, pydicom_test_files
from dicomsafe.deidentify import Deidentifier
from dicomsafe.profiles import load_profile

PROFILES = ["basic", "limited-data-set", "research", "safe-harbor", "tcia"]


def _kept_pixels(name: str):
    """A shipped profile with its pixels kept as they are: the raw lane's domain (every option of
    the rules engine, without the pixel stage)."""
    prof = load_profile(name)
    return dataclasses.replace(prof, pixels=dataclasses.replace(prof.pixels, burned_in="keep", ocr=False))


def _lanes(profile, secret):
    fast = Deidentifier(profile, secret)
    slow = Deidentifier(profile, secret, raw_lane=False)
    assert fast.raw_lane and not slow.raw_lane
    return fast, slow


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _same_output(a_path: str, b_path: str) -> None:
    a, b = _read(a_path), _read(b_path)
    assert a.preamble == b.preamble == b"\x00" * 128
    assert a.file_meta == b.file_meta
    assert sorted(a.keys()) == sorted(b.keys())
    for tag in a.keys():
        assert a[tag] == b[tag], f"{tag} differs"


def _same_result(r1, r2) -> None:
    assert (r1.outcome, r1.reason, r1.out_relpath, r1.details) == (r2.outcome, r2.reason, r2.out_relpath, r2.details)
    assert r1.preamble_threat == r2.preamble_threat and r1.size == r2.size
    if r1.outcome == "written":
        _same_output(r1.staged, r2.staged)


@pytest.mark.parametrize("name", PROFILES)
def test_raw_lane_matches_full_lane_on_pydicom_files(name, secret, tmp_path):
    fast, slow = _lanes(_kept_pixels(name), secret)
    eligible = 0
    for i, f in enumerate(pydicom_test_files()):
        try:
            r1 = rawlane.process_file(fast, f, tmp_path / f"a{i}.dcm", f"a{i}")
        except rawds.NotEligible:
            assert not (tmp_path / f"a{i}.dcm").exists()  # nothing is left behind for the full lane
            continue
        eligible += 1
        r2 = slow.process_file(f, tmp_path, f"b{i}")
        _same_result(r1, r2)
        # and the raw lane's output passes the full verifier as it stands
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phi = V.harvest(pydicom.dcmread(f))
        assert V.verify_file(r1.staged, phi, ignore_kinds=fast.ignore_kinds, year_tags=fast.year_tags) == []
    assert eligible >= 110, "the raw lane no longer takes pydicom's explicit VR little endian files"


def test_raw_values_are_pydicom_values():
    """Every value the raw dataset gives (any depth, file meta too) is the one pydicom gives."""
    checked = 0

    def compare(raw, ref, top: bool = False) -> None:
        nonlocal checked
        # the top-level parse stops at Pixel Data (streamed, never parsed)
        assert sorted(raw.keys()) == sorted(int(t) for t in ref.keys() if not top or int(t) < rawds.PIXEL_DATA)
        for tag in raw.keys():
            a, b = raw[tag], ref[tag]
            assert a.VR == b.VR and a.keyword == b.keyword and a.VM == b.VM
            if a.VR == "SQ":
                assert len(a.value) == len(b.value)
                for x, y in zip(a.value, b.value):
                    compare(x, y)
            else:
                assert a.value == b.value
                checked += 1

    for f in pydicom_test_files():
        data = f.read_bytes()
        try:
            meta, ts, start = rawds.parse_meta(data)
            ds, _, _ = rawds.parse_dataset(data, start)
        except rawds.NotEligible:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = pydicom.dcmread(f)
            try:
                compare(meta, ref.file_meta)
                compare(ds, ref, top=True)
            except (ValueError, TypeError):
                continue  # a value pydicom itself cannot convert: the lane defers those (tested below)
    assert checked > 2000


@pytest.mark.parametrize("hostile", [False, True])
@pytest.mark.parametrize("name", ["basic", "research"])
def test_corpus_same_results_either_lane(hostile, name, secret, tmp_path):
    """The real contract: process_file with the raw lane on gives what it gives with it off."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = build_corpus(tmp_path / "c", seed=7, patients=2, hostile=hostile)
    fast, slow = _lanes(_kept_pixels(name), secret)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    raw_taken = 0
    for i, f in enumerate(p for p in c.files if p.is_file()):
        r1 = fast.process_file(f, tmp_path / "a", f"f{i}")
        r2 = slow.process_file(f, tmp_path / "b", f"f{i}")
        _same_result(r1, r2)
        try:
            rawlane.process_file(fast, f, tmp_path / "probe.dcm", "probe")
            raw_taken += 1
        except rawds.NotEligible:
            pass
    assert raw_taken >= 3  # the corpus is mostly odd files; pydicom_files covers the breadth


def test_mutants_same_results_either_lane(corpus, mutants, secret, tmp_path):
    """Hostile mutants (bit flips, truncations, swallowed neighbours, huge lengths …): the raw lane
    defers on whatever it does not fully understand, so results never differ."""
    fast, slow = _lanes(load_profile("basic"), secret)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, f in enumerate(mutants):
        _same_result(fast.process_file(f, tmp_path / "a", f"m{i}"), slow.process_file(f, tmp_path / "b", f"m{i}"))


def _ct(tmp_path: Path, n: int = 3) -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_ct_series(tmp_path / "ct", n, rows=64, cols=64, seed=3)
    return sorted(p for p in (tmp_path / "ct").rglob("*") if p.is_file())


def test_implicit_vr_ct_takes_the_raw_lane(secret, tmp_path):
    """The same CT in implicit VR little endian (the default syntax of a PACS C-STORE)."""
    f = _ct(tmp_path, 1)[0]

    def implicit(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian

    src = _edit(f, tmp_path / "implicit.dcm", implicit)
    fast, slow = _lanes(load_profile("basic"), secret)
    r1 = rawlane.process_file(fast, src, tmp_path / "a.dcm", "a")
    _same_result(r1, slow.process_file(src, tmp_path, "b"))
    assert _read(r1.staged).file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian


@pytest.mark.parametrize("pixel_representation", [0, 1])
def test_implicit_us_or_ss_resolved_as_pydicom_does(pixel_representation, secret, tmp_path):
    """PixelPaddingValue and the smallest/largest pixel values are "US or SS" in the dictionary;
    in implicit VR pydicom reads them by PixelRepresentation, and so does the raw lane."""
    f = _ct(tmp_path, 1)[0]

    def implicit(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.PixelRepresentation = pixel_representation
        ds.SmallestImagePixelValue = 0 if pixel_representation == 0 else -1024
        ds.LargestImagePixelValue = 4095
        ds.PixelPaddingValue = 0 if pixel_representation == 0 else -2000

    src = _edit(f, tmp_path / "implicit-ct.dcm", implicit)
    fast, slow = _lanes(load_profile("basic"), secret)
    r1 = rawlane.process_file(fast, src, tmp_path / "a.dcm", "a")
    _same_result(r1, slow.process_file(src, tmp_path, "b"))
    out = _read(r1.staged)
    assert out.PixelPaddingValue == (0 if pixel_representation == 0 else -2000)
    assert out["PixelPaddingValue"].VR == ("US" if pixel_representation == 0 else "SS")


def test_benchmark_ct_takes_the_raw_lane(secret, tmp_path):
    """The synthetic CT of scripts/bench is the lane's target: it must not fall back."""
    fast, slow = _lanes(load_profile("basic"), secret)
    for i, f in enumerate(_ct(tmp_path)):
        r1 = rawlane.process_file(fast, f, tmp_path / f"a{i}.dcm", f"a{i}")
        assert r1.outcome == "written"
        _same_result(r1, slow.process_file(f, tmp_path, f"b{i}"))


# -- planted leaks: the raw verifier finds what the full one finds ------------------------------

_PLANTS = [
    ("Manufacturer", "SMITH^JOHN"),            # the patient's name in a kept attribute
    ("ImageComments", "seen by Jane Roe, mrn4455667, born 01/02/1980"),
    ("StudyComments", "ssn 123-45-6789"),
    ("AdditionalPatientHistory", "mail jane@roe.org or call 555-867-5309"),
    ("ContentDate", "19800102"),                # the birth date in another DA
    ("DerivationDescription", "{uid}"),         # an original instance UID in free text
]


def _identified_ct(tmp_path: Path) -> Path:
    f = _ct(tmp_path, 1)[0]
    ds = _read(f)
    ds.PatientName = "SMITH^JOHN^Q"
    ds.PatientID = "MRN4455667"
    ds.PatientBirthDate = "19800102"
    ds.ReferringPhysicianName = "ROE^JANE"
    out = tmp_path / "identified.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("keyword,text", _PLANTS)
@pytest.mark.parametrize("nested", [False, True])
def test_raw_verifier_finds_what_the_full_verifier_finds(keyword, text, nested, secret, tmp_path):
    src = _identified_ct(tmp_path)
    fast, _ = _lanes(load_profile("basic"), secret)
    clean = rawlane.process_file(fast, src, tmp_path / "clean.dcm", "clean")
    phi = V.harvest(_read(src))
    out = _read(clean.staged)
    value = text.format(uid=str(_read(src).SOPInstanceUID))
    target = out
    if nested:
        item = pydicom.Dataset()
        out.ReferencedImageSequence = pydicom.Sequence([item])
        target = item
    setattr(target, keyword, value)
    dirty = tmp_path / "dirty.dcm"
    out.save_as(dirty, enforce_file_format=True)
    kw = dict(ignore_kinds=fast.ignore_kinds, year_tags=fast.year_tags)
    full = V.verify_file(dirty, phi, **kw)
    raw = rawlane.verify_staged(dirty, phi, **kw)
    assert full, "the plant must be a finding"
    assert sorted(raw) == sorted(full)
    assert rawlane.verify_staged(Path(clean.staged), phi, **kw) == []


def test_residue_goes_to_the_full_lane_and_is_quarantined(secret, tmp_path):
    """A value the profile keeps (Manufacturer) holding the patient's name: the raw lane's
    verification finds it, defers, and the full lane quarantines with its own findings."""
    src = _identified_ct(tmp_path)
    ds = _read(src)
    ds.Manufacturer = "SMITH JOHN"
    ds.save_as(src, enforce_file_format=True)
    fast, slow = _lanes(load_profile("basic"), secret)
    with pytest.raises(rawds.NotEligible, match="verify"):
        rawlane.process_file(fast, src, tmp_path / "x.dcm", "x")
    assert not (tmp_path / "x.dcm").exists()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r1, r2 = fast.process_file(src, tmp_path / "a", "f"), slow.process_file(src, tmp_path / "b", "f")
    assert r1.outcome == "quarantined" and r1.reason == "phi-residue" and r1.details
    _same_result(r1, r2)


# -- what the raw lane refuses ------------------------------------------------------------------


def _edit(src: Path, dst: Path, fn) -> Path:
    ds = _read(src)
    fn(ds)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _patch_bytes(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    data = src.read_bytes()
    assert data.count(old) == 1
    dst.write_bytes(data.replace(old, new))
    return dst


def _refusals(tmp_path: Path) -> list[tuple[str, Path]]:
    f = _ct(tmp_path, 1)[0]
    out = []

    def deflated(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian

    out.append(("transfer-syntax", _edit(f, tmp_path / "deflated.dcm", deflated)))

    def ambiguous(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.RedPaletteColorLookupTableDescriptor = [256, 0, 16]  # a LUT descriptor: "US or SS"

    out.append(("ambiguous-vr", _edit(f, tmp_path / "implicit-ambiguous.dcm", ambiguous)))

    def iso2022(ds):
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]

    out.append(("charset", _edit(f, tmp_path / "jis.dcm", iso2022)))

    def control(ds):
        ds.StudyDescription = "CT\x01CHEST"

    out.append(("text-bytes", _edit(f, tmp_path / "control.dcm", control)))

    def trailing(ds):
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 8)  # DataSetTrailingPadding after Pixel Data

    out.append(("pixel-layout", _edit(f, tmp_path / "trailing.dcm", trailing)))

    def unknown(ds):
        ds.add_new(0x00091010, "UN", b"SMITH^JOHN")

    out.append(("vr", _edit(f, tmp_path / "un.dcm", unknown)))
    # an odd length: 'CT' (2 bytes) written as one byte plus a swallowed neighbour byte
    modality = struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CT"
    out.append(("odd-length", _patch_bytes(f, tmp_path / "odd.dcm", modality,
                                           struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 3) + b"CT")))
    return out


def test_raw_lane_refuses_what_it_does_not_fully_know(secret, tmp_path):
    fast, slow = _lanes(load_profile("basic"), secret)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for reason, f in _refusals(tmp_path):
        with pytest.raises(rawds.NotEligible) as err:
            rawlane.process_file(fast, f, tmp_path / "x.dcm", "x")
        assert str(err.value) == reason or reason in str(err.value), (f.name, str(err.value))
        _same_result(fast.process_file(f, tmp_path / "a", f.stem), slow.process_file(f, tmp_path / "b", f.stem))


@pytest.mark.parametrize("keyword,vr,value", [
    ("SliceThickness", "DS", b"SMITH^JOHN"),     # a DS holding the patient's name
    ("InstanceNumber", "IS", b"MRN4455667"),     # an IS holding the patient id
    ("PixelSpacing", "DS", b"1\\springfield"),   # second value text
])
def test_text_in_numeric_values_same_either_lane(keyword, vr, value, secret, tmp_path):
    """Text where a number belongs: pydicom's conversion decides what the value is, in both lanes
    alike, so harvest, rules and verification see the same thing and the results agree."""
    src = _identified_ct(tmp_path)
    ds = _read(src)
    tag = tag_for_keyword(keyword)
    old = ds.get_item(tag).value if tag in ds else None
    assert old is not None
    old += b" " * (len(old) % 2)
    hdr = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(old))
    bad = _patch_bytes(src, tmp_path / "bad.dcm", hdr + old,
                       struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value)
    fast, slow = _lanes(load_profile("basic"), secret)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _same_result(fast.process_file(bad, tmp_path / "a", "f"), slow.process_file(bad, tmp_path / "b", "f"))


def test_unchanged_elements_keep_their_bytes_changed_ones_are_reencoded(secret, tmp_path):
    f = _ct(tmp_path, 1)[0]
    data = f.read_bytes()
    meta, _, start = rawds.parse_meta(data)
    ds, _, _ = rawds.parse_dataset(data, start)
    rows = tag_for_keyword("Rows")
    name = tag_for_keyword("PatientName")
    assert ds.unchanged_bytes(rows) is not None
    ds[rows]  # converting alone changes nothing
    assert ds.unchanged_bytes(rows) == data[ds._spans[rows][0]:ds._spans[rows][1]]
    ds[name].value = "ANON"
    assert ds.unchanged_bytes(name) is None
    out = rawds.encode(ds, ds._charset, below=rawds.PIXEL_DATA)
    assert struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 4) + b"ANON" in out
    del ds[rows]
    assert struct.pack("<HH", 0x0028, 0x0010) not in rawds.encode(ds, ds._charset, below=rawds.PIXEL_DATA)
    copy.copy(ds)  # a RawDataset is a plain object: nothing in it holds a file open


# -- the fast encoders write pydicom's bytes ----------------------------------------------------

def _pydicom_bytes(elem, charset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, charset)
    return fp.getvalue()


_VALUES = ["", "A", "AB", "ANONYMOUS", "x" * 65, "Müller-Lüdenscheid", "日本", "a\\b", " lead", "trail ",
           ["A", "BC"], ["", ""], [], None, "1.2.840.10008.5.1.4.1.1.2", "2.25.1", "19800102", "101010.5"]


@pytest.mark.parametrize("charset", [["iso8859"], ["latin_1"], ["UTF8"], ["iso8859", "iso2022_jp"]])
@pytest.mark.parametrize("vr", ["AE", "AS", "CS", "UI", "UR", "DA", "DT", "TM", "LO", "SH", "LT", "ST", "UT", "UC",
                                "PN", "DS", "IS", "US"])
def test_fast_element_encoding_is_pydicoms(vr, charset):
    from pydicom.dataelem import DataElement

    tag = {"US": 0x00280010, "PN": 0x00100010}.get(vr, 0x00091010)
    checked = 0
    for value in _VALUES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                elem = DataElement(tag, vr, value)
                expected = _pydicom_bytes(elem, charset)
            except Exception:
                continue  # a value pydicom itself cannot write for this VR
        fast = rawds.encode_text_element(elem, charset)
        if fast is not None:
            assert fast == expected, (vr, value, charset)
            checked += 1
    if vr in ("AE", "CS", "UI", "DA", "LO", "UT") and charset == ["latin_1"]:
        assert checked >= 5  # the common cases do take the fast path


@pytest.mark.parametrize("sop_class,sop_instance", [("1.2.840.10008.5.1.4.1.1.2", "2.25.12345"),
                                                     ("1.2.3", "1.2.34"), ("1.2.840.10008.5.1.4.1.1.4", "9")])
def test_file_meta_bytes_are_pydicoms(sop_class, sop_instance):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    from dicomsafe import dicomio

    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, dicomio.build_file_meta(ds, rawds.EXPLICIT_VR_LE), enforce_standard=True)
    assert rawds.file_meta_bytes(sop_class, sop_instance, rawds.EXPLICIT_VR_LE, dicomio.IMPLEMENTATION_CLASS_UID,
                                 dicomio.IMPLEMENTATION_VERSION_NAME) == fp.getvalue()


# -- encapsulated (compressed) pixel data ---------------------------------------------------------

def test_encapsulated_pixels_are_copied_verbatim(secret, tmp_path):
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    fast, slow = _lanes(load_profile("basic"), secret)
    r1 = rawlane.process_file(fast, src, tmp_path / "a.dcm", "a")
    _same_result(r1, slow.process_file(src, tmp_path, "b"))
    marker = struct.pack("<HH2sH", 0x7FE0, 0x0010, b"OB", 0)
    data, out = src.read_bytes(), Path(r1.staged).read_bytes()
    assert data[data.rindex(marker):] == out[out.rindex(marker):]  # header, items, delimiter


def test_ssn_in_an_encapsulated_fragment_is_found_like_the_full_verifier(secret, tmp_path):
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("SC_rgb_rle.dcm"))
    fast, _ = _lanes(load_profile("basic"), secret)
    clean = Path(rawlane.process_file(fast, src, tmp_path / "clean.dcm", "c").staged)
    data = bytearray(clean.read_bytes())
    at = len(data) - 8 - 40  # inside the last fragment, before the delimiter
    data[at:at + 11] = b"078-05-1120"
    dirty = tmp_path / "dirty.dcm"
    dirty.write_bytes(bytes(data))
    phi = V.harvest(_read(src))
    kw = dict(ignore_kinds=fast.ignore_kinds, year_tags=fast.year_tags)
    full = V.verify_file(dirty, phi, **kw)
    assert [f.kind for f in full] == ["ssn"]
    assert rawlane.verify_staged(dirty, phi, **kw) == full
    assert rawlane.verify_staged(clean, phi, **kw) == []


def test_large_encapsulated_pixel_data_goes_to_the_full_lane(secret, tmp_path):
    """Over 1 MB of fragments the full verifier does not load the value (pydicom defers it) and
    so treats its bytes differently; the raw lane leaves such files to it."""
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate

    ds = _read(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 1_200_000 + b"\xff\xd9"])
    big = tmp_path / "big.dcm"
    ds.save_as(big, enforce_file_format=True)
    fast, slow = _lanes(load_profile("basic"), secret)
    with pytest.raises(rawds.NotEligible, match="large-encapsulated"):
        rawlane.process_file(fast, big, tmp_path / "x.dcm", "x")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _same_result(fast.process_file(big, tmp_path / "a", "f"), slow.process_file(big, tmp_path / "b", "f"))


def test_header_longer_than_the_first_read(secret, tmp_path):
    """A header past the first 64 KiB read (here a 100 KB document) is read on, not refused."""
    f = _ct(tmp_path, 1)[0]
    big = _edit(f, tmp_path / "big-header.dcm", lambda ds: ds.add_new(0x00420011, "OB", b"%PDF" + b"\x00" * 100_000))
    assert big.read_bytes().rindex(struct.pack("<HH", 0x7FE0, 0x0010)) > rawlane.FIRST_READ
    fast, slow = _lanes(load_profile("basic"), secret)
    r1 = rawlane.process_file(fast, big, tmp_path / "a.dcm", "a")
    _same_result(r1, slow.process_file(big, tmp_path, "b"))


def test_a_value_list_changed_in_place_is_reencoded(secret, tmp_path):
    """Unchanged means equal to what was read, not the same object: code that edits a value list
    in place must not get the original bytes written back."""
    f = _ct(tmp_path, 1)[0]
    data = f.read_bytes()
    meta, _, start = rawds.parse_meta(data)
    ds, _, _ = rawds.parse_dataset(data, start)
    tag = tag_for_keyword("ImageType")
    values = ds[tag].value
    assert len(values) > 1 and ds.unchanged_bytes(tag) is not None
    values[0] = "DERIVED"
    assert ds.unchanged_bytes(tag) is None
    assert b"DERIVED\\" in rawds.encode(ds, ds._charset, below=rawds.PIXEL_DATA)


# -- random datasets: both lanes agree ------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

#: Attributes of every kind the engine treats differently: names, ids, dates, UIDs, free text,
#: codes, numbers, kept and removed ones (basic profile), at top level and in sequence items.
_TEXTUAL = ["PatientName", "ReferringPhysicianName", "OperatorsName", "PatientID", "AccessionNumber",
            "StudyID", "InstitutionName", "StationName", "StudyDescription", "SeriesDescription",
            "ImageComments", "AdditionalPatientHistory", "Manufacturer", "BodyPartExamined",
            "ProtocolName", "StudyDate", "ContentDate", "AcquisitionDateTime", "StudyTime",
            "PatientBirthDate", "PatientSex", "PatientAge", "Modality", "ImageType"]
_NUMERIC = {"SliceThickness": ["1.0", "2.5", "0.625"], "InstanceNumber": ["1", "42"],
            "PatientWeight": ["70", "81.5"], "Rows": [64], "Columns": [64]}
_TEXT = st.text(alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789 ^-.,/:ÄÖÜéñ"),
                max_size=24)


def _value_for(keyword: str, draw_text: str):
    from pydicom.datadict import dictionary_VR

    vr = dictionary_VR(tag_for_keyword(keyword))
    if vr == "DA":
        return "19800102" if "1" in draw_text else "20240229"
    if vr == "TM":
        return "101010.5"
    if vr == "DT":
        return "20240229101010"
    if vr == "AS":
        return "042Y"
    if vr == "CS":
        return "".join(c for c in draw_text.upper() if c.isalnum() or c == " ")[:16] or "X"
    if vr == "PN":
        return draw_text.replace("\\", "")[:60] or "DOE^JANE"
    return draw_text


@st.composite
def _datasets(draw):
    charset = draw(st.sampled_from([None, "ISO_IR 100", "ISO_IR 192"]))
    chosen = draw(st.lists(st.sampled_from(_TEXTUAL), min_size=3, max_size=12, unique=True))
    values = {k: _value_for(k, draw(_TEXT)) for k in chosen}
    numbers = {k: draw(st.sampled_from(v)) for k, v in _NUMERIC.items() if draw(st.booleans())}
    if draw(st.booleans()):  # a "US or SS" attribute, read by PixelRepresentation in implicit VR
        numbers["PixelRepresentation"] = draw(st.sampled_from([0, 1]))
        numbers["PixelPaddingValue"] = draw(st.sampled_from([0, 100, 4095]))
    nested = draw(st.lists(st.sampled_from(_TEXTUAL), max_size=4, unique=True))
    nested_values = {k: _value_for(k, draw(_TEXT)) for k in nested}
    private = draw(st.one_of(st.none(), _TEXT))
    implicit = draw(st.booleans())
    return charset, values, numbers, nested_values, private, implicit


def _random_file(path: Path, spec) -> Path:
    charset, values, numbers, nested_values, private, implicit = spec
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit
                                      else pydicom.uid.ExplicitVRLittleEndian)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.4242"
    if charset and charset != "ISO_IR 192":
        for k in list(values):
            values[k] = values[k].encode("latin-1", "replace").decode("latin-1")
    if charset:
        ds.SpecificCharacterSet = charset
    elif any(ord(c) > 127 for v in (*values.values(), *nested_values.values()) for c in str(v)):
        ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "2.25.4242"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.25.1111", "2.25.2222"
    for k, v in {**values, **numbers}.items():
        setattr(ds, k, v)
    if nested_values:
        item = pydicom.Dataset()
        for k, v in nested_values.items():
            setattr(item, k, v)
        item.ReferencedSOPInstanceUID = "2.25.4343"
        ds.ReferencedImageSequence = pydicom.Sequence([item])
    if private is not None:
        block = ds.private_block(0x0011, "RANDOM VENDOR", create=True)
        block.add_new(0x01, "LO", private)
    ds.save_as(path, enforce_file_format=True)
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_datasets())
def test_random_datasets_same_results_either_lane(spec, secret, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rand")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            src = _random_file(tmp / "in.dcm", spec)
        except Exception:
            return  # a value pydicom itself refuses to write for its VR
    for name in ("basic", "research"):
        fast, slow = _lanes(_kept_pixels(name), secret)
        (tmp / name / "a").mkdir(parents=True)
        (tmp / name / "b").mkdir(parents=True)
        r1, r2 = fast.process_file(src, tmp / name / "a", "f"), slow.process_file(src, tmp / name / "b", "f")
        _same_result(r1, r2)
        # these files are all in the lane's domain: it takes them, or defers on a finding
        try:
            rawlane.process_file(fast, src, tmp / name / "probe.dcm", "p")
        except rawds.NotEligible as exc:
            assert str(exc) == "verify" and r2.outcome == "quarantined", str(exc)
