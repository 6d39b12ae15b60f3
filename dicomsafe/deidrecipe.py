"""Import of deid recipes (``deid.dicom`` files) into dicomsafe's override vocabulary.

Why translate instead of running deid: dicomsafe's guarantees (keyed pseudonyms, the PS3.15 floor,
fail-closed verification) live in one compiled plan. A recipe is therefore parsed with the deid
package's own parser (so we accept exactly what deid accepts, and nothing it would silently
misread), then turned into explicit overrides that the profile layer puts OVER its base profile
(``basic`` unless a TOML profile names another). An incomplete recipe can only add strictness or
name its own replacements; it never removes the floor. The one way a recipe weakens the floor is
an explicit KEEP of something the base removes: that is allowed (the author asked for it) and
reported as a warning, loudly for direct identifiers.

Line numbers: deid's parser drops blank lines and reports problems on stderr (or exits). We scan
the file first, line by line, so every error names ``file:line``; then deid parses the same text
and we align its entries with our scan.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Union

from .errors import ProfileError

# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------

#: A selector says which data elements an override applies to, in the same form as the
#: profile layer's TagOverride (dicomsafe.profiles), so recipe overrides replace base-profile
#: overrides of the same attribute:
#:   ("tag", 0x00100010)                             an attribute by tag (keywords are resolved)
#:   ("private", 0x0009, "GEMS_IDEN_01", 0x10)       (gggg,xxEE) in the block of that creator
#:   ("pattern", "contains", "Trial")                run-time match (RecipeTranslation.patterns)
#: Tag selectors apply at any depth (inside sequences too), like the table's rows.
Selector = Union[tuple[str, str], tuple[str, int], tuple[str, int, str, int], tuple[str, str, str]]

#: What an Override.action may be: the plan's codes (dicomsafe.rules): X Z D K C U for the
#: table actions remove, zero, dummy, keep, clean, uid; and replace, pseudonym, shift, year, cap-age.
ACTIONS = ("X", "Z", "D", "K", "C", "U", "replace", "pseudonym", "shift", "year", "cap-age")
_CODE = {"remove": "X", "zero": "Z", "dummy": "D", "keep": "K", "clean": "C", "uid": "U"}

#: deid's own precedence when several recipe lines hit one attribute (deid.dicom.parser):
#: KEEP > ADD > REPLACE > JITTER > REMOVE > BLANK. We resolve conflicts the same way.
DEID_PRECEDENCE = {"KEEP": 6, "ADD": 5, "REPLACE": 4, "JITTER": 3, "REMOVE": 2, "BLANK": 1}

#: Attributes that identify the patient directly (HIPAA §164.514(b)(2) kinds that DICOM carries
#: in dedicated attributes). A recipe KEEP on one of these is flagged as a direct-identifier
#: weakening; KEEP on any other attribute the base profile does not keep is a plain weakening.
DIRECT_IDENTIFIERS = frozenset({
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate", "PatientBirthTime",
    "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
    "IssuerOfPatientID", "MedicalRecordLocator", "PatientInsurancePlanCodeSequence",
    "MilitaryRank", "BranchOfService", "PatientReligiousPreference", "ResponsiblePerson",
    "PersonName", "PersonAddress", "PersonTelephoneNumbers", "AccessionNumber", "AdmissionID",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician",
    "InstitutionName", "InstitutionAddress", "DeviceSerialNumber", "StationName",
    "RegionOfResidence", "CountryOfResidence", "CurrentPatientLocation",
    "PatientInstitutionResidence", "StudyID", "RequestedProcedureID", "ServiceEpisodeID",
    "VisitComments", "PatientComments", "AdditionalPatientHistory", "ImageComments",
})


@dataclass(frozen=True)
class Override:
    """One explicit action from a recipe, ready to layer over a base profile.

    Duck-compatible with dicomsafe.profiles.TagOverride (key, selector, action, value, source), so
    the profile layer and rules.compile_plan consume it as is.
    ``action``: a plan code from ACTIONS. ``value``: the replacement text for ``replace`` (may
    contain ``{pseudo_id}``), else None.
    ``source``: "recipe.deid:LINE"; ``source_line``: LINE.
    ``create``: the recipe said ADD (insert the attribute when absent).
    ``recipe_text``: the line's action and field, never the replacement value, so it can be shown
    in plans and logs. ``expanded_from``: the recipe's field expression when the selector came
    from an expander (``contains:Trial``) or a %fields list.
    """

    key: str
    selector: Selector
    action: str
    value: str | None = None
    source: str = ""
    source_line: int | None = None
    create: bool = False
    recipe_text: str = ""
    expanded_from: str | None = None


@dataclass(frozen=True)
class FilterTest:
    """One test of a %filter criterion, as deid evaluates it: ``op`` in contains, notcontains,
    equals, notequals (with ``value``, a regular expression for contains) or missing, present,
    empty (no value). ``field`` is a keyword or tag string."""

    op: str
    field: str
    value: str | None = None


@dataclass(frozen=True)
class FilterCriterion:
    """A member line of a LABEL: its tests joined by ``inner_operators`` ("and"/"or"), and the
    ``operator`` joining it to the previous member ("and" for ``+``, "or" for ``||``, None first)."""

    tests: tuple[FilterTest, ...]
    inner_operators: tuple[str, ...] = ()
    operator: str | None = None


@dataclass(frozen=True)
class RecipeFilter:
    """One LABEL of a %filter section, handed to the pixel stage.

    ``section``: the %filter name (deid uses whitelist, graylist, blacklist).
    ``coordinates``: ``(keep, region)`` pairs; region is ``"x0,y0,x1,y1"`` (already converted from
    ctpcoordinates by deid), ``"all"`` or ``"from:Field"``; keep=False masks the region, True
    marks a region to keep.
    """

    section: str
    label: str
    criteria: tuple[FilterCriterion, ...]
    coordinates: tuple[tuple[bool, str], ...]
    source_line: int


@dataclass
class RecipeTranslation:
    """What a recipe means in dicomsafe terms.

    ``overrides``: at most one per tag/private selector (deid's precedence applied), expanders
    already expanded over the public data dictionary.
    ``patterns``: the expanders of REMOVE/BLANK lines as run-time selectors ("pattern", kind,
    expression), for elements a dictionary cannot list (private and unknown tags). Applying them
    can only remove more; KEEP/REPLACE expanders never reach private elements.
    """

    source: str
    overrides: list[Override] = field(default_factory=list)
    patterns: list[Override] = field(default_factory=list)
    filters: list[RecipeFilter] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Dictionaries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DictEntry:
    tag: int
    vr: str
    name: str
    keyword: str


@lru_cache(maxsize=1)
def _dictionary() -> tuple[dict[str, _DictEntry], dict[int, _DictEntry]]:
    """pydicom's public data dictionary: by lower-case keyword and by tag."""
    from pydicom.datadict import DicomDictionary

    by_kw: dict[str, _DictEntry] = {}
    by_tag: dict[int, _DictEntry] = {}
    for tag, (vr, _vm, name, _retired, keyword) in DicomDictionary.items():
        if not keyword:
            continue
        e = _DictEntry(tag, vr, name, keyword)
        by_kw[keyword.lower()] = e
        by_tag[tag] = e
    return by_kw, by_tag


@lru_cache(maxsize=1)
def basic_profile_actions() -> dict[int, str]:
    """Basic Profile action code per tag from the vendored PS3.15 Table E.1-1 (exact tags only;
    rows with x-wildcards are group patterns the rules engine handles)."""
    text = resources.files("dicomsafe").joinpath(
        "data/standard/ps3.15-table-e.1-1.json").read_text("utf-8")
    out: dict[int, str] = {}
    for row in json.loads(text):
        tag = row["tag"].strip("()").replace(",", "")
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
            continue  # (50xx,xxxx), (60xx,4000), private: group rules
        out[int(tag, 16)] = row["basicProfile"]
    return out


@lru_cache(maxsize=1)
def _repeater_keywords() -> dict[str, str]:
    """Keywords of repeating-group attributes (overlays 60xx, curves 50xx): lower → canonical."""
    from pydicom.datadict import RepeatersDictionary

    return {v[4].lower(): v[4] for v in RepeatersDictionary.values() if v[4]}


def _suggest(word: str) -> str:
    import difflib

    names = [e.keyword for e in _dictionary()[1].values()]
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.85)
    return f"; did you mean {close[0]}?" if close else ""


