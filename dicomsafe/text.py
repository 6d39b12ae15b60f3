"""Free-text scrubbing: remove the patient's identifiers and identifier-shaped text, keep the rest.

Used by every Clean (C) action on text VRs (LO, LT, ST, UT, SH, UC, PN inside SR) and, through the
same compiled detectors, by :mod:`dicomsafe.verify`. Why one module for both: the scrubber and the
verifier must agree exactly on what a hit is (boundaries, minimum lengths, dummy values); otherwise
the verifier would quarantine text the scrubber kept on purpose, or pass text it missed.

Everything is pure and compiled once. Literal value sets (a patient's names, ids, dates) become one
*trie-shaped* regular expression — an alternation factored by common prefixes — so a search is
roughly one pass over the text whatever the number of values, instead of one pass per value.
Text is matched decoded (``str``); writing it back in the dataset's own SpecificCharacterSet is
pydicom's job when the dataset is saved.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # verify imports this module; the type is only needed for annotations
    from .verify import PhiValues

#: What the scrubber writes in place of a hit. Never matches any detector.
REMOVED = "[removed]"

#: Values that de-identifiers (ours included) write as dummies. They are never harvested as PHI and
#: a PN holding one of them is not "name-like". Compared case-insensitively after stripping.
DUMMY_VALUES = frozenset(
    {
        "", "anonymous", "anon", "anonymized", "anonymised", "deidentified", "de-identified",
        "removed", "[removed]", "redacted", "unknown", "none", "null", "na", "n/a", "patient",
        "dummy", "xxx", "xxxx", "xxxxx", "x", "test", "^", "yes", "no",
    }
)

#: Words common in DICOM descriptors and kept attributes. A *single name token* equal to one of
#: them is not searched on its own (the full-name forms still are): otherwise a patient called
#: "Head" would quarantine every "CT HEAD" study. Deliberately short: over-scrubbing is safe.
STOP_TOKENS = frozenset(
    {
        "head", "neck", "chest", "brain", "spine", "heart", "hand", "foot", "knee", "hip", "body",
        "left", "right", "axial", "sagittal", "coronal", "contrast", "study", "series", "image",
        "scan", "report", "exam", "view", "lung", "liver", "abdomen", "pelvis", "mri", "ct", "mr",
        "us", "cr", "dx", "pt", "nm", "xa", "rf", "mg", "ot", "sr", "sc", "jr", "sr", "md", "dr",
        "mr", "mrs", "ms", "phd", "iii", "ii", "name", "first", "last", "text", "enter", "family",
        "given", "middle",
        # role words of DICOM and SR vocabulary, common in placeholder names ("Observer^Verifying")
        "observer", "verifying", "verifier", "person", "operator", "physician", "reader", "author",
        "technologist", "radiologist", "referring", "performing", "requesting", "reporting",
        "attending", "service", "admin", "default", "user", "staff", "doctor", "nurse", "tech",
        "device", "station", "system", "recording", "reviewer", "signer", "approver",
    }
)

# Letters of scripts that separate words with spaces, plus digits: a hit must not be glued to one
# of these (so "Smith" does not hit "Blacksmith"). CJK, kana and hangul are excluded on purpose:
# names there are written without spaces ("山田太郎様"), so they match as substrings.
_B = "0-9A-Za-z\u00aa\u00b5\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0370-\u03ff\u0400-\u04ff\u0590-\u05ff\u0600-\u06ff"
_UNBOUNDED_RE = re.compile("[\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")

STR_LEFT = rf"(?<![{_B}])(?<![0-9]\.)"
STR_RIGHT = rf"(?![{_B}]|\.[0-9])"
BYTES_LEFT = rb"(?<![a-z0-9])(?<![0-9]\.)"
BYTES_RIGHT = rb"(?![a-z0-9]|\.[0-9])"


def _trie_pattern(items: Iterable, esc) -> str | bytes | None:
    """Alternation of literal sequences factored into a trie; longest alternatives tried first.

    Built without recursion and with runs of single-child nodes joined in one step, so a hostile
    value thousands of characters long costs linear time and no stack (it used to raise
    RecursionError inside verification).
    """
    root: dict = {}
    end = object()
    for item in items:
        node = root
        for unit in item:
            node = node.setdefault(unit, {})
        node[end] = True

    def chain(k, child: dict) -> tuple[list, dict]:
        """Escaped units from ``k`` down a run of non-terminal single-child nodes, and where it ends."""
        units = [esc(k)]
        while end not in child and len(child) == 1:
            (k2,) = child.keys()
            units.append(esc(k2))
            child = child[k2]
        return units, child

    done: dict[int, object] = {}
    stack: list[tuple[dict, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        keys = sorted((k for k in node if k is not end), key=esc)
        runs = [chain(k, node[k]) for k in keys]
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for _, child in runs if id(child) not in done)
            continue
        if not keys:
            done[id(node)] = None
            continue
        parts = []
        for units, child in runs:
            sub = done[id(child)]
            parts.append(esc.empty.join(units) + (sub if sub is not None else esc.empty))
        terminal = end in node
        if len(parts) == 1 and not terminal:
            done[id(node)] = parts[0]
            continue
        body = esc.open + esc.bar.join(parts) + esc.close
        done[id(node)] = body + esc.opt if terminal else body
    return done[id(root)]  # type: ignore[return-value]


class _StrEsc:
    empty, open, close, bar, opt = "", "(?:", ")", "|", "?"

    def __call__(self, ch: str) -> str:
        return re.escape(ch)


class _BytesEsc:
    empty, open, close, bar, opt = b"", b"(?:", b")", b"|", b"?"

    def __call__(self, b: int) -> bytes:
        return re.escape(bytes([b]))


@functools.lru_cache(maxsize=256)
def compile_str_literals(values: frozenset[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex finding any of ``values`` (already lower-cased) in text.

    Values in space-separated scripts get word boundaries; CJK/kana/hangul values do not.
    """
    bounded, free = [], []
    for v in set(values):
        if v:
            (free if _UNBOUNDED_RE.search(v) else bounded).append(v)
    alts = []
    esc = _StrEsc()
    if bounded:
        alts.append(STR_LEFT + "(?:" + _trie_pattern(bounded, esc) + ")" + STR_RIGHT)
    if free:
        alts.append("(?:" + _trie_pattern(free, esc) + ")")
    if not alts:
        return None
    return re.compile("|".join(alts), re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def compile_bytes_literals(bounded: frozenset[bytes], free: frozenset[bytes]) -> re.Pattern[bytes] | None:
    """One regex over ASCII-lower-cased bytes. Group ``b`` holds patterns that need non-alnum
    neighbours, group ``f`` the rest. The *left* boundary of ``b`` is not in the regex: a leading
    lookbehind disables the regex engine's first-byte scan and costs a factor of ~6, so callers
    check it with :func:`bytes_left_ok` and search again one byte later when it fails.
    """
    esc = _BytesEsc()
    alts = []
    bounded, free = set(bounded) - {b""}, set(free) - {b""}
    if bounded:
        alts.append(b"(?P<b>" + _trie_pattern(bounded, esc) + b")" + BYTES_RIGHT)
    if free:
        alts.append(b"(?P<f>" + _trie_pattern(free, esc) + b")")
    if not alts:
        return None
    return re.compile(b"|".join(alts))


_ALNUM_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DIGIT_BYTES = frozenset(b"0123456789")


def bytes_left_ok(buf: bytes, start: int) -> bool:
    """The left word boundary of :data:`BYTES_LEFT`, checked by hand (see compile_bytes_literals)."""
    if start <= 0:
        return True
    prev = buf[start - 1]
    if prev in _ALNUM_BYTES:
        return False
    return not (prev == 0x2E and start >= 2 and buf[start - 2] in _DIGIT_BYTES)


#: Any UID-shaped token (digits and dots), with the same boundaries as the literal matchers.
UID_TOKEN_STR = re.compile(STR_LEFT + r"[0-9]+(?:\.[0-9]+)+" + STR_RIGHT)
UID_TOKEN_BYTES = re.compile(BYTES_LEFT + rb"[0-9]+(?:\.[0-9]+)+" + BYTES_RIGHT)
_UID_SHAPE = re.compile(r"[0-9]+(?:\.[0-9]+)+")


def is_uid_shaped(value: str) -> bool:
    """Digits and dots only, at least one dot: what :class:`TokenSetMatcher` can find."""
    return _UID_SHAPE.fullmatch(value) is not None


class TokenSetMatcher:
    """Finds members of a set of UIDs with one fixed regex instead of a regex built per set.

    Why: the instance UIDs of every file are new, so a literal regex for them had to be compiled
    for every file (~2 ms of a ~5 ms file). A boundary-respecting UID token is maximal (the
    right boundary refuses a following digit or ".digit", so no shorter candidate can match at
    the same start), hence a harvested UID occurs with its boundaries exactly where a token
    equal to it does: the token regex, filtered by membership, finds what the literal regex
    found. Offers the parts of ``re.Pattern`` the matchers' users call (finditer, search).
    """

    def __init__(self, rx: re.Pattern, members: frozenset):
        self._rx = rx
        self._members = members

    def finditer(self, text, pos: int = 0) -> Iterator[re.Match]:
        for m in self._rx.finditer(text, pos):
            if m.group(0) in self._members:
                yield m

    def search(self, text, pos: int = 0) -> re.Match | None:
        m = self._rx.search(text, pos)
        # no member can start inside a non-member token: every position there follows a digit
        # or a digit and a dot, which the left boundary refuses
        while m is not None and m.group(0) not in self._members:
            m = self._rx.search(text, m.end())
        return m


def is_unbounded(value: str) -> bool:
    """True when ``value`` contains CJK/kana/hangul, which are matched without word boundaries."""
    return _UNBOUNDED_RE.search(value) is not None


def is_dummy(value: str) -> bool:
    """True for values de-identifiers write as placeholders (never PHI, never name-like)."""
    v = value.strip().strip("^=").strip().lower()
    return v in DUMMY_VALUES or v.startswith("2.25.")


# --------------------------------------------------------------------------------------------
# Pattern detectors: identifier-shaped text, no harvested values needed.
# --------------------------------------------------------------------------------------------

#: SSN: 3-2-4 digits with one consistent separator (dash, space or none). Area 000, 666 and
#: 900-999, group 00 and serial 0000 are never issued, so they are excluded (fewer false hits on
#: lot numbers and counters). Not glued to other digits, letters, dashes or a decimal point.
SSN_RE = re.compile(
    r"(?<![0-9A-Za-z\-])(?<![0-9]\.)(?!000|666|9\d\d)\d{3}([- ]?)(?!00)\d{2}\1(?!0000)\d{4}"
    r"(?![0-9A-Za-z\-]|\.[0-9])"
)
#: Only the dashed/spaced SSN form: used where a bare 9-digit number is too often something else.
SSN_SEP_RE = re.compile(
    r"(?<![0-9A-Za-z\-])(?<![0-9]\.)(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}"
    r"(?![0-9A-Za-z\-]|\.[0-9])"
)
SSN_LABEL_RE = re.compile(r"\b(?:SSN|SS#|social\s+security)", re.IGNORECASE)

EMAIL_RE = re.compile(r"(?<![\w.+%-])[\w.+%-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")

PHONE_RE = re.compile(
    r"(?<![\w+/.-])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}"  # international
    r"|(?:1[\s.-]?)?\(\d{3}\)[\s.-]?\d{3}[\s.-]?\d{4}"  # (555) 123-4567
    r"|(?:1[\s.-])?\d{3}([.-])\d{3}\1\d{4}"  # 555-123-4567, 555.123.4567
    r"|\d{3} \d{3} \d{4}"  # 555 123 4567
    r")(?![\w]|[/.-]\d)"
)

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_ORD = r"(?:st|nd|rd|th)?"
DATE_RE = re.compile(
    r"(?<![\w.])(?<![0-9][/-])(?:"
    r"(?P<ymd>\d{4}([-/.])\d{1,2}\2\d{1,2})"
    r"|(?P<dmy>\d{1,2}([/-])\d{1,2}\4(?:\d{4}|\d{2}))"
    r"|(?P<dmy_dot>\d{1,2}\.\d{1,2}\.(?:\d{4}|\d{2}))"
    r"|(?P<compact>(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:\d{2,6}(?:\.\d{1,6})?)?)"
    rf"|\d{{1,2}}{_ORD}\.?[\s-]+{_MONTHS}\.?,?[\s-]+(?:\d{{4}}|\d{{2}})"
    rf"|{_MONTHS}\.?[\s-]+\d{{1,2}}{_ORD},?[\s-]+\d{{4}}"
    rf"|{_MONTHS}\.?,?\s+(?:18|19|20)\d{{2}}"
    r"|(?P<my>(?:0?[1-9]|1[0-2])/(?:19|20)\d{2})"  # 05/2020
    r"|(?P<ym>(?:19|20)\d{2}-(?:0[1-9]|1[0-2]))"  # 2020-05
    r")(?![\w]|[./-]\d)",
    re.IGNORECASE,
)

#: Ages over 89 are identifying (HIPAA Safe Harbor groups them with dates): "92 yo", "a 93-year-old".
AGE_OVER_89_RE = re.compile(
    r"\b(?:9\d|1[0-4]\d)(?:\s*|-)(?:years?(?:\s*|-)old|y/?o|yrs?|years?|y)\b", re.IGNORECASE
)

#: A phone number announced by a label, in any digit grouping ("Tel: 0044 20 7946 0958").
LABELLED_PHONE_RE = re.compile(
    r"\b(?:tel(?:ephone)?|phone|ph|fax|mobile|cell|pager|beeper)\.?\s*(?:no\.?|number|#)?\s*[:#]?\s*"
    r"(?P<v>\+?[\d(][\d\s().-]{5,}\d)",
    re.IGNORECASE,
)

#: Identifier values announced by a label ("MRN: 123456", "Accession # A12-345"): the value goes.
LABELLED_ID_RE = re.compile(
    r"\b(?:MRN|MR\s?#|MR\s?No\.?|Med(?:ical)?\s+Rec(?:ord)?(?:\s+(?:No\.?|Number|#))?|Patient\s+ID"
    r"|PID|Acc(?:ession)?(?:\s*(?:No\.?|Number|#))?|SSN|SS#|Social\s+Security(?:\s+(?:No\.?|Number|#))?"
    r"|Chart(?:\s*(?:No\.?|Number|#))?)"
    r"(?:\s*[:#=]\s*|\s+)(?P<v>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{2,})\b",
    re.IGNORECASE,
)

#: A person named with an honorific: "Dr. Jane Roe", "Mr J. Smith". The name part must be
#: title-case, so "DR CHEST" (digital radiography) and "MR BRAIN" are left alone.
HONORIFIC_NAME_RE = re.compile(
    r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?\s+(?P<v>(?:[A-Z]\.\s*)?[A-Z][a-z'\u00e0-\u00ff-]+"
    r"(?:\s+(?:[A-Z]\.\s*)?[A-Z][a-z'\u00e0-\u00ff-]+){0,2})"
)

#: A street address: number, one to three title-case words, a street type.
ADDRESS_RE = re.compile(
    r"\b\d{1,5}\s+(?:[A-Z][a-z]+\.?\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln"
    r"|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Highway|Hwy)\b\.?"
)


def _plausible_numeric_date(m: re.Match[str]) -> bool:
    """Reject numeric shapes that cannot be a calendar date (e.g. 13/45/20)."""
    txt = m.group(0)
    if m.group("compact") or m.group("my") or m.group("ym"):
        return True
    nums = [int(p) for p in re.split(r"[-/.]", txt) if p.isdigit()]
    if len(nums) != 3:
        return True  # textual month form: the month name already proves it
    if m.group("ymd"):
        _, a, b = nums
        return 1 <= a <= 12 and 1 <= b <= 31 or 1 <= b <= 12 and 1 <= a <= 31
    a, b, _ = nums
    return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)


def _plausible_phone(m: re.Match[str]) -> bool:
    digits = sum(ch.isdigit() for ch in m.group(0))
    return 10 <= digits <= 15 if m.group(0).startswith("+") else digits in (10, 11)


def date_spans(text: str) -> list[tuple[int, int]]:
    """Spans of date-shaped text (≥ 6 written forms, numeric and with month names)."""
    return [m.span() for m in DATE_RE.finditer(text) if _plausible_numeric_date(m)]


def phone_spans(text: str) -> list[tuple[int, int]]:
    """Spans of phone numbers: North American forms, ``+CC …`` international ones, and any
    digit grouping after a label ("Tel:", "Fax", "Pager")."""
    spans = [m.span() for m in PHONE_RE.finditer(text) if _plausible_phone(m)]
    spans += [m.span("v") for m in LABELLED_PHONE_RE.finditer(text) if sum(c.isdigit() for c in m.group("v")) >= 7]
    return spans


def ssn_spans(text: str, *, bare: bool = True) -> list[tuple[int, int]]:
    """Spans of SSN-shaped numbers; ``bare=False`` only the dashed/spaced form."""
    return [m.span() for m in (SSN_RE if bare else SSN_SEP_RE).finditer(text)]


def email_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in EMAIL_RE.finditer(text)]


def _group_spans(rx: re.Pattern[str], text: str, group: str = "v") -> list[tuple[int, int]]:
    return [m.span(group) for m in rx.finditer(text)]


# --------------------------------------------------------------------------------------------
# Scrubbing
# --------------------------------------------------------------------------------------------

#: Scrub kinds (profile ``[text] scrub = [...]``) and what each removes.
SCRUB_KINDS = frozenset({"ssn", "patient-names", "ids", "dates", "phone", "email", "address"})
DEFAULT_SCRUB_KINDS = ("ssn", "patient-names", "ids", "dates", "phone", "email", "address")

_COLLAPSE_RE = re.compile(re.escape(REMOVED) + r"(?:[\s,.^=/'-]*" + re.escape(REMOVED) + ")+")


def hit_spans(text: str, phi: PhiValues | None = None, kinds: Iterable[str] = DEFAULT_SCRUB_KINDS) -> list[tuple[int, int]]:
    """Sorted, merged spans of ``text`` that ``scrub`` would remove. Pure; no values returned."""
    kinds = frozenset(kinds)
    unknown = kinds - SCRUB_KINDS
    if unknown:
        raise ValueError(f"unknown scrub kind(s): {', '.join(sorted(unknown))}")
    spans: list[tuple[int, int]] = []
    if phi is not None:
        for rx in phi.text_matcher(kinds)[0]:
            spans.extend(m.span() for m in rx.finditer(text))
    if "ssn" in kinds:
        spans.extend(ssn_spans(text))
    if "phone" in kinds:
        spans.extend(phone_spans(text))
    if "email" in kinds:
        spans.extend(email_spans(text))
    if "dates" in kinds:
        spans.extend(date_spans(text))
        spans.extend(m.span() for m in AGE_OVER_89_RE.finditer(text))
    if "ids" in kinds:
        spans.extend(_group_spans(LABELLED_ID_RE, text))
    if "patient-names" in kinds:
        spans.extend(_group_spans(HONORIFIC_NAME_RE, text))
    if "address" in kinds:
        spans.extend(m.span() for m in ADDRESS_RE.finditer(text))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for s, e in spans:
        if e <= s:
            continue
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def scrub(text: str, phi: PhiValues | None = None, kinds: Iterable[str] = DEFAULT_SCRUB_KINDS) -> str:
    """Replace every identifier in ``text`` with ``[removed]``, keeping the words around it.

    ``phi`` (a :class:`dicomsafe.verify.PhiValues`) adds the patient's own harvested values: every
    name token and full-name form (``SMITH^JOHN``, ``John Smith``, ``Smith, John``, ``J. Smith``,
    ``山田太郎``), ids, UIDs, addresses, phones, and the birth date in its many written forms.
    ``kinds`` selects detectors (see :data:`SCRUB_KINDS`); the harvested birth date is removed
    whatever ``kinds`` says, because a patient's birth date is never clinical text.
    Adjacent removals ("John Smith" → two hits) collapse into one ``[removed]``.
    The scrub is repeated until stable, so the result never contains a detectable hit.
    """
    if not text:
        return text
    for _ in range(4):
        spans = hit_spans(text, phi, kinds)
        if not spans:
            return text
        out, pos = [], 0
        for s, e in spans:
            out.append(text[pos:s])
            out.append(REMOVED)
            pos = e
        out.append(text[pos:])
        text = _COLLAPSE_RE.sub(REMOVED, "".join(out))
    return text


#: Maximum value lengths (characters) of the text VRs, so a scrubbed value stays valid.
_VR_MAX = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240, "CS": 16, "AE": 16}
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


def _scrub_one(value, vr: str, phi, kinds):
    if value is None:
        return value
    if vr == "PN":
        s = str(value)
        return s if is_dummy(s) else REMOVED
    if isinstance(value, str):
        out = scrub(value, phi, kinds)
        limit = _VR_MAX.get(vr)
        # Truncation can only cut more text away; it never creates a hit.
        return out[:limit] if limit is not None else out
    return value


def scrub_value(value, vr: str, phi: PhiValues | None = None, kinds: Iterable[str] = DEFAULT_SCRUB_KINDS):
    """Scrub a DICOM element value of a text VR; multi-valued values are scrubbed item by item.

    Returns a value of the same shape (str, list, or pydicom MultiValue → list). PN values are
    person names by definition, so any PN value that is not a known dummy becomes ``[removed]``.
    Values of other VRs (dates, numbers, bytes) are returned unchanged: shifting dates is the
    rules engine's job. SH/LO/ST/LT results are cut to the VR's maximum length.
    """
    kinds = tuple(kinds)
    if vr not in TEXT_VRS:
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_scrub_one(v, vr, phi, kinds) for v in value]
    return _scrub_one(value, vr, phi, kinds)
