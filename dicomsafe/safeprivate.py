"""The safe-private list (PS3.15 Annex E.3.10) as data.

Why data and not code: the list is a reviewed fact table (which vendor element is known to carry
no identity), it changes with vendors, and reviewers must be able to read it without reading
Python. It lives in ``dicomsafe/data/safe_private.toml``; this module loads and validates it so
a malformed edit is a configuration error, never a silently weaker de-identification.

With the Retain Safe Private Option the rules keep exactly these private elements (and the
private creator elements that reserve their blocks); every other private element is removed.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import ProfileError

#: Actions a safe-private entry may carry (see the header of safe_private.toml), and the plan
#: code each becomes (dicomsafe.rules: K keep, C clean, U keyed UID).
SAFE_PRIVATE_ACTIONS = {"keep": "K", "clean": "C", "uid": "U"}

#: VRs allowed for a retained private element: the full PS3.5 VR list.
VALID_VRS = frozenset(
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    "UR US UT UV".split()
)

_HEX2 = re.compile(r"^[0-9A-Fa-f]{2}$")
_HEX4 = re.compile(r"^[0-9A-Fa-f]{4}$")
_VM = re.compile(r"^\d+(-(\d+|n|\d*n))?$")


@dataclass(frozen=True)
class SafePrivate:
    """One safe private element: ``(group, creator, element)`` means tag (gggg,xxEE) in the
    block that ``creator`` reserves in ``group``."""

    group: int  # odd group number, e.g. 0x0019
    creator: str  # private creator string as the standard spells it
    element: int  # low byte of the element number (0x00-0xFF)
    vr: str
    vm: str
    name: str
    action: str  # plan code: "K" | "C" | "U" (the TOML says keep, clean, uid)
    reason: str

    @property
    def key(self) -> tuple[int, str, int]:
        """Lookup key: (group, normalised creator, element low byte)."""
        return (self.group, normalize_creator(self.creator), self.element)

    @property
    def tag_pattern(self) -> str:
        """The standard's spelling, e.g. ``(0019,xx23)``."""
        return f"({self.group:04X},xx{self.element:02X})"


def normalize_creator(creator: str) -> str:
    """Private creators compare case-insensitively without padding: vendors write
    ``Philips MR Imaging DD 001`` and ``PHILIPS MR IMAGING DD 001`` for the same block."""
    return " ".join(creator.split()).casefold()


def _entry(raw: object, index: int, source: str) -> SafePrivate:
    where = f"entry {index + 1}"
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a table", source=source)
    missing = [k for k in ("group", "creator", "element", "vr", "vm", "name", "action", "reason")
               if k not in raw]
    if missing:
        raise ProfileError(f"{where}: missing {', '.join(missing)}", source=source)
    group, element = str(raw["group"]), str(raw["element"])
    if not _HEX4.match(group) or int(group, 16) % 2 == 0:
        raise ProfileError(f"{where}: group {group!r} is not an odd 4-digit hex group", source=source)
    if int(group, 16) <= 0x0007 or int(group, 16) == 0xFFFF:
        raise ProfileError(f"{where}: group {group} cannot hold private data elements", source=source)
    if not _HEX2.match(element):
        raise ProfileError(f"{where}: element {element!r} is not a 2-digit hex byte", source=source)
    creator = str(raw["creator"])
    if not creator.strip() or len(creator) > 64 or "\\" in creator:
        raise ProfileError(f"{where}: private creator must be a non-empty LO value", source=source)
    vr, vm = str(raw["vr"]), str(raw["vm"])
    if vr not in VALID_VRS:
        raise ProfileError(f"{where}: unknown VR {vr!r}", source=source)
    if not _VM.match(vm):
        raise ProfileError(f"{where}: VM {vm!r} is not like 1, 3-4 or 1-n", source=source)
    action = str(raw["action"])
    if action not in SAFE_PRIVATE_ACTIONS:
        raise ProfileError(
            f"{where}: action {action!r} not one of {', '.join(SAFE_PRIVATE_ACTIONS)}", source=source
        )
    if vr == "UI" and action != "uid":
        raise ProfileError(f"{where}: a UI element must use action 'uid' (keyed)", source=source)
    if vr in ("PN",):
        raise ProfileError(f"{where}: a person name is never safe", source=source)
    name, reason = str(raw["name"]).strip(), str(raw["reason"]).strip()
    if not name or not reason:
        raise ProfileError(f"{where}: name and reason must not be empty", source=source)
    return SafePrivate(int(group, 16), creator, int(element, 16), vr, vm, name,
                       SAFE_PRIVATE_ACTIONS[action], reason)


def parse_safe_private(text: str, source: str = "safe_private.toml") -> list[SafePrivate]:
    """Parse and validate the TOML text of a safe-private list."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"not valid TOML: {exc}", source=source) from None
    if data.get("schema") != 1:
        raise ProfileError("unsupported or missing 'schema' (expected 1)", source=source)
    raw = data.get("private")
    if not isinstance(raw, list) or not raw:
        raise ProfileError("no [[private]] entries", source=source)
    entries = [_entry(item, i, source) for i, item in enumerate(raw)]
    seen: dict[tuple[int, str, int], int] = {}
    for i, e in enumerate(entries):
        if e.key in seen:
            raise ProfileError(
                f"entry {i + 1}: duplicates entry {seen[e.key] + 1} "
                f"({e.tag_pattern} {e.creator})", source=source
            )
        seen[e.key] = i
    return entries


@lru_cache(maxsize=4)
def load_safe_private(path: str | None = None) -> tuple[SafePrivate, ...]:
    """Load the shipped list (or the one at ``path``). Cached: the list is immutable data.

    Returns a tuple (hashable for the cache; use it like a list).
    """
    if path is None:
        text = resources.files("dicomsafe").joinpath("data/safe_private.toml").read_text("utf-8")
        return tuple(parse_safe_private(text, "dicomsafe/data/safe_private.toml"))
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read safe-private list ({exc.strerror})", source=p.name) from None
    return tuple(parse_safe_private(text, p.name))


@lru_cache(maxsize=4)
def safe_private_index(path: str | None = None) -> dict[tuple[int, str, int], SafePrivate]:
    """``{(group, normalised creator, element low byte): SafePrivate}`` for the rules engine."""
    return {e.key: e for e in load_safe_private(path)}


def lookup_safe_private(group: int, creator: str | None, element_low_byte: int,
                        path: str | None = None) -> SafePrivate | None:
    """The safe-private entry for a private element, or None (then it is removed)."""
    if creator is None:
        return None  # no creator, no identity for the element: never safe
    return safe_private_index(path).get((group, normalize_creator(creator), element_low_byte & 0xFF))
