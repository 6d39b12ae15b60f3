"""Fail-closed verification: prove an output holds none of its input's identifying values.

DESIGN.md §6. Before an output is committed the engine calls :func:`verify_file` with the
:class:`PhiValues` harvested from the *input*; any :class:`Finding` quarantines the file. The same
checks back ``dicomsafe scan``.

Two independent layers, because each catches what the other cannot:

* :func:`find_in_dataset` — every element at any depth, private blocks and file meta, searched on
  *decoded* text (pydicom decodes with the dataset's SpecificCharacterSet), so a name written in
  GB18030 or ISO 2022 is found as the same string the harvest saw.
* :func:`find_in_bytes` — the raw file: preamble, file meta, the bytes between and after elements,
  and bytes hidden inside a neighbour's value by a corrupted length field — places a parser never
  shows. Values are searched in ASCII/Latin-1, UTF-8 and the dataset's own encodings, with one
  compiled trie-shaped regex per search, so the cost is one pass over the bytes.

Findings name an attribute path and a kind, **never a value**: they go into reports and logs.
"""

from __future__ import annotations

import bisect
import functools
import logging
import mmap
import os
import re
import struct
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pydicom.hooks
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from . import text as _t
from .dicomio import _PIXEL_TAGS, is_sample_tag
from .rawds import RawDataset

#: What a sequence item can be: pydicom's Dataset, or the raw lane's (dicomsafe.rawds).
_DATASETS = (Dataset, RawDataset)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Kinds
# --------------------------------------------------------------------------------------------

#: Finding kinds for harvested values, in priority order (a value in two groups gets the first).
HARVEST_KINDS = (
    "birth-date", "patient-name", "patient-id", "person-name", "id", "uid", "address", "phone",
    "institution", "device", "other", "date",
)
#: Finding kinds of the pattern detectors (no harvested values needed).
PATTERN_KINDS = ("ssn", "email", "phone", "date", "person-name")
#: Structural findings.
STRUCTURE_KINDS = ("unreadable",)
ALL_KINDS = frozenset(HARVEST_KINDS) | frozenset(PATTERN_KINDS) | frozenset(STRUCTURE_KINDS)

#: Which finding kinds each scrub kind (dicomsafe.text.SCRUB_KINDS) removes.
SCRUB_TO_FINDING = {
    "patient-names": frozenset({"patient-name", "person-name"}),
    "ids": frozenset({"patient-id", "id", "uid", "device"}),
    "dates": frozenset({"date"}),
    "address": frozenset({"address", "institution", "other"}),
    "phone": frozenset({"phone"}),
    "ssn": frozenset(),
    "email": frozenset(),
}

_PATIENT_NAME_KW = frozenset(
    {"PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "ResponsiblePerson"}
)
_KW_KIND = {
    **{k: "patient-id" for k in ("PatientID", "OtherPatientIDs")},
    **{
        k: "id"
        for k in (
            "AccessionNumber", "StudyID", "RequestedProcedureID", "ScheduledProcedureStepID",
            "PerformedProcedureStepID", "PlacerOrderNumberImagingServiceRequest",
            "FillerOrderNumberImagingServiceRequest", "PlacerOrderNumberProcedure",
            "FillerOrderNumberProcedure", "AdmissionID", "ServiceEpisodeID", "MedicalRecordLocator",
            "InsurancePlanIdentification", "BarcodeValue", "ContainerIdentifier", "SpecimenIdentifier",
        )
    },
    **{
        k: "device"
        for k in (
            "DeviceSerialNumber", "StationName", "DeviceID", "DetectorID", "GantryID", "PlateID",
            "CassetteID", "SourceSerialNumber", "PerformedStationName", "ScheduledStationName",
        )
    },
    **{
        k: "institution"
        for k in ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "IssuerOfPatientID")
    },
    **{
        k: "address"
        for k in ("PatientAddress", "ReferringPhysicianAddress", "PersonAddress", "RegionOfResidence",
                  "PatientInstitutionResidence", "CurrentPatientLocation")
    },
    **{
        k: "phone"
        for k in ("PatientTelephoneNumbers", "ReferringPhysicianTelephoneNumbers", "PersonTelephoneNumbers",
                  "OrderCallbackPhoneNumber", "PatientTelecomInformation", "PersonTelecomInformation")
    },
    **{k: "other" for k in ("ResponsibleOrganization", "MilitaryRank", "BranchOfService")},
}
#: The tags of the keywords above: elements harvested by keyword whatever their VR.
_KW_KIND_TAGS = frozenset(tag_for_keyword(k) for k in _KW_KIND)
#: UI attributes naming a class, a syntax, a coding scheme or a piece of software: shared by
#: everyone, never PHI.
_CLASS_UID_SUFFIXES = ("ClassUID", "TransferSyntaxUID", "SchemeUID", "ContextUID", "ImplementationClassUID",
                       "UIDInFile", "ClassesInStudy", "ClassesInSeries", "ClassesSupported")
_SOFTWARE_UID_KW = frozenset({"MappingResourceUID", "ContextGroupExtensionCreatorUID", "CreatorVersionUID",
                              "PrivateInformationCreatorUID"})
_WELL_KNOWN_UID_ROOT = "1.2.840.10008."
_VENDOR_KW = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions")

#: Coded vocabulary: values come from code tables, not from people.
_CODED_KW = frozenset({
    "CodeValue", "CodeMeaning", "CodingSchemeDesignator", "CodingSchemeVersion", "LongCodeValue",
    "URNCodeValue", "ContextIdentifier", "MappingResource", "ValueType", "RelationshipType",
    "ContinuityOfContent", "ConceptNameCodeSequence", "ImageType", "Modality", "BodyPartExamined",
})
#: VRs holding codes, titles and identifiers of things, never free text about a person.
_CODED_VRS = frozenset({"CS", "AE", "UI", "UR"})


def _is_code_member(tag: int) -> bool:
    """Members of a code sequence item, (0008,0100)–(0008,0124): CodeValue … CodeMeaning …"""
    return 0x00080100 <= tag <= 0x00080124


