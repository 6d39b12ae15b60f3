"""Profiles: TOML files that say which Table E.1-1 options and per-tag overrides apply.

A profile is loaded, validated and composed (``base`` chain) into an immutable :class:`Profile`.
Every problem is a :class:`~dicomsafe.errors.ProfileError` naming the file and, where it can be
found, the line — a research data manager must be able to fix a profile without a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from .errors import ProfileError
from .standard import OPTION_COLUMNS

ROOT_BASE = "ps3.15"  # the bare Table E.1-1 Basic profile column, no overrides

#: Override actions users may write, with the one-letter table codes as aliases.
ACTIONS = {
    "remove": "X", "x": "X",
    "zero": "Z", "z": "Z",
    "dummy": "D", "d": "D",
    "keep": "K", "k": "K",
    "clean": "C", "c": "C",
    "uid": "U", "u": "U",
    "replace": "replace",
    "pseudonym": "pseudonym",
    "shift": "shift",
    "year": "year",
    "cap-age": "cap-age",
}

from .text import DEFAULT_SCRUB_KINDS as SCRUB_KINDS  # noqa: E402 - one list of scrub kinds
BURNED_IN = ("mask", "quarantine", "keep")
_SECTIONS = {"profile", "dates", "tags", "pixels", "text"}
_TAG_RE = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-fXx]{4})\s*\)?")


@dataclass(frozen=True)
class TagOverride:
    """One explicit action on one attribute.

    ``selector`` is ``("tag", tag_int)`` for public or exact tags, or
    ``("private", group, creator, element_low_byte)`` for a private attribute.
    """

    key: str
    selector: tuple
    action: str
    value: str | None = None
    source: str = ""


@dataclass(frozen=True)
class PixelSettings:
    burned_in: str = "keep"
    ocr: bool = False


@dataclass(frozen=True)
class Profile:
    """A validated, composed profile. ``hash`` identifies its effective content in reports."""

    name: str
    description: str
    source: str
    options: tuple[str, ...]
    overrides: tuple[TagOverride, ...] = ()
    shift_days: tuple[int, int] = (-365, -1)
    pixels: PixelSettings = PixelSettings()
    scrub: tuple[str, ...] = SCRUB_KINDS
    filters: tuple[Any, ...] = ()
    pixel_recipes: tuple[str, ...] = ()  # deid recipe files whose %filter rules the pixel stage applies
    warnings: tuple[str, ...] = ()
    chain: tuple[str, ...] = field(default_factory=tuple)

    @property
    def hash(self) -> str:
        body = {
            "options": sorted(self.options),
            "overrides": [(o.key, list(map(str, o.selector)), o.action, o.value) for o in self.overrides],
            "shift_days": list(self.shift_days),
            "pixels": asdict(self.pixels),
            "scrub": list(self.scrub),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def with_options(self, extra: tuple[str, ...] | list[str]) -> "Profile":
        """Add ``--option`` values from the command line (validated like file options)."""
        opts = list(self.options)
        for o in extra:
            _check_option(o, self.source, None)
            if o not in opts:
                opts.append(o)
        _check_option_conflicts(opts, self.source, None)
        pixels = self.pixels
        if "clean-pixel-data" in opts and pixels.burned_in == "keep":
            pixels = PixelSettings(burned_in="mask", ocr=True)
        return replace(self, options=tuple(opts), pixels=pixels)


def profiles_dirs() -> list[Path]:
    """Where named profiles are looked up: $DICOMSAFE_PROFILES (colon-separated), then the
    project's shipped ``profiles/`` directory."""
    dirs = [Path(p) for p in os.environ.get("DICOMSAFE_PROFILES", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "profiles")
    return dirs


def list_profiles() -> dict[str, Path]:
    """Name → file of every profile found (first directory wins)."""
    found: dict[str, Path] = {}
    for d in profiles_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, p)
    return found


def resolve(name_or_path: str) -> Path:
    """A profile name or a path to a .toml / .deid file."""
    p = Path(name_or_path)
    if p.suffix in (".toml", ".deid") or os.sep in name_or_path:
        if not p.is_file():
            raise ProfileError("profile file not found", source=p.name)
        return p
    found = list_profiles()
    if name_or_path not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ProfileError(f"unknown profile (known: {known})", source=name_or_path)
    return found[name_or_path]


def load_profile(name_or_path: str, options: tuple[str, ...] | list[str] = ()) -> Profile:
    """Load, validate and compose a profile; ``options`` are extra ``--option`` values."""
    path = resolve(name_or_path)
    if path.suffix == ".deid":
        prof = _profile_from_recipe(path)
    else:
        prof = _load_toml(path, seen=())
    return prof.with_options(tuple(options)) if options else prof