def lookup_keyword(word: str) -> str | None:
    """Canonical DICOM keyword for ``word`` (deid compares names case-insensitively)."""
    e = _dictionary()[0].get(word.lower())
    return e.keyword if e else None


# --------------------------------------------------------------------------------------------
# Pre-scan: structure and line numbers
# --------------------------------------------------------------------------------------------

#: Attributes the de-identifier writes itself (PS3.15 E.1.1 item 6): ADD of these is redundant.
_ADDED_BY_CORE = frozenset({0x00120062, 0x00120063, 0x00120064})

_HEADER_ACTIONS = ("ADD", "BLANK", "JITTER", "KEEP", "REPLACE", "REMOVE")
_FILTER_OPS = ("contains", "notcontains", "equals", "notequals", "missing", "present", "empty")
_COORD_WORDS = ("ctpkeepcoordinates", "ctpcoordinates", "keepcoordinates", "coordinates")
_SECTIONS = ("header", "filter", "values", "fields", "labels")
_NAMED_SECTIONS = ("filter", "values", "fields")


@dataclass
class _Line:
    number: int
    text: str
    section: str | None
    section_name: str | None


@dataclass
class _Scan:
    header: list[_Line] = field(default_factory=list)
    labels: dict[str, list[_Line]] = field(default_factory=dict)
    members: list[_Line] = field(default_factory=list)
    groups: dict[str, list[_Line]] = field(default_factory=dict)
    has_format: bool = False


