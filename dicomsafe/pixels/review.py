"""Operator-side visual review: one HTML page with before/after thumbnails.

The "before" thumbnails show the burned-in PHI, so the page belongs to the operator (next to the
quarantine directory), never under the de-identified output. File names come only from the keys
the caller passes (keyed ids or positions), never from anything in the image or header. The page
is self-contained: no scripts, no network assets.

``ReviewWriter`` writes each item's PNGs as it arrives and keeps only a line of HTML per item, so a
run over many thousands of files does not hold thumbnails in memory; ``write_review`` is the
one-shot form.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..fsutil import write_bytes_atomic
from .policy import REASONS, PixelOutcome

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_CSS = """body{font-family:sans-serif;margin:1em;background:#fafafa}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}
img{max-width:256px;image-rendering:pixelated;background:#000}.q{color:#a00;font-weight:bold}
.ok{color:#070}"""


@dataclass(frozen=True)
class ReviewItem:
    """One image on the review page. ``key``: a keyed id or position (PHI-free, file-name safe)."""

    key: str
    outcome: PixelOutcome


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


class ReviewWriter:
    """Incremental review page: ``add`` per image, ``close`` writes index.html (atomically)."""

    def __init__(self, directory: str | os.PathLike[str], *, forbid_under: str | os.PathLike[str] | None = None):
        self.dir = Path(directory)
        if forbid_under is not None and _inside(self.dir, Path(forbid_under)):
            raise ConfigError("the review directory must not be inside the output directory (it shows PHI)")
        self._rows: list[str] = []
        self._seen: set[str] = set()
        self.masked = 0
        self.quarantined = 0

    def add(self, key: str, outcome: PixelOutcome) -> bool:
        """Record one image; returns False (and writes nothing) if it needs no review."""
        if not _KEY.match(key):
            raise ConfigError("review keys must be keyed ids or positions (letters, digits, . _ -)")
        if key in self._seen:
            raise ConfigError("review keys must be unique")
        self._seen.add(key)
        if not outcome.needs_review:
            return False
        cells = []
        for kind, data in (("before", outcome.before_png), ("after", outcome.after_png)):
            if data:
                name = f"{key}-{kind}.png"
                write_bytes_atomic(self.dir / name, data, mode=0o600)
                cells.append(f'<td><img src="{html.escape(name)}" alt="{kind}"></td>')
            else:
                cells.append("<td>(no thumbnail)</td>")
        if outcome.quarantine_reason:
            self.quarantined += 1
            status = (f'<span class="q">quarantined: {html.escape(outcome.quarantine_reason)}</span><br>'
                      f"{html.escape(REASONS.get(outcome.quarantine_reason, ''))}")
        else:
            self.masked += 1
            status = '<span class="ok">masked</span>'
        nboxes = len(outcome.boxes[0]) if outcome.boxes else 0
        facts = (f"regions blanked per frame: {nboxes}<br>words read before: {outcome.words_found}"
                 f"<br>after: {outcome.residual_words}<br>OCR: {'yes' if outcome.ocr_used else 'no'}")
        if outcome.rule_labels:
            facts += "<br>deid filters: " + html.escape("; ".join(outcome.rule_labels))
        self._rows.append(f"<tr><td>{html.escape(key)}</td><td>{status}</td>{''.join(cells)}<td>{facts}</td></tr>")
        return True

    def close(self) -> Path:
        page = (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>dicomsafe pixel review</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>dicomsafe pixel review</h1>\n"
            "<p>Operator-side page: the <em>before</em> images show burned-in PHI. Do not share it.</p>\n"
            f"<p>{self.masked} masked, {self.quarantined} quarantined for pixel reasons.</p>\n"
            "<table><tr><th>id</th><th>outcome</th><th>before</th><th>after</th><th>details</th></tr>\n"
            + "\n".join(self._rows) + "\n</table></body></html>\n"
        )
        index = self.dir / "index.html"
        write_bytes_atomic(index, page.encode("utf-8"), mode=0o600)
        return index


def write_review(directory: str | os.PathLike[str], items: Iterable[ReviewItem], *,
                 forbid_under: str | os.PathLike[str] | None = None) -> Path:
    """Write ``index.html`` and PNG thumbnails for every item that was masked or quarantined.

    Returns the path of index.html. Raises ConfigError for a key that is not file-name safe or
    repeated, or a review directory inside ``forbid_under`` (pass the run's DST).
    """
    writer = ReviewWriter(directory, forbid_under=forbid_under)
    for item in items:
        writer.add(item.key, item.outcome)
    return writer.close()