def _line_of(text: str, needle: str) -> int | None:
    """First non-comment line that mentions ``needle`` (for error messages)."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line.split("#", 1)[0]:
            return i
    return None


def _check_option(opt: Any, source: str, line: int | None) -> None:
    if not isinstance(opt, str) or opt not in OPTION_COLUMNS:
        known = ", ".join(OPTION_COLUMNS)
        raise ProfileError(f"unknown option {opt!r} (known: {known})", source=source, line=line)


def _check_option_conflicts(opts: list[str] | tuple[str, ...], source: str, line: int | None) -> None:
    if "retain-longitudinal-full-dates" in opts and "retain-longitudinal-modified-dates" in opts:
        raise ProfileError("options retain-longitudinal-full-dates and retain-longitudinal-modified-dates "
                           "exclude each other", source=source, line=line)


def parse_tag_key(key: str, spec: dict, source: str, line: int | None) -> tuple:
    """Turn a [tags] key into a selector; keywords are checked against pydicom's dictionary."""
    m = _TAG_RE.fullmatch(key.strip())
    if m:
        group = int(m.group(1), 16)
        elem_text = m.group(2).upper()
        creator = spec.get("private_creator")
        if group % 2 == 1:
            if not creator or not isinstance(creator, str):
                raise ProfileError(f"private tag {key} needs private_creator = \"...\"", source=source, line=line)
            low = elem_text[2:]
            if "X" in low:
                raise ProfileError(f"private tag {key}: element must be xxEE with a hex EE", source=source, line=line)
            return ("private", group, creator.strip(), int(low, 16))
        if "X" in elem_text:
            raise ProfileError(f"wildcards are not allowed in public tag {key}", source=source, line=line)
        if creator:
            raise ProfileError(f"private_creator given for public tag {key}", source=source, line=line)
        return ("tag", (group << 16) | int(elem_text, 16))
    tag = tag_for_keyword(key.strip())
    if tag is None:
        raise ProfileError(f"unknown attribute keyword {key!r}", source=source, line=line)
    return ("tag", tag)


def _parse_overrides(tags: Any, text: str, source: str) -> list[TagOverride]:
    if not isinstance(tags, dict):
        raise ProfileError("[tags] must be a table", source=source, line=_line_of(text, "[tags]"))
    out: list[TagOverride] = []
    seen: dict[tuple, str] = {}
    for key, spec in tags.items():
        line = _line_of(text, key)
        if isinstance(spec, str):
            spec = {"action": spec}
        if not isinstance(spec, dict):
            raise ProfileError(f"{key}: expected {{ action = \"...\" }}", source=source, line=line)
        unknown = set(spec) - {"action", "value", "private_creator"}
        if unknown:
            raise ProfileError(f"{key}: unknown key(s) {', '.join(sorted(unknown))}", source=source, line=line)
        action = ACTIONS.get(str(spec.get("action", "")).lower())
        if action is None:
            raise ProfileError(f"{key}: unknown action {spec.get('action')!r} (known: "
                               f"{', '.join(a for a in ACTIONS if len(a) > 1)})", source=source, line=line)
        value = spec.get("value")
        if action == "replace" and not isinstance(value, str):
            raise ProfileError(f"{key}: action replace needs value = \"...\"", source=source, line=line)
        if action != "replace" and value is not None:
            raise ProfileError(f"{key}: value is only used with action replace", source=source, line=line)
        selector = parse_tag_key(key, spec, source, line)
        if action in ("shift", "year") and selector[0] == "tag" and dictionary_VR(selector[1]) not in ("DA", "DT", "TM"):
            raise ProfileError(f"{key}: action {action} applies to dates only", source=source, line=line)
        if selector in seen:
            raise ProfileError(f"{key}: conflicts with {seen[selector]} (same attribute twice)",
                               source=source, line=line)
        seen[selector] = key
        out.append(TagOverride(key=key, selector=selector, action=action, value=value,
                               source=f"{Path(source).name}:{line}" if line else Path(source).name))
    return out


