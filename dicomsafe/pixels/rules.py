"""Where text may be, from the header alone: deid ``%filter`` recipes and DICOM flags.

Why deid's recipes: they hold years of curated knowledge (the CTP/Stanford "graylist" of device
screens whose burned-in text sits at known coordinates). We parse them with the deid package's own
parser (``deid.config.DeidRecipe``) so a recipe means here what it means there, but we evaluate the
conditions ourselves, for three reasons:

* deid 0.4.13's ``has_burned_pixels`` writes the coordinates it extracts ("from:" fields) back into
  the parsed recipe, so one dataset's ultrasound regions would leak into the next evaluation;
* it folds the lines of a label with AND whatever their ``+``/``||`` prefix says; we honour the
  operators as written (left to right, ``+`` = and, ``||`` = or, no prefix = and);
* importing its filter module monkey-patches methods onto ``pydicom.Dataset`` process-wide.

The result is a :class:`RuleResult`: ordered mask operations (clean or keep a rectangle), the
labels that matched (recipe text, never dataset values), and header flags.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: Recipes bundled with deid that carry a ``%filter`` section (tag → deid/data/deid.<tag>).
BUNDLED_RECIPES = ("dicom", "dicom.ultrasound", "dicom.xray.chest")

#: The recipe used when a policy names none: deid's general one (graylist of known device screens,
#: blacklist of report/secondary-capture types). The ultrasound recipe is opt-in because it blanks
#: everything outside the ultrasound regions.
DEFAULT_RECIPES = ("dicom",)

#: Modalities whose images commonly carry burned-in annotations (screens, reports, scans, photos).
ANNOTATION_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC", "IVUS", "OPT", "OP", "PX"})

_CONDITIONS = ("contains", "notcontains", "equals", "notequals", "missing", "present", "empty")


@dataclass(frozen=True)
class Rect:
    """A rectangle in pixel coordinates: x0,y0 inclusive, x1,y1 exclusive (numpy slice order)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def clip(self, rows: int, cols: int) -> "Rect | None":
        x0, y0 = max(0, self.x0), max(0, self.y0)
        x1, y1 = min(cols, self.x1), min(rows, self.y1)
        if x1 <= x0 or y1 <= y0:
            return None
        return Rect(x0, y0, x1, y1)


@dataclass(frozen=True)
class Condition:
    action: str
    field: str
    value: str | None


@dataclass(frozen=True)
class Clause:
    """One line of a label: conditions joined by inner operators; ``op`` joins it to the previous."""

    op: str  # "and" | "or"
    conditions: tuple[Condition, ...]
    inner_ops: tuple[str, ...]


@dataclass(frozen=True)
class Coordinate:
    """A mask operation of a rule: ``keep`` False cleans the region, True keeps it."""

    keep: bool
    spec: str  # "x0,y0,x1,y1" | "all" | "from:<SequenceKeyword>"


@dataclass(frozen=True)
class FilterRule:
    group: str  # "whitelist" | "graylist" | "blacklist"
    label: str
    clauses: tuple[Clause, ...]
    coordinates: tuple[Coordinate, ...]


@dataclass(frozen=True)
class FilterSet:
    """The ``%filter`` rules of one or more recipes, in recipe order."""

    rules: tuple[FilterRule, ...]
    sources: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rules)


@dataclass(frozen=True)
class MaskOp:
    keep: bool
    rect: Rect
    label: str


@dataclass
class RuleResult:
    ops: list[MaskOp] = field(default_factory=list)
    graylist: list[str] = field(default_factory=list)  # labels that matched
    blacklist: list[str] = field(default_factory=list)
    whitelist: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # header flag codes, e.g. "burned-in-annotation"

    @property
    def has_clean_rects(self) -> bool:
        return any(not op.keep for op in self.ops)

    @property
    def suspect(self) -> bool:
        """True when the header says text is likely but (maybe) not where."""
        flagged_only = bool(self.graylist) and not self.has_clean_rects
        return bool(self.blacklist or self.flags or flagged_only)


# ---------------------------------------------------------------------------------------------
# Loading recipes through deid's parser


