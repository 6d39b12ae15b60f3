"""Burned-in text in pixel data: locate (deid filter rules, header flags, OCR), blank, verify.

Public API (used by the de-identification engine once per dataset):

    policy = PixelPolicy(burned_in="mask", ocr=True, filters=("dicom",), margin=4)
    outcome = apply_pixel_policy(ds, policy, phi_strings)   # -> PixelOutcome
    write_review(directory, [ReviewItem(key, outcome), ...])  # operator-side HTML page

See docs/pixels.md.
"""

from .codec import PixelInfo, UnsupportedPixels, pixel_info
from .ocr import OcrError, Word, ocr_frames, tesseract_path
from .policy import REASONS, PixelOutcome, PixelPolicy, TextReport, apply_pixel_policy, find_text
from .review import ReviewItem, ReviewWriter, write_review
from .rules import BUNDLED_RECIPES, DEFAULT_RECIPES, FilterSet, Rect, RuleResult, evaluate, load_filters

__all__ = [
    "BUNDLED_RECIPES",
    "DEFAULT_RECIPES",
    "FilterSet",
    "OcrError",
    "PixelInfo",
    "PixelOutcome",
    "PixelPolicy",
    "REASONS",
    "Rect",
    "TextReport",
    "ReviewItem",
    "ReviewWriter",
    "RuleResult",
    "UnsupportedPixels",
    "Word",
    "apply_pixel_policy",
    "evaluate",
    "find_text",
    "load_filters",
    "ocr_frames",
    "pixel_info",
    "tesseract_available",
    "tesseract_path",
    "write_review",
]


def tesseract_available() -> bool:
    return tesseract_path() is not None