def _strip_comment(text: str) -> str:
    return text.split("#", 1)[0].strip()


def _scan(text: str, source: str) -> _Scan:
    """Walk the recipe like deid does, but keep line numbers and refuse what deid would skip."""
    scan = _Scan()
    section: str | None = None
    section_name: str | None = None
    in_label = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^format", line, re.I):
            fmt = re.sub(r"(?i)FORMAT|\s+", "", _strip_comment(line)).lower()
            if fmt != "dicom":
                raise ProfileError(f"FORMAT {fmt or '(missing)'} is not supported (only dicom)",
                                   source=source, line=number)
            scan.has_format = True
            continue
        if line.startswith("%"):
            parts = _strip_comment(line).split()
            section = parts[0][1:].lower()
            section_name = " ".join(parts[1:]) or None
            if section not in _SECTIONS:
                raise ProfileError(f"unknown section %{section} (use %header, %filter NAME, "
                                   f"%values NAME or %fields NAME)", source=source, line=number)
            if section in _NAMED_SECTIONS and section_name is None:
                raise ProfileError(f"%{section} needs a name, e.g. %{section} whitelist",
                                   source=source, line=number)
            in_label = False
            continue
        if section is None:
            raise ProfileError("action before any section (start with FORMAT dicom, then %header)",
                               source=source, line=number)
        word = line.split()[0]
        entry = _Line(number, line, section, section_name)
        if section == "header":
            if word not in _HEADER_ACTIONS:
                hint = " (actions are upper case)" if word.upper() in _HEADER_ACTIONS else ""
                raise ProfileError(f"unknown action {word!r} in %header{hint}; expected one of "
                                   f"{', '.join(_HEADER_ACTIONS)}", source=source, line=number)
            scan.header.append(entry)
        elif section == "filter":
            if word.upper() == "LABEL":
                scan.labels.setdefault(section_name or "", []).append(entry)
                in_label = True
                continue
            if not in_label:
                raise ProfileError("filter criteria must follow a LABEL line",
                                   source=source, line=number)
            _check_member(line, source, number)
            scan.members.append(entry)
        elif section in ("values", "fields"):
            if word.upper() not in ("FIELD", "SPLIT") or (section == "fields" and word.upper() != "FIELD"):
                allowed = "FIELD" if section == "fields" else "FIELD or SPLIT"
                raise ProfileError(f"unknown action {word!r} in %{section} (only {allowed})",
                                   source=source, line=number)
            scan.groups.setdefault(section_name or "", []).append(entry)
        else:  # %labels: accepted by deid's grammar but never used; refuse rather than ignore
            raise ProfileError("%labels sections are not supported", source=source, line=number)
    if not scan.has_format:
        raise ProfileError("missing 'FORMAT dicom' line", source=source, line=1)
    return scan


