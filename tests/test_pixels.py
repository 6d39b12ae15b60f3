"""Burned-in text: deid filter rules, OCR detection, masking per photometric interpretation and
transfer syntax, verification, review page. Real DICOM files from pydicom's test data, real
tesseract (skipped with a reason when it is missing), real fonts drawn with Pillow."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicomsafe.errors import ConfigError
from dicomsafe.pixels import (
    PixelOutcome,
    PixelPolicy,
    Rect,
    ReviewItem,
    ReviewWriter,
    apply_pixel_policy,
    evaluate,
    load_filters,
    ocr_frames,
    write_review,
)
from dicomsafe.pixels import match, ocr
from dicomsafe.pixels.policy import _display, _gray

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")

# Fonts whose zero has no slash or dot (DejaVu Sans Mono's dotted zero reads as "6" or "G").
FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
]
FONT = next((f for f in FONT_CANDIDATES if Path(f).is_file()), None)
needs_font = pytest.mark.skipif(FONT is None, reason="no DejaVu/Noto TTF font installed")

NAME, MRN, DOB = "DOE^JOHN", "40817263", "19710203"
PHI = [NAME, MRN, DOB]
LINES = ["DOE JOHN  MRN 40817263", "DOB 1971-02-03"]


def data_file(name: str) -> str:
    """Only files shipped in the pydicom wheel (get_testdata_file would download others)."""
    path = get_testdata_file(name, download=False)
    assert path, f"{name} is not in the pydicom wheel"
    return path


def glyph_mask(shape: tuple[int, int], lines=LINES, top=True, size=16) -> np.ndarray:
    """Where the text glyphs are, drawn with a real TTF font into the top or bottom band."""
    from PIL import Image, ImageDraw, ImageFont

    rows, cols = shape
    img = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(FONT, size)
    y = 4 if top else rows - (size + 5) * len(lines) - 2
    for line in lines:
        draw.text((6, y), line, fill=255, font=font)
        y += size + 5
    return np.asarray(img) > 127


def band(shape, top=True, size=16, nlines=2) -> np.ndarray:
    """The rows the text band occupies (cleared first, like a real screen header)."""
    rows, cols = shape
    m = np.zeros(shape, dtype=bool)
    h = (size + 5) * nlines + 6
    if top:
        m[:h, :] = True
    else:
        m[rows - h:, :] = True
    return m


def burn(arr: np.ndarray, glyphs: np.ndarray, text_value, band_value, top=True, size=16) -> np.ndarray:
    out = arr.copy()
    out[band(glyphs.shape, top, size)] = band_value
    out[glyphs] = text_value
    return out


def assert_reads_phi(ds: pydicom.Dataset) -> None:
    """OCR reads the name, the MRN and the birth date (allowing OCR slips) in the input."""
    words = read_phi(ds)
    name = match.PhiTokens.from_strings([NAME])
    mrn = match.PhiTokens.from_strings([MRN])
    assert any(match._token_matches(w, name) for w in words), "name not read"
    assert any(match._token_matches(t, mrn) for w in words for t in match.tokens(w)), "MRN not read"
    assert any(re.search(r"19[7T]1", w) for w in words), "birth date not read"


def read_phi(ds: pydicom.Dataset) -> list[str]:
    """OCR every frame as displayed; return the words that read as the test PHI."""
    from dicomsafe.pixels import codec

    phi = match.PhiTokens.from_strings(PHI)
    frames = [(i, _gray(_display(ds, f, pi))) for i, f, pi in codec.iter_frames(ds)]
    words = ocr_frames(frames)
    return [w.text for w in match.phi_words(words, phi)]


def roundtrip(ds: pydicom.Dataset, tmp_path: Path, name: str) -> pydicom.Dataset:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    back.pixel_array  # decodes
    return back


def unchanged_share(before: np.ndarray, after: np.ndarray) -> float:
    same = before == after
    if same.ndim == 3:
        same = same.all(axis=-1)
    return float(same.mean())


# ---------------------------------------------------------------------------------------------
# deid filter rules


def test_bundled_recipes_parse_through_deid():
    fs = load_filters(("dicom", "dicom.ultrasound", "dicom.xray.chest"))
    groups = {r.group for r in fs.rules}
    assert groups == {"whitelist", "graylist", "blacklist"}
    with_coords = [r for r in fs.rules if r.coordinates]
    assert len(with_coords) > 50  # the CTP/Stanford graylist of device screens
    ctp = next(r for r in fs.rules if r.label.startswith("Dose Report") and r.coordinates)
    # ctpcoordinates 0,0,512,110 (x, y, width, height) → deid's x0,y0,x1,y1
    assert ctp.coordinates[0].spec == "0,0,512,110"


def _ge_dose_report() -> pydicom.Dataset:
    ds = pydicom.dcmread(data_file("CT_small.dcm"))  # CT, ImageType ORIGINAL\PRIMARY\AXIAL
    ds.Manufacturer = "GE MEDICAL SYSTEMS"
    ds.CommentsOnRadiationDose = "DLP 512"
    return ds


def test_graylist_rectangle_from_recipe_matches_and_is_masked_without_ocr():
    ds = _ge_dose_report()
    fs = load_filters("dicom")
    res = evaluate(ds, fs, int(ds.Rows), int(ds.Columns))
    assert "Dose Report Comments" in res.graylist and not res.blacklist
    # clipped to the 128x128 image
    assert any(op.rect == Rect(0, 0, 128, 110) and not op.keep for op in res.ops)
    before = ds.pixel_array.copy()
    out = apply_pixel_policy(ds, PixelPolicy(ocr=False, filters=("dicom",)), PHI)
    assert out.quarantine_reason is None and out.changed
    after = ds.pixel_array
    assert (after[:110, :] == before.min()).all()
    assert (after[110:, :] == before[110:, :]).all()
    assert "BurnedInAnnotation" not in ds  # no OCR check ran: not claimed clean


def test_blacklisted_image_without_ocr_is_quarantined():
    ds = _ge_dose_report()
    ds.SeriesDescription = "Dose Report"  # deid's Stanford blacklist: text somewhere, place unknown
    raw = ds.PixelData
    out = apply_pixel_policy(ds, PixelPolicy(ocr=False), PHI)
    assert out.quarantine_reason == "burned-in-unlocated" and ds.PixelData == raw
    assert "Stanford Blacklist Dose Report or External" in out.rule_labels


def test_recipe_operators_are_honoured(tmp_path):
    recipe = tmp_path / "deid.custom"
    recipe.write_text(
        "FORMAT dicom\n\n%filter graylist\n\n"
        "LABEL Either vendor\n  contains Manufacturer ACME\n  || contains Manufacturer SIEMENS\n"
        "  coordinates 0,0,20,10\n\n"
        "LABEL Both needed\n  contains Modality CT\n  + contains Manufacturer ACME\n"
        "  ctpcoordinates 5,5,10,10\n"
    )
    fs = load_filters(recipe)
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.Manufacturer = "SIEMENS"
    res = evaluate(ds, fs, 128, 128)
    assert res.graylist == ["Either vendor"]  # "||" is or; "+" is and
    assert [op.rect for op in res.ops] == [Rect(0, 0, 20, 10)]
    ds.Manufacturer = "ACME"
    res = evaluate(ds, fs, 128, 128)
    assert res.graylist == ["Either vendor", "Both needed"]
    assert Rect(5, 5, 15, 15) in [op.rect for op in res.ops]


def test_ultrasound_recipe_keeps_regions_from_sequence():
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    region = pydicom.Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 20, 40
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 300, 200
    ds.SequenceOfUltrasoundRegions = [region]
    fs = load_filters("dicom.ultrasound")
    res = evaluate(ds, fs, 240, 320)
    assert [(op.keep, op.rect) for op in res.ops] == [(False, Rect(0, 0, 320, 240)), (True, Rect(20, 40, 300, 200))]
    before = ds.pixel_array.copy()
    out = apply_pixel_policy(ds, PixelPolicy(ocr=False, filters=("dicom.ultrasound",)), PHI)
    assert out.changed
    after = ds.pixel_array
    assert (after[40:200, 20:300] == before[40:200, 20:300]).all()
    assert (after[:40] == 0).all() and (after[200:] == 0).all()
    # the recipe object is not mutated by evaluation (deid's own detector writes back into it)
    assert res.ops == evaluate(ds, fs, 240, 320).ops


def test_missing_or_malformed_recipe_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_filters(tmp_path / "nope.deid")
    bad = tmp_path / "deid.bad"
    bad.write_text("FORMAT dicom\n\n%filter graylist\n\nLABEL x\n  contains Modality CT\n  coordinates 1,2,3\n")
    with pytest.raises(ConfigError):
        apply_pixel_policy(pydicom.dcmread(data_file("CT_small.dcm")), PixelPolicy(ocr=False, filters=(str(bad),)), [])


def test_flagged_image_without_ocr_or_rule_is_quarantined():
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))  # US: annotation modality
    raw = ds.PixelData
    out = apply_pixel_policy(ds, PixelPolicy(ocr=False, filters=()), PHI)
    assert out.quarantine_reason == "burned-in-unlocated" and not out.changed
    assert ds.PixelData == raw
    assert out.before_png.startswith(b"\x89PNG") and out.after_png is None  # for the review page
    ds.RecognizableVisualFeatures = "YES"
    assert apply_pixel_policy(ds, PixelPolicy(ocr=False), PHI).quarantine_reason == "recognizable-visual-features"


def test_image_without_loaded_pixels_is_not_waved_through(tmp_path):
    ds = pydicom.dcmread(data_file("CT_small.dcm"), stop_before_pixels=True)
    assert apply_pixel_policy(ds, PixelPolicy(ocr=False), PHI).quarantine_reason == "pixel-data-missing"
    sr = pydicom.dcmread(data_file("test-SR.dcm"))  # no image at all: nothing to do
    out = apply_pixel_policy(sr, PixelPolicy(ocr=False), PHI)
    assert out.quarantine_reason is None and not out.changed
    recipe = tmp_path / "deid.corner"
    recipe.write_text(CORNER)
    deferred = pydicom.dcmread(data_file("CT_small.dcm"), defer_size=1024)  # lazily loaded: fine
    out = apply_pixel_policy(deferred, PixelPolicy(ocr=False, filters=(str(recipe),)), PHI)
    assert out.quarantine_reason is None and out.changed


def test_keep_policy_touches_nothing():
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    raw = ds.PixelData
    out = apply_pixel_policy(ds, PixelPolicy(burned_in="keep"), PHI)
    assert out == PixelOutcome() and ds.PixelData == raw


def test_policy_validation():
    with pytest.raises(ConfigError):
        PixelPolicy(burned_in="blur")
    with pytest.raises(ConfigError):
        PixelPolicy(margin=-1)
    pol = PixelPolicy.from_mapping({"burned_in": "quarantine", "ocr": False, "recipes": ["dicom.ultrasound"],
                                    "margin": 6})
    assert (pol.burned_in, pol.ocr, pol.filters, pol.margin) == ("quarantine", False, ("dicom.ultrasound",), 6)
    assert PixelPolicy.from_mapping(None) == PixelPolicy()
    for bad in ({"ocr": "yes"}, {"burned_in": "blur"}, {"recipe": ["dicom"]}, {"margin": "4"}, {"recipes": "dicom"}):
        with pytest.raises(ConfigError):
            PixelPolicy.from_mapping(bad)


def test_ocr_requested_without_tesseract_is_a_config_error(monkeypatch, tmp_path):
    # Not a mock of a library: we point the documented override at a path with no binary.
    monkeypatch.setenv("DICOMSAFE_TESSERACT", str(tmp_path / "no-tesseract"))
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    with pytest.raises(ConfigError, match="tesseract"):
        apply_pixel_policy(ds, PixelPolicy(ocr=True), PHI)


# ---------------------------------------------------------------------------------------------
# Codec matrix: rule rectangle masked (no OCR), every transfer syntax and pixel layout

CORNER = "FORMAT dicom\n\n%filter graylist\n\nLABEL Corner\n  coordinates 0,0,12,8\n"


def _planar1_rgb() -> pydicom.Dataset:
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    ds.PixelData = np.ascontiguousarray(ds.pixel_array.transpose(2, 0, 1)).tobytes()
    ds.PlanarConfiguration = 1
    return ds


def _mono1() -> pydicom.Dataset:
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    return ds


CODEC_CASES = {
    # name: (loader, expected output transfer syntax, expected photometric)
    "rle-mono16": (lambda: pydicom.dcmread(data_file("MR_small_RLE.dcm")), RLELossless, "MONOCHROME2"),
    "jpegls-lossless": (lambda: pydicom.dcmread(data_file("MR_small_jpeg_ls_lossless.dcm")), RLELossless, "MONOCHROME2"),
    "j2k-lossless": (lambda: pydicom.dcmread(data_file("MR_small_jp2klossless.dcm")), RLELossless, "MONOCHROME2"),
    "jpeg-extended-12bit": (lambda: pydicom.dcmread(data_file("JPGExtended.dcm")), RLELossless, "MONOCHROME2"),
    "jpegls-near-lossless-rgb": (lambda: pydicom.dcmread(data_file("SC_rgb_jls_lossy_line.dcm")), RLELossless, "RGB"),
    "jpeg-baseline-ybr-full": (lambda: pydicom.dcmread(data_file("SC_rgb_jpeg_dcmtk.dcm")), RLELossless, "RGB"),
    "rle-rgb16-2frame": (lambda: pydicom.dcmread(data_file("SC_rgb_rle_16bit_2frame.dcm")), RLELossless, "RGB"),
    "native-ybr422": (lambda: pydicom.dcmread(data_file("SC_ybr_full_422_uncompressed.dcm")), ExplicitVRLittleEndian, "RGB"),
    "big-endian-rgb-planar": (lambda: pydicom.dcmread(data_file("ExplVR_BigEnd.dcm")), ExplicitVRLittleEndian, "RGB"),
    "big-endian-mono16": (lambda: pydicom.dcmread(data_file("MR_small_bigendian.dcm")), ExplicitVRLittleEndian, "MONOCHROME2"),
    "native-rgb-planar1": (_planar1_rgb, ExplicitVRLittleEndian, "RGB"),
    "native-mono1-signed": (_mono1, ExplicitVRLittleEndian, "MONOCHROME1"),
    "implicit-mono16": (lambda: pydicom.dcmread(data_file("MR_small_implicit.dcm")), "1.2.840.10008.1.2", "MONOCHROME2"),
}


@pytest.mark.parametrize("case", sorted(CODEC_CASES))
def test_rule_mask_each_transfer_syntax(case, tmp_path):
    loader, want_ts, want_pi = CODEC_CASES[case]
    recipe = tmp_path / "deid.corner"
    recipe.write_text(CORNER)
    ds = loader()
    from dicomsafe.pixels import codec

    before = [f.copy() for _, f, _ in codec.iter_frames(ds)]
    out = apply_pixel_policy(ds, PixelPolicy(ocr=False, filters=(str(recipe),)), [])
    assert out.quarantine_reason is None and out.changed, out.quarantine_reason
    assert str(out.transfer_syntax) == str(want_ts)
    back = roundtrip(ds, tmp_path, f"{case}.dcm")
    assert back.file_meta.TransferSyntaxUID == want_ts and back.PhotometricInterpretation == want_pi
    after = [f for _, f, _ in codec.iter_frames(back)]
    assert len(after) == len(before)
    for b, a in zip(before, after):
        mono1 = want_pi == "MONOCHROME1"
        black = (b.max() if mono1 else b.min()) if b.ndim == 2 else 0
        assert (a[:8, :12] == black).all()
        region = np.ones(a.shape[:2], dtype=bool)
        region[:8, :12] = False
        assert (a[region] == b[region]).all()  # lossless: every other pixel identical


def test_undecodable_pixels_are_quarantined_not_raised(tmp_path):
    # JPEG-lossy.dcm has a JPEG stream the installed decoders reject: fail closed, no traceback.
    recipe = tmp_path / "deid.corner"
    recipe.write_text(CORNER)
    ds = pydicom.dcmread(data_file("JPEG-lossy.dcm"))
    raw = ds.PixelData
    out = apply_pixel_policy(ds, PixelPolicy(ocr=False, filters=(str(recipe),)), [])
    assert out.quarantine_reason == "pixel-decode-failed" and not out.changed and ds.PixelData == raw


def _truncated():
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[:1000]
    return ds


def _no_rows():
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    del ds.Rows
    return ds


@pytest.mark.parametrize("loader, reason", [
    (_truncated, "pixel-decode-failed"),
    (_no_rows, "pixel-module-invalid"),
    (lambda: pydicom.dcmread(data_file("liver_1frame.dcm")), "pixel-bits-unsupported"),  # 1-bit SEG
], ids=["truncated", "no-rows", "1-bit"])
def test_malformed_pixels_fail_closed(loader, reason, tmp_path):
    recipe = tmp_path / "deid.corner"
    recipe.write_text(CORNER)
    ds = loader()
    raw = ds.PixelData
    out = apply_pixel_policy(ds, PixelPolicy(ocr=False, filters=(str(recipe),)), [])
    assert out.quarantine_reason == reason and not out.changed and ds.PixelData == raw


# ---------------------------------------------------------------------------------------------
# PHI matching (pure)


def _w(text, conf=90.0, line=(0, 1, 1, 1)):
    return ocr.Word(0, Rect(0, 0, 10, 10), conf, text, line)


def test_phi_matching_is_fuzzy_and_catches_identifier_patterns():
    phi = match.PhiTokens.from_strings(PHI)
    assert match.word_is_phi(_w("J0HN"), phi)  # OCR confusion O/0
    assert match.word_is_phi(_w("DOF,"), phi) is False  # 3-letter tokens must match exactly
    assert match.word_is_phi(_w("4O817Z63"), phi)  # fold + distance
    assert match.word_is_phi(_w("03/02/1971"), phi)  # date pattern
    assert match.word_is_phi(_w("123-45-6789"), phi)  # SSN pattern
    assert len(match.phi_words([_w("3"), _w("Feb"), _w("1971")], match.PhiTokens.from_strings([]))) == 3
    assert not match.phi_words([_w("5"), _w("cms"), _w("10")], match.PhiTokens.from_strings([]))
    assert match.word_is_phi(_w("884213"), phi)  # digit run >= 5
    assert not match.word_is_phi(_w("LYMPH"), phi)
    assert not match.word_is_phi(_w("1234"), phi)
    # split across words on one line: "4081 7263"
    hits = match.phi_words([_w("MRN"), _w("4081"), _w("7263")], phi)
    assert len(hits) == 3


# ---------------------------------------------------------------------------------------------
# End to end: burned-in text, real files, every transfer syntax and photometric interpretation


def _check_masked(ds, out, glyphs, before_display, tmp_path, name):
    assert out.quarantine_reason is None, out.quarantine_reason
    assert out.changed and out.ocr_used
    back = roundtrip(ds, tmp_path, name)
    assert read_phi(back) == []
    from dicomsafe.pixels import codec

    for i, frame, pi in codec.iter_frames(back):
        disp = _display(back, frame, pi)
        share = unchanged_share(before_display[i], disp)
        assert share >= 0.85, share
        g = disp if disp.ndim == 2 else disp.max(axis=-1)
        assert int(g[glyphs].max()) <= 40  # every glyph pixel now displays (near) black
    assert back.BurnedInAnnotation == "NO"
    return back


def _displays(ds):
    from dicomsafe.pixels import codec

    return [_display(ds, f, pi) for _, f, pi in codec.iter_frames(ds)]


@needs_tesseract
@needs_font
@pytest.mark.parametrize("top, color", [(True, (255, 255, 255)), (False, (0, 0, 255))],
                         ids=["top-band-white", "bottom-band-blue"])  # blue: luminance 29/255
def test_rgb_ultrasound_native(tmp_path, top, color):
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))  # real US, RGB, 240x320
    glyphs = glyph_mask((240, 320), top=top)
    ds.PixelData = burn(ds.pixel_array, glyphs, color, 0, top).tobytes()
    before = _displays(ds)
    assert_reads_phi(ds)
    out = apply_pixel_policy(ds, PixelPolicy(), PHI)
    back = _check_masked(ds, out, glyphs, before, tmp_path, "rgb.dcm")
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.before_png and out.after_png and out.boxes and len(out.boxes) == 1
    index = write_review(tmp_path / "review", [ReviewItem("f00001", out)], forbid_under=tmp_path / "dst")
    from PIL import Image

    for ref in re.findall(r'src="([^"]+)"', index.read_text()):
        with Image.open(index.parent / ref) as im:
            assert max(im.size) <= 256  # thumbnails, not full images


@needs_tesseract
@needs_font
def test_rle_input_reencoded_as_rle(tmp_path):
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    glyphs = glyph_mask((240, 320))
    ds.PixelData = burn(ds.pixel_array, glyphs, 255, 0).tobytes()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    before = _displays(ds)
    assert_reads_phi(ds)
    out = apply_pixel_policy(ds, PixelPolicy(), PHI)
    back = _check_masked(ds, out, glyphs, before, tmp_path, "rle.dcm")
    assert back.file_meta.TransferSyntaxUID == RLELossless


def _jpeg_frames(frames_rgb, subsampling=1):
    from PIL import Image

    out = []
    for f in frames_rgb:
        buf = io.BytesIO()
        Image.fromarray(f, "RGB").save(buf, format="JPEG", quality=95, subsampling=subsampling)
        out.append(buf.getvalue())
    return out


@needs_tesseract
@needs_font
def test_jpeg_baseline_ybr422_multiframe(tmp_path):
    ds = pydicom.dcmread(data_file("examples_ybr_color.dcm"))  # real US cine, JPEG baseline YBR_FULL_422
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    from dicomsafe.pixels import codec

    frames = [f for i, f, _ in codec.iter_frames(ds, indices=[0, 10, 20])]
    glyphs = glyph_mask((240, 320), top=False)
    burned = [burn(f, glyphs, 255, 0, top=False) for f in frames]
    ds.PixelData = encapsulate(_jpeg_frames(burned))  # 4:2:2, like the original
    ds.NumberOfFrames = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    before = _displays(ds)
    assert_reads_phi(ds)
    out = apply_pixel_policy(ds, PixelPolicy(), PHI)
    back = _check_masked(ds, out, glyphs, before, tmp_path, "jpeg.dcm")
    assert back.file_meta.TransferSyntaxUID == RLELossless
    assert back.PhotometricInterpretation == "RGB" and back.NumberOfFrames == 3
    assert back.LossyImageCompression == "01"  # the source was lossy; that stays on record
    assert len(out.boxes) == 3 and out.boxes[0] == out.boxes[2]  # same regions in every frame


@needs_tesseract
@needs_font
def test_jpeg2000_lossless_color(tmp_path):
    ds = pydicom.dcmread(data_file("examples_jpeg2k.dcm"))  # real US, J2K lossless YBR_RCT, 480x640
    arr = ds.pixel_array
    glyphs = glyph_mask(arr.shape[:2], size=24)
    burned = burn(arr, glyphs, 255, 0, size=24)
    ds.PhotometricInterpretation = "RGB"
    ds.compress(JPEG2000Lossless, burned, encoding_plugin="pylibjpeg")
    before = _displays(ds)
    assert_reads_phi(ds)
    out = apply_pixel_policy(ds, PixelPolicy(), PHI)
    back = _check_masked(ds, out, glyphs, before, tmp_path, "j2k.dcm")
    assert back.file_meta.TransferSyntaxUID == RLELossless


@needs_tesseract
@needs_font
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_signed_16bit_monochrome(tmp_path, photometric):
    ds = pydicom.dcmread(data_file("693_J2KI.dcm"))  # CT 512x512, signed 16-bit, J2K irreversible
    arr = ds.pixel_array[::2, ::2].copy()  # 256x256 keeps OCR cheap
    ds.decompress()
    ds.Rows, ds.Columns = arr.shape
    glyphs = glyph_mask(arr.shape)
    lo, hi = int(arr.min()), int(arr.max())
    # text displays white: max value in MONOCHROME2, min value in MONOCHROME1
    text, bg = (hi, lo) if photometric == "MONOCHROME2" else (lo, hi)
    ds.PhotometricInterpretation = photometric
    ds.PixelData = burn(arr, glyphs, text, bg).astype("<i2").tobytes()
    before = _displays(ds)
    assert_reads_phi(ds)
    out = apply_pixel_policy(ds, PixelPolicy(), PHI)
    back = _check_masked(ds, out, glyphs, before, tmp_path, "mono.dcm")
    assert back.PixelRepresentation == 1 and back.BitsAllocated == 16
    assert back.pixel_array.dtype == np.int16


@needs_tesseract
@needs_font
def test_palette_color(tmp_path):
    ds = pydicom.dcmread(data_file("examples_palette.dcm"))  # real US, PALETTE COLOR 350x800
    arr = ds.pixel_array[:, :480].copy()
    ds.Columns = 480
    from dicomsafe.pixels import codec

    lut = codec.palette_rgb(ds, np.arange(256, dtype=np.uint8)).astype(int).sum(axis=1)
    white, black = int(np.argmax(lut)), int(np.argmin(lut))
    glyphs = glyph_mask(arr.shape)
    ds.PixelData = burn(arr, glyphs, white, black).tobytes()
    before = _displays(ds)
    assert_reads_phi(ds)
    out = apply_pixel_policy(ds, PixelPolicy(), PHI)
    back = _check_masked(ds, out, glyphs, before, tmp_path, "palette.dcm")
    assert back.PhotometricInterpretation == "PALETTE COLOR"


@needs_tesseract
@needs_font
def test_quarantine_policy_and_residue(tmp_path):
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    glyphs = glyph_mask((240, 320))
    ds.PixelData = burn(ds.pixel_array, glyphs, 255, 0).tobytes()
    raw = ds.PixelData
    out = apply_pixel_policy(ds, PixelPolicy(burned_in="quarantine"), PHI)
    assert out.quarantine_reason == "burned-in-text" and ds.PixelData == raw
    # the verdict applied after masking: words that still read as PHI fail the file
    from dicomsafe.pixels import codec
    from dicomsafe.pixels.policy import residue_reason

    frames = [(i, _gray(_display(ds, f, pi))) for i, f, pi in codec.iter_frames(ds)]
    words = ocr_frames(frames)
    assert residue_reason(words, match.PhiTokens.from_strings(PHI)) == "pixel-phi-residue"
    # identifier patterns fail it even when the harvested values are unknown (MRN digits, date)
    assert residue_reason(words, match.PhiTokens.from_strings([])) == "pixel-phi-residue"
    masked_words = [w for w in words if w.rect.y0 > 60]  # what remains below the text band
    assert residue_reason(masked_words, match.PhiTokens.from_strings(PHI)) is None


@needs_tesseract
@needs_font
def test_multiframe_native_reads_changed_frames_and_masks_every_frame(tmp_path):
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    base = burn(ds.pixel_array, glyph_mask((240, 320), lines=["LYMPH SCAN"]), 255, 0)
    glyphs = glyph_mask((240, 320), top=False)
    late = burn(base, glyphs, 255, 0, top=False)  # the PHI appears in the last frame only
    near = base.copy()
    near[100, 100:110] ^= 0x80  # 10 changed pixels: not material, not read again
    ds.PixelData = np.stack([base, near, base, late]).tobytes()
    ds.NumberOfFrames = 4
    out = apply_pixel_policy(ds, PixelPolicy(), PHI)
    assert out.quarantine_reason is None and out.changed
    assert out.frames_ocr == 2  # frames 1 and 2 equal frame 0: not read again
    back = roundtrip(ds, tmp_path, "multi.dcm")
    assert read_phi(back) == []
    arr = back.pixel_array
    for i in range(4):  # the boxes found in frame 3 are blanked in every frame
        assert (arr[i][glyphs] == 0).all()
        assert unchanged_share(base if i < 3 else late, arr[i]) >= 0.85


@needs_tesseract
def test_clean_image_is_left_alone():
    ds = pydicom.dcmread(data_file("CT_small.dcm"))  # no text
    raw = ds.PixelData
    out = apply_pixel_policy(ds, PixelPolicy(filters=()), PHI)
    assert out.quarantine_reason is None and not out.changed and ds.PixelData == raw


@needs_tesseract
@needs_font
def test_cli_check_reports_boxes_without_text(tmp_path):
    import json
    import subprocess
    import sys

    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    ds.PixelData = burn(ds.pixel_array, glyph_mask((240, 320)), 255, 0).tobytes()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, MRN, DOB
    burned = tmp_path / "a.dcm"
    ds.save_as(burned, enforce_file_format=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("not dicom")
    review = tmp_path / "review"
    proc = subprocess.run(
        [sys.executable, "-m", "dicomsafe", "pixels", "check", "--json", "--review", str(review),
         str(burned), data_file("CT_small.dcm"), str(notes)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 1, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["status"] for r in recs] == ["text", "clean", "unreadable"]
    assert recs[0]["phi_words"] >= 3 and len(recs[0]["boxes"]) >= 3
    for value in ("DOE", "JOHN", MRN, "1971", "a.dcm", "notes"):
        assert value not in proc.stdout and value not in proc.stderr
    assert (review / "file00001-before.png").is_file()
    clean = subprocess.run([sys.executable, "-m", "dicomsafe", "pixels", "check", data_file("CT_small.dcm")],
                           capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert clean.returncode == 0 and clean.stdout.startswith("#1: clean")


# ---------------------------------------------------------------------------------------------
# Review page


def test_review_page_references_existing_pngs(tmp_path):
    from PIL import Image

    def png(v):
        buf = io.BytesIO()
        Image.new("L", (8, 8), v).save(buf, format="PNG")
        return buf.getvalue()

    masked = PixelOutcome(changed=True, boxes=((Rect(0, 0, 4, 4),),), before_png=png(255), after_png=png(0))
    quarantined = PixelOutcome(quarantine_reason="pixel-phi-residue", before_png=png(255), after_png=png(9))
    untouched = PixelOutcome()
    index = write_review(tmp_path / "review", [ReviewItem("f0001", masked), ReviewItem("k3x9", quarantined),
                                              ReviewItem("f0003", untouched)])
    page = index.read_text()
    refs = re.findall(r'src="([^"]+)"', page)
    assert sorted(refs) == ["f0001-after.png", "f0001-before.png", "k3x9-after.png", "k3x9-before.png"]
    for ref in refs:
        assert (index.parent / ref).is_file()
        Image.open(index.parent / ref).verify()
    assert "pixel-phi-residue" in page and "f0003" not in page
    assert "http" not in page  # no network assets
    assert (index.parent / "f0001-before.png").stat().st_mode & 0o077 == 0  # operator-only files
    writer = ReviewWriter(tmp_path / "inc")
    assert writer.add("p1", masked) and not writer.add("p2", untouched)
    assert (tmp_path / "inc" / "p1-before.png").is_file()  # written at add(), not held in memory
    assert "1 masked, 0 quarantined" in writer.close().read_text()
    with pytest.raises(ConfigError):
        write_review(tmp_path / "r2", [ReviewItem("../evil", masked)])
    with pytest.raises(ConfigError):
        write_review(tmp_path / "r3", [ReviewItem("a", masked), ReviewItem("a", quarantined)])
    assert not (tmp_path / "r2").exists()  # nothing written for a bad key
    with pytest.raises(ConfigError):
        write_review(tmp_path / "dst" / "review", [ReviewItem("a", masked)], forbid_under=tmp_path / "dst")
