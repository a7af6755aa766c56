"""The CN conformance resources in fhir_profiles/: well-formed FHIR R4, consistent with each other.

Checks every JSON file there (CodeSystems, ValueSets, ConceptMaps, StructureDefinitions,
SearchParameters) with the server's own R4 validator, then the links between them: ValueSets
include code systems defined here, ConceptMaps map codes that exist, profiles constrain real R4
elements of real R4 types and point at extensions and value sets that exist.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.definitions.registry import ElementInfo, Registry, load_registry
from app.fhir.validation import validate_resource

PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles"
BASE = "https://fhir.yilian.cn"
CORE_SD = "http://hl7.org/fhir/StructureDefinition/"
ID_CARD = "urn:oid:2.16.156.10011.1.3"
ETHNICITY_URL = f"{BASE}/StructureDefinition/ethnicity"

# HL7 terminology this folder refers to but does not define; the codes are those of R4 (4.0.1)
# that the CN ValueSets and ConceptMaps use, so a typo in a target code is caught.
EXTERNAL_CODES: dict[str, frozenset[str]] = {
    "http://terminology.hl7.org/CodeSystem/v3-ActCode": frozenset(
        {"AMB", "EMER", "FLD", "HH", "IMP", "ACUTE", "NONAC", "OBSENC", "PRENC", "SS", "VR"}),
    "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus": frozenset(
        {"A", "D", "I", "L", "M", "P", "S", "T", "U", "W"}),
    "http://terminology.hl7.org/CodeSystem/v3-NullFlavor": frozenset({"UNK", "OTH", "ASKU"}),
    "http://terminology.hl7.org/CodeSystem/v3-RoleCode": frozenset(
        {"ONESELF", "SPS", "HUSB", "WIFE", "CHILD", "SON", "SONC", "DAU", "DAUC", "GRNDCHILD",
         "PRN", "FTH", "MTH", "GRPRN", "SIB", "FAMMEMB"}),
    "http://terminology.hl7.org/CodeSystem/admit-source": frozenset(
        {"hosp-trans", "emd", "outp", "born", "gp", "mp", "nursing", "psych", "rehab", "other"}),
    "http://terminology.hl7.org/CodeSystem/discharge-disposition": frozenset(
        {"home", "alt-home", "other-hcf", "hosp", "long", "aadvice", "exp", "psy", "rehab",
         "snf", "oth"}),
}
EQUIVALENCES = frozenset({"relatedto", "equivalent", "equal", "wider", "subsumes", "narrower",
                          "specializes", "inexact", "unmatched", "disjoint"})


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


FILES = sorted(PROFILES.rglob("*.json"))
RESOURCES = {f.relative_to(PROFILES).as_posix(): _load(f) for f in FILES}


def _of_type(resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in RESOURCES.items() if r.get("resourceType") == resource_type}


CODE_SYSTEMS = {r["url"]: r for r in _of_type("CodeSystem").values()}
VALUE_SETS = {r["url"]: r for r in _of_type("ValueSet").values()}
STRUCTURE_DEFINITIONS = {r["url"]: r for r in _of_type("StructureDefinition").values()}


def _codes(system: str) -> frozenset[str]:
    if system in CODE_SYSTEMS:
        return frozenset(c["code"] for c in CODE_SYSTEMS[system].get("concept", []))
    return EXTERNAL_CODES.get(system, frozenset())


def test_the_folder_holds_every_kind_of_cn_conformance_resource() -> None:
    kinds = Counter(r.get("resourceType") for r in RESOURCES.values())
    assert kinds["CodeSystem"] >= 10
    assert kinds["ValueSet"] >= kinds["CodeSystem"]
    assert kinds["ConceptMap"] >= 3
    assert kinds["StructureDefinition"] >= 15
    assert kinds["SearchParameter"] >= 2


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_each_file_is_one_resource_with_url_status_and_an_id_matching_its_file(name: str) -> None:
    resource = RESOURCES[name]
    folder, filename = name.split("/")
    assert resource.get("resourceType") == folder, f"{name}: file is in the wrong folder"
    assert resource.get("id") == filename.removesuffix(".json"), f"{name}: id must match file"
    assert resource.get("status") in ("draft", "active", "retired", "unknown"), name
    if folder == "NamingSystem":  # R4 NamingSystem has no url: its uniqueIds name it
        assert resource.get("uniqueId") and "url" not in resource, name
        return
    assert isinstance(resource.get("url"), str) and resource["url"], f"{name}: url missing"
    if not resource["url"].startswith("urn:oid:"):
        assert resource["url"] == f"{BASE}/{folder}/{resource['id']}", (
            f"{name}: Yilian-defined canonicals are {BASE}/<type>/<id>")


@pytest.mark.parametrize("name", sorted(RESOURCES))
def test_each_file_is_valid_fhir_r4_by_the_servers_validator(name: str) -> None:
    errors = [i for i in validate_resource(RESOURCES[name], load_registry())
              if i.severity in ("error", "fatal")]
    assert not errors, "\n".join(f"{name}: {i.diagnostics}" for i in errors)


def test_canonical_urls_are_unique() -> None:
    counts = Counter(r["url"] for r in RESOURCES.values() if "url" in r)
    assert [u for u, n in counts.items() if n > 1] == []


@pytest.mark.parametrize("url", sorted(CODE_SYSTEMS))
def test_code_systems_have_unique_codes_and_a_true_count(url: str) -> None:
    cs = CODE_SYSTEMS[url]
    codes = [c["code"] for c in cs["concept"]]
    assert len(codes) == len(set(codes)), f"{url}: duplicate codes"
    assert cs["count"] == len(codes)
    assert all(c.get("display") for c in cs["concept"]), f"{url}: every code needs a display"
    assert cs["content"] in ("complete", "fragment")
    assert cs.get("valueSet") in VALUE_SETS, f"{url}: its all-codes ValueSet is missing"


def test_gb_3304_lists_the_56_ethnic_groups_in_official_order_plus_97_and_98() -> None:
    cs = CODE_SYSTEMS["urn:oid:2.16.156.10011.2.3.3.3"]
    table = {c["code"]: c["display"] for c in cs["concept"]}
    assert list(table)[:56] == [f"{i:02d}" for i in range(1, 57)]
    assert (table["01"], table["05"], table["10"], table["29"], table["43"], table["56"]) == (
        "汉族", "维吾尔族", "朝鲜族", "柯尔克孜族", "乌孜别克族", "基诺族")
    assert table["97"] == "其他未识别民族"
    assert table["98"] == "外国血统中国籍人士"
    assert len(table) == 58
    assert cs["content"] == "complete"


def test_national_tables_use_their_oids_as_canonical_urls() -> None:
    expected = {
        "GBT22611Gender": "urn:oid:2.16.156.10011.2.3.3.4",
        "GB3304Ethnicity": "urn:oid:2.16.156.10011.2.3.3.3",
        "GBT22612MaritalStatus": "urn:oid:2.16.156.10011.2.3.3.5",
        "CV0900404PatientType": "urn:oid:2.16.156.10011.2.3.1.271",
        "CV0510024OperationLevel": "urn:oid:2.16.156.10011.2.3.1.258",
        "CV0710005PaymentMethod": "urn:oid:2.16.156.10011.2.3.1.269",
        "CV0201101IdDocumentType": "urn:oid:2.16.156.10011.2.3.1.1",
        "CV0450005AboBloodGroup": "urn:oid:2.16.156.10011.2.3.1.85",
        "CV0450020RhBloodGroup": "urn:oid:2.16.156.10011.2.3.1.250",
    }
    by_name = {cs["name"]: cs["url"] for cs in CODE_SYSTEMS.values()}
    assert {name: by_name.get(name) for name in expected} == expected


def test_the_unverified_abo_code_is_flagged_and_left_out() -> None:
    cs = CODE_SYSTEMS["urn:oid:2.16.156.10011.2.3.1.85"]
    assert "Unverified" in cs["description"]
    assert "未查" not in {c["display"] for c in cs["concept"]}


@pytest.mark.parametrize("url", sorted(VALUE_SETS))
def test_value_sets_include_code_systems_defined_here_and_their_codes(url: str) -> None:
    for include in VALUE_SETS[url]["compose"]["include"]:
        system = include["system"]
        known = _codes(system)
        assert known, f"{url}: includes {system}, which is neither defined here nor listed " \
                      "in EXTERNAL_CODES"
        listed = {c["code"] for c in include.get("concept", [])}
        assert listed <= known, f"{url}: codes {sorted(listed - known)} are not in {system}"
        if not include.get("concept"):
            assert system in CODE_SYSTEMS, f"{url}: whole-system include of external {system}"


@pytest.mark.parametrize("name", sorted(_of_type("ConceptMap")))
def test_concept_maps_map_existing_codes_with_valid_equivalences(name: str) -> None:
    cm = RESOURCES[name]
    assert cm["sourceCanonical"] in VALUE_SETS
    registry = load_registry()
    gender = registry.required_codes("Patient", "gender") or {}
    for group in cm["group"]:
        source_codes = _codes(group["source"])
        assert group["source"] in CODE_SYSTEMS, f"{name}: source {group['source']} not here"
        target_codes = gender.get(group["target"]) or _codes(group["target"])
        assert target_codes, f"{name}: no known codes for target {group['target']}"
        for element in group["element"]:
            assert element["code"] in source_codes, f"{name}: {element['code']} not in source"
            for target in element["target"]:
                assert target["equivalence"] in EQUIVALENCES
                if target["equivalence"] == "unmatched":
                    assert "code" not in target and target.get("comment")
                    continue
                assert target["code"] in target_codes, f"{name}: {target['code']} not in target"
                if target["equivalence"] in ("narrower", "inexact", "wider"):
                    assert target.get("comment") or target["equivalence"] == "wider"


def _translations(name: str) -> dict[str, tuple[str | None, str]]:
    return {e["code"]: (t.get("code"), t["equivalence"])
            for g in RESOURCES[name]["group"] for e in g["element"] for t in e["target"]}


def test_gender_map_sends_9_to_unknown_as_wider_and_the_rest_as_equivalent() -> None:
    assert _translations("ConceptMap/gbt-2261-1-to-administrative-gender.json") == {
        "0": ("unknown", "equivalent"), "1": ("male", "equivalent"),
        "2": ("female", "equivalent"), "9": ("unknown", "wider")}


def test_patient_type_map_leaves_other_unmatched() -> None:
    assert _translations("ConceptMap/cv09-00-404-to-v3-actcode.json") == {
        "1": ("AMB", "equivalent"), "2": ("EMER", "equivalent"), "3": ("IMP", "equivalent"),
        "9": (None, "unmatched")}


def test_marital_map_covers_every_gb_code() -> None:
    table = _translations("ConceptMap/gbt-2261-2-to-v3-marital-status.json")
    assert set(table) == set(_codes("urn:oid:2.16.156.10011.2.3.3.5"))
    assert {c: t[0] for c, t in table.items()} == {
        "10": "S", "20": "M", "21": "M", "22": "M", "23": "M", "30": "W", "40": "D", "90": "UNK"}


# -- StructureDefinitions ------------------------------------------------------------------


def _split(element_id: str) -> list[tuple[str, str | None]]:
    """`Patient.identifier:idCard.system` → [(Patient, None), (identifier, idCard), ...]."""
    parts = []
    for part in element_id.split("."):
        name, _, slice_name = part.partition(":")
        parts.append((name, slice_name or None))
    return parts


def _resolve(registry: Registry, type_name: str, segments: list[str],
             hints: dict[int, str]) -> ElementInfo | None:
    """The R4 definition of `segments` inside `type_name`, descending into datatypes.

    `hints` gives the type a choice element was narrowed to (by a type slice) at a position.
    """
    table = registry.elements(type_name)
    for cut in range(len(segments), 0, -1):
        info = table.get(".".join(segments[:cut]))
        if info is None:
            continue
        if cut == len(segments):
            return info
        if info.content_reference:
            return None
        types = [hints[cut - 1]] if cut - 1 in hints else list(info.types)
        if len(types) != 1 or types[0] not in registry.types:
            return None
        offset = {i - cut: t for i, t in hints.items() if i >= cut}
        return _resolve(registry, types[0], segments[cut:], offset)
    return None


def _max(value: str) -> float:
    return float("inf") if value == "*" else float(value)


@pytest.mark.parametrize("url", sorted(STRUCTURE_DEFINITIONS))
def test_profiles_constrain_real_r4_elements_of_an_r4_type(url: str) -> None:
    sd = STRUCTURE_DEFINITIONS[url]
    registry = load_registry()
    assert sd["fhirVersion"] == "4.0.1"
    assert sd["derivation"] == "constraint"
    assert "snapshot" not in sd, f"{url}: ship differentials only"
    assert sd["type"] in registry.types, f"{url}: {sd['type']} is not an R4 type"
    assert sd["baseDefinition"] == CORE_SD + sd["type"]
    elements = sd["differential"]["element"]
    ids = [e["id"] for e in elements]
    assert len(ids) == len(set(ids)), f"{url}: duplicate element ids"
    assert ids[0] == sd["type"]
    for element in elements[1:]:
        parts = _split(element["id"])
        assert ".".join(p for p, _ in parts) == element["path"], element["id"]
        assert element.get("sliceName") == parts[-1][1]
        segments = [p for p, _ in parts[1:]]
        hints = {i: s.removeprefix(p.removesuffix("[x]")) for i, (p, s) in
                 enumerate(parts[1:]) if s and p.endswith("[x]")}
        hints = {i: t[0].lower() + t[1:] if t[0].lower() + t[1:] in registry.types else t
                 for i, t in hints.items()}
        info = _resolve(registry, sd["type"], segments, hints)
        assert info is not None, f"{url}: {element['id']} is not an element of R4 {sd['type']}"
        if "min" in element:
            assert element["min"] >= info.min, f"{url}: {element['id']} loosens min"
        if "max" in element and element.get("sliceName") is None:
            assert _max(element["max"]) <= _max(info.max), f"{url}: {element['id']} loosens max"


@pytest.mark.parametrize("url", sorted(STRUCTURE_DEFINITIONS))
def test_profiles_point_only_at_extensions_and_value_sets_that_exist(url: str) -> None:
    for element in STRUCTURE_DEFINITIONS[url]["differential"]["element"]:
        binding = element.get("binding")
        if binding:
            assert binding["valueSet"] in VALUE_SETS, f"{url}: {binding['valueSet']} missing"
        for type_ in element.get("type", []):
            for profile in type_.get("profile", []):
                assert profile in STRUCTURE_DEFINITIONS, f"{url}: extension {profile} missing"
            for target in type_.get("targetProfile", []):
                assert target.startswith(CORE_SD) or target in STRUCTURE_DEFINITIONS


def test_every_profile_says_how_it_relates_to_hl7_china() -> None:
    profiles = [sd for sd in STRUCTURE_DEFINITIONS.values() if sd["kind"] == "resource"]
    assert {sd["type"] for sd in profiles} >= {
        "Patient", "Encounter", "Condition", "Observation", "DiagnosticReport",
        "MedicationRequest", "Procedure", "Composition", "Claim"}
    for sd in profiles:
        assert "http://hl7.org.cn/fhir/" in sd["description"], sd["url"]


def test_extensions_declare_a_context_and_fix_their_own_url() -> None:
    extensions = [sd for sd in STRUCTURE_DEFINITIONS.values() if sd["type"] == "Extension"]
    assert {sd["id"] for sd in extensions} >= {
        "ethnicity", "admission-condition", "operation-level", "payment-method", "tcm-syndrome"}
    for sd in extensions:
        assert sd["context"], sd["url"]
        fixed = [e.get("fixedUri") for e in sd["differential"]["element"]
                 if e["path"] == "Extension.url"]
        assert fixed == [sd["url"]]


def _patient_invariant() -> dict[str, Any]:
    root = STRUCTURE_DEFINITIONS[f"{BASE}/StructureDefinition/cn-patient"]["differential"][
        "element"][0]
    [constraint] = [c for c in root["constraint"] if c["key"] == "cn-pat-1"]
    return constraint


VALID_ID_NUMBERS = ["11010519491231002X", "440524188001010014"]
INVALID_ID_NUMBERS = ["11010519491231002x", "110105491231002", "1101051949123100AX",
                      "11010519491231002X "]


def test_patient_invariant_requires_the_18_character_id_card_shape() -> None:
    constraint = _patient_invariant()
    assert constraint["severity"] == "error"
    assert f"system = '{ID_CARD}'" in constraint["expression"]
    [pattern] = re.findall(r"matches\('([^']+)'\)", constraint["expression"])
    assert [bool(re.search(pattern, v)) for v in VALID_ID_NUMBERS] == [True, True]
    assert [bool(re.search(pattern, v)) for v in INVALID_ID_NUMBERS] == [False] * 4


def test_patient_invariant_holds_under_a_fhirpath_engine() -> None:
    fhirpathpy = pytest.importorskip("fhirpathpy")
    expression = _patient_invariant()["expression"]

    def patient(number: str) -> dict[str, Any]:
        return {"resourceType": "Patient", "identifier": [
            {"system": ID_CARD, "value": number},
            {"system": "urn:oid:2.16.156.10011.1.13", "value": "BA2026001"}]}

    for number in VALID_ID_NUMBERS:
        assert fhirpathpy.evaluate(patient(number), expression) == [True]
    for number in INVALID_ID_NUMBERS:
        assert fhirpathpy.evaluate(patient(number), expression) == [False]


# -- SearchParameters ------------------------------------------------------------------------


def test_cn_search_parameters_search_patients_by_ethnicity_and_id_card() -> None:
    params = {r["code"]: r for r in _of_type("SearchParameter").values()}
    assert params["ethnicity"]["expression"] == (
        f"Patient.extension.where(url='{ETHNICITY_URL}').value")
    assert ETHNICITY_URL in STRUCTURE_DEFINITIONS
    assert params["id-card"]["expression"] == f"Patient.identifier.where(system='{ID_CARD}')"
    for param in params.values():
        assert param["base"] == ["Patient"]
        assert param["type"] == "token"


def test_cn_search_parameters_compile_with_the_server_fhirpath_engine() -> None:
    from app.definitions.registry import load_registry
    from app.search.fhirpath import FHIRPathCompiler

    compiler = FHIRPathCompiler(load_registry())
    for path in sorted((PROFILES / "SearchParameter").glob("*.json")):
        sp = json.loads(path.read_text(encoding="utf-8"))
        for base in sp["base"]:
            compiler.compile(sp["expression"], base)