def _check_member(line: str, source: str, number: int) -> None:
    body = line.lstrip("+|").strip()
    low = body.lower()
    for word in _COORD_WORDS:
        if low.startswith(word):
            region = _strip_comment(body[len(word):]).replace(" ", "")
            if region == "all" or region.startswith("from:"):
                if region.startswith("from:") and lookup_keyword(region[5:]) is None:
                    raise ProfileError(f"unknown field {region[5:]!r} in {word}",
                                       source=source, line=number)
                return
            if not re.fullmatch(r"-?\d+,-?\d+,-?\d+,-?\d+", region):
                raise ProfileError(f"{word} needs x,y,x,y (four integers), 'all' or from:Field",
                                   source=source, line=number)
            return
    first = low.split()[0] if low.split() else ""
    if first not in _FILTER_OPS:
        raise ProfileError(f"unknown filter test {first!r}; expected one of "
                           f"{', '.join(_FILTER_OPS)} or coordinates", source=source, line=number)
    for m in re.finditer(r"(?i)\b(" + "|".join(_FILTER_OPS) + r")\s+(\S+)", body):
        fld = m.group(2)
        if _parse_plain_field(fld) is None and fld.lower() not in _repeater_keywords():
            raise ProfileError(f"unknown field {fld!r} in filter{_suggest(fld)}",
                               source=source, line=number)
        if m.group(1).lower() in ("contains", "notcontains", "equals", "notequals"):
            rest = body[m.end():].strip()
            if not rest or rest.startswith(("+", "||")):
                raise ProfileError(f"{m.group(1)} needs a field and a value",
                                   source=source, line=number)


# --------------------------------------------------------------------------------------------
# Field expressions
# --------------------------------------------------------------------------------------------

_PRIVATE_RE = re.compile(r'^\(?([0-9A-Fa-f]{4}),"([^"]+)",([0-9A-Fa-f]{2})\)?$')
_TAG_PAREN_RE = re.compile(r"^\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)$")
_TAG_BARE_RE = re.compile(r"^([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})$")
_EXPANDERS = ("contains", "startswith", "endswith", "except", "select")


def _parse_plain_field(expr: str) -> Selector | None:
    """A field without expander: keyword, tag or private-creator syntax; None if unknown."""
    m = _PRIVATE_RE.match(expr)
    if m:
        group = int(m.group(1), 16)
        if group % 2 == 0:
            return None
        return ("private", group, m.group(2), int(m.group(3), 16))
    m = _TAG_PAREN_RE.match(expr) or _TAG_BARE_RE.match(expr)
    if m:
        tag = int(m.group(1) + m.group(2), 16)
        group = tag >> 16
        if group % 2 == 1 or tag in _dictionary()[1]:
            return ("tag", tag)
        return None
    e = _dictionary()[0].get(expr.lower())
    if e is not None:
        return ("tag", e.tag)
    return None


def _expand_pattern(expander: str, expression: str) -> list[_DictEntry]:
    """Expand a deid expander over the public dictionary the way deid matches a field: a
    case-insensitive regular-expression search of keyword, name, "(gggg,eeee)" and "ggggeeee"."""
    entries = list(_dictionary()[1].values())
    kind = expander.lower()
    if kind == "select":
        what, _, arg = expression.partition(":")
        if what.upper() == "VR":
            return [e for e in entries if e.vr[:2] == arg[:2].upper()]
        if what.upper() == "GROUP":
            group = int(arg, 16)
            return [e for e in entries if e.tag >> 16 == group]
        raise ValueError("select: supports VR:xx and GROUP:gggg")
    expr = expression.lower()
    if kind == "startswith":
        expr = f"^({expr})"
    elif kind == "endswith":
        expr = f"({expr})$"
    rx = re.compile(expr, re.IGNORECASE)

    def hit(e: _DictEntry) -> bool:
        g, el = e.tag >> 16, e.tag & 0xFFFF
        return bool(rx.search(e.keyword) or rx.search(e.name)
                    or rx.search(f"({g:04x},{el:04x})") or rx.search(f"{g:04X}{el:04X}"))

    if kind == "except":
        return [e for e in entries if not hit(e)]
    return [e for e in entries if hit(e)]


def _split_expander(expr: str) -> tuple[str, str] | None:
    # deid splits on the first colon outside quotes (private creators may contain colons)
    m = re.match(r'^([^:"]*(?:"[^"]*"[^:"]*)*):(.*)$', expr)
    if not m:
        return None
    return m.group(1), m.group(2)


# --------------------------------------------------------------------------------------------
# Translation
# --------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    override: Override
    precedence: int


def _value_of(raw: object) -> str | None:
    if raw is None:
        return None
    value = str(raw).split("#", 1)[0].strip()
    return value or None


def _describe(sel: Selector) -> str:
    """Keyword when the tag has one, else (gggg,eeee); private as (gggg,"creator",ee)."""
    if sel[0] == "tag":
        t = int(sel[1])  # type: ignore[arg-type]
        e = _dictionary()[1].get(t)
        return e.keyword if e else f"({t >> 16:04X},{t & 0xFFFF:04X})"
    if sel[0] == "private":
        return f'({sel[1]:04X},"{sel[2]}",{sel[3]:02X})'
    return f"{sel[1]}:{sel[2]}"


