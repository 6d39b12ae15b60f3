"""Issue 7 through the command line: burned-in text masked in DST, review page operator-side."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from test_pixels import FONT, burn, data_file, glyph_mask, needs_font, needs_tesseract, read_phi


def cli(*args):
    return subprocess.run([sys.executable, "-m", "dicomsafe", *map(str, args)], capture_output=True, text=True)


@needs_tesseract
@needs_font
def test_deidentify_masks_burned_in_text_and_writes_review(tmp_path, secret_file):
    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(data_file("examples_rgb_color.dcm"))
    glyphs = glyph_mask((240, 320), top=True)
    ds.PixelData = burn(ds.pixel_array, glyphs, (255, 255, 255), 0, True).tobytes()
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "40817263"
    ds.PatientBirthDate = "19710203"
    ds.save_as(src / "us.dcm", enforce_file_format=True)
    assert read_phi(pydicom.dcmread(src / "us.dcm"))
    dst, review = tmp_path / "dst", tmp_path / "review"
    r = cli("deidentify", src, dst, "--secret-file", secret_file, "--option", "clean-pixel-data",
            "--review", review, "--quarantine", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    outs = [p for p in dst.rglob("*.dcm") if ".dicomsafe" not in p.parts]
    assert len(outs) == 1
    out = pydicom.dcmread(outs[0])
    assert read_phi(out) == []
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    index = review / "index.html"
    refs = re.findall(r'src="([^"]+)"', index.read_text())
    assert len(refs) == 2 and all((review / ref).is_file() for ref in refs)
    assert "DOE" not in index.read_text()


def test_review_under_dst_is_refused(tmp_path, secret_file):
    src = tmp_path / "src"
    src.mkdir()
    r = cli("deidentify", src, tmp_path / "dst", "--secret-file", secret_file,
            "--review", tmp_path / "dst" / "review")
    assert r.returncode == 2 and "review" in r.stderr