_TEXT_FREE_VRS = frozenset({"LO", "LT", "ST", "UT", "SH", "UC", "PN"})
_LONG_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC"})
_DATE_VRS = frozenset({"DA", "DT"})
_SKIP_VRS = frozenset({"OW", "OF", "OD", "OL", "OV", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV", "AT", "TM", "DS", "IS", "AS"})
_BYTES_VRS = frozenset({"OB", "UN"})
_LONG_HDR_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"})
_LONG_HDR_VR_NAMES = frozenset(v.decode() for v in _LONG_HDR_VRS)
_VALID_VRS = frozenset(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")


# --------------------------------------------------------------------------------------------
# Harvested values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhiValues:
    """Identifying values harvested from one input (or the union of many), as search strings.

    Every field holds lower-cased strings ready to search for (matching is case-insensitive):
    ``names`` full-name forms and name tokens of every PN (``patient_names`` the subset from the
    patient's own PNs), ``ids``/``patient_ids``, ``dates`` the birth date in its printable forms,
    ``other_dates`` every other date of the input (kind ``date``: a profile that retains full dates
    ignores it), ``uids`` the original instance UIDs, and so on. ``encodings`` are the Python codecs
    of the input's SpecificCharacterSet, used to search raw bytes.

    The repr shows counts only, so a PhiValues that slips into a log line leaks nothing.
    """

    names: frozenset[str] = frozenset()
    patient_names: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    patient_ids: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset()
    other_dates: frozenset[str] = frozenset()
    addresses: frozenset[str] = frozenset()
    phones: frozenset[str] = frozenset()
    uids: frozenset[str] = frozenset()
    device: frozenset[str] = frozenset()
    institution: frozenset[str] = frozenset()
    other: frozenset[str] = frozenset()
    encodings: tuple[str, ...] = ()
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __reduce__(self):
        # Pickle (process pools, Dask) without the compiled-matcher cache: it is rebuilt on use.
        return (_rebuild_phi, (tuple(getattr(self, f) for f in _VALUE_FIELDS), self.encodings))

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{f}={len(getattr(self, f))}" for f in _VALUE_FIELDS if getattr(self, f)
        )
        return f"PhiValues({counts})"

    def for_tree_scan(self) -> PhiValues:
        """This harvest made fit for ``scan --against`` over a *union* of many inputs.

        Shifted dates of one patient routinely equal real dates of another once thousands of
        patients are pooled, so other dates (kind ``date``) are dropped and the birth date keeps
        only its written-out forms, not the bare ``YYYYMMDD`` a DA element holds. A non-empty
        PatientBirthDate is still reported by itself (see find_in_dataset).
        """
        return PhiValues(**{f: getattr(self, f) for f in _VALUE_FIELDS if f not in ("dates", "other_dates")},
                         dates=frozenset(d for d in self.dates if not d.isdigit()), encodings=self.encodings)

    def with_identity_of(self, others: Iterable[PhiValues]) -> PhiValues:
        """This harvest plus the *identity* values (names, ids, UIDs, birth date, addresses, phones,
        institution, device) of ``others`` — the other files of the same study or patient.

        Why: one file may carry the patient's name only in a transliteration (PatientName in
        Cyrillic, Greek, Hebrew) while its free text names the patient in Latin letters, as
        another file of the study has it. A sibling's original UID is pooled too (a reference
        left unkeyed is a leak). Ordinary dates stay this file's own: pooled, a sibling's real
        date can equal this file's shifted one.
        """
        others = list(others)
        pooled = PhiValues.union([self, *others])
        return PhiValues(**{f: getattr(pooled, f) for f in _VALUE_FIELDS if f != "other_dates"},
                         other_dates=self.other_dates, encodings=pooled.encodings)

    def with_min_length(self, n: int) -> PhiValues:
        """Only values of at least ``n`` characters (CJK/kana/hangul: half that). For searching
        opaque binary files, where short strings turn up by chance."""
        def keep(v: str) -> bool:
            return len(v) >= (max(2, n // 2) if _t.is_unbounded(v) else n)

        return PhiValues(**{f: frozenset(v for v in getattr(self, f) if keep(v)) for f in _VALUE_FIELDS},
                         encodings=self.encodings)

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in _VALUE_FIELDS)

    @classmethod
    def union(cls, items: Iterable[PhiValues]) -> PhiValues:
        """The union of several harvests (``scan --against`` over a whole source tree)."""
        acc: dict[str, set] = {f: set() for f in _VALUE_FIELDS}
        encs: list[str] = []
        for it in items:
            for f in _VALUE_FIELDS:
                acc[f].update(getattr(it, f))
            encs.extend(e for e in it.encodings if e not in encs)
        return cls(**{f: frozenset(v) for f, v in acc.items()}, encodings=tuple(encs))

    # -- values per finding kind -------------------------------------------------------------
    def values_by_kind(self) -> dict[str, frozenset[str]]:
        """Search strings grouped by finding kind (a value belongs to its highest-priority kind)."""
        got = self._cache.get("by_kind")
        if got is None:
            raw = {
                "birth-date": self.dates,
                "patient-name": self.patient_names,
                "patient-id": self.patient_ids,
                "person-name": self.names - self.patient_names,
                "id": self.ids - self.patient_ids,
                "uid": self.uids,
                "address": self.addresses,
                "phone": self.phones,
                "institution": self.institution,
                "device": self.device,
                "other": self.other,
                "date": self.other_dates,
            }
            seen: set[str] = set()
            got = {}
            for kind in HARVEST_KINDS:
                vals = frozenset(v for v in raw[kind] if v not in seen)
                seen |= vals
                got[kind] = vals
            self._cache["by_kind"] = got
        return got

    def _kind_groups(self, kinds: frozenset[str]) -> tuple[tuple, frozenset[str], tuple]:
        """((kind, values) of the selected kinds ranked before "uid"), the UIDs, (… after "uid")).

        The two groups are the same for every file of a patient, the UIDs new in each: matchers
        are built from the groups once (:func:`_str_rest`, :func:`_bytes_part`), and only the
        UID part per file. Keeping "before" and "after" apart preserves which kind a casefolded
        value maps to when two kinds collide (the later one, as one lookup in rank order has it).
        """
        by_kind = self.values_by_kind()
        before = tuple((k, by_kind[k]) for k in HARVEST_KINDS[:_UID_RANK] if k in kinds)
        after = tuple((k, by_kind[k]) for k in HARVEST_KINDS[_UID_RANK + 1:] if k in kinds)
        return before, (by_kind["uid"] if "uid" in kinds else frozenset()), after

    def str_matcher(self, kinds: Iterable[str], min_len: int = 2,
                    single_tokens: bool = True) -> tuple[tuple[re.Pattern[str], ...], dict[str, str]]:
        """(regexes, casefolded value → finding kind) for decoded text; compiled once, cached.

        Two regexes: the instance UIDs (new in every file) apart from everything else (the same
        for every file of a patient), so the larger one is built once per patient, not per file.
        ``single_tokens=False`` leaves out one-word name tokens (full-name forms stay): used on
        coded vocabulary, where a surname such as "Long" or "Mass" is an ordinary code meaning.
        Callers must not mutate the lookup: it may be shared with other PhiValues.
        """
        kinds = frozenset(kinds)
        key = ("str", kinds, min_len, single_tokens)
        got = self._cache.get(key)
        if got is None:
            before, uids, after = self._kind_groups(kinds)
            rx_rest, lk_before, lk_after, lookup = _str_rest(before, after, min_len, single_tokens)
            uid_values = _searchable_uids(uids, min_len, single_tokens)
            if uid_values:
                # keyed by casefold: the regex matches case-insensitively ("ΣΟΦΙΑΣ" vs "σοφιας"),
                # and str.lower() does not map every such match back (final sigma, dotted I)
                lookup = {**lk_before, **{v.casefold(): "uid" for v in uid_values}, **lk_after}
            shaped = frozenset(v.casefold() for v in uid_values if _t.is_uid_shaped(v))
            odd = frozenset(v for v in uid_values if not _t.is_uid_shaped(v))
            rx_uid = _t.TokenSetMatcher(_t.UID_TOKEN_STR, shaped) if shaped else None
            rx_odd = _t.compile_str_literals(odd) if odd else None  # malformed UIDs: rare
            got = (tuple(rx for rx in (rx_rest, rx_uid, rx_odd) if rx is not None), lookup)
            self._cache[key] = got
        return got

    def text_matcher(self, scrub_kinds: Iterable[str]) -> tuple[tuple[re.Pattern[str], ...], dict[str, str]]:
        """The matcher :func:`dicomsafe.text.scrub` uses for the given scrub kinds.

        The birth date is always included: a patient's birth date is never clinical text.
        """
        kinds = {"birth-date"}
        for k in scrub_kinds:
            kinds |= SCRUB_TO_FINDING.get(k, frozenset())
        return self.str_matcher(frozenset(kinds), 2)

    def bytes_matcher(self, kinds: Iterable[str]) -> tuple[tuple[re.Pattern[bytes], ...], dict[bytes, str], int]:
        """(regexes, ASCII-lower-cased pattern bytes → kind, longest pattern) for raw bytes.

        Minimum lengths guard against chance hits in binary data: names ≥ 3 bytes, other values
        ≥ 4 bytes, patterns without word boundaries (non-ASCII encodings) ≥ 4 bytes. UIDs get a
        regex of their own, as in :meth:`str_matcher`; the rest is the same for every file of a
        patient, so it is built once per value set (:func:`_bytes_part`), not once per file.
        """
        kinds = frozenset(kinds)
        key = ("bytes", kinds)
        got = self._cache.get(key)
        if got is None:
            before, uids, after = self._kind_groups(kinds)
            encodings = tuple(_byte_encodings(self.encodings))
            rest = _bytes_rest_values(before + after)
            uid_values = _searchable_uids(uids, 2, True)
            shaped = frozenset(v for v in uid_values if _plain_ascii_uid(v, encodings))
            odd_pairs = frozenset((v, "uid") for v in uid_values if v not in shaped)
            rx_rest, lk_rest, longest = _bytes_part(rest, encodings)
            rxs: list = [rx_rest]
            lookup = lk_rest
            if shaped:
                members = frozenset(v.encode("ascii") for v in shaped)
                rxs.append(_t.TokenSetMatcher(_t.UID_TOKEN_BYTES, members))
                lookup = {**{b: "uid" for b in members}, **lookup}
                longest = max(longest, max(map(len, members)))
            if odd_pairs:  # UIDs with other characters, or an encoding that changes digits: rare
                rx_odd, lk_odd, longest_odd = _bytes_part(odd_pairs, encodings)
                rxs.append(rx_odd)
                lookup = {**lk_odd, **lookup}
                longest = max(longest, longest_odd)
            got = (tuple(rx for rx in rxs if rx is not None), lookup, longest)
            self._cache[key] = got
        return got


_UID_RANK = HARVEST_KINDS.index("uid")


def _select(groups: tuple[tuple[str, frozenset[str]], ...], min_len: int, single_tokens: bool) -> dict[str, str]:
    """Searchable value → kind over (kind, values) groups, in rank order."""
    out: dict[str, str] = {}
    for kind, vals in groups:
        for v in _searchable_values(vals, kind, min_len, single_tokens):
            out.setdefault(v, kind)
    return out


@functools.lru_cache(maxsize=256)
def _str_rest(before: tuple, after: tuple, min_len: int, single_tokens: bool
              ) -> tuple[re.Pattern[str] | None, dict[str, str], dict[str, str], dict[str, str]]:
    """The non-UID part of a text matcher: (regex, lookup of the kinds before "uid", of those
    after, of both). Cached on the value sets, so a patient's files share it; callers must not
    mutate the dicts."""
    lk_before = {v.casefold(): k for v, k in _select(before, min_len, single_tokens).items()}
    lk_after = {v.casefold(): k for v, k in _select(after, min_len, single_tokens).items()}
    values = frozenset(_select(before + after, min_len, single_tokens))
    return _t.compile_str_literals(values), lk_before, lk_after, {**lk_before, **lk_after}


@functools.lru_cache(maxsize=256)
def _bytes_rest_values(groups: tuple) -> frozenset[tuple[str, str]]:
    """(value, kind) pairs of the non-UID kinds for a bytes matcher (min length 2, all tokens)."""
    return frozenset(_select(groups, 2, True).items())


@functools.lru_cache(maxsize=256)
def _bytes_part(values: frozenset[tuple[str, str]], encodings: tuple[str, ...]
                ) -> tuple[re.Pattern[bytes] | None, dict[bytes, str], int]:
    """One compiled byte regex, its lookup and its longest pattern for a set of (value, kind).
    Cached: callers must not mutate the returned dict."""
    lookup: dict[bytes, str] = {}
    bounded: set[bytes] = set()
    free: set[bytes] = set()
    for v, kind in sorted(values):
        is_name = kind in _NAME_KINDS
        for variant in {v, v.upper(), v.title(), v.capitalize()}:
            for enc in encodings:
                b = _encode_for_search(variant, enc)
                if b is None:
                    continue
                b = b.lower()
                if b.isascii() and not _t.is_unbounded(v):
                    if len(b) < (3 if is_name else 4):
                        continue
                    bounded.add(b)
                else:
                    if len(b) < 4:
                        continue
                    free.add(b)
                lookup.setdefault(b, kind)
    return _t.compile_bytes_literals(frozenset(bounded), frozenset(free)), lookup, max(map(len, lookup), default=0)


def _plain_ascii_uid(value: str, encodings: tuple[str, ...]) -> bool:
    """A UID of digits and dots that every search encoding writes as its ASCII bytes (so the
    fixed token matcher finds it); anything else takes the literal-regex path."""
    if not _t.is_uid_shaped(value) or len(value) < 4:
        return False
    ascii_form = value.encode("ascii")
    return all(_encode_for_search(value, enc) in (None, ascii_form) for enc in encodings)


def _rebuild_phi(values: tuple, encodings: tuple[str, ...]) -> PhiValues:
    return PhiValues(**dict(zip(_VALUE_FIELDS, values)), encodings=encodings)


_NAME_KINDS = frozenset({"patient-name", "person-name"})
_SEP_RE = re.compile(r"[\s^,.=]")


def _is_single_token(v: str) -> bool:
    return not _SEP_RE.search(v) and not _t.is_unbounded(v)


@functools.lru_cache(maxsize=4096)
def _searchable_values(vals: frozenset[str], kind: str, min_len: int, single_tokens: bool) -> tuple[str, ...]:
    """The values of one kind worth searching (see :func:`_searchable`), in ``vals`` order.

    Cached on the value set: the engine harvests every file afresh, but a patient's names, ids and
    birth date are the same in each, and the regex-based tests below cost more than the search.
    ``single_tokens=False`` drops one-word name tokens (see :meth:`PhiValues.str_matcher`).
    A file's instance UIDs are new in every file: :func:`_searchable_uids` does not cache them.
    """
    return tuple(v for v in vals
                 if (single_tokens or kind not in _NAME_KINDS or not _is_single_token(v))
                 and _searchable(v, kind, min_len))


def _searchable_uids(uids: frozenset[str], min_len: int, single_tokens: bool) -> tuple[str, ...]:
    """:func:`_searchable_values` for a file's UIDs, uncached: cached, every file's set took a
    slot that no later file ever asked for (6,123 misses and 207 hits over 2,000 CT files), and
    the full cache held ~3 MiB that made the run's memory grow with its file count."""
    return _searchable_values.__wrapped__(uids, "uid", min_len, single_tokens)


def _searchable(v: str, kind: str, min_len: int) -> bool:
    """Whether a harvested value is specific enough to search for without drowning in chance
    hits: long enough, not one repeated character ("000000000"), and a digits-only id, serial or
    phone of at least 5 digits (a 4-digit serial such as "9999" matches any number in a report)."""
    if _t.is_unbounded(v):
        return len(v) >= 2
    if len(v) < min_len:
        return False
    if kind in ("patient-name", "person-name"):
        return True
    core = re.sub(r"[\s.\-/]", "", v)
    if len(set(core)) <= 1:
        return False
    if kind not in ("birth-date", "date", "uid") and core.isdigit() and len(core) < 5:
        return False
    return True


_VALUE_FIELDS = (
    "names", "patient_names", "ids", "patient_ids", "dates", "other_dates", "addresses", "phones",
    "uids", "device", "institution", "other",
)

_ESC_RE = re.compile(rb"\x1b[\x20-\x2f]*[\x30-\x7e]")


@functools.lru_cache(maxsize=1)
def _table_date_tags() -> frozenset[int]:
    """DA/DT attributes PS3.15 Table E.1-1 lists (so the engine acts on them). Dates outside the
    table (calibration and expiry dates …) are kept unchanged by design and are not harvested,
    or every kept one would quarantine its file."""
    import json
    from importlib.resources import files

    from pydicom.datadict import dictionary_VR

    rows = json.loads(files("dicomsafe").joinpath("data/standard/ps3.15-table-e.1-1.json").read_text("utf-8"))
    out = set()
    for row in rows:
        ident = str(row.get("id", ""))
        if len(ident) == 8 and all(c in "0123456789abcdefABCDEF" for c in ident):
            tag = int(ident, 16)
            try:
                if dictionary_VR(tag) in ("DA", "DT"):
                    out.add(tag)
            except KeyError:
                continue
    return frozenset(out)


def _byte_encodings(extra: tuple[str, ...]) -> list[str]:
    encs = ["latin_1", "utf_8"]
    for e in extra:
        try:
            name = __import__("codecs").lookup(e).name
        except LookupError:
            continue
        if name not in ("iso8859-1", "latin-1", "utf-8", "ascii") and name not in encs:
            encs.append(name)
    return encs


def _encode_for_search(value: str, enc: str) -> bytes | None:
    """Encode ``value`` as it would sit in a file; ISO 2022 escape sequences are stripped so a
    name found mid-run (after an escape shared with its neighbours) still matches."""
    try:
        b = value.encode(enc)
    except (UnicodeError, LookupError):
        return None
    if enc.startswith("iso2022"):
        if value.isascii():
            return None  # the ASCII forms are already searched as ASCII
        parts = [p for p in _ESC_RE.split(b) if p]
        if len(parts) != 1:
            return None  # mixed runs: the single-script tokens are searched instead
        b = parts[0]
    return b


def _norm(value: str) -> str:
    return " ".join(value.replace("\x00", " ").split()).lower()


@functools.lru_cache(maxsize=4096)
def _name_forms(pn: str) -> tuple[frozenset[str], frozenset[str]]:
    """(full-name forms, tokens) of one PN value, lower-cased.

    Cached: the engine harvests every file, and each file of a patient repeats the same names,
    whose forms (dozens, accent-folded) cost more than the rest of the harvest.

    A PN is ``family^given^middle^prefix^suffix`` per component group (alphabetic, ideographic,
    phonetic, separated by ``=``). Prefixes and suffixes ("Dr", "Jr") are not identifying and are
    left out of the tokens.
    """
    full: set[str] = set()
    tokens: set[str] = set()
    for group in pn.split("="):
        comps = [c.strip() for c in group.split("^")]
        comps += [""] * (5 - len(comps))
        family, given, middle = comps[0], comps[1], comps[2]
        core = [c for c in (family, given, middle) if c]
        if not core:
            continue
        raw = group.rstrip("^ ").strip()
        if raw and not _t.is_dummy(raw):
            full.add(raw)
        for c in core:
            full.add(c)
            for tok in re.split(r"[\s,'\-.]+", c):
                tok = tok.strip()
                if len(tok) >= 2 and not tok.isdigit() and tok.lower() not in _t.STOP_TOKENS:
                    tokens.add(tok)
        if family and given:
            g0 = given[0] if not _t.is_unbounded(given) else given
            forms = [
                f"{family}^{given}", f"{given} {family}", f"{family} {given}", f"{family}, {given}",
                f"{family},{given}", f"{given}{family}", f"{family}{given}",
                f"{g0}. {family}", f"{g0}.{family}", f"{g0} {family}", f"{family}, {g0}.", f"{family} {g0}.",
            ]
            if middle:
                m0 = middle[0]
                forms += [
                    f"{given} {middle} {family}", f"{family}, {given} {middle}", f"{given} {m0}. {family}",
                    f"{family}, {given} {m0}.", f"{family}^{given}^{middle}", f"{family} {given} {middle}",
                    f"{given} {m0} {family}", f"{family}, {given} {m0}",
                ]
            full.update(forms)
    full = {_norm(f) for f in full if f and not _t.is_dummy(f)}
    full = {f for f in full if f.lower() not in _t.STOP_TOKENS and len(f) >= 2}
    tokens = {_norm(t) for t in tokens if not _t.is_dummy(t)}
    # People drop accents when they type a name into a report ("Qörvtrudeck" → "Qorvtrudeck").
    full |= {_fold(f) for f in full}
    tokens |= {_fold(t) for t in tokens if _fold(t) not in _t.STOP_TOKENS}
    return frozenset(full), frozenset(tokens)


@functools.lru_cache(maxsize=16384)
def _is_dummy_short(value: str) -> bool:
    return _t.is_dummy(value)


def _is_dummy(value: str) -> bool:
    """:func:`dicomsafe.text.is_dummy`, memoised for short values: the harvest asks it of every
    value and every harvested string of every file, mostly the same ones again."""
    return _is_dummy_short(value) if len(value) <= 128 else _t.is_dummy(value)


def _fold(value: str) -> str:
    """``value`` without diacritics (NFKD, combining marks dropped); unchanged when it has none."""
    decomposed = unicodedata.normalize("NFKD", value)
    folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", folded)


def date_forms(value: str, *, rich: bool = True) -> set[str]:
    """Printable forms of a DICOM date ``YYYYMMDD`` (lower-cased): 19800102, 1980-01-02,
    01/02/1980, 02.01.1980, 2 Jan 1980, January 2, 1980 … ``rich`` adds two-digit years and
    spelled-out variants (used for the birth date)."""
    v = value.strip()[:8]
    if len(v) != 8 or not v.isdigit():
        return set()
    y, m, d = v[:4], int(v[4:6]), int(v[6:8])
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return set()
    mm, dd = f"{m:02d}", f"{d:02d}"
    forms = {v, f"{y}-{mm}-{dd}", f"{y}/{mm}/{dd}", f"{y}.{mm}.{dd}",
             f"{mm}/{dd}/{y}", f"{dd}/{mm}/{y}", f"{dd}.{mm}.{y}", f"{mm}-{dd}-{y}", f"{dd}-{mm}-{y}",
             f"{m}/{d}/{y}", f"{d}/{m}/{y}", f"{d}.{m}.{y}"}
    if rich:
        yy = y[2:]
        month = _MONTHS[m - 1]
        mon = month[:3]
        forms |= {f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{m}-{d}-{y}", f"{d}-{m}-{y}",
                  f"{mm}/{dd}/{yy}", f"{dd}/{mm}/{yy}", f"{dd}.{mm}.{yy}", f"{m}/{d}/{yy}", f"{d}/{m}/{yy}",
                  f"{d}.{m}.{yy}", f"{mm}-{dd}-{yy}", f"{dd}-{mm}-{yy}"}
        for mn in {mon, month, mon + "."}:
            for dn in {str(d), dd}:
                forms |= {f"{dn} {mn} {y}", f"{dn}-{mn}-{y}", f"{dn} {mn}, {y}", f"{mn} {dn}, {y}",
                          f"{mn} {dn} {y}", f"{dn}-{mn}-{yy}", f"{dn} {mn} {yy}"}
            suffix = "th" if 11 <= d <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
            forms |= {f"{d}{suffix} {mn} {y}", f"{mn} {d}{suffix}, {y}", f"{mn} {d}{suffix} {y}"}
    return {f.lower() for f in forms}


def _iter_values(elem) -> Iterator[str]:
    val = elem.value
    if val is None:
        return
    if isinstance(val, (list, tuple)) or type(val).__name__ == "MultiValue":
        for v in val:
            if v is not None:
                yield str(v)
    elif isinstance(val, (bytes, bytearray)):
        return
    else:
        yield str(val)


_BIG_BINARY_VRS = frozenset({"OB", "UN", "OW", "OF", "OD", "OL", "OV", None})


def _convert(ds: Dataset, tag: int) -> tuple[int, object, bool]:
    """(tag, element, converted); an element whose value cannot be converted comes back raw."""
    try:
        return tag, ds[tag], True
    except Exception:  # a malformed value: search its raw bytes instead
        return tag, ds.get_item(tag), False


def _safe_elements(ds: Dataset, shortcut: bool = False) -> Iterator[tuple[int, object, bool]]:
    """(tag, element, converted) for every top-level element; pixel data is never converted.

    ``shortcut`` leaves out, unconverted, the elements :func:`harvest` would ignore anyway:
    a VR it never harvests (US, DS, FD …, known without converting, see
    :func:`_vr_once_converted`) on a tag that is neither SpecificCharacterSet nor one of the
    keyword-harvested ids, addresses, phones (``_KW_KIND``). Should the conversion fail or give
    raw bytes (wrong-length-to-UN), the harvest takes nothing from the element either.
    """
    for tag in list(ds.keys()):
        if tag in _PIXEL_TAGS:
            yield tag, ds.get_item(tag), False
            continue
        if (shortcut and tag != 0x00080005 and tag not in _KW_KIND_TAGS
                and _vr_once_converted(ds.get_item(tag, keep_deferred=True)) in _SKIP_VRS):
            continue
        yield _convert(ds, tag)


def harvest(ds: Dataset) -> PhiValues:
    """Harvest the identifying values of ``ds`` (every element at any depth, and its file meta).

    What is harvested and why:
    * every PN, public or private, at any depth → names (a name is a name wherever it sits);
    * ids, addresses, phones, institution and device identity → by keyword, public elements only;
    * original instance UIDs (any public UI except class/syntax/scheme UIDs and the well-known
      ``1.2.840.10008.`` root), including the file meta's MediaStorageSOPInstanceUID;
    * the birth date in its printable forms, and every other DA/DT (kind ``date``).
    Private elements other than PN are not harvested: their contents (creator strings, flags,
    small numbers) would be reported as PHI when the engine keeps a safe private attribute.
    Known dummy values (``ANONYMOUS``, ``[removed]`` …) are never harvested.
    """
    acc: dict[str, set[str]] = {f: set() for f in _VALUE_FIELDS}
    encs: list[str] = []

    def add_enc(value) -> None:
        try:
            for e in convert_encodings(value):
                if e not in encs:
                    encs.append(e)
        except Exception:
            pass

    def walk(d: Dataset, depth: int) -> None:
        if depth > 32:
            return
        for tag, elem, converted in _safe_elements(d, shortcut):
            if not converted:
                continue
            vr = elem.VR
            if vr == "SQ":
                for item in elem.value or ():
                    if isinstance(item, _DATASETS):
                        walk(item, depth + 1)
                continue
            kw = elem.keyword or ""
            if tag == 0x00080005:
                add_enc(elem.value)
                continue
            if vr == "UI":
                # A UID is never a placeholder name: a 2.25. UID (UUID-derived, issued by many
                # devices) is as identifying as any other, so is_dummy's 2.25. rule is not used.
                values = [v for v in _iter_values(elem) if v.strip()]
            else:
                values = [v for v in _iter_values(elem) if v.strip() and not _is_dummy(v)]
            if not values:
                continue
            if vr == "PN":
                for v in values:
                    full, tokens = _name_forms(v)
                    acc["names"] |= full | tokens
                    if kw in _PATIENT_NAME_KW:
                        acc["patient_names"] |= full | tokens
                continue
            if elem.is_private:
                continue
            if vr == "UI":
                if kw.endswith(_CLASS_UID_SUFFIXES) or kw in _SOFTWARE_UID_KW:
                    continue
                for v in values:
                    v = v.strip().rstrip("\x00")
                    if v and not v.startswith(_WELL_KNOWN_UID_ROOT) and len(v) >= 5:
                        acc["uids"].add(v.lower())
                continue
            if vr in _DATE_VRS:
                for v in values:
                    if kw == "PatientBirthDate":
                        acc["dates"] |= date_forms(v)
                    elif tag in _table_date_tags():
                        acc["other_dates"] |= date_forms(v, rich=False)
                continue
            kind = _KW_KIND.get(kw)
            if kind is None:
                continue
            for v in values:
                n = _norm(v)
                if len(n) < 3:
                    continue
                if kind in ("patient-id", "id"):
                    acc["ids"].add(n)
                    if kind == "patient-id":
                        acc["patient_ids"].add(n)
                elif kind == "address":
                    acc["addresses"].add(n)
                    acc["addresses"].update(p for p in (_norm(x) for x in re.split(r"[\^,;\r\n]+", v)) if len(p) >= 5)
                elif kind == "phone":
                    acc["phones"].add(n)
                    digits = re.sub(r"\D", "", v)
                    if len(digits) >= 7:
                        acc["phones"].add(digits)
                elif kind == "institution":
                    acc["institution"].add(n)
                elif kind == "device":
                    acc["device"].add(n)
                else:
                    acc["other"].add(n)

    shortcut = _default_conversion()
    software_uids: set[str] = set()
    if getattr(ds, "file_meta", None) is not None:
        sop = ds.file_meta.get("MediaStorageSOPInstanceUID")
        if sop and not str(sop).startswith(_WELL_KNOWN_UID_ROOT):
            acc["uids"].add(str(sop).strip().lower())
        impl = ds.file_meta.get("ImplementationClassUID")
        if impl:
            software_uids.add(str(impl).strip().lower())
    add_enc(ds.get("SpecificCharacterSet", None))
    walk(ds, 0)
    # The writing software's UID may be reused (e.g. as InstanceCreatorUID); it names a program,
    # not a patient, and every output carries one, so it is never a search string.
    acc["uids"] -= software_uids
    # Vendor strings (Manufacturer …) legitimately stay in every output; an institution or device
    # value equal to one of them would quarantine clean files, so it is not a search string.
    vendor = " | ".join(_norm(str(ds.get(k, "") or "")) for k in _VENDOR_KW)
    for f in ("institution", "device", "other"):
        acc[f] = {v for v in acc[f] if v not in vendor}
    for f in acc:
        if f != "uids":
            acc[f] = {v for v in acc[f] if v and not _is_dummy(v)}
    return PhiValues(**{f: frozenset(v) for f, v in acc.items()}, encodings=tuple(encs))


# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Finding:
    """Residual PHI: *where* (an attribute path or a byte region) and *what kind*. Never a value."""

    path: str
    kind: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}"


@functools.lru_cache(maxsize=8192)
def _tag_label(tag: int, keyword: str | None = None) -> str:
    t = Tag(tag)
    if t.is_private:
        return f"({t.group:04X},{t.element:04X}) private"
    kw = keyword if keyword is not None else keyword_for_tag(t)
    return f"({t.group:04X},{t.element:04X}) {kw}" if kw else f"({t.group:04X},{t.element:04X})"


def _dedupe(findings: Iterable[Finding]) -> list[Finding]:
    seen: set[Finding] = set()
    out = []
    for f in findings:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return out


def _own_ids(ds: Dataset) -> frozenset[str]:
    """The dataset's own PatientID values (casefolded): in an output, the pseudonymous id."""
    out: set[str] = set()
    for kw in ("PatientID", "OtherPatientIDs"):
        try:
            val = ds.get(kw)
        except Exception:
            continue
        if val is None:
            continue
        vals = list(val) if isinstance(val, (list, tuple)) or type(val).__name__ == "MultiValue" else [val]
        out.update(str(v).strip().casefold() for v in vals if str(v).strip())
    return frozenset(out)


def _is_name_like(value: str, pseudonyms: frozenset[str] = frozenset()) -> bool:
    """A PN value that looks like a real person's name: not a dummy and not a pseudonym token
    (names carry no digits; keyed ids and 'ANON-0001'-style dummies do; a PN equal to the
    dataset's own PatientID is the pseudonymous id written as a name)."""
    if _t.is_dummy(value):
        return False
    if value.strip().strip("^=").strip().casefold() in pseudonyms:
        return False
    groups = [g for g in value.split("=") if g.strip("^ ")]
    if not groups:
        return False
    return any(not re.search(r"\d", g) and re.search(r"[^\W\d_]", g) for g in groups)


@functools.lru_cache(maxsize=64)
def _date_kinds(kinds: frozenset[str]) -> frozenset[str]:
    """The date kinds among ``kinds``, one object per kinds set (a cheap matcher-cache key)."""
    return kinds & {"birth-date", "date"}


def _search_text(text: str, vr: str, path: str, phi: PhiValues | None, kinds: frozenset[str],
                 name_heuristic: bool, keyword: str = "",
                 pseudonyms: frozenset[str] = frozenset(), tag: int = 0) -> Iterator[Finding]:
    """Findings in one element's decoded text. How hard to look depends on the VR: two-letter
    name tokens only in long free text (LT/ST/UT/UC), ≥ 3 elsewhere, and no one-word name tokens
    in coded vocabulary (CS, code meanings), where they would be ordinary words."""
    if not text:
        return
    if phi is not None:
        single = True
        if vr in _DATE_VRS:
            sel, min_len = _date_kinds(kinds), 2
        elif vr in _LONG_TEXT_VRS:
            sel, min_len = kinds, 2
        else:
            sel, min_len = kinds, 3
            single = vr not in _CODED_VRS and keyword not in _CODED_KW and not _is_code_member(tag)
        rxs, lookup = phi.str_matcher(sel, min_len, single)
        for rx in rxs:
            for m in rx.finditer(text):
                # a match whose kind cannot be told is still a finding: fail closed
                yield Finding(path, lookup.get(m.group(0).casefold(), "other"))
    if vr in _DATE_VRS or vr == "UI":
        return
    if "ssn" in kinds:
        bare = vr in _LONG_TEXT_VRS or bool(_t.SSN_LABEL_RE.search(text))
        if _t.ssn_spans(text, bare=bare):
            yield Finding(path, "ssn")
    if "email" in kinds and "@" in text and _t.email_spans(text):
        yield Finding(path, "email")
    if vr in _TEXT_FREE_VRS and vr != "PN" and "phone" in kinds and _t.phone_spans(text):
        yield Finding(path, "phone")
    # Date-shaped text is a finding only in pattern mode (no harvest) and only in long free text:
    # with a harvest the patient's own dates are searched everywhere, and a date in a kept
    # attribute (SoftwareVersions build stamps, calibration notes) is not the patient's.
    if phi is None and vr in _LONG_TEXT_VRS and "date" in kinds and _t.date_spans(text):
        yield Finding(path, "date")
    if name_heuristic and vr == "PN" and "person-name" in kinds and _is_name_like(text, pseudonyms):
        yield Finding(path, "person-name")


def _elem_text(elem, raw: bool) -> str:
    if raw:
        val = getattr(elem, "value", None)
        return bytes(val).decode("latin-1") if isinstance(val, (bytes, bytearray, memoryview)) else ""
    val = elem.value
    if val is None:
        return ""
    if isinstance(val, (bytes, bytearray)):
        return bytes(val).decode("latin-1")
    if isinstance(val, (list, tuple)) or type(val).__name__ == "MultiValue":
        return "\\".join(str(v) for v in val if v is not None)
    return str(val)


def _default_conversion() -> bool:
    """Whether pydicom converts raw elements the stock way (no callback, default hooks), so
    :func:`_vr_once_converted` can predict the VR a conversion gives."""
    return (pydicom.config.data_element_callback is None
            and pydicom.hooks.hooks.raw_element_vr is pydicom.hooks.raw_element_vr)


def _vr_once_converted(raw) -> str | None:
    """The VR ``ds[tag]`` will give this element, when it is certain without converting; else None.

    Why: converting is most of the dataset search's cost, and a third of the elements have a VR
    the search skips (US, DS, FD …). pydicom's default VR hook keeps an explicit VR other than UN
    and looks an implicit one up in the dictionary (ambiguous ones, "US or SS", are never in
    ``_SKIP_VRS``). UN (may be replaced by the dictionary's VR, or a private creator's) and
    deferred values are left to the real conversion.

    A conversion can still fail (a US value of odd length, text in an FD): pydicom then raises
    (the element is searched raw, as UN) or, with ``convert_wrong_length_to_UN``, makes it a UN
    that DataElement turns back into the *dictionary's* VR, raw bytes as value. So an explicit VR
    counts only when the dictionary agrees (or does not know the tag), and a caller skips an
    element only when a search of its raw bytes as UN finds nothing.
    """
    if isinstance(raw, DataElement):
        return raw.VR  # converted already: ds[tag] returns it as is
    if raw.value is None:
        return None
    vr = raw.VR
    try:
        known = dictionary_VR(raw.tag)
    except KeyError:
        known = None
    if vr is None:
        return known
    if vr == "UN" or (known is not None and known != vr):
        return None
    return vr


_YEAR_START = re.compile(r"[0-9]{4}0101")


def is_year_start(text: str) -> bool:
    """Whether a DA value (possibly multi-valued) is all YYYY0101: what the ``year`` action writes."""
    return bool(text) and all(_YEAR_START.fullmatch(p.strip()) for p in text.split("\\"))


def find_in_dataset(ds: Dataset, phi: PhiValues | None, *, ignore_kinds: Iterable[str] = frozenset(),
                    name_heuristic: bool | None = None, _trailing: frozenset[int] = frozenset(),
                    year_tags: frozenset[int] = frozenset()) -> list[Finding]:
    """Search every element of ``ds`` at any depth, private blocks and the file meta.

    With ``phi`` the harvested values are searched (names in free-text VRs down to 2-letter tokens,
    elsewhere ≥ 3); the pattern detectors always run: SSN (dashed/spaced everywhere, a bare 9-digit
    number only in long free text or next to an SSN label), e-mail, phone and dates in free text.
    ``name_heuristic`` (default: on when ``phi`` is None) reports any PN holding a name-like value.
    Pixel data and numeric/binary VRs are not searched. Findings are PHI-free and de-duplicated.

    ``year_tags``: the DA attributes the profile truncates to the year (action ``year`` writes
    YYYY0101). In them a value YYYY0101 is not searched for the input's other dates: when the
    original date was 1 January the truncation equals it, yet it says no more than the year the
    profile keeps on purpose. Everything else (birth date, patterns) is still searched there.
    """
    kinds = ALL_KINDS - frozenset(ignore_kinds)
    year_kinds = kinds - {"date"}
    heuristic = phi is None if name_heuristic is None else name_heuristic
    pseudonyms = _own_ids(ds) if heuristic else frozenset()
    out: list[Finding] = []

    def walk(d: Dataset, prefix: str, depth: int) -> None:
        if depth > 32:
            return
        for tag in list(d.keys()):
            if is_sample_tag(tag):
                continue
            raw = d.get_item(tag, keep_deferred=True)
            if getattr(raw, "value", b"") is None and getattr(raw, "VR", None) in _BIG_BINARY_VRS:
                continue  # a deferred binary blob (> 2 MB): the byte layer searches it in place
            if shortcut and _vr_once_converted(raw) in _SKIP_VRS and (
                    isinstance(raw, DataElement) or not search(_elem_text(raw, raw=True), "UN", "", tag, "")):
                continue  # skipped once converted, and nothing to find if the conversion fails
            tag, elem, converted = _convert(d, tag)
            vr = getattr(elem, "VR", None) or "UN"
            keyword = getattr(elem, "keyword", None) if converted else None
            path = prefix + _tag_label(tag, keyword)
            if depth == 0 and tag in _trailing and not prefix:
                path = "trailing-bytes"  # junk the parser read as elements after the dataset
            if converted and vr == "SQ":
                t = Tag(tag)
                step = f"{prefix}({t.group:04X},{t.element:04X})"
                for i, item in enumerate(elem.value or ()):
                    if isinstance(item, _DATASETS):
                        walk(item, f"{step}[{i}].", depth + 1)
                continue
            if converted and vr in _SKIP_VRS:
                continue
            search_vr = vr if converted else "UN"
            kw = (keyword or "") if converted else ""
            text = _elem_text(elem, raw=not converted)
            if tag in year_tags and search_vr == "DA" and is_year_start(text):
                out.extend(search(text, search_vr, path, tag, kw, year_kinds))
            else:
                out.extend(search(text, search_vr, path, tag, kw))

    def search(text: str, vr: str, path: str, tag: int, kw: str, sel: frozenset[str] = kinds) -> list[Finding]:
        """Findings in one element's text, searched as ``vr`` for the kinds ``sel``."""
        found = []
        if tag == 0x00100030 and text.strip() and "birth-date" in sel:
            found.append(Finding(path, "birth-date"))  # PS3.15: Z in every profile, no option keeps it
        found.extend(_search_text(text, vr, path, phi, sel, heuristic, kw, pseudonyms, tag))
        return found

    shortcut = _default_conversion()
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        walk(meta, "file-meta ", 0)
    walk(ds, "", 0)
    return _dedupe(out)


# --------------------------------------------------------------------------------------------
# Raw bytes
# --------------------------------------------------------------------------------------------

_B_SSN_SEP = re.compile(
    rb"(?<![0-9a-z\-])(?<![0-9]\.)(?!000|666|9[0-9][0-9])[0-9]{3}([- ])(?!00)[0-9]{2}\1(?!0000)[0-9]{4}"
    rb"(?![0-9a-z\-]|\.[0-9])",
    re.IGNORECASE,
)
_B_SSN_BARE = re.compile(
    rb"(?<![0-9a-z\-])(?<![0-9]\.)(?!000|666|9[0-9][0-9])[0-9]{3}(?!00)[0-9]{2}(?!0000)[0-9]{4}(?![0-9a-z\-]|\.[0-9])"
)
# Cheap anchors: the regex engine scans fast for a pattern that starts with a literal or a small
# byte class, so the full check only runs around a ``-NN-`` / `` NN `` or an ``@``.
_B_SSN_ANCHORS = (re.compile(rb"-[0-9]{2}-"), re.compile(rb" [0-9]{2} "))
_B_EMAIL_ANCHOR = re.compile(rb"@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?![\w-])")
_EMAIL_LOCAL = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789._%+-")
_CHUNK = 1 << 20


def _parse_meta_spans(buf) -> list[tuple[int, int, str]]:
    """(start, end, label) of each file-meta element, read directly from the bytes (explicit VR LE)."""
    spans = []
    o, n = 132, len(buf)
    while o + 8 <= n:
        group, elem = struct.unpack_from("<HH", buf, o)
        if group != 0x0002:
            break
        vr = bytes(buf[o + 4:o + 6])
        if vr in _LONG_HDR_VRS:
            if o + 12 > n:
                break
            length, hdr = struct.unpack_from("<I", buf, o + 8)[0], 12
        else:
            length, hdr = struct.unpack_from("<H", buf, o + 6)[0], 8
        end = min(n, o + hdr + length)
        spans.append((o, end, "file-meta " + _tag_label((group << 16) | elem)))
        o = end
    return spans


class _Labeler:
    """Names the region a byte offset falls in: preamble, file meta element, dataset element
    (from the parser's offsets), or trailing bytes after the last well-formed element."""

    def __init__(self, buf, spans: list[tuple[int, str]] | None, dataset_end: int | None):
        self.has_preamble = len(buf) >= 132 and bytes(buf[128:132]) == b"DICM"
        self.meta = _parse_meta_spans(buf) if self.has_preamble else []
        self.spans = sorted(spans or [])
        self.starts = [s for s, _ in self.spans]
        self.dataset_end = dataset_end
        self.meta_end = self.meta[-1][1] if self.meta else (132 if self.has_preamble else 0)

    def __call__(self, off: int) -> str:
        if self.has_preamble and off < 132:
            return "preamble"
        for s, e, label in self.meta:
            if s <= off < e:
                return label
        if self.dataset_end is not None and off >= self.dataset_end:
            return "trailing-bytes"
        if self.spans:
            i = bisect.bisect_right(self.starts, off) - 1
            if i >= 0:
                return self.spans[i][1]
        return "dataset" if self.has_preamble or self.dataset_end is not None else "file"

    def loose_regions(self, n: int, regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Regions no parser shows (preamble, trailing bytes; the whole file when it is not
        DICOM at all), clipped to ``regions``: a bare 9-digit SSN is searched only there."""
        loose: list[tuple[int, int]] = []
        if self.has_preamble:
            loose.append((0, 128))
        if self.dataset_end is not None:
            loose.append((self.dataset_end, n))
        if not self.has_preamble and not self.spans and self.dataset_end is None:
            loose.append((0, n))
        out = []
        for a, b in loose:
            for ra, rb_ in regions:
                lo, hi = max(a, ra), min(b, rb_)
                if hi > lo:
                    out.append((lo, hi))
        return out


def _normalise_ranges(n: int, pixel_range) -> list[tuple[int, int]]:
    """One (start, end) or a list of them → sorted, clipped, non-empty ranges."""
    if not pixel_range:
        return []
    ranges = [pixel_range] if isinstance(pixel_range[0], int) else list(pixel_range)
    out = sorted((max(0, a), min(n, b)) for a, b in ranges)
    return [(a, b) for a, b in out if b > a]


def _regions(n: int, skips: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The complement of ``skips`` in [0, n)."""
    out, pos = [], 0
    for a, b in skips:
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < n:
        out.append((pos, n))
    return out


def _iter_hits(buf, start: int, end: int, rx: re.Pattern[bytes], overlap: int) -> Iterator[tuple[int, int, re.Match[bytes], bytes]]:
    """Matches of ``rx`` in ``buf[start:end]`` (ASCII-lower-cased), in 1 MiB chunks so memory stays
    bounded; a match is reported once, by the chunk its start falls in. Yields (file offset,
    chunk offset, match, chunk). A match of group ``b`` whose left boundary fails is dropped and
    the search resumes one byte later, so overlapping candidates are not lost."""
    pos = start
    ctx = 2  # lookbehind context
    while pos < end:
        stop = min(end, pos + _CHUNK)
        lo = max(start, pos - ctx)
        hi = min(end, stop + overlap + ctx)
        chunk = bytes(buf[lo:hi]).lower()
        limit = stop - lo
        m = rx.search(chunk, pos - lo)
        while m is not None and m.start() < limit:
            s = m.start()
            if m.re.groupindex.get("b") and m.lastgroup == "b" and not _t.bytes_left_ok(chunk, s):
                m = rx.search(chunk, s + 1)
                continue
            yield lo + s, s, m, chunk
            m = rx.search(chunk, max(m.end(), s + 1))
        pos = stop


def _ssn_offsets(buf, a: int, b: int) -> Iterator[int]:
    """Offsets of dashed/spaced SSNs in ``buf[a:b]``, searched in place (no copy). The scan is
    anchored on the literal ``-NN-`` / `` NN `` middle, which the regex engine finds at memchr
    speed; the full form is checked only around an anchor."""
    n = len(buf)
    for anchor in _B_SSN_ANCHORS:
        for m in anchor.finditer(buf, a, b):
            s = m.start() - 3
            if s >= a and _B_SSN_SEP.match(bytes(buf[max(0, s - 2):min(n, s + 14)]), s - max(0, s - 2)):
                yield s


def _ssn_in_samples(data, a: int, b: int) -> bool:
    """The dashed/spaced SSN pass over a pixel value, chunk by chunk. On an mmap each scanned
    chunk's pages are dropped again (MADV_DONTNEED), so a 2 GB file does not leave 2 GB resident."""
    step = 8 * _CHUNK
    pos = a
    while pos < b:
        end = min(b, pos + step)
        if next(_ssn_offsets(data, pos, min(b, end + 16)), None) is not None:
            return True
        if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            lo = pos - pos % mmap.PAGESIZE
            data.madvise(mmap.MADV_DONTNEED, lo, end - lo)
        pos = end
    return False


def find_in_bytes(data: bytes | bytearray | memoryview | mmap.mmap, phi: PhiValues | None, *,
                  ignore_kinds: Iterable[str] = frozenset(),
                  pixel_range: tuple[int, int] | list[tuple[int, int]] | None = None,
                  spans: list[tuple[int, str]] | None = None, dataset_end: int | None = None) -> list[Finding]:
    """Raw byte search of a whole written file for harvested values and SSN/e-mail patterns.

    Values are searched as ASCII/Latin-1, UTF-8 and in the input's own character sets, case-
    insensitively for ASCII letters (the bytes are lower-cased chunk by chunk) and in upper, lower
    and title case for the rest. A dashed or spaced SSN is searched everywhere outside pixel data;
    a bare 9-digit SSN only where no parser looks (preamble, trailing bytes, non-DICOM files),
    because header bytes are full of digits.

    ``pixel_range`` (start, end) — or a list of them — is the pixel-data *value* (and icon or
    other nested pixel values); it is searched for the dashed/spaced
    SSN form only (anchored on ``-NN-``, so the pass costs almost nothing), never for harvested
    values: compressed or random pixel bytes match short strings by chance, and burned-in text is
    pixels, not bytes — that is :mod:`dicomsafe.pixels`' job. ``spans`` (offset, label) and
    ``dataset_end`` come from a parse and name where a hit sits; without them hits in the dataset
    are labelled ``dataset``. Preamble and file-meta labels are derived from the bytes themselves.
    """
    kinds = ALL_KINDS - frozenset(ignore_kinds)
    n = len(data)
    labeler = _Labeler(data, spans, dataset_end)
    out: list[Finding] = []
    rxs, lookup, longest = phi.bytes_matcher(kinds) if phi is not None else ((), {}, 0)
    skips = _normalise_ranges(n, pixel_range)
    regions = _regions(n, skips)
    for a, b in regions:
        for rx in rxs:
            for off, _, m, _ in _iter_hits(data, a, b, rx, longest):
                kind = lookup.get(m.group(0))
                if kind:
                    out.append(Finding(labeler(off), kind))
        if "ssn" in kinds:
            out.extend(Finding(labeler(off), "ssn") for off in _ssn_offsets(data, a, b))
        if "email" in kinds:
            for off, s, _, chunk in _iter_hits(data, a, b, _B_EMAIL_ANCHOR, 256):
                if s > 0 and chunk[s - 1] in _EMAIL_LOCAL:
                    out.append(Finding(labeler(off), "email"))
    if "ssn" in kinds:
        for a, b in labeler.loose_regions(n, regions):
            for off, _, _, _ in _iter_hits(data, a, b, _B_SSN_BARE, 16):
                out.append(Finding(labeler(off), "ssn"))
        for a, b in skips:
            if _ssn_in_samples(data, a, b):
                out.append(Finding(labeler(a) if spans else "(7FE0,0010) PixelData", "ssn"))
    return _dedupe(out)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _raw_offsets(ds: Dataset) -> tuple[list[tuple[int, str]], int | None, list[tuple[int, int]], frozenset[int]]:
    """Element start offsets (for labels), where the well-formed dataset ends, the value ranges of
    top-level sampled data (pixels, overlays), and the tags after the end, all from the parser's
    raw elements (values are not converted here)."""
    spans: list[tuple[int, str]] = []
    dataset_end: int | None = None
    samples: list[tuple[int, int]] = []
    prev = -1
    explicit = not ds.is_implicit_VR if ds.is_implicit_VR is not None else True
    private_creators: set[tuple[int, int]] = set()
    trailing: frozenset[int] = frozenset()
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)  # never load a deferred (pixel) value
        vr = getattr(raw, "VR", None)
        hdr = 12 if explicit and vr in _LONG_HDR_VR_NAMES else 8
        tell = getattr(raw, "value_tell", None)
        if tell is None:  # already converted by the reader: it keeps the header offset instead
            file_tell = getattr(raw, "file_tell", None)
            if file_tell is None:
                continue
            tell = file_tell + hdr
        start = tell - hdr
        group, element = tag >> 16, tag & 0xFFFF
        plausible = tag > prev and (not explicit or vr in _VALID_VRS)
        if plausible and group & 1:  # private
            if 0x0010 <= element <= 0x00FF:
                private_creators.add((group, element))
            elif element >= 0x1000:
                plausible = (group, element >> 8) in private_creators
        elif plausible and element != 0:
            plausible = dictionary_has_tag(tag) or group & 0xFF00 in (0x5000, 0x6000)
        if not plausible:
            dataset_end = start
            keys = list(ds.keys())
            trailing = frozenset(keys[keys.index(tag):])
            break
        prev = tag
        spans.append((start, _tag_label(tag)))
        if is_sample_tag(tag):
            length = getattr(raw, "length", 0)
            if length == 0xFFFFFFFF:
                value = getattr(raw, "value", None)
                length = len(value) if value is not None else 0
            samples.append((tell, tell + length))
    return spans, dataset_end, samples, trailing


def _nested_pixel_values(ds: Dataset) -> list[tuple[str, bytes, int]]:
    """(top-level label, first bytes) of pixel values nested in sequences (icons, overlays in
    items): their offsets are relative to the enclosing sequence, so they are found by content."""
    found: list[tuple[str, bytes, int]] = []

    def walk(d: Dataset, top: str, depth: int) -> None:
        if depth > 8:
            return
        for tag in list(d.keys()):
            raw = d.get_item(tag, keep_deferred=True)
            if is_sample_tag(tag) and depth > 0:
                value = getattr(raw, "value", None)
                if isinstance(value, (bytes, bytearray)) and len(value) >= 64:
                    found.append((top, bytes(value[:64]), len(value)))
                continue
            if getattr(raw, "VR", None) == "SQ":
                try:
                    items = d[tag].value
                except Exception:
                    continue
                for item in items or ():
                    if isinstance(item, _DATASETS):
                        walk(item, top or _tag_label(tag), depth + 1)

    walk(ds, "", 0)
    return found


def _locate(buf, spans: list[tuple[int, str]], nested) -> list[tuple[int, int]]:
    """Byte ranges of nested pixel values, searched inside their top-level element's span."""
    out = []
    starts = sorted(spans)
    for label, head, length in nested:
        for i, (s, lab) in enumerate(starts):
            if lab == label:
                e = starts[i + 1][0] if i + 1 < len(starts) else len(buf)
                at = buf.find(head, s, e)
                if at >= 0:
                    out.append((at, at + length))
                break
    return out


def verify_file(path: str | os.PathLike, phi: PhiValues | None, *, ignore_kinds: Iterable[str] = frozenset(),
                pixel_range: tuple[int, int] | list[tuple[int, int]] | None = None,
                year_tags: frozenset[int] = frozenset()) -> list[Finding]:
    """Parse ``path`` with pydicom and search it, then search its raw bytes (fail closed).

    ``pixel_range`` defaults to the value ranges of sampled data found by the parse (pixel data,
    overlay planes, waveforms, icons and other nested pixel data); pass ``(0, 0)`` to search
    every byte. A file pydicom cannot parse yields ``Finding("file", "unreadable")``
    (it cannot be proven clean) plus whatever the byte search finds.

    ``year_tags`` as in :func:`find_in_dataset`. The byte search labels a hit by its top-level
    element, so there a ``date`` hit is set aside only in a *top-level* year-truncated element
    holding YYYY0101 (the hit can only be that value: the element holds nothing else); inside a
    sequence it stays a finding (fail closed).
    """
    path = Path(path)
    findings: list[Finding] = []
    year_labels: frozenset[str] = frozenset()
    spans: list[tuple[int, str]] | None = None
    dataset_end: int | None = None
    auto_pixel: list[tuple[int, int]] = []
    nested_pixels: list[tuple[str, bytes, int]] = []
    # pydicom warnings can quote element values, and nothing of a value may reach a log: the
    # parse and the (lazy) element conversions run with warnings silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, defer_size="2 MB")
            if len(ds) == 0:
                raise ValueError("empty dataset")
            spans, dataset_end, auto_pixel, trailing = _raw_offsets(ds)
            nested_pixels = _nested_pixel_values(ds)
            found, year_labels = dataset_layer(ds, phi, ignore_kinds=ignore_kinds, year_tags=year_tags,
                                               trailing=trailing)
            findings.extend(found)
        except Exception as exc:  # any parse failure: unprovable, so a finding (type only, no text)
            log.debug("verify: parse failed (%s)", type(exc).__name__)
            if "unreadable" not in set(ignore_kinds):
                findings.append(Finding("file", "unreadable"))
    size = path.stat().st_size
    if size:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if pixel_range is not None:
                skips = pixel_range
            else:
                skips = list(auto_pixel) + _locate(mm, spans or [], nested_pixels)
            findings.extend(bytes_layer(mm, phi, ignore_kinds=ignore_kinds, skips=skips, spans=spans,
                                        dataset_end=dataset_end, year_labels=year_labels))
    return _dedupe(findings)


def dataset_layer(ds, phi: PhiValues | None, *, ignore_kinds: Iterable[str], year_tags: frozenset[int],
                  trailing: frozenset[int] = frozenset()) -> tuple[list[Finding], frozenset[str]]:
    """The dataset layer of :func:`verify_file` on a parsed output (a pydicom Dataset, or the raw
    lane's): its findings, and the byte-layer labels of the top-level year-truncated dates that
    hold YYYY0101 (for :func:`bytes_layer`)."""
    found = find_in_dataset(ds, phi, ignore_kinds=ignore_kinds, _trailing=trailing, year_tags=year_tags)
    return found, _year_start_labels(ds, year_tags, trailing)


def bytes_layer(buf, phi: PhiValues | None, *, ignore_kinds: Iterable[str], skips, spans,
                dataset_end: int | None, year_labels: frozenset[str]) -> list[Finding]:
    """The byte layer of :func:`verify_file`: :func:`find_in_bytes`, less the ``date`` hits inside
    a top-level year-truncated element holding YYYY0101 (``year_labels``)."""
    return [f for f in find_in_bytes(buf, phi, ignore_kinds=ignore_kinds, pixel_range=skips, spans=spans,
                                     dataset_end=dataset_end)
            if not (f.kind == "date" and f.path in year_labels)]


def _year_start_labels(ds: Dataset, year_tags: frozenset[int], trailing: frozenset[int]) -> frozenset[str]:
    """Byte-search labels of the top-level year-truncated DA elements that hold YYYY0101."""
    out = set()
    for tag in year_tags:
        if tag in trailing or tag not in ds:
            continue
        try:
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - unconvertible: not set aside
            continue
        if elem.VR == "DA" and is_year_start(_elem_text(elem, raw=False)):
            out.add(_tag_label(tag))
    return frozenset(out)


#: Profile options whose retained values legitimately stay in the output, and the finding kinds
#: verification must therefore ignore. retain-longitudinal-modified-dates ignores nothing: the
#: original dates must be gone (shifted); only full-date retention keeps them.
_OPTION_IGNORES = {
    "retain-uids": frozenset({"uid"}),
    "retain-device-identity": frozenset({"device"}),
    "retain-institution-identity": frozenset({"institution"}),
    "retain-longitudinal-full-dates": frozenset({"date"}),
}


def ignore_kinds_for_options(options: Iterable[str]) -> frozenset[str]:
    """Finding kinds a profile with these PS3.15 options keeps on purpose (pass as ignore_kinds)."""
    out: set[str] = set()
    for opt in options:
        out |= _OPTION_IGNORES.get(opt, frozenset())
    return frozenset(out)


from . import safelog as _safelog  # noqa: E402

_safelog.quiet_third_party()  # pydicom is imported now: switch its value-quoting validation off
