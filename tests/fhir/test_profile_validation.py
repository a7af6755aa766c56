"""Validation against the CN profiles of fhir_profiles/ (app.fhir.profile_validation, $validate)."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.outcome import Issue
from app.fhir.profile_validation import ProfileValidator
from app.samples.identity import make_id
from tests.conftest import FHIR_JSON, ID_SYSTEM, MRN_SYSTEM, lab

CN_PATIENT = "https://fhir.yilian.cn/StructureDefinition/cn-patient"
CN_LAB = "https://fhir.yilian.cn/StructureDefinition/cn-observation-lab"
ETHNICITY = "https://fhir.yilian.cn/StructureDefinition/ethnicity"
GB_3304 = "urn:oid:2.16.156.10011.2.3.3.3"
ID_NUMBER = make_id("640102", date(1990, 5, 12), 2)  # 宁夏银川兴庆区, female


@pytest.fixture(scope="module")
def validator() -> ProfileValidator:
    return ProfileValidator(load_profile_resources(Settings().profiles_dir), load_registry())


def hui_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "meta": {"profile": [CN_PATIENT]},
        "extension": [{"url": ETHNICITY, "valueCodeableConcept": {
            "coding": [{"system": GB_3304, "code": "03", "display": "回族"}]}}],
        "identifier": [{"system": ID_SYSTEM, "value": ID_NUMBER},
                       {"system": MRN_SYSTEM, "value": "BA2026118"}],
        "name": [{"use": "official", "text": "马晓梅", "family": "马", "given": ["晓梅"]}],
        "gender": "female",
        "birthDate": "1990-05-12",
    }


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ("error", "fatal")]


def test_patient_conforming_to_cn_patient_has_no_issues(validator: ProfileValidator) -> None:
    assert validator.validate(hui_patient(), CN_PATIENT) == []


def test_missing_gender_is_reported_on_the_gender_element(validator: ProfileValidator) -> None:
    p = hui_patient()
    del p["gender"]
    [issue] = errors(validator.validate(p, CN_PATIENT))
    assert issue.expression == ("Patient.gender",)
    assert "Patient.gender" in issue.diagnostics and "minimum cardinality 1" in issue.diagnostics
    assert CN_PATIENT in issue.diagnostics


def test_id_card_identifier_without_value_fails_the_slice_child_minimum(
        validator: ProfileValidator) -> None:
    p = hui_patient()
    p["identifier"][0] = {"system": ID_SYSTEM}
    found = errors(validator.validate(p, CN_PATIENT))
    assert any(i.expression == ("Patient.identifier[0].value",)
               and "Patient.identifier:idCard.value" in i.diagnostics for i in found)


def test_value_minimum_of_the_id_card_slice_does_not_apply_to_other_identifiers(
        validator: ProfileValidator) -> None:
    p = hui_patient()
    p["identifier"].append({"system": "urn:oid:2.16.156.10011.1.19"})  # 居民健康卡号, unsliced
    assert errors(validator.validate(p, CN_PATIENT)) == []


def test_two_id_card_identifiers_violate_the_slice_maximum(validator: ProfileValidator) -> None:
    p = hui_patient()
    p["identifier"].append({"system": ID_SYSTEM, "value": make_id("110105", date(1949, 12, 31),
                                                                  1)})
    [issue] = errors(validator.validate(p, CN_PATIENT))
    assert "Patient.identifier:idCard" in issue.diagnostics
    assert "maximum cardinality 1, found 2" in issue.diagnostics


def test_ethnicity_code_outside_gb_3304_fails_the_required_binding(
        validator: ProfileValidator) -> None:
    p = hui_patient()
    p["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = "99x"
    [issue] = errors(validator.validate(p, CN_PATIENT))
    assert issue.code == "code-invalid"
    assert issue.expression == ("Patient.extension[0].valueCodeableConcept",)
    assert "99x" in issue.diagnostics and "gb-3304-ethnicity" in issue.diagnostics


def test_ethnicity_value_of_a_type_the_extension_does_not_allow_is_rejected(
        validator: ProfileValidator) -> None:
    p = hui_patient()
    p["extension"][0] = {"url": ETHNICITY, "valueString": "回族"}
    found = errors(validator.validate(p, CN_PATIENT))
    [issue] = found
    assert issue.expression == ("Patient.extension[0].valueString",)
    assert "type String is not allowed" in issue.diagnostics
    assert "expected CodeableConcept" in issue.diagnostics


def test_malformed_id_number_fails_invariant_cn_pat_1(validator: ProfileValidator) -> None:
    p = hui_patient()
    p["identifier"][0]["value"] = ID_NUMBER[:15]  # a truncated number
    [issue] = errors(validator.validate(p, CN_PATIENT))
    assert issue.code == "invariant" and "cn-pat-1" in issue.diagnostics
    assert issue.expression == ("Patient",)
    assert ID_NUMBER[:15] not in issue.diagnostics


def test_lab_observation_needs_the_laboratory_category_pattern(
        validator: ProfileValidator) -> None:
    ok = lab("p-hui")
    assert errors(validator.validate(ok, CN_LAB)) == []
    vitals = copy.deepcopy(ok)
    vitals["category"][0]["coding"][0]["code"] = "vital-signs"
    found = errors(validator.validate(vitals, CN_LAB))
    assert any("Observation.category:laboratory" in i.diagnostics
               and "minimum cardinality 1, found 0" in i.diagnostics for i in found)


def test_lab_quantity_must_use_ucum(validator: ProfileValidator) -> None:
    obs = lab("p-hui")
    obs["valueQuantity"]["system"] = "http://example.cn/units"
    [issue] = errors(validator.validate(obs, CN_LAB))
    assert issue.expression == ("Observation.valueQuantity.system",)
    assert "http://unitsofmeasure.org" in issue.diagnostics


def test_validate_with_an_unknown_profile_is_not_supported(client: TestClient) -> None:
    r = client.post("/fhir/Patient/$validate?profile=https://example.cn/StructureDefinition/x",
                    json=hui_patient(), headers=FHIR_JSON)
    assert r.status_code == 400
    [issue] = r.json()["issue"]
    assert issue["code"] == "not-supported" and CN_PATIENT in issue["diagnostics"]


def test_validate_with_a_cn_profile_parameter_applies_it(client: TestClient) -> None:
    p = hui_patient()
    del p["meta"], p["gender"]
    ok = client.post("/fhir/Patient/$validate", json=p, headers=FHIR_JSON).json()
    assert ok["issue"][0]["severity"] == "information"
    bad = client.post(f"/fhir/Patient/$validate?profile={CN_PATIENT}", json=p,
                      headers=FHIR_JSON).json()
    assert any(i["severity"] == "error" and i["expression"] == ["Patient.gender"]
               for i in bad["issue"])


def test_validate_applies_the_cn_profile_declared_in_meta_profile(client: TestClient) -> None:
    ok = client.post("/fhir/Patient/$validate", json=hui_patient(), headers=FHIR_JSON).json()
    assert ok["issue"][0]["severity"] == "information"
    assert CN_PATIENT in ok["issue"][0]["diagnostics"]
    p = hui_patient()
    p["identifier"][0]["value"] = "6401021990"
    bad = client.post("/fhir/Patient/$validate", json=p, headers=FHIR_JSON).json()
    assert any(i["code"] == "invariant" and "cn-pat-1" in i["diagnostics"] for i in bad["issue"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["system", "value", "url", "coding", "code", "extension",
                                       "identifier", "gender", "valueCodeableConcept",
                                       "category", "valueQuantity", "name"]), inner,
                      max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.sampled_from(["identifier", "extension", "gender", "name",
                                              "category", "valueQuantity", "meta", "code"]),
                            json_values, max_size=5),
       profile=st.sampled_from([CN_PATIENT, CN_LAB, ETHNICITY, "urn:uuid:nothing", ""]),
       resource_type=st.sampled_from(["Patient", "Observation", None]))
def test_junk_never_raises(validator: ProfileValidator, body: dict[str, Any], profile: str,
                           resource_type: str | None) -> None:
    resource = {**body, "resourceType": resource_type}
    issues = validator.validate(resource, profile)
    assert all(isinstance(i, Issue) for i in issues)
    assert not any(i.code == "exception" for i in issues)


def test_closed_slicing_rejects_unmatched_items_and_broken_invariants_only_warn() -> None:
    url = "https://fhir.yilian.cn/StructureDefinition/test-closed-patient"
    sd = {"resourceType": "StructureDefinition", "url": url, "type": "Patient",
          "kind": "resource", "derivation": "constraint",
          "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
          "differential": {"element": [
              {"id": "Patient", "path": "Patient", "constraint": [
                  {"key": "test-1", "severity": "error", "human": "表达式无法解析",
                   "expression": "identifier.where(("}]},
              {"id": "Patient.identifier", "path": "Patient.identifier", "slicing": {
                  "discriminator": [{"type": "value", "path": "system"}], "rules": "closed"}},
              {"id": "Patient.identifier:idCard", "path": "Patient.identifier",
               "sliceName": "idCard"},
              {"id": "Patient.identifier:idCard.system", "path": "Patient.identifier.system",
               "fixedUri": ID_SYSTEM}]}}
    closed = ProfileValidator([sd], load_registry())
    issues = closed.validate(hui_patient(), url)
    [unmatched] = errors(issues)
    assert unmatched.expression == ("Patient.identifier[1]",)
    assert "slicing is closed" in unmatched.diagnostics
    [warning] = [i for i in issues if i.severity == "warning"]
    assert "test-1" in warning.diagnostics and warning.code == "invariant"
