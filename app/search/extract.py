"""Search-index extraction driven by the R4 SearchParameter definitions (R4 search.html §3.1.1).

`Indexer.rows(resource)` evaluates every SearchParameter of the resource's type (compiled once
per type by `app.search.fhirpath`) and converts each result item to index rows by the
parameter's type and the item's FHIR type, following the R4 search semantics:

- string: string/markdown values; HumanName family, given, prefix, suffix, text; Address line,
  city, district, state, postalCode, country, text; CodeableConcept text and coding displays;
  Coding display; Identifier value; Annotation text; ContactPoint value. `norm` is
  `normalize_string`, `exact` the original text. Personal-name parameters of Patient,
  Practitioner, RelatedPerson and Person also get pinyin keys and the full Chinese name
  (family immediately followed by given: 张三) as rows with `exact=None`
  (`app.search.normalize`).
- token: Coding (system, code, display); CodeableConcept one row per coding with the coding's
  display as text (else CodeableConcept.text), plus a (None, None, text) row carrying
  CodeableConcept.text for `:text` when no row already does; Identifier (system, value,
  type.text or type.coding.display); ContactPoint (None, value) as R4's token table says (its
  system is what `phone`/`email` filter on, not a token system); boolean "true"/"false";
  code/string/id/uri (None, value).
- date: date/dateTime/instant as the range of their precision, read in the configured zone
  when they carry none; Period start..end with open ends at DATE_MIN/DATE_MAX; Timing from its
  earliest to its latest event and repeat.boundsPeriod (R4: only the outer limits matter).
  Age, Range, string and time values of choice elements are not dates and are skipped.
- number: integer/decimal with the implicit precision range (`100` → [99.5, 100.5)); Range
  low..high.
- quantity: Quantity and its profiles (Age, Duration, Distance, Count) with code else unit;
  Money (system urn:iso:std:iso:4217, code currency); SampledData.origin; Range low..high.
- reference: Reference to `Type/id` (relative, or absolute under one of this server's base
  URLs) as a local target; other absolute URLs and `urn:uuid:`/`urn:oid:` as `url` (without
  `/_history/n`); contained references `#x` are skipped; Reference.identifier fills the
  identifier columns. canonical/uri values are `url` without their `|version`; a resource
  (Bundle.entry[0].resource) is a local target by its type and id.
- uri: uri/url/canonical/oid/uuid kept whole; a canonical with `|version` also gets a row
  without the version, so `url=` finds it with or without one.
- composite: the base expression's elements, then every component expression on each element;
  one CompositeRow for each combination of component values within one element. A reference
  component fills a token pair of columns with (type, id), or (None, url) when not local.
  A component is converted by its definition's type unless that type cannot hold what its
  expression yields: R4's DocumentReference `relationship` pairs the reference definition with
  `code` and the token definition with `target`, so it is indexed as (code, target).

`_content`, `_text`, `_query`, `special` parameters (`Location.near`) and parameters without
an expression produce no rows. Values that are not what their type says (an unparseable date, a
string where a Coding belongs) are skipped, never raised: extraction runs after validation, so
such a value is a bug elsewhere that must not block the write.

Numbers parsed from JSON as floats have lost trailing zeros (`1.50` arrives as 1.5), so their
precision is read from the shortest float repr; parse with `parse_float=Decimal` to keep it.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from app.config import Settings
from app.definitions.registry import Registry, SearchParamDef
from app.search.dates import date_range_ms, parse_offset_ms
from app.search.fhirpath import Expression, FHIRPathCompiler, Item, Node
from app.search.index import (
    DATE_MAX,
    DATE_MIN,
    CompositeRow,
    DateRow,
    IndexRows,
    NumberRow,
    QuantityRow,
    ReferenceRow,
    StringRow,
    TokenRow,
    UriRow,
)
from app.search.normalize import (
    has_han,
    name_pinyin_forms,
    normalize_string,
    text_name_pinyin_forms,
)

__all__ = ["Indexer", "date_range_ms", "decimal_range", "parse_offset_ms"]

_log = logging.getLogger(__name__)

SKIPPED_PARAMS = frozenset({"_content", "_text", "_query"})
PINYIN_RESOURCES = frozenset({"Patient", "Practitioner", "RelatedPerson", "Person"})
PINYIN_PARAMS = frozenset({"name", "family", "given", "phonetic"})
ISO_4217 = "urn:iso:std:iso:4217"

_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Duration", "Distance", "Count",
                             "SimpleQuantity", "MoneyQuantity"})
_STRING_PRIMITIVES = frozenset({"string", "markdown", "code", "id", "uri", "url", "canonical",
                                "oid", "uuid"})
_TOKEN_PRIMITIVES = frozenset({"code", "string", "id", "uri", "url", "canonical", "oid", "uuid",
                               "markdown"})
_URI_TYPES = frozenset({"uri", "url", "canonical", "oid", "uuid"})
_DATE_PRIMITIVES = frozenset({"date", "dateTime", "instant"})


# ---------------------------------------------------------------------------------------------
# Numbers


def decimal_range(value: Any) -> tuple[float, float, float] | None:
    """(value, lo, hi) of a JSON number with its implicit precision; None if not a number.

    Same arithmetic as the query side's `number_range`: `100` → [99.5, 100.5),
    `1.5` → [1.45, 1.55), `1.50` (as a Decimal) → [1.495, 1.505).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        v = float(value)
        return v, v - 0.5, v + 0.5
    if isinstance(value, float | Decimal | str):
        return _decimal_range(value)
    return None