def _selector_tag(sel: Selector) -> int | None:
    if sel[0] == "tag":
        return int(sel[1])  # type: ignore[arg-type]
    return None


def _selector_vr(sel: Selector) -> str | None:
    tag = _selector_tag(sel)
    e = _dictionary()[1].get(tag) if tag is not None else None
    return e.vr if e else None


def _map_value(action: str, value: str | None, source: str, number: int
               ) -> tuple[str, str | int | None]:
    """Map a REPLACE/ADD value (or JITTER amount) to (our action, our value)."""
    assert value is not None
    low = value.lower()
    if action == "JITTER":
        if re.fullmatch(r"[+-]?\d+", value):
            return "shift", int(value)  # the caller turns the number into a warning
        if low.startswith("var:"):
            # deid expects the caller to supply per-item jitter values; dicomsafe's caller
            # supplies the keyed per-patient shift from the profile's [dates] shift_days.
            return "shift", None
        if low.startswith(("func:", "deid_func:")):
            raise ProfileError(f"JITTER {value.split()[0]} is not supported: use a number of days "
                               f"or var:NAME for the keyed per-patient shift",
                               source=source, line=number)
        raise ProfileError(f"JITTER needs a whole number of days, not {value!r}",
                           source=source, line=number)
    if low.startswith("deid_func:"):
        func, _, extras = value[len("deid_func:"):].partition(" ")
        if func in ("dicom_uuid", "suffix_uuid", "basic_uuid", "pydicom_uuid"):
            return "uid", None
        if func == "jitter":
            opts = dict(p.split("=", 1) for p in extras.split() if "=" in p)
            try:
                days = int(opts.get("days", 1)) + 365 * int(opts.get("years", 0))
            except ValueError:
                raise ProfileError("deid_func:jitter needs integer days= / years=",
                                   source=source, line=number) from None
            return "shift", days  # the caller turns the number into a warning
        raise ProfileError(f"deid_func:{func} is not supported (supported: dicom_uuid, "
                           f"suffix_uuid, basic_uuid, pydicom_uuid, jitter)",
                           source=source, line=number)
    if low.startswith("var:"):
        name = value[4:].strip()
        if name == "pseudo_id":
            return "replace", "{pseudo_id}"
        raise ProfileError(f"var:{name} is not supported: deid variables are supplied by Python "
                           f"code at run time; dicomsafe offers var:pseudo_id (the patient's keyed "
                           f"token) or a literal value", source=source, line=number)
    if low.startswith("func:"):
        raise ProfileError(f"{value.split()[0]} is not supported: custom Python functions cannot "
                           f"be imported from a recipe", source=source, line=number)
    return "replace", value


def _weakening(sel: Selector, number: int, expr: str) -> str | None:
    """A warning when KEEP retains what the Basic Profile would not."""
    if sel[0] == "private":
        from .safeprivate import lookup_safe_private

        if lookup_safe_private(int(sel[1]), str(sel[2]), int(sel[3])) is None:
            return (f"line {number}: KEEP {expr} keeps a private element that is not on the "
                    f"safe-private list (weakens the base profile)")
        return None
    if sel[0] == "tag" and (int(sel[1]) >> 16) % 2 == 1:  # type: ignore[arg-type]
        return (f"line {number}: KEEP {expr} keeps a private element by bare tag (weakens the base "
                f"profile; name its private creator to make it robust)")
    tag = _selector_tag(sel)
    if tag is None:
        return None
    basic = basic_profile_actions().get(tag)
    entry = _dictionary()[1].get(tag)
    kw = entry.keyword if entry else _describe(sel)
    if kw in DIRECT_IDENTIFIERS:
        return (f"line {number}: KEEP {kw} keeps a DIRECT IDENTIFIER that the Basic Profile "
                f"handles with {basic or 'X'} — the output is not de-identified for this attribute")
    if basic is not None and basic != "K":
        return (f"line {number}: KEEP {kw} keeps an attribute the Basic Profile handles with {basic} "
                f"(weakens the base profile)")
    return None


