"""Decide whether OCR'd words are PHI: fuzzy match to harvested values, identifier patterns.

OCR misreads: "0"/"O", "1"/"l"/"I", "5"/"S", "8"/"B", and splits or joins words. So both sides are
normalised (lower case, confusable glyphs folded) and compared token by token with a small edit
distance, and lines are compared with their spaces removed. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Iterable, Sequence

from .ocr import Word

_FOLD = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "!": "l", "5": "s", "8": "b", "$": "s"})
_TO_DIGIT = str.maketrans({"o": "0", "O": "0", "l": "1", "I": "1", "i": "1", "|": "1", "s": "5",
                           "S": "5", "B": "8", "Z": "2", "z": "2"})
_SPLIT = re.compile(r"[^0-9a-z|!$]+")

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*"
DATE_RE = re.compile(
    r"(?<!\d)(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"
    r"|\d{1,2}[-/. ]?" + _MONTH + r"[-/. ]?\d{2,4})(?!\d)",
    re.I,
)
SSN_RE = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
DIGITS_RE = re.compile(r"\d{5,}")


def fold(text: str) -> str:
    return text.lower().translate(_FOLD)


def tokens(text: str) -> list[str]:
    return [t for t in _SPLIT.split(text.lower()) if t]


def levenshtein(a: str, b: str, limit: int = 3) -> int:
    """Edit distance, stopping early once it exceeds ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > limit:
            return limit + 1
        prev = cur
    return prev[-1]


def _date_variants(tok: str) -> list[str]:
    """A DICOM date YYYYMMDD as it may be drawn: DDMMYYYY, MMDDYYYY, YYMMDD, ..."""
    if len(tok) != 8 or not tok.isdigit():
        return []
    try:
        date(int(tok[:4]), int(tok[4:6]), int(tok[6:]))
    except ValueError:
        return []
    y, m, d = tok[:4], tok[4:6], tok[6:]
    return [d + m + y, m + d + y, y[2:] + m + d, d + m + y[2:], m + d + y[2:]]


@dataclass(frozen=True)
class PhiTokens:
    """Normalised tokens of harvested PHI values (kept in memory only)."""

    words: frozenset[str]  # folded alnum tokens, len >= 3
    digits: frozenset[str]  # digit strings, len >= 4 (ids, dates and their drawn forms)

    @classmethod
    def from_strings(cls, values: Iterable[str]) -> "PhiTokens":
        words: set[str] = set()
        digits: set[str] = set()
        for value in values:
            if not value:
                continue
            for tok in tokens(str(value)):
                if len(tok) >= 3:
                    words.add(fold(tok))
                if tok.isdigit() and len(tok) >= 4:
                    digits.add(tok)
                    digits.update(_date_variants(tok))
            all_digits = re.sub(r"\D", "", str(value))
            if len(all_digits) >= 4:
                digits.add(all_digits)
        return cls(frozenset(words), frozenset(digits))


def _token_matches(tok: str, phi: PhiTokens) -> bool:
    f = fold(tok)
    if len(f) < 3:
        return False
    if f in phi.words:
        return True
    if len(f) < 4:
        return False
    limit = 1 if len(f) < 8 else 2
    return any(len(p) >= 4 and levenshtein(f, p, limit) <= limit for p in phi.words)


def identifier_pattern(text: str) -> bool:
    """Digit runs >= 5, dates, SSNs — also after folding letters OCR confuses with digits."""
    candidates = {text}
    if sum(c.isdigit() for c in text) * 2 >= len(text.replace(" ", "")):
        candidates.add(text.translate(_TO_DIGIT))
    for t in candidates:
        if SSN_RE.search(t) or DATE_RE.search(t):
            return True
        if DIGITS_RE.search(re.sub(r"[-/.:,]", "", t)):
            return True
    return False


def word_is_phi(word: Word, phi: PhiTokens) -> bool:
    if any(_token_matches(t, phi) for t in tokens(word.text)):
        return True
    return identifier_pattern(word.text)


def lines_of(words: Sequence[Word]) -> dict[tuple[int, int, int, int], list[Word]]:
    out: dict[tuple[int, int, int, int], list[Word]] = {}
    for w in words:
        out.setdefault(w.line, []).append(w)
    return out


def phi_words(words: Sequence[Word], phi: PhiTokens) -> list[Word]:
    """Words that read as PHI on their own or as part of their line (split/joined tokens)."""
    hits: dict[int, Word] = {}
    for i, w in enumerate(words):
        if word_is_phi(w, phi):
            hits[id(w)] = w
    for line in lines_of(words).values():
        joined = "".join(w.text for w in line)
        folded = fold(re.sub(r"[^0-9A-Za-z|!$]", "", joined))
        digits = re.sub(r"\D", "", joined.translate(_TO_DIGIT))
        line_hit = any(len(p) >= 4 and p in folded for p in phi.words) or any(
            d in digits for d in phi.digits
        ) or bool(DATE_RE.search(" ".join(w.text for w in line)))
        if line_hit:
            for w in line:
                hits[id(w)] = w
    return list(hits.values())


def is_text(word: Word, min_conf: float) -> bool:
    """A confident word with at least two letters/digits: real text, not speckle."""
    return word.conf >= min_conf and sum(c.isalnum() for c in word.text) >= 2
