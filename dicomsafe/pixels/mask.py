"""Build a clean-region mask and blank it in a frame. Pure numpy, one frame at a time.

Why one 2-D mask for every frame: burned-in overlays sit still while the anatomy moves, and a
box found in one frame of a cine must be blanked in all of them (a name read in frame 3 is just as
present, if unreadable, in frame 4).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .rules import MaskOp, Rect


#: Extra growth as a share of the box height: tesseract's word boxes hug the glyph cores and can
#: miss anti-aliased edges, accents and descenders by a few pixels.
HEIGHT_SHARE = 0.25


def grow(rect: Rect, margin: int, rows: int, cols: int) -> Rect:
    """``rect`` plus ``margin`` pixels and a quarter of its height on every side, clipped."""
    m = margin + int(round((rect.y1 - rect.y0) * HEIGHT_SHARE))
    out = Rect(rect.x0 - m, rect.y0 - m, rect.x1 + m, rect.y1 + m).clip(rows, cols)
    assert out is not None  # a grown rect inside the frame cannot be empty
    return out


def build_mask(rows: int, cols: int, ops: Sequence[MaskOp], boxes: Iterable[Rect], margin: int) -> np.ndarray:
    """True = blank this pixel.

    Rule operations apply in recipe order (a later "keep" re-opens part of an earlier "clean",
    which is how deid's ultrasound recipe keeps the imaging regions of a blanked screen); detected
    text boxes are applied last and always win: text found is blanked even inside a kept region.
    """
    mask = np.zeros((rows, cols), dtype=bool)
    for op in ops:
        r = op.rect.clip(rows, cols)
        if r is not None:
            mask[r.y0:r.y1, r.x0:r.x1] = not op.keep
    for box in boxes:
        r = grow(box, margin, rows, cols)
        mask[r.y0:r.y1, r.x0:r.x1] = True
    return mask


def fill_value(frame: np.ndarray, photometric: str, palette_black: int | None = None):
    """The value that displays as black: min for MONOCHROME2, max for MONOCHROME1, 0 for colour.

    The frame's own extreme rather than 0, because signed CT/MR data rarely uses 0 for black.
    """
    if photometric == "PALETTE COLOR" and palette_black is not None:
        return palette_black
    if frame.ndim == 3:
        return 0
    if photometric == "MONOCHROME1":
        return frame.max()
    return frame.min()


def apply_mask(frame: np.ndarray, mask: np.ndarray, value) -> np.ndarray:
    """Return a copy of ``frame`` with the masked pixels (all samples) set to ``value``."""
    out = np.array(frame, copy=True)
    out[mask] = value
    return out


def boxes_to_rects(boxes: Iterable[Rect]) -> list[Rect]:
    """Merge exact duplicates while keeping order (many frames report the same overlay)."""
    seen: dict[Rect, None] = {}
    for b in boxes:
        seen.setdefault(b, None)
    return list(seen)