def translate_recipe(path: str | Path) -> RecipeTranslation:
    """Parse a deid recipe with deid's parser and translate it into overrides.

    Raises ProfileError (file:line) for anything we cannot translate faithfully: unknown action,
    section, field, filter test, unsupported var:/func: values, values: lists.
    """
    p = Path(path)
    source = p.name
    try:
        text = p.read_text("utf-8")
    except UnicodeDecodeError:
        raise ProfileError("recipe is not UTF-8 text", source=source) from None
    except OSError as exc:
        raise ProfileError(f"cannot read recipe ({exc.strerror})", source=source) from None
    if not p.is_file():
        raise ProfileError("recipe is not a file", source=source)

    scan = _scan(text, source)
    recipe = _deid_parse(p, source)
    result = RecipeTranslation(source=source)

    header = recipe.get("header") or []
    if len(header) != len(scan.header):
        raise ProfileError(f"deid parsed {len(header)} header actions where {len(scan.header)} "
                           f"lines were found; check quoting", source=source)
    fields_lists = recipe.get("fields") or {}

    candidates: dict[Selector, _Candidate] = {}
    patterns: list[Override] = []
    for line, entry in zip(scan.header, header):
        _translate_action(entry, line, source, fields_lists, scan, candidates, patterns, result)

    result.overrides = [c.override for c in sorted(
        candidates.values(), key=lambda c: (c.override.source_line or 0, _describe(c.override.selector)))]
    result.patterns = patterns
    result.filters = _translate_filters(recipe.get("filter") or {}, scan, source)
    return result


def _deid_parse(p: Path, source: str) -> dict:
    """Run deid's parser quietly; its exits become ProfileErrors."""
    from deid.config import DeidRecipe
    from deid.logger import bot

    saved = bot.level
    bot.level = 0  # QUIET: deid prints recipe lines (which may hold values) to the console
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            recipe = DeidRecipe(deid=str(p), base=False)
    except SystemExit:
        raise ProfileError("deid's parser rejected the recipe", source=source) from None
    finally:
        bot.level = saved
    if recipe.deid is None:
        raise ProfileError("deid's parser could not load the recipe", source=source)
    return dict(recipe.deid)