def _load_toml(path: Path, seen: tuple[str, ...]) -> Profile:
    source = path.name
    try:
        text = path.read_text("utf-8")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ProfileError(f"invalid TOML ({str(exc).split(' (at')[0]})", source=source,
                           line=int(m.group(1)) if m else None) from None
    except (OSError, UnicodeDecodeError):
        raise ProfileError("cannot read profile file", source=source) from None

    unknown = set(data) - _SECTIONS
    if unknown:
        first = sorted(unknown)[0]
        raise ProfileError(f"unknown section [{first}]", source=source, line=_line_of(text, first))
    head = data.get("profile")
    if not isinstance(head, dict) or not isinstance(head.get("name"), str):
        raise ProfileError("missing [profile] name = \"...\"", source=source, line=_line_of(text, "[profile]"))
    unknown = set(head) - {"name", "description", "base", "options", "deid_recipe"}
    if unknown:
        first = sorted(unknown)[0]
        raise ProfileError(f"unknown key {first!r} in [profile]", source=source, line=_line_of(text, first))

    base_name = head.get("base", "basic")
    if not isinstance(base_name, str):
        raise ProfileError("base must be a profile name", source=source, line=_line_of(text, "base"))
    if base_name == path.stem == "basic" or base_name == ROOT_BASE:
        base = Profile(name=ROOT_BASE, description="PS3.15 Table E.1-1 Basic profile", source=ROOT_BASE,
                       options=(), chain=())
    else:
        if base_name in seen or base_name == path.stem:
            raise ProfileError(f"profile base chain loops through {base_name!r}", source=source,
                               line=_line_of(text, "base"))
        base = _load_toml(resolve(base_name), seen + (path.stem,))

    opts = head.get("options", [])
    if not isinstance(opts, list):
        raise ProfileError("options must be a list", source=source, line=_line_of(text, "options"))
    for o in opts:
        _check_option(o, source, _line_of(text, str(o)) if isinstance(o, str) else _line_of(text, "options"))
    options = list(base.options) + [o for o in opts if o not in base.options]
    _check_option_conflicts(options, source, _line_of(text, "options"))

    overrides = {o.selector: o for o in base.overrides}
    for o in _parse_overrides(data.get("tags", {}), text, source):
        overrides[o.selector] = o

    shift = base.shift_days
    dates = data.get("dates", {})
    if dates:
        sd = dates.get("shift_days") if isinstance(dates, dict) else None
        if (set(dates) - {"shift_days"}) or not (isinstance(sd, list) and len(sd) == 2
                                                  and all(isinstance(x, int) for x in sd)):
            raise ProfileError("[dates] takes shift_days = [low, high] (whole days)", source=source,
                               line=_line_of(text, "[dates]"))
        shift = (min(sd), max(sd))

    pixels = base.pixels
    px = data.get("pixels", {})
    if px:
        if not isinstance(px, dict) or set(px) - {"burned_in", "ocr"}:
            raise ProfileError("[pixels] takes burned_in and ocr", source=source, line=_line_of(text, "[pixels]"))
        bi = px.get("burned_in", pixels.burned_in)
        if bi not in BURNED_IN:
            raise ProfileError(f"burned_in must be one of {', '.join(BURNED_IN)}", source=source,
                               line=_line_of(text, "burned_in"))
        ocr = px.get("ocr", pixels.ocr)
        if not isinstance(ocr, bool):
            raise ProfileError("ocr must be true or false", source=source, line=_line_of(text, "ocr"))
        pixels = PixelSettings(burned_in=bi, ocr=ocr)

    scrub = base.scrub
    tx = data.get("text", {})
    if tx:
        kinds = tx.get("scrub") if isinstance(tx, dict) else None
        if set(tx) - {"scrub"} or not isinstance(kinds, list) or any(k not in SCRUB_KINDS for k in kinds):
            raise ProfileError(f"[text] takes scrub = [...] with kinds from {', '.join(SCRUB_KINDS)}",
                               source=source, line=_line_of(text, "scrub"))
        scrub = tuple(kinds)

    warnings = list(base.warnings)
    filters = tuple(base.filters)
    pixel_recipes = tuple(base.pixel_recipes)
    recipe = head.get("deid_recipe")
    if recipe is not None:
        if not isinstance(recipe, str):
            raise ProfileError("deid_recipe must be a path", source=source, line=_line_of(text, "deid_recipe"))
        rpath = (path.parent / recipe)
        rover, rfilters, rwarn = _recipe_overrides(rpath)
        for o in rover:
            overrides[o.selector] = o
        filters += tuple(rfilters)
        if rfilters:
            pixel_recipes += (str(rpath),)
        warnings += rwarn

    prof = Profile(
        name=head["name"],
        description=str(head.get("description", "")),
        source=str(path),
        options=tuple(options),
        overrides=tuple(overrides.values()),
        shift_days=shift,
        pixels=pixels,
        scrub=scrub,
        filters=filters,
        pixel_recipes=pixel_recipes,
        warnings=tuple(warnings),
        chain=base.chain + ((base.name,) if base.name != ROOT_BASE else ()),
    )
    if "clean-pixel-data" in prof.options and prof.pixels.burned_in == "keep":
        prof = replace(prof, pixels=PixelSettings(burned_in="mask", ocr=True))
    return prof


def _recipe_overrides(path: Path) -> tuple[list[TagOverride], list[Any], list[str]]:
    """Translate a deid recipe through dicomsafe.deidrecipe (which uses the deid package's parser)."""
    try:
        from . import deidrecipe
    except ImportError:
        raise ProfileError("deid recipe import is not available in this build", source=path.name) from None
    if not path.is_file():
        raise ProfileError("deid recipe file not found", source=path.name)
    tr = deidrecipe.translate_recipe(path)
    return list(tr.overrides), list(getattr(tr, "filters", [])), list(getattr(tr, "warnings", []))


def _profile_from_recipe(path: Path) -> Profile:
    """``--profile FILE.deid``: the recipe's explicit actions layered over ``basic``."""
    base = load_profile("basic")
    rover, rfilters, rwarn = _recipe_overrides(path)
    overrides = {o.selector: o for o in base.overrides}
    for o in rover:
        overrides[o.selector] = o
    return replace(base, name=f"{path.stem} (deid recipe over basic)", source=str(path),
                   overrides=tuple(overrides.values()), filters=tuple(rfilters),
                   pixel_recipes=(str(path),) if rfilters else (),
                   warnings=tuple(rwarn), chain=("basic",))