@contextlib.contextmanager
def _quiet_deid() -> Iterator[None]:
    """deid prints DEBUG lines to stderr and calls sys.exit on bad input; contain both."""
    from deid.logger import bot

    old = bot.level
    bot.level = -10  # below ABORT: nothing is emitted
    try:
        yield
    except SystemExit:
        raise ConfigError("deid recipe could not be parsed (malformed %filter section)") from None
    finally:
        bot.level = old


def load_filters(recipes: Iterable[str | Path] | str | Path | None = None) -> FilterSet:
    """Parse the ``%filter`` sections of deid recipes (bundled tags or file paths).

    ``recipes`` is a tag of a recipe bundled with deid ("dicom", "dicom.ultrasound",
    "dicom.xray.chest"), a path to a recipe file, or a sequence of them. Raises ConfigError for a
    missing or malformed recipe.
    """
    if recipes is None:
        recipes = DEFAULT_RECIPES
    if isinstance(recipes, (str, Path)):
        recipes = (recipes,)
    rules: list[FilterRule] = []
    sources: list[str] = []
    for recipe in recipes:
        parsed = _parse_recipe(recipe)
        rules.extend(parsed)
        sources.append(str(recipe) if str(recipe) in BUNDLED_RECIPES else Path(recipe).name)
    return FilterSet(tuple(rules), tuple(sources))


def _parse_recipe(recipe: str | Path) -> list[FilterRule]:
    from deid.config import DeidRecipe

    name = str(recipe)
    if name not in BUNDLED_RECIPES:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"deid recipe not found: {path.name}")
        name = str(path)
    with _quiet_deid():
        try:
            filters = DeidRecipe(name).get_filters() or {}
        except ConfigError:
            raise
        except Exception as exc:  # deid raises plain exceptions on bad syntax
            raise ConfigError(f"deid recipe could not be parsed ({type(exc).__name__})") from None
    out: list[FilterRule] = []
    for group in ("whitelist", "graylist", "blacklist"):
        for item in filters.get(group, []) or []:
            out.append(_to_rule(group, item))
    # Any custom-named list is treated like a graylist (deid treats all lists alike).
    for group, items in filters.items():
        if group in ("whitelist", "graylist", "blacklist"):
            continue
        for item in items or []:
            out.append(_to_rule("graylist", item))
    return out


def _to_rule(group: str, item: dict) -> FilterRule:
    label = str(item.get("name", "")).removeprefix("LABEL").strip() or "(unnamed)"
    clauses = []
    for grp in item.get("filters", []) or []:
        actions = [str(a).lower().strip() for a in grp.get("action", [])]
        fields = [str(f).strip() for f in grp.get("field", [])]
        values = list(grp.get("value", []))
        conds = []
        vi = 0
        for action, fld in zip(actions, fields):
            if action not in _CONDITIONS:
                raise ConfigError(f"deid recipe: unknown filter condition in label {label!r}")
            value = None
            if action in ("contains", "notcontains", "equals", "notequals"):
                value = str(values[vi]).strip() if vi < len(values) else ""
                vi += 1
            conds.append(Condition(action, fld, value))
        op = grp.get("operator") or "and"
        clauses.append(Clause(op, tuple(conds), tuple(grp.get("InnerOperators", []) or [])))
    coords = []
    for value, spec in item.get("coordinates", []) or []:
        coords.append(Coordinate(keep=bool(int(value)), spec=str(spec).strip()))
    return FilterRule(group, label, tuple(clauses), tuple(coords))


# ---------------------------------------------------------------------------------------------
# Evaluating rules against a dataset


def _tag(fld: str) -> int | None:
    """The tag a recipe field names; None for a name no dictionary knows (recipes have typos,
    e.g. "Manfacturer": such a field is simply never present)."""
    if fld.lower().startswith("0x"):
        try:
            return int(fld, 16)
        except ValueError:
            return None
    return tag_for_keyword(fld)


def _field_value(ds: Dataset, fld: str):
    tag = _tag(fld)
    if tag is None or tag not in ds:
        return None
    try:
        return ds[tag].value
    except Exception:  # an unparsable element counts as missing
        return None


def _as_text(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, MultiValue)):
        return ["\\".join(str(v) for v in value)]
    return [str(value)]


def _is_empty(value) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, MultiValue, DicomSequence, bytes, str)):
        return len(value) == 0
    return str(value) == ""