# Lab values recur (4.5, 10.2, 135); `typed` keeps 1.0 and Decimal("1.00") apart.
@lru_cache(maxsize=4096, typed=True)
def _decimal_range(value: float | Decimal | str) -> tuple[float, float, float] | None:
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = repr(value)
        if "e" not in text:
            # m·10^-k ± 5·10^-(k+1) as exact integer ratios: int / int is correctly rounded,
            # so this gives the same floats as the Decimal arithmetic below, at a third of
            # the cost.
            k = len(text) - text.index(".") - 1
            m = int(text.replace(".", ""))
            scale = 10 ** (k + 1)
            return value, (m * 10 - 5) / scale, (m * 10 + 5) / scale
        dec = Decimal(text)
    elif isinstance(value, str):
        try:
            dec = Decimal(value)
        except InvalidOperation:
            return None
    else:
        dec = value
    if not dec.is_finite():
        return None
    exponent = dec.as_tuple().exponent
    if not isinstance(exponent, int):
        return None
    half = Decimal(5).scaleb(exponent - 1)
    return float(dec), float(dec - half), float(dec + half)


# ---------------------------------------------------------------------------------------------
# Conversion of one evaluated item to the columns of its index type, without the parameter
# code: the same element often feeds several parameters (Observation.code feeds `code`,
# `combo-code` and the composites), so conversions are memoised per `rows()` call.

Conversion = list[tuple[Any, ...]]
# Keyed by the value's id; the value is kept beside its conversion so that an id reused by a
# short-lived object can never be mistaken for it.
Memo = dict[tuple[str, int, Node], tuple[Any, Conversion]]
Emit = Callable[[list[Item], dict[str, Any], IndexRows, Memo], None]


@dataclass(frozen=True, slots=True)
class _Component:
    expression: Expression
    kind: str  # token, reference, quantity, date, number, string


@dataclass(frozen=True, slots=True)
class _Entry:
    code: str
    expression: Expression
    # Top-level keys of the resource the expression reads; None: always evaluate it.
    root_keys: tuple[str, ...] | None
    emit: Emit


