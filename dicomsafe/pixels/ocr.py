"""Find words in pixel frames with tesseract.

Why a subprocess and not pytesseract: pytesseract is itself a thin wrapper that writes temp files
and spawns the same binary. Calling tesseract directly lets us (1) feed every frame of a file as
one multi-page TIFF on stdin — one process, one model load, and no PHI-bearing pixels in temp
files; (2) set a timeout and OMP_THREAD_LIMIT=1 (tesseract's OpenMP threads oversubscribe a
shared machine and slow it down); (3) keep one fewer dependency. The TSV output gives word boxes
and confidences, which is all we need.

Word text only lives in memory: it is never logged or put into errors (it is PHI).
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from .rules import Rect

log = logging.getLogger(__name__)

#: Page segmentation mode 11 = "sparse text": find as much text as possible, in no order.
#: Burned-in annotations are scattered fragments, not paragraphs.
PSM = "11"
#: Long side (pixels) we upscale small frames to: tesseract reads glyphs of ~20-40 px best,
#: and ultrasound/secondary-capture text is often 8-12 px high.
TARGET_LONG_SIDE = 1000
MAX_SCALE = 4
TIMEOUT_S = 300


class OcrError(Exception):
    """tesseract ran but failed (crash, timeout, unreadable output): the caller fails closed."""


@dataclass(frozen=True)
class Word:
    frame: int
    rect: Rect  # in original frame coordinates
    conf: float
    text: str  # PHI: never log
    line: tuple[int, int, int, int]  # (page, block, paragraph, line) of this tesseract run


def tesseract_path() -> str | None:
    """The tesseract binary, honouring DICOMSAFE_TESSERACT (a path) for unusual installs."""
    env = os.environ.get("DICOMSAFE_TESSERACT")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    return shutil.which("tesseract")


def require_tesseract() -> str:
    path = tesseract_path()
    if path is None:
        raise ConfigError(
            "OCR was requested (pixels.ocr = true) but tesseract is not installed; install the "
            "Debian package tesseract-ocr (or set DICOMSAFE_TESSERACT), or set ocr = false"
        )
    return path


def to_gray8(frame: np.ndarray, *, monochrome1: bool = False) -> np.ndarray:
    """Window any frame (8/16/32-bit, signed, RGB) to 8-bit grey as displayed.

    Min-max windowing, not a clinical window: burned-in text is drawn at (or near) the extreme
    value of the frame, and min-max keeps it at full contrast whatever the modality.
    """
    arr = frame
    if arr.ndim == 3:
        # RGB: the brightest channel, not luminance — pure blue text has a luminance of 29/255
        # and would vanish against a black screen, yet it is perfectly legible to a person.
        arr = arr.max(axis=-1)
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        out = np.zeros(arr.shape, dtype=np.uint8)
    else:
        out = ((arr - lo) * (255.0 / (hi - lo))).round().astype(np.uint8)
    if monochrome1:
        out = 255 - out
    return out


#: Pages made from each frame. "grey": the frame as shown, polarised to dark-on-light.
#: "bright": only the brightest pixels, as black on white — burned-in text is drawn at (or near)
#: full intensity, and dropping the anatomy behind it lets tesseract read text that overlaps
#: the image or other annotations.
VARIANTS = ("grey", "bright")
BRIGHT_LEVEL = 190


def prepare(gray: np.ndarray, variant: str = "grey") -> tuple["object", float]:
    """Upscale and polarise a grey frame for tesseract; returns (PIL image, scale)."""
    from PIL import Image

    rows, cols = gray.shape
    scale = max(1, min(MAX_SCALE, math.ceil(TARGET_LONG_SIDE / max(rows, cols, 1))))
    if variant == "bright":
        img = np.where(gray >= BRIGHT_LEVEL, 0, 255).astype(np.uint8)
    elif float(np.median(gray)) < 128:
        # tesseract reads dark text on a light page best; medical screens are light on dark.
        img = 255 - gray
    else:
        img = gray
    pil = Image.fromarray(np.ascontiguousarray(img), mode="L")
    if scale > 1:
        pil = pil.resize((cols * scale, rows * scale), Image.Resampling.BICUBIC)
    return pil, float(scale)


def ocr_frames(frames: Sequence[tuple[int, np.ndarray]], *, lang: str = "eng",
               variants: Sequence[str] = VARIANTS) -> list[Word]:
    """OCR grey 8-bit frames ``[(frame_index, gray), ...]`` in one tesseract run.

    Each frame becomes one page per variant. Returns the words found (level-5 TSV rows with
    text), boxes mapped back to frame coordinates. Raises ConfigError if tesseract is missing,
    OcrError if it fails.
    """
    if not frames:
        return []
    exe = require_tesseract()
    pages = []
    scales = []
    page_frames = []
    shapes = []
    for fid, gray in frames:
        for variant in variants:
            pil, scale = prepare(gray, variant)
            pages.append(pil)
            scales.append(scale)
            page_frames.append(fid)
            shapes.append(gray.shape)
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:], compression="raw")
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    try:
        proc = subprocess.run(
            [exe, "stdin", "stdout", "-l", lang, "--psm", PSM, "--dpi", "300", "tsv"],
            input=buf.getvalue(),
            capture_output=True,
            timeout=TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OcrError("tesseract timed out") from None
    except OSError as exc:
        raise OcrError(f"tesseract could not be started ({exc.strerror})") from None
    if proc.returncode != 0:
        raise OcrError(f"tesseract failed (exit {proc.returncode})")
    return parse_tsv(proc.stdout.decode("utf-8", "replace"), page_frames, scales, shapes)


def parse_tsv(tsv: str, frame_ids: Sequence[int], scales: Sequence[float],
              shapes: Sequence[tuple[int, int]]) -> list[Word]:
    words: list[Word] = []
    lines = tsv.splitlines()
    if not lines or not lines[0].startswith("level"):
        raise OcrError("tesseract produced no TSV header")
    for row in lines[1:]:
        parts = row.split("\t")
        if len(parts) < 12 or parts[0] != "5":
            continue
        text = parts[11].strip()
        if not text:
            continue
        try:
            page = int(parts[1]) - 1
            left, top, width, height = (int(p) for p in parts[6:10])
            conf = float(parts[10])
        except ValueError:
            continue
        if not 0 <= page < len(frame_ids):
            continue
        s = scales[page]
        rows, cols = shapes[page]
        rect = Rect(
            int(math.floor(left / s)), int(math.floor(top / s)),
            int(math.ceil((left + width) / s)), int(math.ceil((top + height) / s)),
        ).clip(rows, cols)
        if rect is None:
            continue
        fid = frame_ids[page]
        words.append(Word(fid, rect, conf, text, (page, int(parts[2]), int(parts[3]), int(parts[4]))))
    return words