def _translate_action(entry: dict, line: _Line, source: str, fields_lists: dict, scan: _Scan,
                      candidates: dict[Selector, _Candidate], patterns: list[Override],
                      result: RecipeTranslation) -> None:
    n = line.number
    action = str(entry["action"]).upper()
    expr = str(entry["field"])
    value = _value_of(entry.get("value"))
    if action in ("KEEP", "BLANK") and len(line.text.split("#", 1)[0].split()) > 2:
        raise ProfileError(f"{action} takes only a field, no value", source=source, line=n)
    recipe_text = f"{action} {expr}"

    # 1. which attributes
    selectors: list[Selector]
    expanded_from: str | None = None
    pattern: tuple[str, str] | None = None
    if expr.lower().startswith("values:"):
        raise ProfileError("values: lists select attributes by their content at run time, which a "
                           "compiled plan cannot express; dicomsafe's verification already "
                           "quarantines outputs that still hold the source's identifying values",
                           source=source, line=n)
    if expr.lower().startswith("fields:"):
        name = expr[len("fields:"):]
        if name not in fields_lists:
            raise ProfileError(f"fields:{name} names no %fields section", source=source, line=n)
        selectors = []
        for item in fields_lists[name]:
            sub_line = _group_line(scan, name, item)
            selectors.extend(_selectors_for(str(item["field"]), source, sub_line or n)[0])
        expanded_from = expr
    elif "__" in expr:
        raise ProfileError(f"nested field paths ({expr}) are not supported; dicomsafe applies an "
                           f"attribute's action at every depth", source=source, line=n)
    else:
        selectors, pattern = _selectors_for(expr, source, n)
        if pattern is not None:
            expanded_from = expr
    if action == "ADD" and (expanded_from is not None or not selectors):
        raise ProfileError("ADD needs one explicit field (no expanders)", source=source, line=n)

    # 2. what to do
    our_value: str | int | None = None
    create = False
    if action == "REMOVE":
        ours = "remove"
        if value is not None:
            result.warnings.append(f"line {n}: REMOVE with a condition ({value.split()[0]}) is applied "
                                   f"unconditionally (stricter than the recipe asks)")
    elif action == "BLANK":
        ours = "zero"
    elif action == "KEEP":
        ours = "keep"
    elif action in ("REPLACE", "ADD"):
        ours, our_value = _map_value(action, value, source, n)
        create = action == "ADD"
        if ours == "replace" and our_value is not None:
            for sel in selectors:
                _check_replacement(sel, str(our_value), source, n)
    elif action == "JITTER":
        ours, our_value = _map_value(action, value, source, n)
        dated = [s for s in selectors if _selector_vr(s) in ("DA", "DT")]
        if expanded_from is None and selectors and not dated:
            raise ProfileError(f"JITTER applies to dates (DA/DT); {expr} is "
                               f"{_selector_vr(selectors[0]) or 'not a date'}", source=source, line=n)
        selectors = dated
        pattern = None
    else:  # pragma: no cover - the scan refuses other words
        raise ProfileError(f"unknown action {action!r}", source=source, line=n)
    if ours == "shift" and isinstance(our_value, int):
        # A fixed offset for every patient is undone by anyone who learns one true date; the
        # plan always uses the keyed per-patient shift within the profile's [dates] shift_days.
        result.warnings.append(f"line {n}: {action} by a fixed {our_value} days is applied as the "
                               f"keyed per-patient date shift ([dates] shift_days) instead")
        our_value = None
    if action == "ADD" and selectors and _selector_tag(selectors[0]) not in _ADDED_BY_CORE:
        result.warnings.append(f"line {n}: ADD {expr} replaces the value where the attribute is "
                               f"present; dicomsafe does not insert new attributes")
    if not selectors and pattern is None:
        result.warnings.append(f"line {n}: {recipe_text} matches no known attribute")

    if pattern is not None and ours == "keep" and pattern[0] in ("all", "except"):
        raise ProfileError(f"KEEP {expr} would keep (almost) every attribute, direct identifiers "
                           f"included; list the attributes to keep explicitly", source=source, line=n)
    if expanded_from is not None and ours in ("remove", "zero"):
        # UIDs are already replaced by keyed UIDs in every base profile; removing them through a
        # broad expander (deid's classic REMOVE contains:UID) would break references and files.
        keyed = [s for s in selectors if basic_profile_actions().get(_selector_tag(s) or -1) == "U"
                 or _selector_vr(s) == "UI"]
        if keyed:
            selectors = [s for s in selectors if s not in keyed]
            result.warnings.append(f"line {n}: {recipe_text} leaves {len(keyed)} UID attributes to "
                                   f"the base profile's keyed UIDs instead of removing them")

    # 3. weakening check and conflict resolution (deid's precedence)
    if ours == "keep":
        weak = [w for w in (_weakening(s, n, _describe(s)) for s in selectors) if w]
        if expanded_from and len(weak) > 3:
            direct = sorted(_describe(s) for s in selectors
                            if _describe(s) in DIRECT_IDENTIFIERS)
            msg = (f"line {n}: KEEP {expanded_from} keeps {len(weak)} attributes the base profile "
                   f"does not keep")
            if direct:
                msg += f", including DIRECT IDENTIFIERS {', '.join(direct)}"
            result.warnings.append(msg)
        else:
            result.warnings.extend(weak)
    code = _CODE.get(ours, ours)
    for sel in selectors:
        ov = Override(_key_of(sel), sel, code, our_value if code == "replace" else None,
                      f"{source}:{n}", n, create and sel[0] != "private", recipe_text,
                      expanded_from)
        prec = DEID_PRECEDENCE[action]
        old = candidates.get(sel)
        if old is None or prec >= old.precedence:
            if old is not None and old.override.action != ours and prec > old.precedence:
                result.warnings.append(
                    f"line {n}: {action} {_describe(sel)} overrides line "
                    f"{old.override.source_line} (deid precedence KEEP > ADD > REPLACE > JITTER > "
                    f"REMOVE > BLANK)")
            candidates[sel] = _Candidate(ov, prec)
    # Run-time patterns only for strictening actions: they also reach private and unknown
    # elements, which a dictionary expansion cannot list. KEEP/REPLACE patterns never apply to
    # private elements (those stay removed unless on the safe-private list: the stricter side).
    if pattern is not None and ours in ("remove", "zero"):
        patterns.append(Override(f"{pattern[0]}:{pattern[1]}", ("pattern", pattern[0], pattern[1]),
                                 code, None, f"{source}:{n}", n, False, recipe_text, expr))


def _check_replacement(sel: Selector, value: str, source: str, n: int) -> None:
    vr = _selector_vr(sel)
    if vr in ("DA",) and "{" not in value and not re.fullmatch(r"\d{8}", value):
        raise ProfileError(f"{_describe(sel)} is a date (DA): replacement must be YYYYMMDD",
                           source=source, line=n)
    if vr == "UI" and "{" not in value and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", value):
        raise ProfileError(f"{_describe(sel)} is a UID: replacement must be digits and dots",
                           source=source, line=n)
    if vr == "SQ":
        raise ProfileError(f"{_describe(sel)} is a sequence and cannot be replaced by text",
                           source=source, line=n)


