"""Registry of FHIR R4 definitions: resource types, element tables, SearchParameters, compartments.

Everything the server knows about FHIR structure comes from here, loaded from the vendored
specification data (and, later, from CN profiles in `fhir_profiles/`), never from hand-written
lists. The CapabilityStatement is generated from what this registry holds.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """One element of a type, relative to the type (e.g. `component.value[x]`)."""

    types: tuple[str, ...]
    min: int
    max: str
    summary: bool
    content_reference: str | None
    modifier: bool

    @property
    def many(self) -> bool:
        return self.max != "1" and self.max != "0"


@dataclass(frozen=True, slots=True)
class SearchParamDef:
    """A SearchParameter as the server uses it: for one resource type, by its code."""

    code: str
    type: str  # string token date reference quantity number uri composite special
    expression: str | None
    url: str
    base: tuple[str, ...]
    targets: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()  # (definition url, expression)
    description: str = ""


@dataclass
class Registry:
    """Definitions the server runs on. Build one with `load_registry()`."""

    types: dict[str, dict[str, Any]]
    resource_types: tuple[str, ...]
    search_params: dict[str, dict[str, SearchParamDef]]
    params_by_url: dict[str, SearchParamDef]
    compartment_patient: dict[str, tuple[str, ...]]
    # type -> element path -> required value set url (only those expandable from the spec)
    required_bindings: dict[str, dict[str, str]] = field(default_factory=dict)
    # value set url -> code system -> codes
    value_set_codes: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    # resource type -> canonical URLs of the CN profiles on it (from fhir_profiles/)
    profiles: dict[str, list[str]] = field(default_factory=dict)
    _elements: dict[str, dict[str, ElementInfo]] = field(default_factory=dict)

    def is_resource_type(self, name: str) -> bool:
        return name in self.search_params

    def elements(self, type_name: str) -> dict[str, ElementInfo]:
        cached = self._elements.get(type_name)
        if cached is None:
            raw = self.types.get(type_name, {}).get("elements", {})
            cached = {
                path: ElementInfo(tuple(v[0]), int(v[1]), str(v[2]), bool(v[3]), v[4], bool(v[5]))
                for path, v in raw.items()
            }
            self._elements[type_name] = cached
        return cached

    def element(self, type_name: str, path: str) -> ElementInfo | None:
        return self.elements(type_name).get(path)

    def required_codes(self, type_name: str, path: str) -> dict[str, frozenset[str]] | None:
        """The codes allowed by a required binding on `type_name.path`, by code system."""
        url = self.required_bindings.get(type_name, {}).get(path)
        return self.value_set_codes.get(url) if url else None

    def param(self, resource_type: str, code: str) -> SearchParamDef | None:
        return self.search_params.get(resource_type, {}).get(code)


def _read(name: str) -> Any:
    with gzip.open(DATA / name, "rb") as fh:
        return json.loads(fh.read())


@cache
def load_registry() -> Registry:
    """Load the vendored R4 definitions (cached: the data is immutable)."""
    types: dict[str, dict[str, Any]] = _read("elements.json.gz")
    resource_types = tuple(
        sorted(n for n, t in types.items() if t["kind"] == "resource" and not t["abstract"])
    )
    raw_params: list[dict[str, Any]] = _read("search-parameters.json.gz")
    by_url = {p["url"]: p for p in raw_params}
    search_params: dict[str, dict[str, SearchParamDef]] = {t: {} for t in resource_types}
    params_by_url: dict[str, SearchParamDef] = {}
    for p in raw_params:
        components = tuple(
            (c["definition"], c["expression"]) for c in p.get("component", [])
        )
        for comp_url, _ in components:
            if comp_url not in by_url:
                raise ValueError(f"SearchParameter {p['url']} names unknown component {comp_url}")
        bases = tuple(p["base"])
        targets = tuple(p.get("target", []))
        for base in bases:
            applies_to = resource_types if base in ("Resource", "DomainResource") else (base,)
            for rt in applies_to:
                if rt not in search_params:
                    continue
                expr = _expression_for(p.get("expression"), rt, base)
                sp = SearchParamDef(
                    code=p["code"], type=p["type"], expression=expr, url=p["url"],
                    base=bases, targets=targets, components=components,
                    description=p.get("description", ""),
                )
                search_params[rt][p["code"]] = sp
        params_by_url[p["url"]] = SearchParamDef(
            code=p["code"], type=p["type"], expression=p.get("expression"), url=p["url"],
            base=bases, targets=targets, components=components,
            description=p.get("description", ""),
        )
    compartment = {k: tuple(v) for k, v in _read("compartment-patient.json.gz").items()}
    bindings = _read("required-bindings.json.gz")
    codes = {url: {system: frozenset(c) for system, c in by_system.items()}
             for url, by_system in bindings["valueSets"].items()}
    return Registry(types, resource_types, search_params, params_by_url, compartment,
                    bindings["bindings"], codes)


def _expression_for(expression: str | None, resource_type: str, base: str) -> str | None:
    """The part of a multi-base expression that applies to one resource type.

    Shared R4 parameters such as `clinical-patient` list one path per base joined with `|`;
    only the paths rooted at this resource type (or at Resource/DomainResource) apply to it.
    """
    if expression is None:
        return None
    if base in ("Resource", "DomainResource"):
        return expression.replace(f"{base}.", f"{resource_type}.")
    parts = [p.strip() for p in _split_union(expression)]
    mine = [p for p in parts if _root(p) == resource_type]
    return " | ".join(mine) if mine else None


def _root(path: str) -> str:
    return path.lstrip("(").split(".", 1)[0]


def _split_union(expression: str) -> list[str]:
    """Split a FHIRPath union at top-level `|` (not inside parentheses or quotes)."""
    parts, depth, quote, start = [], 0, False, 0
    for i, ch in enumerate(expression):
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == "|":
            parts.append(expression[start:i])
            start = i + 1
    parts.append(expression[start:])
    return parts
