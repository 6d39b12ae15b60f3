"""apply_pixel_policy: find burned-in text, blank it, prove it is gone — or quarantine.

Flow for one dataset (fail closed at every step):

1. header: RecognizableVisualFeatures = YES → quarantine (blanking text does not hide a face);
   deid ``%filter`` rules → rectangles to blank / labels that flag the image; header flags.
2. detect (OCR on): every frame that differs from the last one read, batched into one tesseract
   run; confident words and any word that reads as PHI become boxes.
3. ``burned_in = "quarantine"``: any text or flag → quarantine. ``"mask"``: blank rule rectangles
   and boxes (with a margin) in every frame, then OCR the result; a word that still reads as a
   harvested PHI value or an identifier pattern → quarantine ``pixel-phi-residue``; other
   confident text gets one more masking round. Without OCR, an image flagged as carrying text
   whose text no rule locates cannot be proven clean → quarantine.
4. only when every check passed is ``ds`` modified (new PixelData, transfer syntax, photometric
   interpretation; BurnedInAnnotation = NO when the OCR check passed).

Reason codes are short, stable and PHI-free; they go into reports as they are.
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
from pydicom import Dataset

from ..errors import ConfigError, DicomsafeError
from . import codec, mask as maskmod, match, ocr, rules
from .rules import FilterSet, Rect

log = logging.getLogger(__name__)

BurnedIn = Literal["mask", "quarantine", "keep"]

#: Quarantine reason codes this module returns (all PHI-free).
REASONS = {
    "burned-in-text": "text found in the pixels and the policy quarantines burned-in text",
    "burned-in-flagged": "the header or a deid filter flags burned-in text and the policy quarantines it",
    "burned-in-unlocated": "burned-in text is likely but OCR is off and no rule locates it",
    "recognizable-visual-features": "RecognizableVisualFeatures = YES; masking text cannot clean it",
    "pixel-phi-residue": "after masking, OCR still reads PHI or an identifier in the pixels",
    "ocr-failed": "tesseract failed on this image",
    "pixel-decode-failed": "the pixel data could not be decoded",
    "pixel-encode-failed": "the masked pixels could not be re-encoded",
    "pixel-transfer-syntax-unsupported": "no decoder for this transfer syntax",
    "pixel-decoder-missing": "the decoder plugin for this transfer syntax is not installed",
    "pixel-bits-unsupported": "BitsAllocated other than 8, 16 or 32 cannot be masked",
    "pixel-module-invalid": "the Image Pixel module is missing or malformed",
    "pixel-no-transfer-syntax": "no transfer syntax in the file meta",
    "palette-invalid": "the palette lookup tables are missing or malformed",
    "pixel-float-unsupported": "float pixel data cannot be read by OCR or masked",
    "pixel-error": "an unexpected error while cleaning the pixels",
    "pixel-data-missing": "an image (Rows/Columns present) without pixel data: nothing was checked",
}

#: A frame is read again when more than DIFF_PIXELS of its pixels differ by more than DIFF_LEVEL
#: grey levels from the last frame read. Deliberately tiny: a short ID drawn in 8-px type is
#: ~100 pixels, so anything coarser could skip the one frame that shows it. Identical frames
#: (static screens, repeated stills) are what this saves.
DIFF_LEVEL = 24
DIFF_PIXELS = 16
OCR_BATCH = 16
THUMB_SIDE = 256


@dataclass(frozen=True)
class PixelPolicy:
    """What to do with burned-in text. Mirrors the profile's ``[pixels]`` section.

    ``filters``: deid recipes whose ``%filter`` rules locate text — bundled tags ("dicom",
    "dicom.ultrasound", "dicom.xray.chest") or recipe paths, or a pre-loaded FilterSet; None =
    ("dicom",); () = no rules. ``margin``: pixels added around every detected word box.
    ``min_conf``: tesseract confidence (0-100) from which a word counts as text.
    """

    burned_in: BurnedIn = "mask"
    ocr: bool = True
    filters: FilterSet | Sequence[str | Path] | None = None
    margin: int = 4
    min_conf: float = 50.0
    ocr_lang: str = "eng"
    thumbnails: bool = True
    max_rounds: int = 2

    def __post_init__(self) -> None:
        if self.burned_in not in ("mask", "quarantine", "keep"):
            raise ConfigError("pixels.burned_in must be one of: mask, quarantine, keep")
        if not 0 <= self.margin <= 64:
            raise ConfigError("pixels.margin must be between 0 and 64")
        if not 0 <= self.min_conf <= 100:
            raise ConfigError("pixels.min_conf must be between 0 and 100")

    @classmethod
    def from_mapping(cls, table: "dict | None") -> "PixelPolicy":
        """Build a policy from a profile's ``[pixels]`` table; unknown keys are a ConfigError.

        Keys: burned_in, ocr, recipes (list of deid recipe tags/paths), margin, min_conf, lang.
        """
        table = dict(table or {})
        known = {"burned_in", "ocr", "recipes", "margin", "min_conf", "lang"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"[pixels]: unknown key(s): {', '.join(unknown)}")
        kwargs: dict = {}
        if "burned_in" in table:
            kwargs["burned_in"] = str(table["burned_in"])
        if "ocr" in table:
            if not isinstance(table["ocr"], bool):
                raise ConfigError("[pixels]: ocr must be true or false")
            kwargs["ocr"] = table["ocr"]
        if "recipes" in table:
            recipes = table["recipes"]
            if not isinstance(recipes, list) or not all(isinstance(r, str) for r in recipes):
                raise ConfigError("[pixels]: recipes must be a list of deid recipe names or paths")
            kwargs["filters"] = tuple(recipes)
        for key, typ in (("margin", int), ("min_conf", (int, float))):
            if key in table:
                if isinstance(table[key], bool) or not isinstance(table[key], typ):
                    raise ConfigError(f"[pixels]: {key} must be a number")
                kwargs[key] = table[key]
        if "lang" in table:
            kwargs["ocr_lang"] = str(table["lang"])
        return cls(**kwargs)

    def filter_set(self) -> FilterSet:
        if isinstance(self.filters, FilterSet):
            return self.filters
        if self.filters is None:
            return _load_cached(tuple(rules.DEFAULT_RECIPES))
        return _load_cached(tuple(str(f) for f in self.filters))


@functools.lru_cache(maxsize=16)
def _load_cached(recipes: tuple[str, ...]) -> FilterSet:
    return rules.load_filters(recipes) if recipes else FilterSet(())


@dataclass
class PixelOutcome:
    """What apply_pixel_policy did. PHI-free except the thumbnails (operator-side review only)."""

    changed: bool = False
    boxes: tuple[tuple[Rect, ...], ...] = ()  # per frame: regions blanked in that frame
    quarantine_reason: str | None = None
    ocr_used: bool = False
    before_png: bytes | None = None  # contains PHI: review page only, never under DST
    after_png: bytes | None = None
    flags: tuple[str, ...] = ()  # header flag codes
    rule_labels: tuple[str, ...] = ()  # deid filter labels that matched (recipe text)
    words_found: int = 0  # OCR words counted as text before masking
    residual_words: int = 0  # OCR words counted as text after masking
    transfer_syntax: str | None = None  # output transfer syntax UID when changed
    rounds: int = 0  # masking rounds run (a second one blanks text the first re-check still read)
    frames_ocr: int = 0  # frames read by OCR before masking (identical neighbours are skipped)

    @property
    def needs_review(self) -> bool:
        """Masked, or quarantined for a pixel reason: a person should look at it."""
        return self.changed or self.quarantine_reason is not None


# ---------------------------------------------------------------------------------------------


def _display(ds: Dataset, frame: np.ndarray, pi: str) -> np.ndarray:
    """What a viewer shows, as uint8 grey or RGB (for OCR and thumbnails)."""
    if pi == "PALETTE COLOR":
        return codec.palette_rgb(ds, frame)
    if frame.ndim == 3:
        return frame if frame.dtype == np.uint8 else ocr.to_gray8(frame)
    return ocr.to_gray8(frame, monochrome1=pi == "MONOCHROME1")


def _gray(display: np.ndarray) -> np.ndarray:
    return display if display.ndim == 2 else ocr.to_gray8(display)


def _png(display: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(display))
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _Reader:
    """Selects frames worth reading and OCRs them in batches (bounded memory)."""

    def __init__(self, lang: str):
        self.lang = lang
        self.words: list[ocr.Word] = []
        self._batch: list[tuple[int, np.ndarray]] = []
        self._last: np.ndarray | None = None
        self.frames_read = 0

    def feed(self, index: int, gray: np.ndarray) -> None:
        if self._last is not None and self._last.shape == gray.shape:
            diff = np.abs(gray.astype(np.int16) - self._last)
            if np.count_nonzero(diff > DIFF_LEVEL) <= DIFF_PIXELS:
                return  # same picture as the last frame read: its words were found there
        self._last = gray.astype(np.int16)
        self._batch.append((index, gray))
        if len(self._batch) >= OCR_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            self.words.extend(ocr.ocr_frames(self._batch, lang=self.lang))
            self.frames_read += len(self._batch)
            self._batch = []


def _detect(ds: Dataset, info: codec.PixelInfo, policy: PixelPolicy) -> tuple[list[ocr.Word], bytes | None, int]:
    reader = _Reader(policy.ocr_lang)
    thumb = None
    for idx, frame, pi in codec.iter_frames(ds):
        disp = _display(ds, frame, pi)
        if idx == 0 and policy.thumbnails:
            thumb = _png(disp)
        reader.feed(idx, _gray(disp))
    reader.flush()
    return reader.words, thumb, reader.frames_read


def residue_reason(words: Sequence[ocr.Word], phi: match.PhiTokens) -> str | None:
    """The verdict on a masked image: any word still reading as PHI or an identifier fails it."""
    return "pixel-phi-residue" if match.phi_words(words, phi) else None


def _text_boxes(words: Iterable[ocr.Word], phi: match.PhiTokens, min_conf: float) -> list[Rect]:
    """Boxes to blank: confident words, PHI-like words whatever their confidence, and the whole
    extent of every line holding one of them (a half-read line is still a line of text)."""
    words = list(words)
    chosen = {id(w): w for w in words if match.is_text(w, min_conf)}
    for w in match.phi_words(words, phi):  # PHI is blanked whatever tesseract's confidence
        chosen[id(w)] = w
    rects = [w.rect for w in chosen.values()]
    hot_lines = {w.line for w in chosen.values()}
    for line, members in match.lines_of(words).items():
        if line in hot_lines and len(members) > 1:
            rects.append(Rect(min(m.rect.x0 for m in members), min(m.rect.y0 for m in members),
                              max(m.rect.x1 for m in members), max(m.rect.y1 for m in members)))
    return maskmod.boxes_to_rects(rects)


def _mask_pass(
    ds: Dataset, info: codec.PixelInfo, policy: PixelPolicy, mask: np.ndarray, verify: bool
) -> tuple[codec.FrameSink, list[ocr.Word], bytes | None]:
    sink = codec.FrameSink(ds, info)
    reader = _Reader(policy.ocr_lang)
    thumb = None
    black = None
    for idx, frame, pi in codec.iter_frames(ds):
        if pi == "PALETTE COLOR" and black is None:
            black = codec.palette_black(ds, frame)
        out = maskmod.apply_mask(frame, mask, maskmod.fill_value(frame, pi, black))
        sink.add(idx, out, pi)
        if verify or (idx == 0 and policy.thumbnails):
            disp = _display(ds, out, pi)
            if idx == 0 and policy.thumbnails:
                thumb = _png(disp)
            if verify:
                reader.feed(idx, _gray(disp))
    reader.flush()
    return sink, reader.words, thumb


def apply_pixel_policy(ds: Dataset, policy: PixelPolicy, phi_strings: Iterable[str]) -> PixelOutcome:
    """Find, blank and re-check burned-in text in ``ds`` (modified in place only on success).

    Returns a PixelOutcome; a file that cannot be proven clean gets ``quarantine_reason`` (never
    an exception). Raises ConfigError only for configuration problems (OCR asked for but tesseract
    missing; a bad recipe) — those concern the whole run, not this file.
    """
    if policy.burned_in == "keep":
        return PixelOutcome()
    if policy.ocr:
        ocr.require_tesseract()
    filters = policy.filter_set()
    phi = match.PhiTokens.from_strings(phi_strings)
    out = PixelOutcome(ocr_used=policy.ocr)
    try:
        info = codec.pixel_info(ds)
    except codec.UnsupportedPixels as exc:
        if exc.code == "no-pixel-data":
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                out.quarantine_reason = "pixel-float-unsupported"
            elif "Rows" in ds or "Columns" in ds:
                # An image whose pixels were not loaded (read with stop_before_pixels?): we
                # cannot vouch for pixels we never saw.
                out.quarantine_reason = "pixel-data-missing"
            return out  # no pixels: nothing to clean
        out.quarantine_reason = exc.code
        return out
    if rules.recognizable_features(ds):
        out.quarantine_reason = "recognizable-visual-features"
        return _with_thumbnail(ds, policy, out)
    res = rules.evaluate(ds, filters, info.rows, info.cols)
    out.flags = tuple(res.flags)
    out.rule_labels = tuple(res.graylist + res.blacklist)
    try:
        out = _apply(ds, info, policy, phi, res, out)
    except codec.UnsupportedPixels as exc:
        out.quarantine_reason = exc.code
        out.changed = False
    except ocr.OcrError:
        log.warning("OCR failed on an image; it is quarantined")
        out.quarantine_reason = "ocr-failed"
        out.changed = False
    except DicomsafeError:
        raise
    except Exception as exc:  # fail closed on anything unforeseen in odd pixel data
        log.error("unexpected failure while cleaning pixels (%s); the file is quarantined", type(exc).__name__)
        out.quarantine_reason = "pixel-error"
        out.changed = False
    return _with_thumbnail(ds, policy, out)


def _with_thumbnail(ds: Dataset, policy: PixelPolicy, out: PixelOutcome) -> PixelOutcome:
    """Quarantined for a pixel reason before OCR ran: still give the reviewer a picture."""
    if out.quarantine_reason and out.before_png is None and policy.thumbnails:
        try:
            for _, frame, pi in codec.iter_frames(ds, indices=[0]):
                out.before_png = _png(_display(ds, frame, pi))
        except Exception:  # undecodable: the page says "no thumbnail"
            out.before_png = None
    return out


def _apply(ds, info, policy: PixelPolicy, phi, res: rules.RuleResult, out: PixelOutcome) -> PixelOutcome:
    words: list[ocr.Word] = []
    if policy.ocr:
        words, out.before_png, out.frames_ocr = _detect(ds, info, policy)
    text_boxes = _text_boxes(words, phi, policy.min_conf) if words else []
    out.words_found = sum(1 for w in words if match.is_text(w, policy.min_conf))

    if policy.burned_in == "quarantine":
        if text_boxes:
            out.quarantine_reason = "burned-in-text"
        elif res.blacklist or res.graylist or "burned-in-annotation" in res.flags:
            out.quarantine_reason = "burned-in-flagged"
        elif not policy.ocr and res.suspect:
            out.quarantine_reason = "burned-in-flagged"
        return out

    # mask
    if not policy.ocr:
        whitelisted = bool(res.whitelist)
        if res.blacklist or (res.suspect and not res.has_clean_rects and not whitelisted):
            out.quarantine_reason = "burned-in-unlocated"
            return out
    if not res.has_clean_rects and not text_boxes:
        return out  # nothing to blank; pixels untouched (the caller may stream them raw)

    boxes = list(text_boxes)
    last_words: list[ocr.Word] = []
    sink = None
    for round_no in range(1, max(1, policy.max_rounds) + 1):
        out.rounds = round_no
        mask = maskmod.build_mask(info.rows, info.cols, res.ops, boxes, policy.margin)
        sink, last_words, out.after_png = _mask_pass(ds, info, policy, mask, verify=policy.ocr)
        residual = _text_boxes(last_words, phi, policy.min_conf)
        if not residual:
            break
        if match.phi_words(last_words, phi) and round_no == policy.max_rounds:
            break
        boxes = maskmod.boxes_to_rects(boxes + residual)

    out.residual_words = sum(1 for w in last_words if match.is_text(w, policy.min_conf))
    if policy.ocr and (reason := residue_reason(last_words, phi)):
        out.quarantine_reason = reason
        return out

    assert sink is not None
    sink.commit()
    out.changed = True
    out.transfer_syntax = str(sink.output_transfer_syntax)
    per_frame = tuple(maskmod.boxes_to_rects(
        [op.rect for op in res.ops if not op.keep]
        + [maskmod.grow(b, policy.margin, info.rows, info.cols) for b in boxes]
    ))
    out.boxes = tuple(per_frame for _ in range(info.frames))
    if policy.ocr:
        # BurnedInAnnotation means "enough burned-in text to identify the patient" (PS3.3
        # C.7.6.1.1.7): the OCR check found no PHI and no identifier left, so NO is the truth.
        # Other words tesseract still reads (scale labels, speckle it mistakes for letters) do
        # not identify anyone; they are counted in residual_words and shown on the review page.
        ds.BurnedInAnnotation = "NO"
    return out


@dataclass
class TextReport:
    """Where text is, without changing anything (``dicomsafe pixels check``). PHI-free."""

    frames: int = 0
    frames_ocr: int = 0
    boxes: tuple[Rect, ...] = ()  # rule rectangles to blank + word boxes (before margins)
    words: int = 0  # confident words
    phi_words: int = 0  # words that read as the given PHI values or as identifiers
    rule_labels: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    problem: str | None = None  # a reason code when the pixels could not be read
    before_png: bytes | None = None


def find_text(ds: Dataset, policy: PixelPolicy, phi_strings: Iterable[str]) -> TextReport:
    """Locate text (rules, flags, OCR if the policy asks) and report it; ``ds`` is not modified."""
    if policy.ocr:
        ocr.require_tesseract()
    phi = match.PhiTokens.from_strings(phi_strings)
    rep = TextReport()
    try:
        info = codec.pixel_info(ds)
    except codec.UnsupportedPixels as exc:
        rep.problem = None if exc.code == "no-pixel-data" else exc.code
        return rep
    rep.frames = info.frames
    res = rules.evaluate(ds, policy.filter_set(), info.rows, info.cols)
    rep.rule_labels = tuple(res.graylist + res.blacklist)
    rep.flags = tuple(res.flags)
    rects = [op.rect for op in res.ops if not op.keep]
    if policy.ocr:
        try:
            words, rep.before_png, rep.frames_ocr = _detect(ds, info, policy)
        except codec.UnsupportedPixels as exc:
            rep.problem = exc.code
            return rep
        except ocr.OcrError:
            rep.problem = "ocr-failed"
            return rep
        rects += _text_boxes(words, phi, policy.min_conf)
        rep.words = sum(1 for w in words if match.is_text(w, policy.min_conf))
        rep.phi_words = len(match.phi_words(words, phi))
    rep.boxes = tuple(maskmod.boxes_to_rects(rects))
    return rep
