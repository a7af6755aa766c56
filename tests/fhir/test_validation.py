"""FHIR R4 validation on fhir.resources' R4B models (app/fhir/validation.py)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.definitions.registry import Registry, load_registry
from app.fhir.outcome import Issue
from app.fhir.validation import (
    MAX_ISSUES,
    compare_r4_r4b,
    comparison_markdown,
    required_codes,
    validate_resource,
    validator_for,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "r4-on-r4b.md"
R4_DEFINITIONS = ROOT / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir" / "r4"
ID_CARD = "urn:oid:2.16.156.10011.1.3"  # 居民身份证号
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def issues_of(resource: Any, registry: Registry) -> list[Issue]:
    return validate_resource(resource, registry)


def expressions(issues: list[Issue]) -> list[str]:
    return [e for i in issues for e in i.expression]


# -- realistic resources --------------------------------------------------------------------


def zhang_san() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "zhangsan-001",
        "meta": {"versionId": "1", "lastUpdated": "2026-11-20T08:00:00.000+08:00"},
        "text": {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml">张三，男，1949-12-31</div>'},
        "identifier": [
            {"use": "official", "system": ID_CARD, "value": "11010519491231002X"},
            {"system": "urn:oid:2.16.156.10011.1.13", "value": "BA2026001"},
        ],
        "active": True,
        "name": [{"use": "official", "text": "张三", "family": "张", "given": ["三"]}],
        "telecom": [{"system": "phone", "value": "13800138000", "use": "mobile"}],
        "gender": "male",
        "birthDate": "1949-12-31",
        "address": [{"use": "home", "text": "北京市西城区西长安街1号", "city": "北京市",
                     "district": "西城区", "line": ["西长安街1号"], "postalCode": "100032"}],
        "maritalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M",
            "display": "Married"}], "text": "已婚"},
        "contact": [{"relationship": [{"text": "女儿"}], "name": {"text": "张小红"},
                     "telecom": [{"system": "phone", "value": "13900139000"}]}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47",
                                                    "code": "zh-CN"}]}, "preferred": True}],
        "managingOrganization": {"reference": "Organization/pumch", "display": "北京协和医院"},
    }


def wbc() -> dict[str, Any]:
    """血常规 白细胞计数 (WBC) 6.5 ×10⁹/L."""
    return {
        "resourceType": "Observation",
        "id": "cbc-wbc-20261120",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "6690-2",
                             "display": "Leukocytes [#/volume] in Blood by Automated count"}],
                 "text": "白细胞计数"},
        "subject": {"reference": "Patient/zhangsan-001", "display": "张三"},
        "encounter": {"reference": "Encounter/op-20261120-0042"},
        "effectiveDateTime": "2026-11-20T08:30:00+08:00",
        "issued": "2026-11-20T10:02:13.512+08:00",
        "performer": [{"reference": "Organization/pumch", "display": "北京协和医院检验科"}],
        "valueQuantity": {"value": 6.5, "unit": "10^9/L", "system": UCUM, "code": "10*9/L"},
        "interpretation": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": "N"}], "text": "正常"}],
        "referenceRange": [{"low": {"value": 3.5, "unit": "10^9/L", "system": UCUM,
                                    "code": "10*9/L"},
                            "high": {"value": 9.5, "unit": "10^9/L", "system": UCUM,
                                     "code": "10*9/L"},
                            "text": "3.5-9.5"}],
    }


def blood_pressure() -> dict[str, Any]:
    def part(loinc: str, name: str, value: int) -> dict[str, Any]:
        return {"code": {"coding": [{"system": "http://loinc.org", "code": loinc}], "text": name},
                "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM,
                                  "code": "mm[Hg]"}}

    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "血压"},
        "subject": {"reference": "Patient/zhangsan-001"},
        "effectiveDateTime": "2026-11-20T09:05:00+08:00",
        "component": [part("8480-6", "收缩压", 138), part("8462-4", "舒张压", 86)],
    }


def diabetes() -> dict[str, Any]:
    """2型糖尿病 (ICD-10 E11.900, 国家临床版 2.0)."""
    return {
        "resourceType": "Condition",
        "id": "dm2-zhangsan",
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": "active"}]},
        "verificationStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": "confirmed"}]},
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
            "code": "encounter-diagnosis"}]}],
        "code": {"coding": [{"system": ICD10, "code": "E11.900", "display": "2型糖尿病"}],
                 "text": "2型糖尿病"},
        "subject": {"reference": "Patient/zhangsan-001"},
        "onsetDateTime": "2015-06",
        "recordedDate": "2026-11-20",
        "note": [{"text": "口服二甲双胍控制中"}],
    }


def outpatient_visit() -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "op-20261120-0042",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                  "display": "门诊"},
        "type": [{"text": "内分泌科门诊"}],
        "subject": {"reference": "Patient/zhangsan-001"},
        "participant": [{"individual": {"reference": "Practitioner/li-si",
                                        "display": "李四 主任医师"}}],
        "period": {"start": "2026-11-20T08:10:00+08:00", "end": "2026-11-20T08:40:00+08:00"},
        "reasonCode": [{"coding": [{"system": ICD10, "code": "E11.900"}]}],
        "serviceProvider": {"reference": "Organization/pumch"},
    }


def metformin() -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "盐酸二甲双胍片 0.5g"},
        "subject": {"reference": "Patient/zhangsan-001"},
        "authoredOn": "2026-11-20T08:35:00+08:00",
        "requester": {"reference": "Practitioner/li-si"},
        "dosageInstruction": [{
            "text": "每次0.5g，每日3次，餐后口服",
            "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d",
                                  "when": ["PC"]}},
            "route": {"text": "口服"},
            "doseAndRate": [{"doseQuantity": {"value": 0.5, "unit": "g", "system": UCUM,
                                              "code": "g"}}],
        }],
        "dispenseRequest": {"quantity": {"value": 90, "unit": "片"},
                            "expectedSupplyDuration": {"value": 30, "unit": "天",
                                                       "system": UCUM, "code": "d"}},
    }


def penicillin_allergy() -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            "code": "active"}]},
        "type": "allergy",
        "category": ["medication"],
        "criticality": "high",
        "code": {"text": "青霉素"},
        "patient": {"reference": "Patient/zhangsan-001"},
        "reaction": [{"manifestation": [{"text": "皮疹"}], "severity": "moderate"}],
    }


def cbc_report() -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "HM"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}],
                 "text": "血常规"},
        "subject": {"reference": "Patient/zhangsan-001"},
        "effectiveDateTime": "2026-11-20T08:30:00+08:00",
        "issued": "2026-11-20T10:05:00+08:00",
        "result": [{"reference": "Observation/cbc-wbc-20261120"}],
        "conclusion": "血常规未见明显异常",
    }


def practitioner() -> dict[str, Any]:
    return {"resourceType": "Practitioner", "id": "li-si",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.4", "value": "110000001234"}],
            "name": [{"text": "李四", "family": "李", "given": ["四"]}], "gender": "male",
            "qualification": [{"code": {"text": "主任医师"}}]}


def hospital() -> dict[str, Any]:
    return {"resourceType": "Organization", "id": "pumch", "active": True,
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.5",
                            "value": "12100000400000624D"}],
            "name": "北京协和医院", "alias": ["协和医院"],
            "address": [{"text": "北京市东城区帅府园1号"}]}


def transaction() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:3f9a3c1e-4b6d-11ee-be56-0242ac120002", "resource": zhang_san(),
         "request": {"method": "PUT", "url": "Patient/zhangsan-001"}},
        {"resource": wbc(), "request": {"method": "POST", "url": "Observation"}},
    ]}


CLINICAL = [zhang_san, wbc, blood_pressure, diabetes, outpatient_visit, metformin,
            penicillin_allergy, cbc_report, practitioner, hospital, transaction]


# -- valid R4 is accepted ------------------------------------------------------------------


@pytest.mark.parametrize("make", CLINICAL, ids=lambda f: f.__name__)
def test_valid_r4_clinical_resources_are_accepted(make: Any, registry: Registry) -> None:
    assert issues_of(make(), registry) == []


def test_validation_never_changes_the_resource(registry: Registry) -> None:
    resource = transaction()
    resource["entry"][0]["resource"]["extension"] = [
        {"url": "http://example.cn/meta-snapshot", "valueMeta": {"versionId": "3"}}]
    before = copy.deepcopy(resource)
    assert issues_of(resource, registry) == []
    assert resource == before


def test_primitive_extension_pairs_with_null_placeholders_are_accepted(
        registry: Registry) -> None:
    patient = zhang_san()
    patient["name"][0]["given"] = ["三", None]
    patient["name"][0]["_given"] = [None, {"extension": [{
        "url": "http://example.cn/fhir/StructureDefinition/pinyin", "valueString": "San"}]}]
    patient["_birthDate"] = {"extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
        "valueDateTime": "1949-12-31T08:00:00+08:00"}]}
    assert issues_of(patient, registry) == []


def test_required_primitive_may_be_given_by_its_extension_alone(registry: Registry) -> None:
    observation = wbc()
    del observation["status"]
    observation["_status"] = {"extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "valueCode": "unknown"}]}
    assert issues_of(observation, registry) == []


# -- what R4 rejects -----------------------------------------------------------------------


def test_unknown_element_is_rejected_with_its_expression(registry: Registry) -> None:
    patient = zhang_san()
    patient["name"][0]["nickname"] = "老张"
    issues = issues_of(patient, registry)
    assert [(i.code, i.expression) for i in issues] == [
        ("structure", ("Patient.name[0].nickname",))]
    assert "unknown element 'nickname'" in issues[0].diagnostics


def test_misspelt_element_gets_a_suggestion(registry: Registry) -> None:
    patient = zhang_san()
    patient["birthdate"] = patient.pop("birthDate")
    (issue,) = issues_of(patient, registry)
    assert issue.expression == ("Patient.birthdate",)
    assert "did you mean 'birthDate'" in issue.diagnostics


@pytest.mark.parametrize("key", ["fhir_comments", "birthDate__ext", "resource_type"])
def test_keys_fhir_resources_tolerates_are_still_unknown_in_r4(key: str,
                                                               registry: Registry) -> None:
    patient = zhang_san()
    patient[key] = "x" if key != "birthDate__ext" else {"id": "a"}
    assert expressions(issues_of(patient, registry)) == [f"Patient.{key}"]


@pytest.mark.parametrize(("field", "value", "expression"), [
    ("birthDate", "1949-13-31", "Patient.birthDate"),
    ("birthDate", "1949-02-30", "Patient.birthDate"),
    ("birthDate", "1949/12/31", "Patient.birthDate"),
    ("gender", "male ", "Patient.gender"),
    ("id", "张三", "Patient.id"),
    ("id", "a" * 65, "Patient.id"),
    ("active", "true", "Patient.active"),
    ("deceasedDateTime", "2026-11-20T08:30:00", "Patient.deceased.ofType(dateTime)"),
    ("multipleBirthInteger", 2.5, "Patient.multipleBirth.ofType(integer)"),
    ("multipleBirthInteger", 2**31, "Patient.multipleBirth.ofType(integer)"),
    ("implicitRules", "http://example.cn/规则 一", "Patient.implicitRules"),
])
def test_wrong_primitive_format_is_rejected_with_its_expression(
        field: str, value: Any, expression: str, registry: Registry) -> None:
    patient = zhang_san()
    patient[field] = value
    issues = issues_of(patient, registry)
    assert [(i.code, i.expression) for i in issues] == [("value", (expression,))]


def test_nested_errors_name_the_array_position(registry: Registry) -> None:
    observation = blood_pressure()
    observation["component"][1]["code"] = {"coding": [{"system": "http://loinc.org",
                                                       "code": "8462 4 "}]}
    observation["component"][1]["valueQuantity"]["value"] = "86"
    assert sorted(expressions(issues_of(observation, registry))) == [
        "Observation.component[1].code.coding[0].code",
        "Observation.component[1].value.ofType(Quantity).value",
    ]


def test_missing_required_elements_are_reported_where_they_belong(registry: Registry) -> None:
    observation = blood_pressure()
    del observation["status"]
    del observation["component"][0]["code"]
    issues = issues_of(observation, registry)
    assert {(i.code, i.expression) for i in issues} == {
        ("required", ("Observation.status",)),
        ("required", ("Observation.component[0].code",)),
    }


def test_choice_element_with_two_types_is_rejected(registry: Registry) -> None:
    observation = wbc()
    observation["valueString"] = "6.5"
    (issue,) = issues_of(observation, registry)
    assert issue.expression == ("Observation.value",)
    assert "'valueQuantity' and 'valueString'" in issue.diagnostics


def test_bare_choice_name_explains_the_typed_form(registry: Registry) -> None:
    observation = wbc()
    observation["value"] = observation.pop("valueQuantity")
    (issue,) = issues_of(observation, registry)
    assert issue.expression == ("Observation.value",)
    assert "valueQuantity" in issue.diagnostics


@pytest.mark.parametrize(("mutate", "expression"), [
    (lambda p: p.update(gender=""), "Patient.gender"),
    (lambda p: p.update(identifier=[]), "Patient.identifier"),
    (lambda p: p.update(maritalStatus={}), "Patient.maritalStatus"),
    (lambda p: p["name"][0].update(given=[]), "Patient.name[0].given"),
    (lambda p: p.update(telecom=[None]), "Patient.telecom[0]"),
    (lambda p: p.update(birthDate=None), "Patient.birthDate"),
    (lambda p: p["name"][0].update(given=["三", None]), "Patient.name[0].given[1]"),
    (lambda p: p.update(name={"text": "张三"}), "Patient.name"),
    (lambda p: p.update(gender=["male"]), "Patient.gender"),
    (lambda p: p.update(maritalStatus={"id": "m1"}), "Patient.maritalStatus"),
])
def test_empty_null_and_misshapen_values_are_rejected(mutate: Any, expression: str,
                                                      registry: Registry) -> None:
    patient = zhang_san()
    mutate(patient)
    assert expressions(issues_of(patient, registry)) == [expression]


def test_extension_must_have_a_value_or_extensions_but_not_both(registry: Registry) -> None:
    patient = zhang_san()
    patient["extension"] = [
        {"url": "http://example.cn/fhir/StructureDefinition/ethnicity"},
        {"url": "http://example.cn/fhir/StructureDefinition/ethnicity", "valueString": "汉族",
         "extension": [{"url": "code", "valueCode": "01"}]},
    ]
    assert expressions(issues_of(patient, registry)) == ["Patient.extension[0]",
                                                         "Patient.extension[1]"]


def test_contained_resources_are_validated_as_their_own_type(registry: Registry) -> None:
    observation = wbc()
    observation["contained"] = [{"resourceType": "Specimen", "id": "blood",
                                 "type": {"text": "静脉血"}, "collection": {
                                     "collectedDateTime": "2026-11-20 08:00"}}]
    assert expressions(issues_of(observation, registry)) == [
        "Observation.contained[0].ofType(Specimen).collection.collected.ofType(dateTime)"]


def test_contained_resource_may_not_contain_resources(registry: Registry) -> None:
    observation = wbc()
    observation["contained"] = [{"resourceType": "Organization", "name": "北京协和医院",
                                 "contained": [{"resourceType": "Organization",
                                                "name": "检验科"}]}]
    issues = issues_of(observation, registry)
    assert ("invariant", ("Observation.contained[0].ofType(Organization).contained",)) in [
        (i.code, i.expression) for i in issues]


def test_bundle_entries_are_validated_with_their_position(registry: Registry) -> None:
    bundle = transaction()
    bundle["entry"][1]["resource"]["issued"] = "2026-11-20"
    assert expressions(issues_of(bundle, registry)) == [
        "Bundle.entry[1].resource.ofType(Observation).issued"]


def test_code_outside_a_required_value_set_is_rejected(registry: Registry) -> None:
    patient = zhang_san()
    patient["gender"] = "男"
    patient["name"][0]["use"] = "正式"
    issues = issues_of(patient, registry)
    assert [(i.code, i.expression) for i in issues] == [
        ("code-invalid", ("Patient.name[0].use",)), ("code-invalid", ("Patient.gender",))]
    assert "female, male, other, unknown" in issues[1].diagnostics


@pytest.mark.parametrize("status", ["corrected", "cancelled", "entered-in-error", "unknown"])
def test_codes_beyond_a_truncated_library_list_are_accepted(status: str,
                                                            registry: Registry) -> None:
    # fhir.resources lists Observation.status as "registered | preliminary | final | amended +".
    observation = wbc()
    observation["status"] = status
    assert issues_of(observation, registry) == []


def test_required_bindings_come_from_the_r4_value_sets(registry: Registry) -> None:
    assert required_codes(registry, "Patient", "gender") == {"male", "female", "other",
                                                             "unknown"}
    status = required_codes(registry, "Observation", "status")
    assert status is not None and {"corrected", "entered-in-error", "final"} <= status
    assert required_codes(registry, "Patient", "communication.language") is None


# -- R4 versus R4B -------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", ["Citation", "NutritionProduct", "SubscriptionTopic",
                                   "ClinicalUseDefinition", "SubscriptionStatus"])
def test_r4b_only_resource_types_are_rejected_as_not_r4(rtype: str,
                                                        registry: Registry) -> None:
    (issue,) = issues_of({"resourceType": rtype, "status": "active"}, registry)
    assert issue.code == "not-supported"
    assert "does not exist in FHIR R4 (4.0.1)" in issue.diagnostics


def test_r4b_only_resource_inside_a_bundle_is_rejected(registry: Registry) -> None:
    bundle = transaction()
    bundle["entry"][1]["resource"] = {"resourceType": "NutritionProduct", "status": "active"}
    (issue,) = issues_of(bundle, registry)
    assert issue.expression == ("Bundle.entry[1].resource",)


def test_r4_only_resource_type_is_validated_structurally(registry: Registry) -> None:
    product = {"resourceType": "MedicinalProduct", "id": "metformin-500",
               "name": [{"productName": "盐酸二甲双胍片"}],
               "domain": {"system": "http://hl7.org/fhir/medicinal-product-domain",
                          "code": "Human", "display": "人用药品"}}
    assert issues_of(product, registry) == []
    del product["name"]
    product["combinedPharmaceuticalDoseForm"] = {"text": "片剂", "colour": "白色"}
    issues = issues_of(product, registry)
    assert {(i.code, i.expression) for i in issues} == {
        ("required", ("MedicinalProduct.name",)),
        ("structure", ("MedicinalProduct.combinedPharmaceuticalDoseForm.colour",)),
    }


def test_r4_only_choice_type_is_accepted(registry: Registry) -> None:
    # R4 allows Meta in Extension.value[x]; R4B dropped it, so the R4B model must not see it.
    patient = zhang_san()
    patient["extension"] = [{"url": "http://example.cn/fhir/StructureDefinition/source-meta",
                             "valueMeta": {"versionId": "7",
                                           "lastUpdated": "2026-11-01T00:00:00Z"}}]
    assert issues_of(patient, registry) == []
    patient["extension"][0]["valueMeta"]["lastUpdated"] = "2026-11-01"
    assert expressions(issues_of(patient, registry)) == [
        "Patient.extension[0].value.ofType(Meta).lastUpdated"]


def test_uuid_of_any_version_is_accepted_although_fhir_resources_wants_version_4(
        registry: Registry) -> None:
    patient = zhang_san()
    patient["extension"] = [{"url": "http://example.cn/fhir/StructureDefinition/his-key",
                             "valueUuid": "urn:uuid:3f9a3c1e-4b6d-11ee-be56-0242ac120002"}]
    assert issues_of(patient, registry) == []


@pytest.mark.parametrize(("resource", "expression"), [
    ({"resourceType": "ActivityDefinition", "status": "draft",
      "subjectCanonical": "http://example.cn/fhir/StructureDefinition/cn-patient"},
     "ActivityDefinition.subjectCanonical"),
    ({"resourceType": "Patient", "extension": [{
        "url": "http://example.cn/fhir/StructureDefinition/reason",
        "valueCodeableReference": {"concept": {"text": "随访"}}}]},
     "Patient.extension[0].valueCodeableReference"),
    ({"resourceType": "Evidence", "status": "active",
      "exposureBackground": {"reference": "EvidenceVariable/t2dm-adults"},
      "variableDefinition": [{"variableRole": {"text": "population"}}]},
     "Evidence.variableDefinition"),
])
def test_r4b_only_elements_are_rejected_as_not_r4(resource: dict[str, Any], expression: str,
                                                  registry: Registry) -> None:
    (issue,) = issues_of(resource, registry)
    assert issue.expression == (expression,)
    assert "FHIR R4B (4.3.0) added it" in issue.diagnostics


def test_r4_element_dropped_by_r4b_is_accepted(registry: Registry) -> None:
    evidence = {"resourceType": "Evidence", "status": "active", "name": "MetforminHbA1c",
                "title": "二甲双胍降低糖化血红蛋白的证据",
                "exposureBackground": {"reference": "EvidenceVariable/t2dm-adults"}}
    assert issues_of(evidence, registry) == []


def test_r4b_model_errors_become_issues_with_fhirpath_expressions(registry: Registry) -> None:
    validator = validator_for(registry)
    issues = validator.model_issues("Observation", {
        "resourceType": "Observation", "status": "final", "code": {"text": "血压"},
        "component": [{"code": {"text": "收缩压"}},
                      {"code": {"coding": [{"system": "http://loinc.org", "code": ""}]}}],
        "effectiveDateTime": "2026-11-20T09:05:00"})
    assert sorted(expressions(issues)) == [
        "Observation.component[1].code.coding[0].code",
        "Observation.effective.ofType(dateTime)",
    ]


def test_comparison_in_the_docs_matches_the_installed_definitions(registry: Registry) -> None:
    text = DOC.read_text(encoding="utf-8")
    generated = re.search(r"<!-- BEGIN GENERATED[^\n]*-->\n(.*?)<!-- END GENERATED -->", text,
                          re.S)
    assert generated, "docs/r4-on-r4b.md lost its generated section"
    assert generated.group(1) == comparison_markdown(compare_r4_r4b(registry)), (
        "R4/R4B comparison changed: regenerate with `python -m app.fhir.validation`")


def test_comparison_finds_the_known_r4_r4b_type_changes(registry: Registry) -> None:
    comparison = compare_r4_r4b(registry)
    assert {"EffectEvidenceSynthesis", "RiskEvidenceSynthesis", "MedicinalProduct",
            "SubstanceSpecification"} <= set(comparison.r4_only_resources)
    assert {"Citation", "NutritionProduct", "SubscriptionTopic", "SubscriptionStatus",
            "AdministrableProductDefinition", "ClinicalUseDefinition"} <= set(
        comparison.r4b_only_resources)
    assert "CodeableReference" in comparison.r4b_only_datatypes
    assert "SubstanceAmount" in comparison.r4_only_datatypes


# -- robustness ----------------------------------------------------------------------------


@pytest.mark.parametrize("junk", [
    None, 42, 3.5, "Patient", [], [zhang_san()], {}, {"resourceType": None},
    {"resourceType": ["Patient"]}, {"resourceType": "Resource"}, {"resourceType": "患者"},
    {"resourceType": "Patient", 1: "x"}, {"resourceType": "Patient", "name": [[[]]]},
    {"resourceType": "Patient", "text": {"status": "generated", "div": "张三"}},
    {"resourceType": "Binary", "contentType": "text/plain", "data": "5byg5LiJ" + " " * 5000 + "!"},
])
def test_junk_input_gives_issues_not_exceptions(junk: Any, registry: Registry) -> None:
    issues = issues_of(junk, registry)
    assert issues
    assert all(isinstance(i, Issue) and i.diagnostics for i in issues)


def test_deeply_nested_input_is_refused_without_recursion_error(registry: Registry) -> None:
    extension: dict[str, Any] = {"url": "http://example.cn/x", "valueString": "底"}
    for _ in range(5000):
        extension = {"url": "http://example.cn/x", "extension": [extension]}
    issues = issues_of({"resourceType": "Patient", "extension": [extension]}, registry)
    assert [i.code for i in issues] == ["too-costly"]


def test_huge_string_is_checked_against_the_one_megabyte_limit(registry: Registry) -> None:
    patient = zhang_san()
    patient["name"][0]["text"] = "张" * 400_000  # 1.2 MB in UTF-8
    assert expressions(issues_of(patient, registry)) == ["Patient.name[0].text"]


def test_issue_count_is_capped(registry: Registry) -> None:
    patient = {"resourceType": "Patient", **{f"unknown{i}": i for i in range(1000)}}
    issues = issues_of(patient, registry)
    assert len(issues) == MAX_ISSUES + 1
    assert issues[-1].code == "too-costly"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=30,
)
PATIENT_KEYS = ["id", "meta", "text", "extension", "identifier", "active", "name", "telecom",
                "gender", "birthDate", "_birthDate", "deceasedBoolean", "address", "contact",
                "contained", "multipleBirthInteger", "photo", "link", "given", "family",
                "system", "value", "url", "valueString", "resourceType", "div", "status"]
fhir_shaped = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["Patient", "Observation", "1949-12-31", "张三", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(PATIENT_KEYS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_json_never_makes_validation_raise(value: Any) -> None:
    issues = validate_resource(value, load_registry())
    assert all(isinstance(i, Issue) for i in issues)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["Patient", "Observation", "Bundle", "MedicinalProduct"]),
       st.dictionaries(st.sampled_from(PATIENT_KEYS), fhir_shaped, max_size=6))
def test_random_fhir_shaped_json_never_makes_validation_raise(rtype: str,
                                                              body: dict[str, Any]) -> None:
    body["resourceType"] = rtype
    issues = validate_resource(body, load_registry())
    assert all(isinstance(i, Issue) for i in issues)
