"""The CN conformance resources in `fhir_profiles/`: loaded at start-up, registered, served.

StructureDefinitions, CodeSystems, ValueSets, ConceptMaps, NamingSystems (the identifier
namespaces) and SearchParameters there are the project's own definitions (see
fhir_profiles/README.md). Their SearchParameters join the R4 ones in the registry, so they are
indexed, searchable and listed in the CapabilityStatement like any other; the resources
themselves are stored so that clients can read and search them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.definitions.registry import Registry, SearchParamDef

CONFORMANCE_TYPES = ("CodeSystem", "ValueSet", "ConceptMap", "NamingSystem",
                     "StructureDefinition", "SearchParameter", "OperationDefinition")


def load_profile_resources(folder: Path) -> list[dict[str, Any]]:
    """Every conformance resource under `folder`, in a stable order (missing folder: none)."""
    out = []
    for kind in CONFORMANCE_TYPES:
        for path in sorted((folder / kind).glob("*.json")):
            resource = json.loads(path.read_text(encoding="utf-8"))
            if resource.get("resourceType") != kind or not resource.get("id"):
                raise ValueError(f"{path}: expected a {kind} with an id")
            out.append(resource)
    return out


def with_profiles(registry: Registry, resources: list[dict[str, Any]]) -> Registry:
    """A registry that also knows the CN SearchParameters and which types have CN profiles."""
    search_params = {t: dict(p) for t, p in registry.search_params.items()}
    params_by_url = dict(registry.params_by_url)
    for sp in (r for r in resources if r["resourceType"] == "SearchParameter"):
        definition = SearchParamDef(
            code=sp["code"], type=sp["type"], expression=sp.get("expression"), url=sp["url"],
            base=tuple(sp["base"]), targets=tuple(sp.get("target", [])),
            description=sp.get("description", ""))
        params_by_url[sp["url"]] = definition
        for base in sp["base"]:
            if base not in search_params:
                raise ValueError(f"SearchParameter {sp['url']} names unknown base {base!r}")
            if sp["code"] in search_params[base]:
                raise ValueError(f"SearchParameter {sp['url']} redefines {base}.{sp['code']}")
            search_params[base][sp["code"]] = definition
    profiles: dict[str, list[str]] = {}
    for sd in (r for r in resources if r["resourceType"] == "StructureDefinition"):
        if sd.get("kind") == "resource" and sd.get("derivation") == "constraint":
            profiles.setdefault(sd["type"], []).append(sd["url"])
    return replace(registry, search_params=search_params, params_by_url=params_by_url,
                   profiles=profiles, _elements={})
