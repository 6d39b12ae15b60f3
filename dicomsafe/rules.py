"""Compile a profile into a tag → action plan once, then apply it to datasets at every depth.

The plan is plain data (dicts keyed by tag), so applying it is one dictionary lookup per element.
Action semantics (PS3.15 E.1-1 codes and our extensions) live in :func:`_apply_rule`; the
choices the standard leaves open are documented in docs/deidentification.md:

* combined codes resolve to the strictest choice that keeps output valid without IOD knowledge:
  ``X/Z`` → Z, ``X/Z/D`` → Z, ``Z/D`` → Z, ``X/D`` → D, ``X/Z/U*`` → keep the sequence with
  every UID inside it keyed (so references still resolve);
* ``D`` or ``C`` on a sequence keeps its items and applies the plan inside them; free text that
  the table does not list (e.g. SR TextValue) becomes a dummy under ``D`` and is scrubbed under ``C``;
* standard attributes not in the table are kept (PS3.15), except free text inside ``D``/``C``
  sequences, free text in the overlay/curve groups (handled like Overlay Comments), group lengths,
  and instance UIDs (keyed like every other UID unless retain-uids); public tags that are not in
  the DICOM data dictionary at all (corrupted or invented) are removed;
* private attributes are removed unless a safe-private rule or an explicit override keeps them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from .profiles import Profile, TagOverride
from .pseudonyms import Pseudonymizer, shift_da, shift_dt
from .safeprivate import load_safe_private, normalize_creator
from .standard import load_table

log = logging.getLogger(__name__)

FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC", "PN"})
TEXT_VRS = FREE_TEXT_VRS | {"CS", "AE", "UR"}
#: Code sequence members: coded concepts, never free text — kept inside D/C sequences.
CODE_ELEMENTS = frozenset({
    0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080105, 0x00080106, 0x00080107,
    0x0008010B, 0x0008010D, 0x0008010F, 0x00080117, 0x00080118, 0x00080119, 0x00080120,
    0x00080121, 0x00080122, 0x00080123, 0x00080124, 0x0008010C,
})
#: UI attributes that name a class or syntax, not an instance: they identify nobody.
_KEEP_UID_SUFFIXES = ("ClassUID", "SyntaxUID", "SchemeUID", "ResourceUID", "ContextUID",
                      "CreatorUID", "VersionUID", "GroupExtensionCreatorUID")
_DICOM_ROOT = "1.2.840.10008."

DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR: dict[str, Any] = {
    "PN": "ANONYMIZED", "LO": DUMMY_TEXT, "SH": DUMMY_TEXT, "LT": DUMMY_TEXT, "ST": DUMMY_TEXT,
    "UT": DUMMY_TEXT, "UC": DUMMY_TEXT, "CS": "ANONYMIZED", "AE": "ANONYMIZED", "UR": "",
    "DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D",
    "IS": "0", "DS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0,
    "OB": b"\x00\x00", "OW": b"\x00\x00", "OD": b"", "OF": b"", "OL": b"", "OV": b"", "UN": b"",
    "AT": 0,
}

#: CID 7050 (De-identification Method) codes, scheme DCM, by option.
CID7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean-pixel-data": ("113101", "Clean Pixel Data Option"),
    "clean-graphics": ("113103", "Clean Graphics Option"),
    "clean-structured-content": ("113104", "Clean Structured Content Option"),
    "clean-descriptors": ("113105", "Clean Descriptors Option"),
    "retain-longitudinal-full-dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain-longitudinal-modified-dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain-patient-characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain-device-identity": ("113109", "Retain Device Identity Option"),
    "retain-uids": ("113110", "Retain UIDs Option"),
    "retain-safe-private": ("113111", "Retain Safe Private Option"),
    "retain-institution-identity": ("113112", "Retain Institution Identity Option"),
}

_COMBINED = {"X/Z": "Z", "X/Z/D": "Z", "Z/D": "Z", "X/D": "D", "X/Z/U*": "U*"}


@dataclass(frozen=True)
class Rule:
    """What to do with one attribute, and why (for ``profiles show``)."""

    action: str  # X Z D K C U U* replace pseudonym shift year cap-age
    value: str | None = None
    why: str = ""


@dataclass
class Plan:
    """A compiled profile. Build with :func:`compile_plan`; apply with :meth:`apply`."""

    profile: Profile
    exact: dict[int, Rule]
    wildcards: list[tuple[int, int, Rule]]
    private: dict[tuple[int, str, int], Rule]
    retain_uids: bool
    shift_dates: bool
    overlay_text_rule: Rule

    def rule_for(self, tag: int) -> Rule | None:
        rule = self.exact.get(tag)
        if rule is not None:
            return rule
        for mask, value, r in self.wildcards:
            if tag & mask == value:
                return r
        return None

    def apply(self, ds: Dataset, ctx: "Context") -> None:
        """De-identify ``ds`` in place (file meta is the writer's business)."""
        _apply_dataset(ds, self, ctx, mode="normal", depth=0)


@dataclass
class Context:
    """Per-file state the actions need: keyed derivations and the patient's values."""

    pseudo: Pseudonymizer
    patient_token: str
    shift_days: int | None
    scrub: Callable[[str], str]
    max_depth: int = 64
    counts: dict[str, int] = field(default_factory=dict)


def compile_plan(profile: Profile) -> Plan:
    """Resolve base codes, options and overrides into one lookup table."""
    table = load_table()
    opts = frozenset(profile.options)

    def resolve(row_code: str, why: str) -> Rule:
        code = _COMBINED.get(row_code, row_code)
        return Rule(code, why=why if code == row_code else f"{why} ({row_code} resolved to {code})")

    exact: dict[int, Rule] = {}
    for tag, row in table.exact.items():
        code = row.code(opts)
        exact[tag] = resolve(code, "option" if code != row.basic else "basic")
    wildcards = [(row.mask, row.value, resolve(row.code(opts), "basic")) for row in table.wildcards]
    overlay_text = Rule("C" if "clean-graphics" in opts else "X", why="overlay/curve text")

    private: dict[tuple[int, str, int], Rule] = {}
    if "retain-safe-private" in opts:
        for g, creator, elem, action in _safe_private_entries():
            private[(g, normalize_creator(creator), elem)] = Rule(action, why="safe private")
    for o in profile.overrides:
        rule = Rule(o.action, o.value, why=f"override {o.source}")
        if o.selector[0] == "private":
            _, g, creator, elem = o.selector
            private[(g, normalize_creator(creator), elem)] = rule
        else:
            exact[o.selector[1]] = rule
    return Plan(
        profile=profile,
        exact=exact,
        wildcards=wildcards,
        private=private,
        retain_uids="retain-uids" in opts,
        shift_dates="retain-longitudinal-modified-dates" in opts,
        overlay_text_rule=overlay_text,
    )


def _safe_private_entries() -> list[tuple[int, str, int, str]]:
    """(group, creator, element low byte, action) of the safe-private list (data/safe_private.toml)."""
    return [(e.group, e.creator, e.element, e.action) for e in load_safe_private()]


# --------------------------------------------------------------------------------------------
# Application


def _apply_dataset(ds: Dataset, plan: Plan, ctx: Context, mode: str, depth: int) -> None:
    if depth > ctx.max_depth:
        raise RecursionError("sequence nesting too deep")
    private_kept_blocks: set[tuple[int, int]] = set()
    creators: dict[tuple[int, int], str] = {}
    for tag in list(ds.keys()):
        tag = int(tag)
        group, elem = tag >> 16, tag & 0xFFFF
        if group == 0x0002:
            continue
        if elem == 0x0000:
            del ds[tag]  # group lengths: recomputed or omitted by the writer
            continue
        if group % 2 == 1:
            if 0x0010 <= elem <= 0x00FF:
                value = ds[tag].value
                creators[(group, elem)] = normalize_creator(value) if isinstance(value, str) else ""
                continue
            block = (group, elem >> 8)
            creator = creators.get(block)
            rule = plan.private.get((group, creator, elem & 0xFF)) if creator else None
            if rule is None or rule.action == "X":
                del ds[tag]
                continue
            _apply_rule(ds, tag, rule, plan, ctx, mode, depth)
            if tag in ds:
                private_kept_blocks.add(block)
            continue
        rule = plan.rule_for(tag)
        if rule is None:
            rule = _unlisted_rule(ds, tag, plan, mode)
            if rule is None:
                continue
        elif mode == "clean" and rule.action in ("D", "X", "Z") and ds[tag].VR in FREE_TEXT_VRS - {"PN"}:
            rule = Rule("C", why="free text in cleaned sequence")
        _apply_rule(ds, tag, rule, plan, ctx, mode, depth)
    # Private creators stay only for blocks that still hold data.
    for (group, elem) in creators:
        if (group, elem) not in private_kept_blocks:
            del ds[(group << 16) | elem]


def _unlisted_rule(ds: Dataset, tag: int, plan: Plan, mode: str) -> Rule | None:
    """The rule for an attribute Table E.1-1 does not list (None = keep untouched)."""
    elem = ds[tag]
    vr = elem.VR
    group = tag >> 16
    if not keyword_for_tag(tag):
        # Not a standard attribute at all (a corrupted or invented tag): nothing says it is safe.
        return Rule("X", why="unknown public tag")
    if 0x5000 <= group <= 0x60FF and (group & 0xFF00) in (0x5000, 0x6000) and vr in FREE_TEXT_VRS:
        return plan.overlay_text_rule
    if vr == "UI":
        return None if plan.retain_uids or _is_class_uid(elem) else Rule("U", why="instance UID")
    if vr == "SQ":
        return Rule("K", why="not in table") if mode == "normal" else Rule(
            "D" if mode == "dummy" else "C", why="inside de-identified sequence")
    if mode != "normal" and vr in FREE_TEXT_VRS and tag not in CODE_ELEMENTS:
        return Rule("D" if mode == "dummy" or vr == "PN" else "C", why="free text inside sequence")
    return None


def _is_class_uid(elem: DataElement) -> bool:
    kw = elem.keyword or ""
    if kw.endswith(_KEEP_UID_SUFFIXES):
        return True
    values = elem.value if elem.VM > 1 else [elem.value]
    return all(isinstance(v, str) and (v.startswith(_DICOM_ROOT) or not v) for v in values)


def _map_values(elem: DataElement, fn: Callable[[Any], Any]) -> None:
    if elem.value is None or elem.value == "":
        return
    if elem.VM > 1:
        elem.value = [fn(v) for v in elem.value]
    else:
        elem.value = fn(elem.value)


def _apply_rule(ds: Dataset, tag: int, rule: Rule, plan: Plan, ctx: Context, mode: str, depth: int) -> None:
    elem = ds[tag]
    vr = elem.VR
    action = rule.action
    ctx.counts[action] = ctx.counts.get(action, 0) + 1

    if vr == "SQ":
        if action in ("X",):
            del ds[tag]
        elif action == "Z":
            elem.value = Sequence([])
        else:  # K, C, D, U, U*: keep the items, apply the plan inside them
            child_mode = {"D": "dummy", "C": "clean"}.get(action, mode)
            for item in elem.value or []:
                _apply_dataset(item, plan, ctx, child_mode, depth + 1)
        return

    if action == "X":
        del ds[tag]
    elif action == "Z":
        elem.value = b"" if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") else ""
        if vr in ("US", "SS", "UL", "SL", "FL", "FD", "AT", "UV", "SV"):
            elem.value = None
    elif action == "K":
        pass
    elif action in ("U", "U*"):
        if vr == "UI":
            _map_values(elem, lambda v: ctx.pseudo.uid(v) if v else v)
        else:
            _dummy(elem)
    elif action == "D":
        if vr == "UI":
            _map_values(elem, lambda v: ctx.pseudo.uid(v) if v else v)
        else:
            _dummy(elem)
    elif action == "C":
        _clean(elem, plan, ctx)
    elif action == "replace":
        elem.value = (rule.value or "").replace("{pseudo_id}", ctx.patient_token)
    elif action == "pseudonym":
        if vr == "UI":
            _map_values(elem, lambda v: ctx.pseudo.uid(v) if v else v)
        elif vr in TEXT_VRS or vr == "PN":
            issuer = str(ds.get("IssuerOfPatientID", "") or "") if tag == 0x00100020 else ""
            _map_values(elem, lambda v: ctx.pseudo.id_token(str(v), issuer) if str(v).strip() else v)
        else:
            _dummy(elem)
    elif action == "shift":
        _shift(elem, ctx)
    elif action == "year":
        _map_values(elem, _to_year(vr))
    elif action == "cap-age":
        _map_values(elem, _cap_age)
    else:  # pragma: no cover - compile_plan only produces the actions above
        raise ValueError(f"unknown action {action}")


def _dummy(elem: DataElement) -> None:
    vr = elem.VR
    if vr not in DUMMY_BY_VR:
        elem.value = b"" if vr.startswith("O") or vr == "UN" else ""
        return
    dummy = DUMMY_BY_VR[vr]
    if elem.VR in ("OB", "OW") and elem.value in (None, b""):
        return
    elem.value = dummy


def _clean(elem: DataElement, plan: Plan, ctx: Context) -> None:
    """C: keep the attribute, remove what identifies. Dates shift (modified-dates option);
    free text is scrubbed; names become dummies; numbers and codes stay."""
    vr = elem.VR
    if vr in ("DA", "DT"):
        if plan.shift_dates and ctx.shift_days is not None:
            _shift(elem, ctx)
        else:
            _dummy(elem)
    elif vr == "TM":
        pass  # a day shift keeps times of day; intervals are preserved
    elif vr == "PN":
        _dummy(elem)
    elif vr == "UI":
        _map_values(elem, lambda v: ctx.pseudo.uid(v) if v else v)
    elif vr in FREE_TEXT_VRS:
        _map_values(elem, lambda v: ctx.scrub(str(v)))
    elif vr in ("OB", "OW", "UN") and (int(elem.tag) >> 16) & 0xFF00 in (0x5000, 0x6000):
        pass  # overlay/curve bitmaps under clean-graphics: burned-in text is the pixel stage's job
    # other VRs: numbers, codes — nothing to clean


def _shift(elem: DataElement, ctx: Context) -> None:
    days = ctx.shift_days or 0
    if elem.VR == "DA":
        _map_values(elem, lambda v: shift_da(str(v), days))
    elif elem.VR == "DT":
        _map_values(elem, lambda v: shift_dt(str(v), days))


def _to_year(vr: str) -> Callable[[Any], Any]:
    def year(v: Any) -> Any:
        s = str(v).strip()
        if vr == "DA" and len(s) >= 4 and s[:4].isdigit():
            return s[:4] + "0101"
        if vr == "DT" and len(s) >= 4 and s[:4].isdigit():
            return s[:4]
        return ""
    return year


def _cap_age(v: Any) -> Any:
    s = str(v).strip().upper()
    if len(s) == 4 and s[:3].isdigit() and s[3] == "Y" and int(s[:3]) > 89:
        return "090Y"
    return s


def describe_plan(plan: Plan) -> list[tuple[str, str, str, str]]:
    """(tag, name, action, why) rows of the effective plan, for ``profiles show``."""
    from pydicom.datadict import keyword_for_tag

    table = load_table()
    rows = []
    for tag, rule in sorted(plan.exact.items()):
        trow = table.exact.get(tag)
        name = trow.name if trow else (keyword_for_tag(tag) or "")
        rows.append((f"({tag >> 16:04X},{tag & 0xFFFF:04X})", name, _action_label(rule), rule.why))
    for mask, value, rule in plan.wildcards:
        trow = next(r for r in table.wildcards if r.mask == mask and r.value == value)
        rows.append((trow.tag_text, trow.name, _action_label(rule), rule.why))
    for (g, creator, elem), rule in sorted(plan.private.items()):
        rows.append((f"({g:04X},xx{elem:02X})", f"private {creator}", _action_label(rule), rule.why))
    rows.append(("(gggg,eeee) odd", "other private attributes", "X", "basic"))
    return rows


def _action_label(rule: Rule) -> str:
    return f"replace {rule.value!r}" if rule.action == "replace" else rule.action
