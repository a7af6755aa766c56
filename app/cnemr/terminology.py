"""The national code tables and concept maps of `fhir_profiles/` (FHIR R4 CodeSystem, ConceptMap),
read by the mappers so that a code, its display and its FHIR translation have one source.

A mapper asks by canonical URL, never by file name: `codes(system)` (code → display, in the
CodeSystem's order), `display(system, code)` and `translate(concept_map, system, code)`. A
system or concept map that `fhir_profiles/` does not define is a programming error and raises
`UnknownTerminology`; a code that is not in a system is the caller's data problem and is for
the caller to check (`code in codes(system)`) and report as a RowError.

How a hospital writes a code (男/女, 汉族/汉, the 首页's single digits) is a source quirk, not
terminology: those aliases stay in the mappers and are resolved to a code before they get here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

FHIR_PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles"

# ConceptMap equivalences a mapper may act on, see `translate`.
TAKEN_EQUIVALENCES = frozenset({"equivalent", "equal", "wider"})


class UnknownTerminology(LookupError):
    """A CodeSystem or ConceptMap URL that fhir_profiles/ does not define."""


@dataclass(frozen=True, slots=True)
class Terminology:
    """The CodeSystems and ConceptMaps of one fhir_profiles/ folder, by canonical URL."""

    code_systems: Mapping[str, Mapping[str, str]]  # url → code → display
    # ConceptMap url → source system → code → its usable target Codings, in file order (empty:
    # listed, but unmatched or only narrower/inexact)
    concept_maps: Mapping[str, Mapping[str, Mapping[str, tuple[dict[str, str], ...]]]]

    def codes(self, system: str) -> Mapping[str, str]:
        """code → display of CodeSystem `system`, in the CodeSystem's order."""
        try:
            return self.code_systems[system]
        except KeyError:
            raise UnknownTerminology(f"no CodeSystem with url {system!r} in fhir_profiles/"
                                     ) from None

    def display(self, system: str, code: str) -> str:
        """The CodeSystem display of `code`; KeyError if the code is not in the system."""
        table = self.codes(system)
        if code not in table:
            raise KeyError(f"{code!r} is not a code of {system}")
        return table[code]

    def translate(self, concept_map: str, system: str, code: str) -> dict[str, str] | None:
        """The target Coding (system, code, display) of `system|code` in `concept_map`, or None
        where the ConceptMap has no usable target for it (unmatched, or not listed).

        Only equivalent/equal/wider targets are taken: a translation that narrows or is inexact
        would put a claim in the resource (Encounter.class, Patient.gender …) that the source
        did not make.
        """
        groups = self.concept_maps.get(concept_map)
        if groups is None:
            raise UnknownTerminology(f"no ConceptMap with url {concept_map!r} in fhir_profiles/")
        if system not in groups:
            raise UnknownTerminology(f"ConceptMap {concept_map} does not map from {system}")
        targets = groups[system].get(code)
        return dict(targets[0]) if targets else None


def _read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _concepts(concepts: list[dict[str, Any]]) -> dict[str, str]:
    """code → display of a concept list, nested concepts included (depth first)."""
    out: dict[str, str] = {}
    for concept in concepts:
        out[concept["code"]] = concept.get("display", concept["code"])
        out.update(_concepts(concept.get("concept", [])))
    return out


@lru_cache(maxsize=4)
def load_terminology(folder: Path = FHIR_PROFILES) -> Terminology:
    """The CodeSystems and ConceptMaps under `folder` (read once per folder)."""
    code_systems: dict[str, Mapping[str, str]] = {}
    for path in sorted((folder / "CodeSystem").glob("*.json")):
        cs = _read(path)
        code_systems[cs["url"]] = MappingProxyType(_concepts(cs.get("concept", [])))
    concept_maps: dict[str, Mapping[str, Mapping[str, tuple[dict[str, str], ...]]]] = {}
    for path in sorted((folder / "ConceptMap").glob("*.json")):
        cm = _read(path)
        groups: dict[str, dict[str, tuple[dict[str, str], ...]]] = {}
        for group in cm.get("group", []):
            by_code = groups.setdefault(group["source"], {})
            for element in group.get("element", []):
                taken = tuple({"system": group["target"], "code": t["code"],
                               "display": t.get("display", t["code"])}
                              for t in element.get("target", [])
                              if t.get("code") and t.get("equivalence") in TAKEN_EQUIVALENCES)
                # A code may appear in several groups (marital status: v3 and NullFlavor); the
                # first usable target in file order wins.
                by_code[element["code"]] = by_code.get(element["code"], ()) + taken
        concept_maps[cm["url"]] = MappingProxyType(
            {s: MappingProxyType(by) for s, by in groups.items()})
    return Terminology(MappingProxyType(code_systems), MappingProxyType(concept_maps))


def codes(system: str) -> Mapping[str, str]:
    """code → display of a CodeSystem of fhir_profiles/ (see `Terminology.codes`)."""
    return load_terminology().codes(system)


def display(system: str, code: str) -> str:
    """The display of a code of a CodeSystem of fhir_profiles/ (see `Terminology.display`)."""
    return load_terminology().display(system, code)


def translate(concept_map: str, system: str, code: str) -> dict[str, str] | None:
    """A code translated through a ConceptMap of fhir_profiles/ (see `Terminology.translate`)."""
    return load_terminology().translate(concept_map, system, code)


def coding(system: str, code: str) -> dict[str, str]:
    """The Coding of `system|code` with its CodeSystem display."""
    return {"system": system, "code": code, "display": display(system, code)}