def _group_line(scan: _Scan, name: str, item: dict) -> int | None:
    for ln in scan.groups.get(name, []):
        if str(item.get("field")) in ln.text:
            return ln.number
    return None


def _selectors_for(expr: str, source: str, n: int) -> tuple[list[Selector], tuple[str, str] | None]:
    """Selectors for one field expression, and the pattern when it used an expander."""
    if expr.lower() == "all":
        return [("tag", e.tag) for e in _dictionary()[1].values()], ("all", "")
    plain = _parse_plain_field(expr)
    if plain is not None:
        return [plain], None
    split = _split_expander(expr)
    if split is not None and split[0].lower() in _EXPANDERS:
        expander, expression = split[0].lower(), split[1]
        if not expression:
            raise ProfileError(f"{expander}: needs an expression", source=source, line=n)
        try:
            entries = _expand_pattern(expander, expression)
        except (ValueError, re.error) as exc:
            raise ProfileError(f"bad {expander}: expression ({exc})", source=source, line=n) from None
        return [("tag", e.tag) for e in entries], (expander, expression)
    if expr.lower() in _repeater_keywords():
        raise ProfileError(f"{_repeater_keywords()[expr.lower()]} is in a repeating overlay/curve "
                           f"group (60xx/50xx), which the base profile handles as a whole "
                           f"(option clean-graphics keeps it cleaned)", source=source, line=n)
    if split is not None:
        raise ProfileError(f"unknown field expander {split[0]!r}: (deid supports contains:, "
                           f"startswith:, endswith:, except:, select:, fields:, values:, all)",
                           source=source, line=n)
    raise ProfileError(f"unknown field {expr!r} (not a DICOM keyword, tag or private "
                       f'(gggg,"creator",ee) reference){_suggest(expr)}', source=source, line=n)


def _translate_filters(filters: dict, scan: _Scan, source: str) -> list[RecipeFilter]:
    out: list[RecipeFilter] = []
    for section, labels in filters.items():
        lines = scan.labels.get(section, [])
        for i, crit in enumerate(labels):
            number = lines[i].number if i < len(lines) else 0
            criteria = []
            for f in crit.get("filters", []):
                ops, flds, vals = list(f["action"]), list(f["field"]), list(f["value"])
                tests = []
                for op, fld in zip(ops, flds):
                    v = vals.pop(0) if op in ("contains", "notcontains", "equals", "notequals") and vals else None
                    tests.append(FilterTest(op, fld, v))
                criteria.append(FilterCriterion(tuple(tests), tuple(f.get("InnerOperators", [])),
                                                f.get("operator")))
            coords = tuple((bool(k), str(c)) for k, c in crit.get("coordinates", []))
            label = re.sub(r"(?i)^label\s*", "", str(crit.get("name", ""))).strip()
            out.append(RecipeFilter(section, label, tuple(criteria), coords,
                                    number))
    return out


def _key_of(sel: Selector) -> str:
    """The [tags] key a profile author would write for this selector."""
    if sel[0] == "tag":
        return _describe(sel)
    if sel[0] == "private":
        return f"({sel[1]:04X},xx{sel[3]:02X})"
    return f"{sel[1]}:{sel[2]}"


def override_table_entry(ov: Override) -> tuple[str, dict[str, object]]:
    """The override as a profile ``[tags]`` entry: (key, {action, value?, private_creator?}),
    e.g. to print a recipe as the equivalent TOML. Patterns have no [tags] spelling."""
    if ov.selector[0] == "pattern":
        raise ValueError("pattern overrides have no [tags] key")
    names = {v: k for k, v in _CODE.items()}
    body: dict[str, object] = {"action": names.get(ov.action, ov.action)}
    if ov.value is not None:
        body["value"] = ov.value
    if ov.selector[0] == "private":
        body["private_creator"] = ov.selector[2]
    return ov.key, body


def summarize(tr: RecipeTranslation) -> Iterable[str]:
    """Human lines for ``profiles show``: one per override, PHI-free (no replacement values)."""
    for ov in [*tr.overrides, *tr.patterns]:
        where = f"line {ov.source_line}" if ov.source_line else ""
        via = f" via {ov.expanded_from}" if ov.expanded_from else ""
        yield f"{_describe(ov.selector):45} {ov.action:9} {where}{via}"