class Indexer:
    """Turns a resource (parsed JSON) into the search-index rows of its SearchParameters.

    `default_timezone` is the offset assumed for dates and times without one; `base_urls` are
    this server's own FHIR base URLs, under which absolute references are local ones.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        default_timezone: str = "+08:00",
        base_urls: Iterable[str] = (),
    ) -> None:
        self.registry = registry
        self.compiler = FHIRPathCompiler(registry)
        self.default_offset_ms = parse_offset_ms(default_timezone)
        self.base_urls = tuple(
            sorted({u.rstrip("/") + "/" for u in base_urls if u}, key=len, reverse=True)
        )
        self._plans: dict[str, tuple[_Entry, ...]] = {}
        self._local_references: dict[str, tuple[str, str] | None] = {}
        self._converters: dict[str, Callable[[Any, Node], Conversion]] = {
            "string": self._strings,
            "token": self._tokens,
            "date": self._dates,
            "number": self._numbers,
            "quantity": self._quantities,
            "reference": self._references,
            "uri": self._uris,
        }

    @classmethod
    def from_settings(cls, registry: Registry, settings: Settings) -> Indexer:
        return cls(
            registry, default_timezone=settings.default_timezone, base_urls=(settings.base_url,)
        )

    # -- public -----------------------------------------------------------------------------

    def rows(self, resource: dict[str, Any], only: Collection[str] | None = None,
             into: IndexRows | None = None) -> IndexRows:
        """Every index row of the resource; empty for an unknown resourceType. `only`: just
        the rows of those parameter codes (what authorization checks need), added to `into`."""
        out = into if into is not None else IndexRows()
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return out
        memo: Memo = {}
        for entry in self.plan(rtype):
            if only is not None and entry.code not in only:
                continue
            keys = entry.root_keys
            if keys is not None:
                for key in keys:
                    if key in resource:
                        break
                else:
                    continue
            try:
                items = entry.expression(resource)
                if items:
                    entry.emit(items, resource, out, memo)
            except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
                # Converters check every value's shape, so this is a bug; losing one
                # parameter's rows is better than refusing the write that triggered it (and
                # authorization, judging the same rows, fails closed on it).
                _log.warning(
                    "search index: %s/%s parameter %s skipped: %r",
                    rtype, resource.get("id"), entry.code, exc,
                )
        return out

    def plan(self, resource_type: str) -> tuple[_Entry, ...]:
        """The compiled parameters of a resource type (compiled on first use, then cached)."""
        plan = self._plans.get(resource_type)
        if plan is None:
            params = self.registry.search_params.get(resource_type, {})
            plan = tuple(
                self._entry(resource_type, p) for p in params.values() if self._indexed(p)
            )
            self._plans[resource_type] = plan
        return plan

    def local_reference(self, reference: str) -> tuple[str, str] | None:
        """(type, id) of `Type/id` or of an absolute URL under one of our base URLs."""
        cache = self._local_references
        if reference in cache:
            return cache[reference]
        if len(cache) >= 65536:
            # References cluster (a patient's, an encounter's resources arrive together), so
            # starting afresh now and then loses little.
            cache.clear()
        found = cache[reference] = self._local_reference(reference)
        return found

    def _local_reference(self, reference: str) -> tuple[str, str] | None:
        if "://" in reference:
            for base in self.base_urls:
                if reference.startswith(base):
                    return self._type_id(reference[len(base) :])
            return None
        return self._type_id(reference)

    # -- compilation ------------------------------------------------------------------------

    @staticmethod
    def _indexed(param: SearchParamDef) -> bool:
        return (
            param.expression is not None
            and param.code not in SKIPPED_PARAMS
            and param.type != "special"
        )

    def _entry(self, resource_type: str, param: SearchParamDef) -> _Entry:
        assert param.expression is not None
        expression = self.compiler.compile(param.expression, resource_type)
        code = param.code
        emit: Emit
        if param.type == "composite":
            emit = self._composite_emitter(resource_type, param, expression)
        elif param.type == "string":
            pinyin = resource_type in PINYIN_RESOURCES and code in PINYIN_PARAMS
            emit = self._string_emitter(code, pinyin)
        else:
            emit = self._simple_emitter(code, param.type)
        keys = expression.root_keys
        if param.type == "composite" and keys is None:
            keys = self._composite_root_keys(resource_type, param, expression)
        return _Entry(code, expression, tuple(sorted(keys)) if keys is not None else None, emit)

    def _composite_root_keys(
        self, resource_type: str, param: SearchParamDef, base: Expression
    ) -> frozenset[str] | None:
        """Keys without which a composite based on the resource itself (`Observation`) is empty:
        a row needs every component, so the keys of any one component will do."""
        if base.output_nodes != (self.compiler.resource_node(resource_type),):
            return None
        for _, expr in reversed(param.components):
            component = self.compiler.compile(expr, resource_type)
            if component.root_keys is not None:
                return component.root_keys
        return None

    def _convert(self, kind: str, value: Any, node: Node, memo: Memo) -> Conversion:
        if value.__class__ is not dict:
            return self._converters[kind](value, node)
        key = (kind, id(value), node)
        hit = memo.get(key)
        if hit is not None and hit[0] is value:
            return hit[1]
        conversion = self._converters[kind](value, node)
        memo[key] = (value, conversion)
        return conversion

    def _simple_emitter(self, code: str, kind: str) -> Emit:
        row_type, target = _ROW_TYPES[kind]
        convert = self._converters[kind]

        def emit(items: list[Item], resource: dict[str, Any], out: IndexRows, memo: Memo) -> None:
            columns: list[tuple[Any, ...]] = []
            for value, node in items:
                if value.__class__ is dict:
                    key = (kind, id(value), node)
                    hit = memo.get(key)
                    if hit is not None and hit[0] is value:
                        conversion = hit[1]
                    else:
                        conversion = convert(value, node)
                        memo[key] = (value, conversion)
                else:
                    conversion = convert(value, node)
                columns += conversion
            if columns:
                # Deduplicate on the column tuples: hashing them is far cheaper than hashing
                # the (frozen dataclass) rows.
                unique = dict.fromkeys(columns) if len(columns) > 1 else columns
                getattr(out, target).extend([row_type(code, *c) for c in unique])

        return emit

    def _string_emitter(self, code: str, pinyin: bool) -> Emit:
        convert = self._convert

        def emit(items: list[Item], resource: dict[str, Any], out: IndexRows, memo: Memo) -> None:
            columns: dict[tuple[Any, ...], None] = {}
            for value, node in items:
                columns.update(dict.fromkeys(convert("string", value, node, memo)))
            if pinyin:
                stored = {norm for norm, _ in columns}
                for value, node in items:
                    for form in _pinyin_forms(code, value, node):
                        if form not in stored:
                            stored.add(form)
                            columns[(form, None)] = None
            out.string.extend([StringRow(code, norm, exact) for norm, exact in columns])

        return emit

    def _composite_emitter(
        self, resource_type: str, param: SearchParamDef, base: Expression
    ) -> Emit:
        components = []
        for url, expr in param.components:
            definition = self.registry.params_by_url[url]
            compiled = self.compiler.compile_relative(expr, base.output_nodes, resource_type)
            components.append(_Component(compiled, self._component_kind(definition, compiled)))
        code = param.code
        parts = tuple(components)
        # The value components are absent far more often than the code, so they go first and
        # an element that lacks one is dropped before the code is converted.
        order = tuple(reversed(range(len(parts))))

        def emit(items: list[Item], resource: dict[str, Any], out: IndexRows, memo: Memo) -> None:
            combos: dict[tuple[Any, ...], None] = {}
            for item in items:
                values: list[list[tuple[Any, ...]]] = [[] for _ in parts]
                for i in order:
                    values[i] = self._component_values(parts[i], [item], resource, memo)
                    if not values[i]:
                        break
                else:
                    combos.update(dict.fromkeys(itertools.product(*values)))
            out.composite.extend([_composite_row(code, parts, combo) for combo in combos])

        return emit

    def _component_kind(self, definition: SearchParamDef, compiled: Expression) -> str:
        """The component's type, unless its definition cannot hold what the expression yields.

        R4's DocumentReference `relationship` pairs its components crosswise (the reference
        definition with `code`, the token definition with `target`); indexing by what the
        expression yields keeps the values instead of dropping both.
        """
        types = {n.type for n in compiled.output_nodes}
        if types & _KIND_TYPES.get(definition.type, frozenset()):
            return definition.type
        if "Reference" in types:
            return "reference"
        return "token"

    def _component_values(
        self, component: _Component, focus: list[Item], resource: dict[str, Any], memo: Memo
    ) -> list[tuple[Any, ...]]:
        """Column values of one component on one element (see CompositeRow)."""
        kind = component.kind
        out: list[tuple[Any, ...]] = []
        for value, node in component.expression.evaluate(focus, resource):
            for c in self._convert(kind, value, node, memo):
                if kind == "token":
                    if c[1] is not None:
                        out.append((c[0], c[1]))
                elif kind == "reference":
                    if c[1] is not None:
                        out.append((c[0], c[1]))
                    elif c[2] is not None:
                        out.append((None, c[2]))
                elif kind == "quantity":
                    out.append((c[0], c[1], c[3], c[4]))
                elif kind == "number":
                    out.append((c[1], c[2]))
                else:  # date (lo, hi), string (norm, exact)
                    out.append(c[:2] if kind == "date" else c[:1])
        return list(dict.fromkeys(out)) if len(out) > 1 else out

    # -- per-type conversion: item → list of column tuples ----------------------------------

    def _strings(self, value: Any, node: Node) -> Conversion:
        """(norm, exact) pairs."""
        t = node.type
        if isinstance(value, str):
            return _string_columns(value) if t in _STRING_PRIMITIVES else []
        if not isinstance(value, dict):
            return []
        fields = _STRING_FIELDS.get(t)
        if fields is None:
            return []
        out: Conversion = []
        for field in fields:
            v = value.get(field)
            if isinstance(v, str):
                out.extend(_string_columns(v))
            elif isinstance(v, list):
                for part in v:
                    if isinstance(part, str):
                        out.extend(_string_columns(part))
        if t == "CodeableConcept":
            for coding in _dicts(value.get("coding")):
                display = coding.get("display")
                if isinstance(display, str):
                    out.extend(_string_columns(display))
        return out

    def _tokens(self, value: Any, node: Node) -> Conversion:
        """(system, code, text) triples."""
        t = node.type
        if isinstance(value, bool):
            return [(None, "true" if value else "false", None)] if t == "boolean" else []
        if isinstance(value, str):
            return [(None, value, None)] if t in _TOKEN_PRIMITIVES and value else []
        if not isinstance(value, dict):
            return []
        out: Conversion = []
        if t == "CodeableConcept":
            text = _str(value.get("text"))
            covered = False
            for coding in _dicts(value.get("coding")):
                display = _str(coding.get("display")) or text
                columns = _coding_columns(coding, display)
                if columns is not None:
                    out.append(columns)
                    covered = covered or display == text
            if text and not covered:
                out.append((None, None, normalize_string(text)))
        elif t == "Coding":
            columns = _coding_columns(value, _str(value.get("display")))
            if columns is not None:
                out.append(columns)
        elif t == "Identifier":
            ident, system = _str(value.get("value")), _str(value.get("system"))
            if ident or system:
                type_text = _identifier_type_text(value.get("type"))
                out.append((system, ident, normalize_string(type_text) if type_text else None))
                if ident:
                    # `:of-type` rows: the type coding in the system column, under a prefix no
                    # real system URI has, so only `:of-type` searches can match them.
                    for coding in _dicts(_dict(value.get("type")).get("coding")):
                        tsys, tcode = _str(coding.get("system")), _str(coding.get("code"))
                        if tsys and tcode:
                            out.append((of_type_system(tsys, tcode), ident, None))
        elif t == "ContactPoint":
            contact = _str(value.get("value"))
            if contact:
                out.append((None, contact, None))
        return out

    def _dates(self, value: Any, node: Node) -> Conversion:
        """(lo, hi) pairs."""
        t = node.type
        if isinstance(value, str):
            if t in _DATE_PRIMITIVES:
                r = date_range_ms(value, self.default_offset_ms)
                return [r] if r is not None else []
            return []
        if not isinstance(value, dict):
            return []
        if t == "Period":
            span = self._period(value)
            return [span] if span is not None else []
        if t == "Timing":
            found = [
                r
                for e in _list(value.get("event"))
                if isinstance(e, str) and (r := date_range_ms(e, self.default_offset_ms))
            ]
            repeat = value.get("repeat")
            bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
            if isinstance(bounds, dict) and (span := self._period(bounds)) is not None:
                found.append(span)
            if found:
                return [(min(r[0] for r in found), max(r[1] for r in found))]
        return []

    def _period(self, period: dict[str, Any]) -> tuple[int, int] | None:
        start, end = period.get("start"), period.get("end")
        lo = date_range_ms(start, self.default_offset_ms) if isinstance(start, str) else None
        hi = date_range_ms(end, self.default_offset_ms) if isinstance(end, str) else None
        if lo is None and hi is None:
            return None
        return (lo[0] if lo else DATE_MIN), (hi[1] if hi else DATE_MAX)

    def _numbers(self, value: Any, node: Node) -> Conversion:
        """(value, lo, hi) triples."""
        if node.type == "Range":
            span = _range_bounds(value)
            return [(span[2], span[0], span[1])] if span is not None else []
        r = decimal_range(value)
        return [r] if r is not None else []

    def _quantities(self, value: Any, node: Node) -> Conversion:
        """(system, code, value, lo, hi) tuples."""
        if not isinstance(value, dict):
            return []
        t = node.type
        columns: tuple[Any, ...] | None = None
        if t in _QUANTITY_TYPES:
            columns = _quantity_columns(value)
        elif t == "Money":
            r = decimal_range(value.get("value"))
            if r is not None:
                columns = (ISO_4217, _str(value.get("currency")), *r)
        elif t == "SampledData":
            origin = value.get("origin")
            columns = _quantity_columns(origin) if isinstance(origin, dict) else None
        elif t == "Range":
            span = _range_bounds(value)
            if span is not None:
                low, high = value.get("low"), value.get("high")
                unit_of = low if isinstance(low, dict) else high
                system, unit = _quantity_unit(unit_of if isinstance(unit_of, dict) else {})
                columns = (system, unit, span[2], span[0], span[1])
        return [columns] if columns is not None else []

    def _references(self, value: Any, node: Node) -> Conversion:
        """(target_type, target_id, url, identifier_system, identifier_value) tuples."""
        t = node.type
        if isinstance(value, str):
            if t not in _URI_TYPES or not value:
                return []
            url = value.split("|", 1)[0]
            local = None if "://" in url or url.startswith("urn:") else self._type_id(url)
            if local is not None:
                return [(local[0], local[1], None, None, None)]
            return [(None, None, url, None, None)]
        if not isinstance(value, dict):
            return []
        if t == "Reference":
            columns = self._reference_columns(value)
            return [columns] if columns is not None else []
        rid = value.get("id")
        if self.registry.is_resource_type(t) and isinstance(rid, str) and rid:
            # A resource in place of a reference: Bundle.entry[0].resource.
            return [(t, rid, None, None, None)]
        return []

    def _reference_columns(self, value: dict[str, Any]) -> tuple[Any, ...] | None:
        ref = value.get("reference")
        target_type = target_id = url = None
        if isinstance(ref, str) and ref:
            if ref[0] == "#":
                return None
            if ref.startswith("urn:"):
                url = ref
            else:
                local = self.local_reference(ref)
                if local is not None:
                    target_type, target_id = local
                elif "://" in ref:
                    url = _strip_history(ref)
        identifier = value.get("identifier")
        id_system = id_value = None
        if isinstance(identifier, dict):
            id_system = _str(identifier.get("system"))
            id_value = _str(identifier.get("value"))
        if target_id is None and url is None and id_value is None:
            return None
        return target_type, target_id, url, id_system, id_value

    def _uris(self, value: Any, node: Node) -> Conversion:
        """(value,) singletons."""
        if not isinstance(value, str) or not value or node.type not in _URI_TYPES:
            return []
        if node.type == "canonical" and "|" in value:
            return [(value,), (value.split("|", 1)[0],)]
        return [(value,)]

    def _type_id(self, path: str) -> tuple[str, str] | None:
        parsed = _LOCAL_RE.fullmatch(path)
        if parsed is None or not self.registry.is_resource_type(parsed.group(1)):
            return None
        return parsed.group(1), parsed.group(2)


_LOCAL_RE = re.compile(
    r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)
_HISTORY_RE = re.compile(r"/_history/[^/]*$")

_ROW_TYPES: dict[str, tuple[Callable[..., Any], str]] = {
    "token": (TokenRow, "token"),
    "date": (DateRow, "date"),
    "number": (NumberRow, "number"),
    "quantity": (QuantityRow, "quantity"),
    "reference": (ReferenceRow, "reference"),
    "uri": (UriRow, "uri"),
}

_STRING_FIELDS: dict[str, tuple[str, ...]] = {
    "HumanName": ("family", "given", "prefix", "suffix", "text"),
    "Address": ("line", "city", "district", "state", "postalCode", "country", "text"),
    "CodeableConcept": ("text",),
    "Coding": ("display",),
    "Identifier": ("value",),
    "Annotation": ("text",),
    "ContactPoint": ("value",),
}

_KIND_TYPES: dict[str, frozenset[str]] = {
    "token": frozenset({"CodeableConcept", "Coding", "Identifier", "ContactPoint", "boolean"})
    | _TOKEN_PRIMITIVES,
    "reference": frozenset({"Reference", "canonical", "uri"}),
    "quantity": _QUANTITY_TYPES | {"Money", "SampledData", "Range"},
    "date": _DATE_PRIMITIVES | {"Period", "Timing"},
    "number": frozenset({"integer", "decimal", "positiveInt", "unsignedInt", "Range"}),
    "string": _STRING_PRIMITIVES | set(_STRING_FIELDS),
}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dicts(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return [value] if isinstance(value, dict) else []


def _string_columns(text: str) -> Conversion:
    norm = normalize_string(text)
    return [(norm, text)] if norm else []


def _pinyin_forms(code: str, value: Any, node: Node) -> list[str]:
    """Pinyin keys and the full Chinese name of a personal name (see app.search.normalize)."""
    if node.type == "HumanName" and isinstance(value, dict):
        family = _str(value.get("family"))
        given = [g for g in _list(value.get("given")) if isinstance(g, str) and g]
        forms = list(name_pinyin_forms(family, tuple(given)))
        if family and given and has_han(family):
            forms.append(normalize_string(family + "".join(given)))
        text = _str(value.get("text"))
        if text:
            forms.extend(text_name_pinyin_forms(text))
        return forms
    if isinstance(value, str) and has_han(value):
        return list(
            name_pinyin_forms(value) if code == "family" else name_pinyin_forms(None, (value,))
        )
    return []


def _coding_columns(coding: dict[str, Any], display: str | None) -> tuple[Any, ...] | None:
    system, value = _str(coding.get("system")), _str(coding.get("code"))
    if system is None and value is None and display is None:
        return None
    return system, value, normalize_string(display) if display else None


def of_type_system(type_system: str, type_code: str) -> str:
    """The system column of an Identifier's `:of-type` index row."""
    return f"of-type:{type_system}|{type_code}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _identifier_type_text(type_: Any) -> str | None:
    if not isinstance(type_, dict):
        return None
    text = _str(type_.get("text"))
    if text:
        return text
    for coding in _dicts(type_.get("coding")):
        display = _str(coding.get("display"))
        if display:
            return display
    return None


