"""PS3.15 Table E.1-1 as typed rows: the single source of truth for what the Basic profile does.

The table is vendored as JSON (see data/standard/SOURCE.md for its provenance and licence); this
module only parses it. Tags may be wildcards: ``(50XX,XXXX)``, ``(60XX,3000)``; the private row
``(GGGG,EEEE) WHERE GGGG IS ODD`` is returned separately because private attributes are matched
by private creator, not by tag.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources

#: Profile option name (as users write it) → column of the vendored table.
OPTION_COLUMNS: dict[str, str] = {
    "retain-safe-private": "rtnSafePrivOpt",
    "retain-uids": "rtnUIDsOpt",
    "retain-device-identity": "rtnDevIdOpt",
    "retain-institution-identity": "rtnInstIdOpt",
    "retain-patient-characteristics": "rtnPatCharsOpt",
    "retain-longitudinal-full-dates": "rtnLongFullDatesOpt",
    "retain-longitudinal-modified-dates": "rtnLongModifDatesOpt",
    "clean-descriptors": "cleanDescOpt",
    "clean-structured-content": "cleanStructContOpt",
    "clean-graphics": "cleanGraphOpt",
    # Not a column of Table E.1-1: pixels are handled by dicomsafe.pixels (PS3.15 E.3.1).
    "clean-pixel-data": "",
}

#: Options whose effect comes from the table column, in the order the standard lists them.
TABLE_OPTIONS = tuple(name for name, col in OPTION_COLUMNS.items() if col)

ACTION_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})

_EXACT = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)")
_WILD = re.compile(r"\(([0-9A-FX]{4}),([0-9A-FX]{4})\)")


@dataclass(frozen=True)
class TableRow:
    """One attribute of Table E.1-1 with its Basic profile code and option codes."""

    name: str
    tag_text: str
    basic: str
    options: dict[str, str] = field(default_factory=dict)  # option name → code
    in_std_iod: bool = True
    mask: int = 0xFFFFFFFF  # bits that must match ``value`` (wildcards clear their nibbles)
    value: int = 0

    @property
    def is_wildcard(self) -> bool:
        return self.mask != 0xFFFFFFFF

    def matches(self, tag: int) -> bool:
        return (tag & self.mask) == self.value

    def code(self, options: tuple[str, ...] | frozenset[str] = ()) -> str:
        """The effective code for a set of options.

        Options only ever say K (retain) or C (retain, cleaned). When two chosen options both
        speak for a row (e.g. retain-device-identity K and clean-descriptors C) the stricter
        one wins: C, since it keeps the attribute but still cleans it.
        """
        codes = {self.options[o] for o in options if o in self.options}
        if "C" in codes:
            return "C"
        if "K" in codes:
            return "K"
        return self.basic


def _parse_tag(text: str) -> tuple[int, int] | None:
    """Return (mask, value) for ``(gggg,eeee)`` with optional X wildcards, or None (private row)."""
    m = _WILD.fullmatch(text.strip().upper())
    if not m:
        return None
    digits = m.group(1) + m.group(2)
    mask = 0
    value = 0
    for ch in digits:
        mask <<= 4
        value <<= 4
        if ch != "X":
            mask |= 0xF
            value |= int(ch, 16)
    return mask, value


@dataclass(frozen=True)
class Table:
    """The parsed table: exact rows by tag, wildcard rows, and the private-attributes row."""

    exact: dict[int, TableRow]
    wildcards: tuple[TableRow, ...]
    private: TableRow | None

    def lookup(self, tag: int) -> TableRow | None:
        row = self.exact.get(tag)
        if row is not None:
            return row
        for w in self.wildcards:
            if w.matches(tag):
                return w
        return None

    def rows(self) -> list[TableRow]:
        out = list(self.exact.values()) + list(self.wildcards)
        if self.private is not None:
            out.append(self.private)
        return out


def parse_table(records: list[dict]) -> Table:
    """Turn the JSON records into a :class:`Table`; fails loudly on a code we do not know."""
    column_to_option = {col: name for name, col in OPTION_COLUMNS.items() if col}
    exact: dict[int, TableRow] = {}
    wild: list[TableRow] = []
    private: TableRow | None = None
    for rec in records:
        basic = rec["basicProfile"]
        if basic not in ACTION_CODES:
            raise ValueError(f"unknown action code {basic!r} in Table E.1-1 row {rec['tag']}")
        opts = {column_to_option[k]: v for k, v in rec.items() if k in column_to_option}
        parsed = _parse_tag(rec["tag"])
        common = dict(name=rec["name"], tag_text=rec["tag"], basic=basic, options=opts,
                      in_std_iod=rec.get("stdCompIOD", "Y") == "Y")
        if parsed is None:
            private = TableRow(**common, mask=0, value=0)
            continue
        mask, value = parsed
        row = TableRow(**common, mask=mask, value=value)
        if row.is_wildcard:
            wild.append(row)
        else:
            exact[value] = row
    return Table(exact=exact, wildcards=tuple(wild), private=private)


@functools.cache
def load_table() -> Table:
    """Load the vendored Table E.1-1 (cached: it is read once per process)."""
    text = resources.files("dicomsafe").joinpath("data/standard/ps3.15-table-e.1-1.json").read_text("utf-8")
    return parse_table(json.loads(text))