def eval_condition(ds: Dataset, cond: Condition) -> bool:
    """Evaluate one deid condition with deid's meaning (regex search, case-insensitive)."""
    tag = _tag(cond.field)
    present = tag is not None and tag in ds
    value = _field_value(ds, cond.field) if present else None
    if cond.action == "missing":
        return not present
    if cond.action == "present":
        return present
    if cond.action == "empty":
        return present and (value is None or _is_empty(value))
    texts = [t.lower().strip() for t in _as_text(value)]
    term = (cond.value or "").lower().strip()
    if cond.action in ("contains", "notcontains"):
        try:
            pat = re.compile(term)
        except re.error:
            pat = re.compile(re.escape(term))
        hit = any(pat.search(t) for t in texts)
        return hit if cond.action == "contains" else not hit
    eq = any(t == term for t in texts)
    return eq if cond.action == "equals" else not eq


def _fold(values: Sequence[bool], ops: Sequence[str]) -> bool:
    result = values[0]
    for i, v in enumerate(values[1:]):
        op = ops[i] if i < len(ops) else "and"
        result = (result or v) if op == "or" else (result and v)
    return result


def rule_matches(ds: Dataset, rule: FilterRule) -> bool:
    if not rule.clauses:
        return bool(rule.coordinates)  # coordinates only: unconditional (deid's meaning)
    clause_values = []
    for clause in rule.clauses:
        vals = [eval_condition(ds, c) for c in clause.conditions]
        clause_values.append(_fold(vals, clause.inner_ops) if vals else False)
    return _fold(clause_values, [c.op for c in rule.clauses[1:]])


def _rects_from(ds: Dataset, spec: str, rows: int, cols: int) -> list[Rect]:
    if spec.lower() == "all":
        return [Rect(0, 0, cols, rows)]
    if spec.lower().startswith("from:"):
        seq = ds.get(spec[5:].strip())
        items = list(seq) if isinstance(seq, DicomSequence) else []
        rects = []
        for it in items:
            try:
                rects.append(
                    Rect(int(it.RegionLocationMinX0), int(it.RegionLocationMinY0),
                         int(it.RegionLocationMaxX1), int(it.RegionLocationMaxY1))
                )
            except (AttributeError, TypeError, ValueError):
                continue
        return rects
    try:
        x0, y0, x1, y1 = (int(float(p)) for p in spec.split(",") if p.strip())
    except ValueError:
        raise ConfigError("deid recipe: coordinates must be four integers x0,y0,x1,y1") from None
    return [Rect(x0, y0, x1, y1)]


def header_flags(ds: Dataset) -> list[str]:
    """PHI-free codes for header facts that make burned-in text likely."""
    flags = []
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        flags.append("burned-in-annotation")
    modality = str(ds.get("Modality", "")).strip().upper()
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])] if ds.get("ImageType") else []
    if modality in ANNOTATION_MODALITIES:
        flags.append("annotation-modality")
    if {"DERIVED", "SECONDARY"} & set(image_type) and modality in {"SC", "US", "OT"}:
        flags.append("derived-secondary")
    if any(t in ("SCREEN SAVE", "SCREEN", "SAVE", "REPORTDATA", "DEMOGRAPHICDATA") for t in image_type):
        flags.append("screen-capture")
    if "SecondaryCaptureDeviceManufacturer" in ds or "DateOfSecondaryCapture" in ds:
        flags.append("secondary-capture")
    return flags


def recognizable_features(ds: Dataset) -> bool:
    return str(ds.get("RecognizableVisualFeatures", "")).strip().upper() == "YES"


def evaluate(ds: Dataset, filters: FilterSet, rows: int, cols: int) -> RuleResult:
    """Run every rule of ``filters`` against ``ds``; collect mask operations in recipe order."""
    res = RuleResult(flags=header_flags(ds))
    for rule in filters.rules:
        if not rule_matches(ds, rule):
            continue
        getattr(res, rule.group if rule.group in ("whitelist", "blacklist") else "graylist").append(rule.label)
        if rule.group == "whitelist":
            continue
        for coord in rule.coordinates:
            for rect in _rects_from(ds, coord.spec, rows, cols):
                clipped = rect.clip(rows, cols)
                if clipped is not None:
                    res.ops.append(MaskOp(coord.keep, clipped, rule.label))
    return res