def _quantity_unit(quantity: dict[str, Any]) -> tuple[str | None, str | None]:
    return _str(quantity.get("system")), _str(quantity.get("code")) or _str(quantity.get("unit"))


def _quantity_columns(quantity: dict[str, Any]) -> tuple[Any, ...] | None:
    r = decimal_range(quantity.get("value"))
    if r is None:
        return None
    return (*_quantity_unit(quantity), *r)


def _range_bounds(value: Any) -> tuple[float, float, float] | None:
    """(lo, hi, value) of a Range: low's lower bound to high's upper bound, open ends infinite;
    the value is low's (else high's) so `eq` has something to compare."""
    if not isinstance(value, dict):
        return None
    low, high = value.get("low"), value.get("high")
    lo = decimal_range(low.get("value")) if isinstance(low, dict) else None
    hi = decimal_range(high.get("value")) if isinstance(high, dict) else None
    if lo is not None:
        return lo[1], (hi[2] if hi else math.inf), lo[0]
    if hi is not None:
        return -math.inf, hi[2], hi[0]
    return None


def _strip_history(url: str) -> str:
    return _HISTORY_RE.sub("", url) if "/_history/" in url else url


def _composite_row(code: str, parts: Sequence[_Component], combo: tuple[Any, ...]) -> CompositeRow:
    c2_system = c2_code = c2_lo = c2_hi = c2_str = c3_lo = c3_hi = None
    if len(parts) > 1:
        kind, value = parts[1].kind, combo[1]
        if kind in ("token", "reference"):
            c2_system, c2_code = value
        elif kind == "quantity":
            c2_system, c2_code, c2_lo, c2_hi = value
        elif kind in ("date", "number"):
            c2_lo, c2_hi = value
        elif kind == "string":
            c2_str = value[0]
    if len(parts) > 2:
        c3_lo, c3_hi = combo[2]
    return CompositeRow(
        code, combo[0][0], combo[0][1], c2_system, c2_code, c2_lo, c2_hi, c2_str, c3_lo, c3_hi
    )
