"""A small, realistic, *identified* DICOM corpus with obviously fake PHI, built offline.

Why: every claim dicomsafe makes ("no planted value survives", "studies stay grouped", "references
still resolve", "bad files are quarantined, not lost") needs ground truth. This module takes the
DICOM files that ship inside the pydicom wheel (CT, MR, US, NM, SR, RT, SEG, ECG, multi-frame,
JPEG, JPEG 2000, RLE, deflate, big-endian, implicit VR, non-Latin character sets, overlays,
palette, YBR), regroups them into fake patients / studies / series with fresh UIDs, and plants
distinctive fake identifiers in every place PHI hides in real archives: standard attributes,
nested sequences, SR content trees, private blocks, overlay text, trailing padding, the preamble,
directory and file names, and stray non-DICOM files. It returns the list of planted values (and
the byte forms in which they were written) so tests can search output bytes and paths for them.

Everything is deterministic: the same ``seed`` gives byte-identical files at the same relative
paths. No network access: only files present in the installed pydicom package are used.

Also here: :func:`build_ct_series` and :func:`build_multiframe` (bulk data for benchmarks) and
:func:`describe_changes` (the before/after table printed by ``scripts/demo``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import random
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pydicom
from pydicom.charset import convert_encodings, encode_string
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

log = logging.getLogger(__name__)

__all__ = [
    "Corpus",
    "Identity",
    "Reference",
    "build_corpus",
    "build_ct_series",
    "build_multiframe",
    "describe_changes",
    "format_table",
    "assert_no_planted",
    "find_planted",
    "match_outputs",
    "pydicom_test_files",
]

#: Root of every UID defined by the DICOM standard (SOP classes, transfer syntaxes, coding schemes):
#: never an instance identifier, so never remapped.
STANDARD_UID_ROOT = "1.2.840.10008."

#: Private creator of the planted private block. Deliberately not a real vendor's creator, so no
#: safe-private list can match it: everything under it must be removed.
PRIVATE_CREATOR = "ZZFAKE_VENDOR PHI 1.0"
PRIVATE_GROUP = 0x0033

# ---------------------------------------------------------------------------------------------
# Fake identities
# ---------------------------------------------------------------------------------------------

# Name parts chosen to be absurd: no real archive, dictionary or pydicom test file contains them,
# so a byte search for them has no false positives.
_FAMILY_HEAD = ["Zyx", "Qorv", "Blix", "Vrem", "Xanth", "Glorm", "Kwyl", "Drezz", "Yulm", "Phlog"]
_FAMILY_TAIL = ["wortham", "andelby", "trudeck", "mottlew", "quisten", "stanofel", "fiddock"]
_GIVEN_HEAD = ["Quin", "Ysol", "Ophir", "Thadd", "Brun", "Eldw", "Mirab", "Zeph", "Cosim"]
_GIVEN_TAIL = ["tavius", "dellia", "andrix", "wynetta", "orixa", "ethrana"]
_STREETS = ["Vexmoor Crescent", "Quillbury Lane", "Snorkwell Row", "Grimblefen Close", "Oxtrabble Way"]
_TOWNS = ["Plumbrook-on-Zed", "Fakeshire Parva", "Lower Nowhereton", "Mockbury Vale", "Dummyford"]

# Non-Latin fake names per script: (families, givens). Combinations are sampled without
# replacement, so every patient has distinct names in every script.
_SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "ja-kanji": (["鷲鴨", "梟鷺", "鷹燕", "鳩雀", "鶯鷲", "鷺梟"], ["霞霧", "椿楓", "柊萩", "葵菫", "蓮霞", "楓椿"]),
    "ja-kana": (["ざんき", "ぱぴぷ", "ぽぺぷ", "ずぞぜ", "ぴぽぱ", "ぜずぞ"], ["くいん", "ゆるみ", "ねほれ", "ぬけさ", "みゆる", "ほねれ"]),
    "ko": (["남궁", "선우", "제갈", "황보", "독고", "사공"], ["길동", "철수", "영희", "민준", "서연", "하늘"]),
    "zh": (["欧阳", "司马", "诸葛", "上官", "夏侯", "东方"], ["霁雯", "翎翾", "琰瑄", "璎珞", "翊骞", "澜漪"]),
    "ru": (["Зыксвортам", "Кворвандель", "Бликструдек", "Времмотлев", "Ксантквистен", "Гломстанофель"],
           ["Квинтавий", "Исольделия", "Офирандрикс", "Таддвинетта", "Брунориса", "Элдветрана"]),
    "el": (["Ζυξβορθαμ", "Κορβανδελμπι", "Μπλιξτρουντεκ", "Βρεμμοτλεβ", "Ξανθκουιστεν", "Γλορμστανοφελ"],
           ["Κουινταβιος", "Υσολδελια", "Οφιρανδριξ", "Θαδδουινετα", "Μπρουνοριξα", "Ελντβεθρανα"]),
    "ar": (["زيكسورثام", "قورفاندل", "بليكستروديك", "فريموتلو", "زانثكويستن", "غلورمستانوفل"],
           ["كوينتافيوس", "يسولديليا", "أوفيراندريكس", "ثادوينيتا", "برونوريكسا", "إلدويثرانا"]),
    "he": (["זיקסוורתם", "קורבנדלבי", "בליקסטרודק", "ורמוטלב", "קסנתקוויסטן", "גלורמסטנופל"],
           ["קווינטביוס", "יסולדליה", "אופירנדריקס", "תדווינטה", "ברונוריקסה", "אלדווטרנה"]),
}
MAX_PATIENTS = 6


@dataclass(frozen=True)
class Identity:
    """One fake patient. Every string here is planted somewhere in the corpus."""

    index: int
    family: str
    given: str
    patient_id: str
    birth_date: str
    sex: str
    address: str
    phone: str
    ssn: str
    other_id: str
    other_issuer: str
    physician: str
    requested_procedure_id: str
    scripts: dict[str, tuple[str, str]]  # script -> (family, given)

    @property
    def name(self) -> str:
        """The PN value (Latin alphabetic group)."""
        return f"{self.family}^{self.given}"

    @property
    def ssn_digits(self) -> str:
        return self.ssn.replace("-", "")

    @property
    def email(self) -> str:
        return f"{self.given.lower()}.{self.family.lower()}@fakeshire.invalid"

    @property
    def birth_date_written(self) -> str:
        """The birth date as a person writes it (DD/MM/YYYY), for free text."""
        d = self.birth_date
        return f"{d[6:8]}/{d[4:6]}/{d[0:4]}"

    @property
    def latin1_family(self) -> str:
        """Family name with Latin-1 diacritics, for the ISO_IR 100 charset files."""
        return self.family.replace("o", "ö", 1).replace("a", "å", 1)

    @property
    def latin1_given(self) -> str:
        return self.given.replace("i", "ï", 1).replace("e", "é", 1)


@dataclass(frozen=True)
class Reference:
    """``source`` refers to ``target`` (by SOP Instance UID) at ``where`` (a keyword path)."""

    source: Path
    target: Path
    where: str


@dataclass
class Corpus:
    """What :func:`build_corpus` wrote, and the ground truth tests need.

    - ``files``: every file written under ``root`` (DICOM, broken DICOM and stray files), sorted.
    - ``planted``: every planted PHI string (each ≥ 4 characters, unique, absurd enough to search).
    - ``planted_by_kind``: the same values grouped by kind ("name", "patient_id", "ssn", ...).
    - ``needles``: value -> the byte forms in which it was written (UTF-8 always included; plus
      e.g. ISO 8859-5 or ISO 2022 bytes for the non-Latin names). Search output for all of them.
    - ``expected``: path -> "written" | "quarantined" | "skipped" (the de-identifier's outcome).
    - ``studies`` / ``series``: original Study/Series Instance UID -> the *written* files in it.
    - ``features``: path -> tags such as "big-endian", "sr", "polyglot-pe", "truncated-header".
    - ``references``: cross-file references (SR/SEG/RT -> image/plan) that must still resolve.
    - ``uids``: every instance UID the corpus assigned (none may survive de-identification).
    """

    root: Path
    seed: int
    files: list[Path] = field(default_factory=list)
    planted: list[str] = field(default_factory=list)
    planted_by_kind: dict[str, list[str]] = field(default_factory=dict)
    needles: dict[str, list[bytes]] = field(default_factory=dict)
    expected: dict[Path, str] = field(default_factory=dict)
    studies: dict[str, list[Path]] = field(default_factory=dict)
    series: dict[str, list[Path]] = field(default_factory=dict)
    features: dict[Path, list[str]] = field(default_factory=dict)
    references: list[Reference] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    patients: list[Identity] = field(default_factory=list)

    def with_outcome(self, outcome: str) -> list[Path]:
        """Files whose expected outcome is ``outcome``."""
        return [p for p in self.files if self.expected[p] == outcome]

    def with_feature(self, feature: str) -> list[Path]:
        return [p for p in self.files if feature in self.features.get(p, [])]

    def snapshot(self) -> dict[Path, str]:
        """SHA-256 of every input file: compare before and after a run ("inputs never modified")."""
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.files}

    def all_needles(self) -> list[bytes]:
        """Every byte form of every planted value, longest first."""
        out = {n for forms in self.needles.values() for n in forms}
        return sorted(out, key=lambda b: (-len(b), b))

    def to_json(self) -> dict:
        """A JSON-able manifest (paths relative to ``root``; bytes as hex)."""
        rel = lambda p: p.relative_to(self.root).as_posix()  # noqa: E731
        return {
            "seed": self.seed,
            "files": [rel(p) for p in self.files],
            "planted": self.planted,
            "planted_by_kind": self.planted_by_kind,
            "needles": {k: [b.hex() for b in v] for k, v in self.needles.items()},
            "expected": {rel(p): v for p, v in self.expected.items()},
            "studies": {k: [rel(p) for p in v] for k, v in self.studies.items()},
            "series": {k: [rel(p) for p in v] for k, v in self.series.items()},
            "features": {rel(p): v for p, v in self.features.items()},
            "references": [[rel(r.source), rel(r.target), r.where] for r in self.references],
            "uids": self.uids,
        }

    @classmethod
    def from_json(cls, root: Path, data: dict) -> "Corpus":
        root = Path(root)
        ab = lambda s: root / s  # noqa: E731
        return cls(
            root=root,
            seed=data["seed"],
            files=[ab(s) for s in data["files"]],
            planted=list(data["planted"]),
            planted_by_kind={k: list(v) for k, v in data["planted_by_kind"].items()},
            needles={k: [bytes.fromhex(h) for h in v] for k, v in data["needles"].items()},
            expected={ab(k): v for k, v in data["expected"].items()},
            studies={k: [ab(s) for s in v] for k, v in data["studies"].items()},
            series={k: [ab(s) for s in v] for k, v in data["series"].items()},
            features={ab(k): list(v) for k, v in data["features"].items()},
            references=[Reference(ab(a), ab(b), w) for a, b, w in data["references"]],
            uids=list(data["uids"]),
        )


# ---------------------------------------------------------------------------------------------
# Deterministic helpers
# ---------------------------------------------------------------------------------------------


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()


def make_uid(seed: int, *parts: object) -> str:
    """A deterministic ``2.25.`` UID (ISO/IEC 9834-8 form) for a corpus object."""
    return "2.25." + str(int.from_bytes(_digest("dicomsafe-corpus-uid", seed, *parts)[:16], "big"))


def _make_identities(seed: int, patients: int) -> list[Identity]:
    if not 1 <= patients <= MAX_PATIENTS:
        raise ValueError(f"patients must be between 1 and {MAX_PATIENTS}")
    rng = random.Random(f"dicomsafe-corpus:{seed}")
    latin = [(h + t, gh + gt) for h in _FAMILY_HEAD for t in _FAMILY_TAIL for gh in _GIVEN_HEAD for gt in _GIVEN_TAIL]
    picks = rng.sample(range(len(latin)), patients * 2)  # patients + one referring physician each
    # distinct family names too: retry the rare collisions deterministically
    names: list[tuple[str, str]] = []
    used_family: set[str] = set()
    pool = iter(rng.sample(range(len(latin)), len(latin)))
    for i in picks:
        fam, giv = latin[i]
        while fam in used_family or giv in {g for _, g in names}:
            fam, giv = latin[next(pool)]
        used_family.add(fam)
        names.append((fam, giv))
    script_picks = {s: rng.sample(range(len(v[0])), patients) for s, v in _SCRIPTS.items()}
    out = []
    ssns = ["078-05-1120", "219-09-9999", "457-55-5462"]
    for i in range(patients):
        fam, giv = names[2 * i]
        pfam, pgiv = names[2 * i + 1]
        ssn = ssns[i] if i < len(ssns) else f"0{rng.randint(10, 99)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
        out.append(
            Identity(
                index=i,
                family=fam,
                given=giv,
                patient_id=f"ZQ{rng.randint(1000000, 9999999)}",
                birth_date=f"19{rng.randint(30, 69)}{rng.randint(1, 12):02d}{rng.randint(10, 28):02d}",
                sex=rng.choice(["F", "M"]),
                address=f"{rng.randint(11, 99)} {rng.choice(_STREETS)}, {rng.choice(_TOWNS)} ZZ{i}9 {rng.randint(1, 9)}QX",
                phone=f"555-01{rng.randint(0, 9)}-{rng.randint(1000, 9999)}",
                ssn=ssn,
                other_id=f"ZALT{rng.randint(100000, 999999)}",
                other_issuer=f"{rng.choice(_TOWNS).split()[0]} Quarantel Infirmary",
                physician=f"{pfam}^{pgiv}",
                requested_procedure_id=f"ZRP{rng.randint(100000, 999999)}",
                scripts={s: (_SCRIPTS[s][0][script_picks[s][i]], _SCRIPTS[s][1][script_picks[s][i]]) for s in _SCRIPTS},
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Source files and the study plan
# ---------------------------------------------------------------------------------------------

#: pydicom test file -> features it brings. Only files pydicom reads completely.
#: (study key, modality label, series list); each series is a list of (source, features).
_PLAN: list[tuple[str, str, str, list[list[tuple[str, tuple[str, ...]]]]]] = [
    ("ct", "CT", "CT CHEST W CONTRAST", [
        [("CT_small.dcm", ("explicit-le", "private-gems"))],
        [("693_J2KI.dcm", ("jpeg2000",))],
        [("test-SR.dcm", ("sr", "sr-comprehensive"))],
        [("liver_1frame.dcm", ("seg",))],
    ]),
    ("mr", "MR", "MR BRAIN WO", [
        [("MR_small.dcm", ("explicit-le",)), ("MR_small_implicit.dcm", ("implicit-vr",)),
         ("MR_small_bigendian.dcm", ("big-endian",))],
        [("MR_small_RLE.dcm", ("rle",)), ("MR_small_jp2klossless.dcm", ("jpeg2000",))],
        [("examples_overlay.dcm", ("overlay",))],
        [("reportsi.dcm", ("sr",))],
    ]),
    ("us", "US", "US ABDOMEN COMPLETE", [
        [("examples_palette.dcm", ("palette",)), ("examples_rgb_color.dcm", ("rgb",))],
        [("examples_ybr_color.dcm", ("ybr", "multiframe", "jpeg"))],
        [("ExplVR_BigEnd.dcm", ("big-endian",)), ("examples_jpeg2k.dcm", ("jpeg2000",))],
    ]),
    ("nm", "NM", "NM BONE SCAN", [
        [("JPEG-lossy.dcm", ("jpeg",))],
        [("JPEG2000.dcm", ("jpeg2000",))],
    ]),
    ("rt", "RT", "RT PLANNING", [
        [("rtplan.dcm", ("rt", "implicit-vr"))],
        [("rtstruct.dcm", ("rt", "implicit-vr"))],
        [("rtdose.dcm", ("rt", "multiframe", "implicit-vr"))],
    ]),
    ("ecg", "ECG", "RESTING ECG", [
        [("waveform_ecg.dcm", ("ecg", "waveform"))],
    ]),
    ("sc", "OT", "SECONDARY CAPTURE", [
        [("SC_rgb_rle_2frame.dcm", ("rle", "multiframe", "rgb")),
         ("SC_ybr_full_422_uncompressed.dcm", ("ybr",))],
        [("image_dfl.dcm", ("deflate",))],
    ]),
]

#: charset file -> (script used for the name, PN layout). Spread over the patients.
_CHARSET_FILES: list[tuple[str, str]] = [
    ("chrH31.dcm", "ja"),
    ("chrX1.dcm", "zh-utf8"),
    ("chrRuss.dcm", "ru"),
    ("chrJapMulti.dcm", "ja"),
    ("chrKoreanMulti.dcm", "ko"),
    ("chrGreek.dcm", "el"),
    ("chrX2.dcm", "zh"),
    ("chrArab.dcm", "ar"),
    ("chrHbrw.dcm", "he"),
    ("chrFren.dcm", "latin1"),
    ("chrI2.dcm", "ko"),
    ("chrGerm.dcm", "latin1"),
]


def _source_path(name: str) -> Path:
    """Resolve a file bundled with pydicom, never downloading."""
    if name.startswith("chr"):
        found = get_charset_files(name)
        if found:
            return Path(found[0])
    else:
        path = get_testdata_file(name, download=False)
        if path:
            return Path(path)
    raise FileNotFoundError(f"pydicom test file {name} is not installed")


def pydicom_test_files() -> list[Path]:
    """Every file shipped in pydicom's test_files and charset_files directories (recursively)."""
    root = Path(pydicom.data.__file__).parent
    out = []
    for sub in ("test_files", "charset_files"):
        out.extend(p for p in (root / sub).rglob("*") if p.is_file() and p.name != "__init__.py")
    return sorted(out)


def _load(name: str) -> Dataset:
    ds = pydicom.dcmread(_source_path(name), force=True)
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        # e.g. rtstruct.dcm: a bare dataset (implicit VR little endian) without a Part 10 header
        meta = FileMetaDataset()
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta = meta
    return ds


# ---------------------------------------------------------------------------------------------
# Planting
# ---------------------------------------------------------------------------------------------


class _Planter:
    """Collects planted values with their kinds and the exact byte forms they were written in."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[str]] = {}
        self.needles: dict[str, set[bytes]] = {}
        self.pending: dict[str, set[bytes]] = {}

    def add(self, kind: str, value: str, *forms: bytes) -> str:
        if len(value) < 4:
            raise ValueError("planted values must be at least 4 characters")
        lst = self.by_kind.setdefault(kind, [])
        if value not in lst:
            lst.append(value)
        self.needles.setdefault(value, {value.encode("utf-8")}).update(forms)
        return value

    def _candidates(self, value: str, encodings: list[str]) -> set[bytes]:
        out = set()
        for codec in encodings:
            try:
                out.add(value.encode(codec))
            except (UnicodeError, LookupError):
                pass
        out.add(encode_string(value, encodings))
        return out

    def add_encoded(self, kind: str, value: str, charsets: Sequence[str] | str) -> str:
        """Plant a PN group (``Family^Given``) written in ``charsets`` (SpecificCharacterSet).

        The byte form is confirmed against the written file (:meth:`confirm`): character-set
        encoders differ in where they put ISO 2022 escapes, and a needle that is not really in
        the file would make every leak test pass vacuously.
        """
        encodings = convert_encodings(charsets)
        cands = self._candidates(value, encodings)
        cands.add(b"^".join(encode_string(part, encodings) for part in value.split("^")))
        self.pending.setdefault(value, set()).update(cands)
        return self.add(kind, value)

    def add_text(self, kind: str, value: str, charsets: Sequence[str] | str, prefix: str) -> str:
        """Plant ``value`` in free text after ``prefix``, written in ``charsets`` (confirmed later)."""
        encodings = convert_encodings(charsets)
        cands = self._candidates(value, encodings)
        head, whole = encode_string(prefix, encodings), encode_string(prefix + value, encodings)
        if whole.startswith(head):
            cands.add(whole[len(head):])
        self.pending.setdefault(value, set()).update(cands)
        return self.add(kind, value)

    def confirm(self, data: bytes) -> None:
        """Keep the pending byte forms that really occur in ``data`` (the file just written)."""
        for value, cands in self.pending.items():
            found = {c for c in cands if c in data}
            if not found:
                raise RuntimeError(f"a planted {len(value)}-character value was not written in any expected form")
            self.needles[value].update(found)
        self.pending.clear()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue = value
    c.CodingSchemeDesignator = scheme
    c.CodeMeaning = meaning
    return c


def _remap_uids(ds: Dataset, seed: int, depth: int = 0) -> None:
    """Replace every instance UID at any depth by a deterministic corpus UID.

    Cross-file references inside pydicom's files point to files we don't ship; remapping them
    keeps them consistent among copies and guarantees no pydicom UID leaks into "ground truth".
    """
    for elem in ds:
        if elem.VR == "UI" and elem.value and elem.keyword.endswith("ClassUID"):
            continue  # a class names a kind of object, not one object: real files keep it
        if elem.VR == "UI" and elem.value:
            vals = elem.value if elem.VM > 1 else [elem.value]
            new = [v if str(v).startswith(STANDARD_UID_ROOT) else make_uid(seed, "remap", v) for v in vals]
            elem.value = new if elem.VM > 1 else new[0]
        elif elem.VR == "SQ":
            for item in elem.value:
                _remap_uids(item, seed, depth + 1)


def _private_block(ds: Dataset, who: Identity, nested_text: str) -> None:
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", who.name)
    block.add_new(0x11, "LT", f"MRN {who.patient_id}; DOB {who.birth_date}; tel {who.phone}")
    item = Dataset()
    inner = item.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    inner.add_new(0x10, "LO", who.other_id)
    inner.add_new(0x12, "LT", nested_text)
    block.add_new(0x20, "SQ", DicomSequence([item]))


def _sr_findings(who: Identity, target_class: str, target_sop: str) -> Dataset:
    """A CONTAINER whose TEXT / PNAME / DATE / IMAGE items sit at depth 2 and 3."""

    def item(rel: str, vtype: str, code: Dataset, **values: object) -> Dataset:
        it = Dataset()
        it.RelationshipType = rel
        it.ValueType = vtype
        it.ConceptNameCodeSequence = [code]
        for k, v in values.items():
            setattr(it, k, v)
        return it

    text = item("CONTAINS", "TEXT", _code("121071", "DCM", "Finding"),
                TextValue=f"{who.given} {who.family} (MRN {who.patient_id}) seen for follow-up; "
                          f"lesion stable. SSN on file {who.ssn}.")
    pname = item("CONTAINS", "PNAME", _code("121008", "DCM", "Person Observer Name"), PersonName=who.name)
    date = item("CONTAINS", "DATE", _code("121007", "DCM", "Birth date"), Date=who.birth_date)
    image = item("CONTAINS", "IMAGE", _code("121112", "DCM", "Source of Measurement"))
    ref = Dataset()
    ref.ReferencedSOPClassUID = target_class
    ref.ReferencedSOPInstanceUID = target_sop
    image.ReferencedSOPSequence = [ref]
    deeper = item("CONTAINS", "TEXT", _code("121106", "DCM", "Comment"),
                  TextValue=f"Discussed with {who.family} (born {who.birth_date_written}), phone {who.phone}.")
    sub = item("CONTAINS", "CONTAINER", _code("121064", "DCM", "Current Procedure Descriptions"),
               ContinuityOfContent="SEPARATE", ContentSequence=[deeper])
    box = item("CONTAINS", "CONTAINER", _code("121070", "DCM", "Findings"),
               ContinuityOfContent="SEPARATE", ContentSequence=[text, pname, date, image, sub])
    return box


def _evidence(study_uid: str, series_uid: str, sop_class: str, sop_uid: str) -> Dataset:
    sop = Dataset()
    sop.ReferencedSOPClassUID = sop_class
    sop.ReferencedSOPInstanceUID = sop_uid
    ser = Dataset()
    ser.SeriesInstanceUID = series_uid
    ser.ReferencedSOPSequence = [sop]
    st = Dataset()
    st.StudyInstanceUID = study_uid
    st.ReferencedSeriesSequence = [ser]
    return st


def _pn_for_charset(who: Identity, script: str) -> tuple[str, list[str]]:
    """PN value for a charset file and the groups (values ≥ 4 chars) planted by it."""
    s = who.scripts
    if script == "ja":
        kan = "^".join(s["ja-kanji"])
        kana = "^".join(s["ja-kana"])
        return f"{who.name}={kan}={kana}", [kan, kana]
    if script == "ko":
        g = "^".join(s["ko"])
        return f"{who.name}={g}", [g]
    if script in ("zh", "zh-utf8"):
        g = "^".join(s["zh"])
        return f"{who.name}={g}", [g]
    if script == "latin1":
        g = f"{who.latin1_family}^{who.latin1_given}"
        return g, [g]
    g = "^".join(s[script])
    return g, [g]


def _write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _preamble(kind: str, who: Identity) -> bytes:
    if kind == "pe":
        # "MZ" + DOS stub text: what a Windows PE polyglot (CVE-2019-11687) looks like
        body = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"This program cannot be run in DOS mode. "
        body += f"{who.name} {who.patient_id}".encode()
    elif kind == "name":
        body = f"SCANNER EXPORT {who.name} {who.patient_id} {who.birth_date}".encode()
    else:
        return bytes(128)
    return body[:128].ljust(128, b"\0")


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log lines about its own odd test files while we build."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def build_corpus(dst: Path, *, seed: int = 0, patients: int = 3, hostile: bool = False) -> Corpus:
    """Write the identified corpus under ``dst`` (created; must be empty or absent).

    Layout: ``dst/<Family>^<Given>_<PatientID>/<StudyDate>_<Mod>_<Accession>/<PatientID>_<Mod>_<n>.dcm``
    plus stray files. See :class:`Corpus` for what is returned. ``hostile=True`` adds the
    file-system oddities of issue 9 (see :func:`_add_hostile_files`).
    """
    with _quiet_pydicom():
        return _build_corpus(Path(dst), seed=seed, patients=patients, hostile=hostile)


def _build_corpus(dst: Path, *, seed: int, patients: int, hostile: bool) -> Corpus:
    """The work of :func:`build_corpus`, with pydicom quiet."""
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError("corpus destination must be empty")
    dst.mkdir(parents=True, exist_ok=True)
    ids = _make_identities(seed, patients)
    rng = random.Random(f"dicomsafe-corpus-layout:{seed}")
    corpus = Corpus(root=dst, seed=seed, patients=ids)
    planter = _Planter()
    institution = planter.add("institution", f"{_TOWNS[seed % len(_TOWNS)].split()[0]} Quarantel Hospital")
    inst_address = planter.add("address", f"1 Nowhere Causeway, {_TOWNS[(seed + 2) % len(_TOWNS)]}")
    for who in ids:
        planter.add("name", who.family)
        planter.add("name", who.given)
        planter.add("name", who.name)
        planter.add("name", f"{who.given} {who.family}")
        planter.add("patient_id", who.patient_id)
        planter.add("birth_date", who.birth_date)
        planter.add("address", who.address)
        planter.add("phone", who.phone)
        planter.add("ssn", who.ssn)
        planter.add("ssn", who.ssn_digits)
        planter.add("other_id", who.other_id)
        planter.add("other_id", who.other_issuer)
        planter.add("request_id", who.requested_procedure_id)
        planter.add("physician", who.physician)
        planter.add("email", who.email)
        planter.add("name", who.family.upper())  # names in free text come in every case
        planter.add("birth_date", who.birth_date_written)

    # Studies: plan entries round-robin over patients, plus one charset study per patient.
    counter = 0
    file_no: dict[int, int] = {}
    pending_refs: list[tuple[Path, str, str]] = []  # (source path, target key, where)
    sop_of: dict[str, tuple[str, str, Path]] = {}  # key "study/series/i" -> (class, uid, path)
    studies_plan: list[tuple[Identity, str, str, str, list[list[tuple[str, tuple[str, ...]]]]]] = []
    for si, (key, mod, desc, series) in enumerate(_PLAN):
        studies_plan.append((ids[si % patients], key, mod, desc, series))
    for pi, who in enumerate(ids):
        mine = [(f, (script, "charset")) for i, (f, script) in enumerate(_CHARSET_FILES) if i % patients == pi]
        if mine:
            studies_plan.append((who, f"charset{pi}", "OT", "OUTSIDE FILMS", [[m] for m in mine]))

    written: list[tuple[Path, Dataset, Identity]] = []
    for st_no, (who, key, mod, desc, series_list) in enumerate(studies_plan):
        study_uid = make_uid(seed, "study", st_no)
        for_uid = make_uid(seed, "for", st_no)
        accession = planter.add("accession", f"ZA{rng.randint(1000000, 9999999)}")
        study_date = f"20{rng.randint(15, 24)}{rng.randint(1, 12):02d}{rng.randint(10, 28):02d}"
        study_time = f"{rng.randint(7, 18):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
        study_dir = dst / f"{who.name}_{who.patient_id}" / f"{study_date}_{mod}_{accession}"
        corpus.uids += [study_uid, for_uid]
        for se_no, series in enumerate(series_list):
            series_uid = make_uid(seed, "series", st_no, se_no)
            corpus.uids.append(series_uid)
            for in_no, (src_name, feats) in enumerate(series):
                ds = _load(src_name)
                _remap_uids(ds, seed)
                charset_script = feats[0] if "charset" in feats else None
                feats = tuple(f for f in feats if f not in _SCRIPTS and f not in ("ja", "ko", "zh", "zh-utf8", "latin1"))
                sop_uid = make_uid(seed, "sop", st_no, se_no, in_no)
                corpus.uids.append(sop_uid)
                counter += 1
                n = file_no[who.index] = file_no.get(who.index, 0) + 1
                # a few files without the .dcm extension, as PACS exports often are
                fname = f"{who.patient_id}_{mod}_{n:03d}.dcm" if n % 5 else f"IM{who.patient_id}{n:03d}"
                path = study_dir / f"S{se_no + 1:02d}_{(ds.get('SeriesDescription') or mod)[:12].strip().replace(' ', '_').replace('/', '_')}" / fname
                extra: list[str] = list(feats)

                # identity --------------------------------------------------------------
                if charset_script:
                    pn, groups = _pn_for_charset(who, charset_script)
                    charsets = ds.get("SpecificCharacterSet", "ISO_IR 6")
                    for g in groups:
                        planter.add_encoded("name_nonlatin", g, charsets)
                    ds.PatientName = pn
                    extra.append(f"charset-{charset_script}")
                else:
                    ds.PatientName = who.name
                ds.PatientID = who.patient_id
                ds.PatientBirthDate = who.birth_date
                ds.PatientSex = who.sex
                ds.PatientAddress = who.address
                ds.PatientTelephoneNumbers = who.phone
                other = Dataset()
                other.PatientID = who.other_id
                other.IssuerOfPatientID = who.other_issuer
                other.TypeOfPatientID = "TEXT"
                ds.OtherPatientIDsSequence = [other]
                # study ---------------------------------------------------------------------
                ds.StudyInstanceUID = study_uid
                ds.StudyDate = study_date
                ds.StudyTime = study_time
                ds.AccessionNumber = accession
                ds.ReferringPhysicianName = who.physician
                ds.StudyID = f"{st_no + 1}"
                ds.StudyDescription = f"{desc} for {who.given} {who.family}, SSN {who.ssn}"
                ds.InstitutionName = institution
                ds.InstitutionAddress = inst_address
                req = Dataset()
                req.RequestedProcedureID = who.requested_procedure_id
                req.ScheduledProcedureStepID = f"SPS{st_no:02d}{who.requested_procedure_id[3:]}"
                req.RequestedProcedureDescription = f"{desc} requested by {who.physician.split('^')[0]}"
                ds.RequestAttributesSequence = [req]
                # series / instance -----------------------------------------------------------
                ds.SeriesInstanceUID = series_uid
                ds.SeriesNumber = se_no + 1
                for kw in ("SeriesDate", "ContentDate", "AcquisitionDate", "InstanceCreationDate"):
                    if kw in ds:
                        setattr(ds, kw, study_date)
                ds.SOPInstanceUID = sop_uid
                ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
                ds.InstanceNumber = in_no + 1
                if "FrameOfReferenceUID" in ds or "PixelData" in ds:
                    ds.FrameOfReferenceUID = for_uid
                ds.ImageComments = (
                    f"Pt {who.given} {who.family} MRN {who.patient_id} DOB {who.birth_date} "
                    f"ssn {who.ssn_digits}; call {who.phone}"
                )
                ds.AdditionalPatientHistory = (
                    f"{who.family.upper()}, {who.given} (b. {who.birth_date_written}) prefers e-mail: {who.email}"
                )
                if charset_script:
                    # the non-Latin name in free text too (scrubbers must match decoded text)
                    spoken = groups[-1].replace("^", " ")
                    prefix = "Outside films of "
                    planter.add_text("name_nonlatin", spoken, ds.get("SpecificCharacterSet", "ISO_IR 6"), prefix)
                    ds.ImageComments = f"{prefix}{spoken}. " + ds.ImageComments
                _private_block(ds, who, f"alt id {who.other_id} issued by {who.other_issuer}")
                # overlays ----------------------------------------------------------------------
                if any(e.tag.group == 0x6000 for e in ds):
                    ds.add_new(0x60000022, "LO", f"{who.family} overlay")
                    ds.add_new(0x60001500, "LO", f"{who.given} {who.family}")
                    ds.add_new(0x60004000, "LT", f"annotated for MRN {who.patient_id}")
                    planter.add("name", f"{who.family} overlay")
                # trailing padding, preamble ----------------------------------------------------
                if counter % 2 == 0:
                    ds.add_new(0xFFFCFFFC, "OB", f"PAD {who.name} {who.patient_id} ".encode() + bytes(16))
                    extra.append("trailing-padding")
                if counter == 2:
                    ds.preamble = _preamble("pe", who)
                    extra.append("polyglot-pe")
                elif counter % 3 == 0:
                    ds.preamble = _preamble("name", who)
                    extra.append("preamble-phi")
                elif (ds.preamble or b"")[:4] in (b"II*\x00", b"MM\x00*"):
                    extra.append("preamble-tiff")  # legitimate dual-personality TIFF header: keep it
                else:
                    ds.preamble = bytes(128)
                # structured reports and references -------------------------------------------
                skey = f"{key}/{se_no}/{in_no}"
                sop_of[skey] = (ds.SOPClassUID, sop_uid, path)
                if "sr" in feats:
                    target = f"{key}/0/0"
                    tcls, tuid, tpath = sop_of[target]
                    ds.ContentSequence.append(_sr_findings(who, tcls, tuid))
                    ds.CurrentRequestedProcedureEvidenceSequence = [
                        _evidence(study_uid, make_uid(seed, "series", st_no, 0), tcls, tuid)
                    ]
                    ds.pop("PertinentOtherEvidenceSequence", None)
                    pending_refs.append((path, target, "ContentSequence/IMAGE/ReferencedSOPSequence"))
                    pending_refs.append((path, target, "CurrentRequestedProcedureEvidenceSequence"))
                if "seg" in feats:
                    tcls, tuid, _ = sop_of[f"{key}/0/0"]
                    ref_series = ds.ReferencedSeriesSequence[0]
                    ref_series.SeriesInstanceUID = make_uid(seed, "series", st_no, 0)
                    ref_series.ReferencedInstanceSequence[0].ReferencedSOPClassUID = tcls
                    ref_series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = tuid
                    pending_refs.append((path, f"{key}/0/0", "ReferencedSeriesSequence"))
                if src_name == "rtdose.dcm":
                    ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = sop_of[f"{key}/0/0"][1]
                    pending_refs.append((path, f"{key}/0/0", "ReferencedRTPlanSequence"))
                if src_name == "rtstruct.dcm":
                    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = for_uid
                if src_name == "rtplan.dcm":
                    ds.FrameOfReferenceUID = for_uid
                    ds.pop("ReferencedStructureSetSequence", None)
                    ds.pop("ReferencedRTPlanSequence", None)

                _write(ds, path)
                if planter.pending:
                    planter.confirm(path.read_bytes())
                written.append((path, ds, who))
                corpus.expected[path] = "written"
                corpus.features[path] = extra
                corpus.studies.setdefault(study_uid, []).append(path)
                corpus.series.setdefault(series_uid, []).append(path)

    for src, target, where in pending_refs:
        corpus.references.append(Reference(src, sop_of[target][2], where))

    # broken and stray files ---------------------------------------------------------------------
    first_who = ids[0]
    pdir = dst / f"{first_who.name}_{first_who.patient_id}"
    base_path, base_ds, _ = written[0]
    data = base_path.read_bytes()
    # (1) truncated inside a header value: the bytes after the study description are cut off
    needle = base_ds.StudyDescription.encode()
    cut = data.index(needle) + len(needle) // 2
    trunc_h = pdir / "incoming" / f"{first_who.patient_id}_partial_header.dcm"
    _put(trunc_h, data[:cut])
    corpus.expected[trunc_h] = "quarantined"
    corpus.features[trunc_h] = ["truncated-header"]
    # (2) truncated inside the pixel data (pydicom reads this silently: the reader must check)
    big_path, _, big_who = next(w for w in written if w[0].stat().st_size > 100_000 and "PixelData" in w[1])
    big = big_path.read_bytes()
    trunc_p = dst / f"{big_who.name}_{big_who.patient_id}" / "incoming" / f"{big_who.patient_id}_partial_pixels.dcm"
    _put(trunc_p, big[: len(big) - len(big) // 3])
    corpus.expected[trunc_p] = "quarantined"
    corpus.features[trunc_p] = ["truncated-pixels"]
    # (3) a bare data set: no preamble, no "DICM", no file meta (implicit VR little endian)
    raw_ds = copy.deepcopy(written[1][1])
    raw_who = written[1][2]
    raw_ds.SOPInstanceUID = sop = make_uid(seed, "sop", "raw")
    raw_ds.SeriesInstanceUID = ser = make_uid(seed, "series", "raw")
    corpus.uids += [sop, ser]
    raw_path = dst / f"{raw_who.name}_{raw_who.patient_id}" / "legacy" / f"{raw_who.patient_id}_nometa"
    _put(raw_path, _bare_dataset_bytes(raw_ds))
    corpus.expected[raw_path] = "written"
    corpus.features[raw_path] = ["no-meta", "implicit-vr"]
    corpus.studies[raw_ds.StudyInstanceUID].append(raw_path)
    corpus.series[ser] = [raw_path]
    # (4) non-DICOM notes holding PHI, and an empty file
    notes = pdir / "notes.txt"
    _put(notes, (f"Called {first_who.given} {first_who.family} at {first_who.phone} re: results.\n"
                 f"MRN {first_who.patient_id}, SSN {first_who.ssn}\n").encode())
    corpus.expected[notes] = "skipped"
    corpus.features[notes] = ["not-dicom"]
    empty = pdir / "EMPTY.dcm"
    _put(empty, b"")
    corpus.expected[empty] = "skipped"
    corpus.features[empty] = ["empty"]
    if hostile:
        _add_hostile_files(corpus, written, seed)

    corpus.files = sorted(corpus.expected)
    for k in corpus.studies:
        corpus.studies[k].sort()
    for k in corpus.series:
        corpus.series[k].sort()
    corpus.planted_by_kind = planter.by_kind
    seen: set[str] = set()
    corpus.planted = [v for vs in planter.by_kind.values() for v in vs if not (v in seen or seen.add(v))]
    corpus.needles = {v: sorted(planter.needles[v]) for v in corpus.planted}
    return corpus


def _add_hostile_files(corpus: Corpus, written: list[tuple[Path, Dataset, Identity]], seed: int) -> None:
    """File-system oddities real archives contain (issue 9). Expected outcomes are proposals:

    - valid DICOM under a name with spaces, and under a name with non-UTF-8 bytes and a newline
      -> "written" (fresh SOP Instance UIDs, same series as their origin);
    - an exact byte copy of a valid file elsewhere ("duplicate-exact") -> "skipped": the instance is
      already written once and nothing is lost;
    - a different file reusing another file's SOP Instance UID ("duplicate-conflict", it sorts
      after the original) -> "quarantined": both cannot be written to the same output;
    - a PDF with a .dcm name, and a DICOMDIR copied from pydicom -> "skipped";
    - symlinks: to a file outside the tree (/dev/null), dangling, and a directory loop back to the
      root; the file-like ones -> "skipped" (never followed out of the source). The loop is a
      directory and so not in ``files``; it is listed in ``features`` under the link's path.
    """
    root = corpus.root
    (path0, ds0, who0), (path1, ds1, who1) = written[0], written[2]
    pdir = root / f"{who0.name}_{who0.patient_id}"

    def rewrite(src_ds: Dataset, target: Path, tag: str, feats: list[str], sop: str | None = None) -> None:
        ds = copy.deepcopy(src_ds)
        new_sop = sop or make_uid(seed, "hostile-sop", tag)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new_sop
        if sop is not None:
            ds.ImageComments = str(ds.ImageComments) + " (re-sent)"
        else:
            corpus.uids.append(new_sop)
        _write(ds, target)
        corpus.features[target] = feats
        if sop is None:
            corpus.expected[target] = "written"
            corpus.studies[ds.StudyInstanceUID].append(target)
            corpus.series[ds.SeriesInstanceUID].append(target)
        else:
            corpus.expected[target] = "quarantined"

    rewrite(ds0, pdir / "Scans From CD" / "IM 0001.dcm", "spaces", ["name-with-spaces"])
    odd = pdir / "Scans From CD" / os.fsdecode(b"IM\xff\xfe_0002\nsecond line.dcm")
    rewrite(ds1, odd, "odd-bytes", ["name-non-utf8", "name-newline"])
    dup = root / f"{who0.name}_{who0.patient_id}" / "zz-duplicates" / path0.name
    _put(dup, path0.read_bytes())
    corpus.expected[dup] = "skipped"
    corpus.features[dup] = ["duplicate-exact"]
    rewrite(ds0, pdir / "zz-duplicates" / f"resent_{path0.name}", "conflict", ["duplicate-conflict"],
            sop=str(ds0.SOPInstanceUID))
    pdf = pdir / "report.dcm"
    _put(pdf, b"%PDF-1.4\n% fake report for " + who0.name.encode() + b"\n%%EOF\n")
    corpus.expected[pdf] = "skipped"
    corpus.features[pdf] = ["not-dicom", "pdf"]
    dicomdir = get_testdata_file("DICOMDIR", download=False)
    if dicomdir:
        target = root / "DICOMDIR"
        _put(target, Path(dicomdir).read_bytes())
        corpus.expected[target] = "skipped"
        corpus.features[target] = ["dicomdir"]
    links = root / "links"
    links.mkdir()
    for name, to, feat in (("outside.dcm", os.devnull, "symlink-outside"),
                           ("dangling.dcm", "no-such-file.dcm", "symlink-dangling")):
        (links / name).symlink_to(to)
        corpus.expected[links / name] = "skipped"
        corpus.features[links / name] = [feat]
    (links / "loop").symlink_to("..", target_is_directory=True)
    corpus.features[links / "loop"] = ["symlink-loop"]


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _bare_dataset_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` as a bare implicit-VR little-endian data set (no preamble, no meta)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


# ---------------------------------------------------------------------------------------------
# Looking for planted values (used by tests and the demo)
# ---------------------------------------------------------------------------------------------


def find_planted(corpus: Corpus, root: Path | None = None, *, text: str | bytes | None = None) -> list[tuple[str, str]]:
    """Return (where, kind) for every planted value found under ``root`` (bytes and paths) or in
    ``text``. ``where`` is a path relative to ``root`` (or "<text>") with every planted value in
    it replaced by ``<kind>``: the report itself never repeats a value."""
    kind_of = {v: k for k, vs in corpus.planted_by_kind.items() for v in vs}
    by_length = sorted(kind_of, key=len, reverse=True)

    def redact(where: str) -> str:
        for v in by_length:
            if v in where:
                where = where.replace(v, f"<{kind_of[v]}>")
        return where

    needles = [(n, kind_of[v]) for v, forms in corpus.needles.items() for n in forms]
    hits: list[tuple[str, str]] = []
    if text is not None:
        blob = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        hits += [("<text>", k) for n, k in needles if n in blob]
    if root is not None and Path(root).exists():
        root = Path(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                p = Path(dirpath) / name
                rel = p.relative_to(root).as_posix()
                encoded = os.fsencode(name)
                hits += [(rel + " (path)", k) for n, k in needles if n in encoded]
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    continue
                rel = p.relative_to(root).as_posix()
                data = p.read_bytes()
                hits += [(rel, k) for n, k in needles if n in data]
    return sorted({(redact(w), k) for w, k in hits})


def assert_no_planted(corpus: Corpus, root: Path | None = None, *, text: str | bytes | None = None) -> None:
    """Fail (AssertionError) if any planted value is under ``root`` or in ``text``.

    The message names where and which kind — never the value — so a failing test does not put
    PHI into CI logs either (fake PHI, but the habit matters).
    """
    hits = find_planted(corpus, root, text=text)
    if hits:
        shown = "; ".join(f"{kind} in {where}" for where, kind in hits[:25])
        more = f" (+{len(hits) - 25} more)" if len(hits) > 25 else ""
        raise AssertionError(f"{len(hits)} planted value(s) found: {shown}{more}")


# ---------------------------------------------------------------------------------------------
# Before/after table for the demo
# ---------------------------------------------------------------------------------------------

DEMO_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "Modality")


def _show(value: object, width: int = 28) -> str:
    text = "" if value is None else str(value)
    if text == "":
        return "(empty)"
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_changes(src_file: Path, dst_file: Path | None, attributes: Sequence[str] = DEMO_ATTRIBUTES) -> list[tuple[str, str, str]]:
    """Rows (attribute, before, after) for one input and its de-identified output.

    ``dst_file`` None means the input has no output (quarantined/skipped); "(absent)" marks an
    attribute not present.
    """
    before = pydicom.dcmread(src_file, stop_before_pixels=True, force=True)
    after = pydicom.dcmread(dst_file, stop_before_pixels=True, force=True) if dst_file else None
    rows = []
    for kw in attributes:
        b = _show(before.get(kw)) if kw in before else "(absent)"
        if after is None:
            a = "(no output)"
        else:
            a = _show(after.get(kw)) if kw in after else "(absent)"
        rows.append((kw, b, a))
    return rows


def format_table(title: str, rows: Iterable[tuple[str, str, str]]) -> str:
    """A plain-text table; wide enough for the demo, no dependencies."""
    rows = list(rows)
    w0 = max([len("attribute")] + [len(r[0]) for r in rows])
    w1 = max([len("before")] + [len(r[1]) for r in rows])
    w2 = max([len("after")] + [len(r[2]) for r in rows])
    line = f"+{'-' * (w0 + 2)}+{'-' * (w1 + 2)}+{'-' * (w2 + 2)}+"
    out = [title, line, f"| {'attribute':<{w0}} | {'before':<{w1}} | {'after':<{w2}} |", line]
    out += [f"| {a:<{w0}} | {b:<{w1}} | {c:<{w2}} |" for a, b, c in rows]
    out.append(line)
    return "\n".join(out)


def _pixel_key(path: Path) -> bytes | None:
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception:  # noqa: BLE001 - any unreadable file simply has no match
        return None
    px = ds.get("PixelData")
    if px is None:
        return None
    return hashlib.sha256(bytes(px)).digest()


def match_outputs(src_files: Iterable[Path], dst_root: Path) -> dict[Path, Path | None]:
    """Match inputs to outputs by their pixel data (unchanged by de-identification).

    Why not by UID: output UIDs are keyed pseudonyms; matching by pixels needs no secret and
    also proves the pixels survived byte for byte. Inputs without pixel data map to None.
    """
    by_key: dict[bytes, Path | None] = {}
    for p in sorted(Path(dst_root).rglob("*.dcm")):
        if ".dicomsafe" in p.parts:
            continue
        k = _pixel_key(p)
        if k is not None:
            # two outputs with the same pixels (one source image reused for two patients) cannot
            # be told apart by pixels: no match rather than a wrong one
            by_key[k] = None if k in by_key else p
    return {s: by_key.get(_pixel_key(s)) if _pixel_key(s) else None for s in src_files}


# ---------------------------------------------------------------------------------------------
# Bulk data for benchmarks
# ---------------------------------------------------------------------------------------------


def _ct_template(who: Identity, rows: int, cols: int, seed: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "ZZFAKE"
    ds.InstitutionName = "Fakeshire Quarantel Hospital"
    ds.PatientName = who.name
    ds.PatientID = who.patient_id
    ds.PatientBirthDate = who.birth_date
    ds.PatientSex = who.sex
    ds.PatientAddress = who.address
    ds.ReferringPhysicianName = who.physician
    ds.StudyDescription = f"CT CHEST for {who.given} {who.family}, SSN {who.ssn}"
    ds.StudyDate = "20200101"
    ds.StudyTime = "101010"
    ds.AccessionNumber = f"ZB{who.patient_id[2:]}"
    ds.SliceThickness = "1.0"
    ds.PixelSpacing = ["0.7", "0.7"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    _private_block(ds, who, f"alt id {who.other_id}")
    return ds


def build_ct_series(dst: Path, n: int, *, rows: int = 512, cols: int = 512, seed: int = 0, patients: int = 1,
                    series_per_study: int = 1) -> list[Path]:
    """Write ``n`` synthetic single-frame 16-bit CT files with fake PHI (for benchmarks).

    Files are spread round-robin over ``patients`` (one study each). The pixel array is generated
    once and reused (a per-file 8-byte tag keeps files distinct), so the cost is pydicom's write.
    """
    dst = Path(dst)
    ids = _make_identities(seed, min(patients, MAX_PATIENTS))
    rng = np.random.default_rng(seed)
    base = (rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16)).tobytes()
    templates = [_ct_template(w, rows, cols, seed) for w in ids]
    out = []
    for i in range(n):
        pi = i % len(ids)
        who = ids[pi]
        ds = templates[pi]
        k = i // len(ids)
        ser = k % series_per_study
        ds.StudyInstanceUID = make_uid(seed, "ct-study", pi)
        ds.SeriesInstanceUID = make_uid(seed, "ct-series", pi, ser)
        ds.FrameOfReferenceUID = make_uid(seed, "ct-for", pi)
        ds.SOPInstanceUID = make_uid(seed, "ct-sop", i)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.SeriesNumber = ser + 1
        ds.ImagePositionPatient = [0, 0, float(k)]
        ds.PixelData = i.to_bytes(8, "little") + base[8:]
        ds.preamble = bytes(128)
        path = dst / f"{who.name}_{who.patient_id}" / f"CT_{ser + 1:02d}" / f"{who.patient_id}_{i:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def build_multiframe(dst: Path, size_bytes: int, *, rows: int = 512, cols: int = 512, seed: int = 0,
                     chunk_frames: int = 16) -> Path:
    """Write one large multi-frame CT-like file of about ``size_bytes`` with little memory.

    The header (with fake PHI) is written by pydicom with an empty Pixel Data element; the real
    Pixel Data element header and frames are then streamed in chunks, so a 2 GB file needs only
    ``chunk_frames`` frames of RAM. Lengths must stay under 4 GiB (32-bit value length).
    """
    dst = Path(dst)
    frame_bytes = rows * cols * 2
    frames = max(1, size_bytes // frame_bytes)
    total = frames * frame_bytes
    if total >= 0xFFFFFFFE:
        raise ValueError("pixel data must stay below 4 GiB")
    who = _make_identities(seed, 1)[0]
    ds = _ct_template(who, rows, cols, seed)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedCTImageStorage
    ds.StudyInstanceUID = make_uid(seed, "mf-study")
    ds.SeriesInstanceUID = make_uid(seed, "mf-series")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = make_uid(seed, "mf-sop", size_bytes)
    ds.NumberOfFrames = frames
    ds.preamble = bytes(128)
    path = dst if dst.suffix == ".dcm" else dst / f"{who.patient_id}_multiframe.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # header only: no PixelData yet
    rng = np.random.default_rng(seed)
    chunk = rng.integers(0, 4096, size=(chunk_frames, rows, cols), dtype=np.uint16).tobytes()
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length
        fh.write(b"\xe0\x7f\x10\x00OW\x00\x00" + total.to_bytes(4, "little"))
        left = total
        while left:
            part = chunk[: min(len(chunk), left)]
            fh.write(part)
            left -= len(part)
    return path


# ---------------------------------------------------------------------------------------------
# Command line: python -m dicomsafe.corpus ...
# ---------------------------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("build", "describe", "leaks", "ct", "multiframe", "-h", "--help"):
        argv.insert(0, "build")
    ap = argparse.ArgumentParser(prog="python -m dicomsafe.corpus", description="Fake-PHI test corpora.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the identified demo/test corpus")
    b.add_argument("dir", type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--patients", type=int, default=3)
    b.add_argument("--manifest", type=Path, help="write the ground-truth manifest (JSON) here; keep it outside DIR")
    d = sub.add_parser("describe", help="before/after table for a few inputs and their outputs")
    d.add_argument("src", type=Path)
    d.add_argument("dst", type=Path)
    d.add_argument("-n", type=int, default=3)
    lk = sub.add_parser("leaks", help="search a tree (and optional text files) for planted values")
    lk.add_argument("manifest", type=Path)
    lk.add_argument("tree", type=Path)
    lk.add_argument("--text", type=Path, action="append", default=[], help="also search this file (e.g. a log)")
    c = sub.add_parser("ct", help="synthetic CT series for benchmarks")
    c.add_argument("dir", type=Path)
    c.add_argument("-n", type=int, default=100)
    c.add_argument("--size", type=int, default=512)
    c.add_argument("--patients", type=int, default=1)
    m = sub.add_parser("multiframe", help="one large multi-frame file")
    m.add_argument("path", type=Path)
    m.add_argument("--mb", type=int, default=1024)
    args = ap.parse_args(argv)

    if args.cmd == "build":
        c_ = build_corpus(args.dir, seed=args.seed, patients=args.patients)
        if args.manifest:
            args.manifest.parent.mkdir(parents=True, exist_ok=True)
            args.manifest.write_text(json.dumps(c_.to_json(), indent=1))  # ASCII: file names may hold non-UTF-8 bytes
        counts = {k: len(c_.with_outcome(k)) for k in ("written", "quarantined", "skipped")}
        print(f"corpus: {len(c_.files)} files in {len(c_.studies)} studies of {len(c_.patients)} fake patients; "
              f"expected outcomes {counts}; {len(c_.planted)} planted values")
        return 0
    if args.cmd == "describe":
        return _describe(args.src, args.dst, args.n)
    if args.cmd == "leaks":
        corpus = Corpus.from_json(Path("."), json.loads(args.manifest.read_text()))
        hits = find_planted(corpus, args.tree)
        for t in args.text:
            hits += [(f"{t.name}", k) for _, k in find_planted(corpus, None, text=t.read_bytes())]
        for where, kind in hits[:50]:
            print(f"LEAK: planted {kind} value found in {where}")
        if len(hits) > 50:
            print(f"... and {len(hits) - 50} more")
        print(f"planted values found: {len(hits)}" + ("" if hits else " (clean)"))
        return 1 if hits else 0
    if args.cmd == "ct":
        files = build_ct_series(args.dir, args.n, rows=args.size, cols=args.size, patients=args.patients)
        print(f"wrote {len(files)} CT files")
        return 0
    if args.cmd == "multiframe":
        p = build_multiframe(args.path, args.mb * 1024 * 1024)
        print(f"wrote {p.stat().st_size} bytes")
        return 0
    return 2


def pick_demo_files(src: Path, n: int = 3) -> list[Path]:
    """Pick ``n`` image inputs worth showing: a CT, an MR, a non-Latin name, then any others."""
    images: list[tuple[str, bool, Path]] = []
    for p in sorted(Path(src).rglob("*")):
        if not p.is_file() or p.stat().st_size == 0:
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=False)
        except Exception:  # noqa: BLE001 - not every input is DICOM; that is the point
            continue
        if "PixelData" in ds:
            images.append((str(ds.get("Modality", "")), not str(ds.get("PatientName", "")).isascii(), p))
    # only images whose pixels are unique in the tree: outputs are matched back by their pixels
    counts: dict[bytes | None, int] = {}
    for _, _, p in images:
        k = _pixel_key(p)
        counts[k] = counts.get(k, 0) + 1
    images = [(m, u, p) for m, u, p in images if counts.get(_pixel_key(p)) == 1]
    wanted = [lambda m, u: m == "CT", lambda m, u: m == "MR", lambda m, u: u]
    picked: list[Path] = []
    for want in wanted:
        hit = next((p for m, u, p in images if want(m, u) and p not in picked), None)
        if hit is not None:
            picked.append(hit)
    picked += [p for _, _, p in images if p not in picked]
    return picked[:n]


def _describe(src: Path, dst: Path, n: int) -> int:
    picked = pick_demo_files(src, n)
    matches = match_outputs(picked, dst)
    for i, p in enumerate(picked, 1):
        out = matches.get(p)
        where = out.relative_to(dst).as_posix() if out else "(no output found)"
        title = f"file {i}: {p.relative_to(src).as_posix()}\n    -> {where}"
        print(format_table(title, describe_changes(p, out)))
        print()
    return 0 if picked and all(matches.get(p) for p in picked) else 1


if __name__ == "__main__":
    with _quiet_pydicom():
        sys.exit(_main())
