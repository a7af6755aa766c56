"""FHIR R4 search requests (http://hl7.org/fhir/R4/search.html) parsed into a backend-neutral query.

`parse_search()` turns the request's parameters into a `SearchQuery`: typed, validated values per
SearchParameter type, modifiers and prefixes, chains, `_has`, includes, sort and paging. Storage
backends compile a `SearchQuery` into their own query language; nothing here knows SQL.

Parameters that cannot be applied (unknown names, malformed values, unsupported modifiers) are
collected as issues: under `Prefer: handling=strict` the caller answers 400 with them; otherwise
they are ignored and left out of the `self` link, which lists exactly what was applied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from app.definitions.registry import Registry, SearchParamDef
from app.fhir.outcome import Issue
from app.search.dates import date_range
from app.search.normalize import normalize_string

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
ORDERED_TYPES = ("date", "number", "quantity")
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"missing", "not", "text", "of-type"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "reference": frozenset({"missing", "identifier"}),
    "uri": frozenset({"missing", "above", "below"}),
    "composite": frozenset({"missing"}),
    "special": frozenset(),
}
RESULT_PARAMETERS = frozenset({
    "_sort", "_count", "_include", "_revinclude", "_total", "_summary", "_elements",
    "_contained", "_containedType", "_format", "_pretty", "_type",
})
MAX_CHAIN_DEPTH = 3


@dataclass(frozen=True, slots=True)
class StringValue:
    norm: str
    raw: str


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # None with `system_given`: the `|code` form (no system)
    code: str | None  # None: the `system|` form (any code in the system)
    system_given: bool
    type_system: str | None = None  # `:of-type` identifier type coding
    type_code: str | None = None


@dataclass(frozen=True, slots=True)
class RangeValue:
    """A date or number search value: its prefix, its exact value and its precision range."""

    prefix: str
    lo: float
    hi: float
    value: float


@dataclass(frozen=True, slots=True)
class QuantityValue:
    prefix: str
    lo: float
    hi: float
    value: float
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    type: str | None
    id: str | None
    url: str | None


@dataclass(frozen=True, slots=True)
class UriValue:
    value: str


@dataclass(frozen=True, slots=True)
class CompositeValue:
    parts: tuple[Any, ...]  # one parsed value per component, in component order
    types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MissingValue:
    missing: bool


@dataclass(frozen=True, slots=True)
class Predicate:
    """One parameter occurrence: its values OR'ed. Occurrences are AND'ed."""

    resource_type: str
    param: SearchParamDef
    modifier: str | None
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Chain:
    """`subject:Patient.name=张`: resources whose reference `param` points at a matching target."""

    resource_type: str
    param: SearchParamDef
    targets: tuple[tuple[str, Clause], ...]  # (target type, clause on that type)


@dataclass(frozen=True, slots=True)
class Has:
    """`_has:Observation:patient:code=…`: resources referred to by a matching `source_type`."""

    resource_type: str
    source_type: str
    param: SearchParamDef  # the reference parameter on source_type
    inner: Clause


@dataclass(frozen=True, slots=True)
class ContentMatch:
    """`_content` / `_text`: substring search over the resource or its narrative."""

    resource_type: str
    narrative_only: bool
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InCompartment:
    """Access: resources of `resource_type` in the Patient compartment of `patient_id`, through
    the compartment's reference parameters `params` (and, for a Patient, its own id)."""

    resource_type: str
    patient_id: str
    params: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TypeIs:
    """Access: the resource is of `resource_type` (to tell apart rules in a `_type` search)."""

    resource_type: str


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Access: OR of alternatives, each an AND of clauses; no alternatives matches nothing."""

    alternatives: tuple[tuple[Clause, ...], ...]


Clause = Predicate | Chain | Has | ContentMatch | InCompartment | TypeIs | AnyOf


@dataclass(frozen=True, slots=True)
class SortKey:
    param: SearchParamDef
    descending: bool


@dataclass(frozen=True, slots=True)
class IncludeSpec:
    source_type: str  # `_include`: type of the matches; `_revinclude`: type that refers
    param: str | None  # None: `*` (every reference parameter)
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass
class SearchQuery:
    resource_types: tuple[str, ...]  # one type for type-level search; several for `_type`
    clauses: list[Clause] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = 20
    total: str = "accurate"  # none | estimate | accurate
    includes: list[IncludeSpec] = field(default_factory=list)
    summary: str | None = None
    elements: tuple[str, ...] = ()
    applied: list[tuple[str, str]] = field(default_factory=list)  # for the `self` link
    # Set by the authorizer: which included resources the caller may see (None: all), and
    # whose result set this is (page tokens of one caller do not open another's snapshot).
    include_filter: Callable[[Any], bool] | None = None
    owner: str = ""

    @property
    def resource_type(self) -> str | None:
        return self.resource_types[0] if len(self.resource_types) == 1 else None


@dataclass
class ParseContext:
    registry: Registry
    default_tz: timezone
    base_urls: tuple[str, ...]
    default_count: int = 20
    max_count: int = 1000


class SearchError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_search(resource_types: tuple[str, ...], params: list[tuple[str, str]],
                 ctx: ParseContext) -> tuple[SearchQuery, list[Issue]]:
    """Parse request parameters (repeats kept, in order) into a query and the issues met."""
    query = SearchQuery(resource_types=resource_types, count=ctx.default_count)
    issues: list[Issue] = []
    for name, value in params:
        try:
            _apply(query, name, value, ctx)
        except SearchError as exc:
            code = "not-supported" if "unknown" in str(exc) else "invalid"
            issues.append(Issue("error", code, str(exc), (exc.param,)))
        else:
            if name not in ("_format", "_pretty"):
                query.applied.append((name, value))
    return query, issues


def _apply(query: SearchQuery, name: str, value: str, ctx: ParseContext) -> None:
    base_name = name.split(":", 1)[0]
    if base_name in RESULT_PARAMETERS:
        _apply_result_parameter(query, name, value, ctx)
        return
    if len(query.resource_types) != 1:
        types = query.resource_types
        # A search across types allows only parameters that all of them define the same way.
        clauses = [_parse_clause(t, name, value, ctx, 0) for t in types]
        if len({type(c) for c in clauses}) != 1:
            raise SearchError(f"parameter {name!r} cannot be applied across types", name)
        # Each type's own reading of the parameter applies to that type's resources.
        query.clauses.append(AnyOf(tuple((TypeIs(t), c)
                                         for t, c in zip(types, clauses, strict=True))))
        return
    query.clauses.append(_parse_clause(query.resource_types[0], name, value, ctx, 0))


def _apply_result_parameter(query: SearchQuery, name: str, value: str, ctx: ParseContext) -> None:
    base_name, _, modifier = name.partition(":")
    if base_name in ("_format", "_pretty", "_type"):
        return
    if base_name == "_count":
        if not re.fullmatch(r"\d{1,9}", value):
            raise SearchError(f"_count must be a non-negative whole number, got {value!r}", name)
        query.count = min(int(value), ctx.max_count)
    elif base_name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise SearchError(f"_total must be none, estimate or accurate, got {value!r}", name)
        query.total = value
    elif base_name == "_summary":
        if value not in ("true", "false", "text", "data", "count"):
            raise SearchError(f"_summary must be true, text, data, count or false, got {value!r}",
                              name)
        query.summary = value
    elif base_name == "_elements":
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        if not names:
            raise SearchError("_elements needs at least one element name", name)
        query.elements = query.elements + names
    elif base_name == "_sort":
        for key in value.split(","):
            key = key.strip()
            desc = key.startswith("-")
            code = key[1:] if desc else key
            types = query.resource_types
            param = ctx.registry.param(types[0], code) if types else None
            if param is None or param.type in ("composite", "special") or param.expression is None:
                raise SearchError(f"cannot sort by {code!r}: it is not a sortable search "
                                  f"parameter of {types[0] if types else 'the system'}", name)
            query.sort.append(SortKey(param, desc))
    elif base_name in ("_include", "_revinclude"):
        reverse = base_name == "_revinclude"
        iterate = modifier in ("iterate", "recurse")
        if modifier and not iterate:
            raise SearchError(f"{base_name} supports only the :iterate modifier", name)
        query.includes.append(_parse_include(value, reverse, iterate, query, ctx, name))
    elif base_name in ("_contained", "_containedType") and value not in ("false", "container"):
        raise SearchError("searching contained resources is not supported", name)


def _parse_include(value: str, reverse: bool, iterate: bool, query: SearchQuery,
                   ctx: ParseContext, name: str) -> IncludeSpec:
    if value == "*":
        return IncludeSpec(query.resource_types[0] if query.resource_types else "*", None, None,
                           iterate, reverse)
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise SearchError(f"{name}={value!r}: expected SourceType:parameter[:TargetType]", name)
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not ctx.registry.is_resource_type(source):
        raise SearchError(f"{name}: unknown resource type {source!r}", name)
    if target is not None and not ctx.registry.is_resource_type(target):
        raise SearchError(f"{name}: unknown resource type {target!r}", name)
    if code == "*":
        return IncludeSpec(source, None, target, iterate, reverse)
    param = ctx.registry.param(source, code)
    if param is None or param.type != "reference":
        raise SearchError(f"{name}: {source} has no reference search parameter {code!r}", name)
    if not iterate and not reverse and source not in query.resource_types:
        raise SearchError(f"{name}={value}: the source type must be the searched type "
                          f"({', '.join(query.resource_types)}) unless :iterate is used", name)
    return IncludeSpec(source, code, target, iterate, reverse)


def _parse_clause(resource_type: str, name: str, value: str, ctx: ParseContext,
                  depth: int) -> Clause:
    if depth > MAX_CHAIN_DEPTH:
        raise SearchError(f"{name}: chains deeper than {MAX_CHAIN_DEPTH} are not supported", name)
    if name.startswith("_has:"):
        return _parse_has(resource_type, name, value, ctx, depth)
    if name in ("_content", "_text"):
        return ContentMatch(resource_type, name == "_text",
                            tuple(normalize_string(v) for v in _split_or(value, name)))
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    param = ctx.registry.param(resource_type, code)
    if param is None:
        raise SearchError(f"unknown search parameter {code!r} for {resource_type}", name)
    if dot:
        return _parse_chain(resource_type, param, modifier or None, rest, value, ctx, depth, name)
    if param.type == "special" or (param.expression is None and code not in ("_id",)):
        raise SearchError(f"search parameter {code!r} ({param.type}) is not supported", name)
    mod = modifier or None
    if mod is not None and mod not in MODIFIERS[param.type]:
        if param.type == "reference" and ctx.registry.is_resource_type(mod):
            if param.targets and mod not in param.targets:
                raise SearchError(f"{code}:{mod}: {resource_type}.{code} cannot refer to {mod}",
                                  name)
        else:
            allowed = ", ".join(sorted(MODIFIERS[param.type])) or "none"
            raise SearchError(f"modifier :{mod} is not supported for {param.type} parameter "
                              f"{code!r} (supported: {allowed})", name)
    if mod == "missing":
        if value not in ("true", "false"):
            raise SearchError(f"{name} must be true or false, got {value!r}", name)
        return Predicate(resource_type, param, mod, (MissingValue(value == "true"),))
    values = tuple(_parse_value(param, mod, v, ctx, name) for v in _split_or(value, name))
    return Predicate(resource_type, param, mod, values)


def _parse_chain(resource_type: str, param: SearchParamDef, modifier: str | None, rest: str,
                 value: str, ctx: ParseContext, depth: int, name: str) -> Chain:
    if param.type != "reference":
        raise SearchError(f"{name}: only reference parameters can be chained "
                          f"({param.code} is {param.type})", name)
    if modifier is not None and not ctx.registry.is_resource_type(modifier):
        raise SearchError(f"{name}: :{modifier} is not a resource type", name)
    candidates = (modifier,) if modifier else (param.targets or ctx.registry.resource_types)
    next_code = rest.partition(".")[0].partition(":")[0]
    targets = []
    for target in candidates:
        if next_code.startswith("_has") or ctx.registry.param(target, next_code) is not None:
            targets.append((target, _parse_clause(target, rest, value, ctx, depth + 1)))
    if not targets:
        raise SearchError(f"{name}: no resource type that {resource_type}.{param.code} can refer "
                          f"to has a search parameter {next_code!r}", name)
    return Chain(resource_type, param, tuple(targets))


def _parse_has(resource_type: str, name: str, value: str, ctx: ParseContext,
               depth: int) -> Has:
    parts = name.split(":", 3)
    if len(parts) != 4:
        raise SearchError(f"{name}: expected _has:Type:reference-parameter:search-parameter", name)
    _, source, ref_code, inner_name = parts
    if not ctx.registry.is_resource_type(source):
        raise SearchError(f"{name}: unknown resource type {source!r}", name)
    ref = ctx.registry.param(source, ref_code)
    if ref is None or ref.type != "reference":
        raise SearchError(f"{name}: {source} has no reference parameter {ref_code!r}", name)
    if ref.targets and resource_type not in ref.targets:
        raise SearchError(f"{name}: {source}.{ref_code} cannot refer to {resource_type}", name)
    inner = _parse_clause(source, inner_name, value, ctx, depth + 1)
    return Has(resource_type, source, ref, inner)


def _split_or(value: str, name: str) -> list[str]:
    """Split at unescaped commas (R4 §3.1.1.1.1 escaping: `\\,` `\\|` `\\$` `\\\\`)."""
    out = _split_unescaped(value, ",")
    if any(v == "" for v in out):
        raise SearchError(f"{name}: empty value (check for stray commas)", name)
    return out


def _split_unescaped(value: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(value[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", value)


def _parse_value(param: SearchParamDef, modifier: str | None, raw: str, ctx: ParseContext,
                 name: str) -> Any:
    try:
        return _parse_typed(param.type, param, modifier, raw, ctx, name)
    except SearchError:
        raise
    except ValueError as exc:
        raise SearchError(f"{name}={raw!r}: {exc}", name) from None


def _parse_typed(kind: str, param: SearchParamDef, modifier: str | None, raw: str,
                 ctx: ParseContext, name: str) -> Any:
    if kind == "string":
        text = _unescape(raw)
        return StringValue(normalize_string(text), text)
    if kind == "token":
        return _parse_token(raw, modifier)
    if kind in ("date", "number", "quantity"):
        prefix, rest = _split_prefix(raw)
        if kind == "date":
            start, end = date_range(rest, ctx.default_tz)
            return RangeValue(prefix, start, end, start)
        if kind == "number":
            value, lo, hi = number_range(rest)
            return RangeValue(prefix, lo, hi, value)
        pieces = _split_unescaped(rest, "|")
        if len(pieces) not in (1, 3):
            raise ValueError("a quantity is number, number|system|code or number||code")
        value, lo, hi = number_range(pieces[0])
        system = _unescape(pieces[1]) or None if len(pieces) == 3 else None
        code = _unescape(pieces[2]) or None if len(pieces) == 3 else None
        return QuantityValue(prefix, lo, hi, value, system, code)
    if kind == "reference":
        if modifier == "identifier":
            return _parse_token(raw, None)
        return _parse_reference(_unescape(raw), modifier, param, ctx)
    if kind == "uri":
        return UriValue(_unescape(raw))
    if kind == "composite":
        pieces = _split_unescaped(raw, "$")
        if len(pieces) != len(param.components):
            raise ValueError(f"a {param.code} value has {len(param.components)} parts joined "
                             f"by $, got {len(pieces)}")
        parts, types = [], []
        for (url, _), piece in zip(param.components, pieces, strict=True):
            comp = ctx.registry.params_by_url[url]
            parts.append(_parse_typed(comp.type, comp, None, piece, ctx, name))
            types.append(comp.type)
        return CompositeValue(tuple(parts), tuple(types))
    raise SearchError(f"{name}: parameters of type {kind} are not supported", name)


def _split_prefix(raw: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2] in PREFIXES and not raw[:2].isdigit():
        return raw[:2], raw[2:]
    return "eq", raw


def number_range(text: str) -> tuple[float, float, float]:
    """A decimal with its implicit precision range: `100` → (100, 99.5, 100.5)."""
    try:
        dec = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not dec.is_finite() or not re.fullmatch(r"[+-]?(\d+(\.\d+)?|\.\d+)([eE][+-]?\d+)?", text):
        raise ValueError(f"{text!r} is not a number")
    exponent = dec.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    value = float(dec)
    if math.isinf(value):
        raise ValueError(f"{text!r} is out of range")
    return value, float(dec - half), float(dec + half)


def _parse_token(raw: str, modifier: str | None) -> TokenValue:
    pieces = _split_unescaped(raw, "|")
    if modifier == "of-type":
        if len(pieces) != 3 or not all(pieces):
            raise ValueError("an :of-type value is type-system|type-code|identifier-value")
        return TokenValue(None, _unescape(pieces[2]), False, _unescape(pieces[0]),
                          _unescape(pieces[1]))
    if modifier == "text":
        return TokenValue(None, normalize_string(_unescape(raw)), False)
    if len(pieces) == 1:
        return TokenValue(None, _unescape(pieces[0]), False)
    if len(pieces) == 2:
        system = _unescape(pieces[0]) or None
        code = _unescape(pieces[1]) or None
        if system is None and code is None:
            raise ValueError("a token needs a code, system|code, |code or system|")
        return TokenValue(system, code, True)
    raise ValueError("a token is code, system|code, |code or system| (escape a literal | as \\|)")


_REF_RE = re.compile(r"^(?:(?P<base>https?://.+?)/)?(?P<type>[A-Z][A-Za-z]+)/"
                     r"(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def _parse_reference(raw: str, modifier: str | None, param: SearchParamDef,
                     ctx: ParseContext) -> ReferenceValue:
    type_hint = modifier if modifier and modifier[0].isupper() else None
    m = _REF_RE.match(raw)
    if m:
        base = m.group("base")
        if base is None or base.rstrip("/") in ctx.base_urls:
            rtype = m.group("type")
            if not ctx.registry.is_resource_type(rtype):
                raise ValueError(f"{rtype!r} is not a resource type")
            if type_hint and rtype != type_hint:
                raise ValueError(f"reference type {rtype} contradicts modifier :{type_hint}")
            return ReferenceValue(rtype, m.group("id"), None)
        return ReferenceValue(None, None, raw)
    if "/" in raw or ":" in raw:
        return ReferenceValue(None, None, raw.split("|", 1)[0])
    if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", raw):
        raise ValueError(f"{raw!r} is not a resource id, Type/id or URL")
    return ReferenceValue(type_hint, raw, None)
