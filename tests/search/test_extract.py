"""Search-index extraction from R4 SearchParameters (app.search.extract)."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.definitions.registry import Registry, load_registry
from app.search.dates import date_range, parse_offset
from app.search.extract import Indexer, date_range_ms, decimal_range, parse_offset_ms
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

BASE = "https://fhir.bjyy.example.cn/fhir"
ID_CARD = "urn:oid:2.16.156.10011.1.3"  # 居民身份证号
MRN = "http://bjyy.example.cn/fhir/sid/mrn"  # 病案号
LIS = "http://bjyy.example.cn/fhir/CodeSystem/lis-item"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
CST = 8 * 3600 * 1000


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def indexer(registry: Registry) -> Indexer:
    return Indexer(registry, default_timezone="+08:00", base_urls=[BASE])


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def of(rows: list[Any], param: str) -> list[Any]:
    return [r for r in rows if r.param == param]


def wbc() -> dict[str, Any]:
    """血常规 WBC result as a LIS sends it: LOINC plus the hospital's own item code."""
    return {
        "resourceType": "Observation",
        "id": "obs-20240305-wbc-0007",
        "meta": {"versionId": "1", "lastUpdated": "2024-03-05T01:12:33.123Z"},
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [
            {"system": "http://loinc.org", "code": "6690-2",
             "display": "Leukocytes [#/volume] in Blood by Automated count"},
            {"system": LIS, "code": "WBC", "display": "白细胞计数"}],
            "text": "白细胞计数(WBC)"},
        "subject": {"reference": "Patient/p-zhangsan", "display": "张三"},
        "encounter": {"reference": "Encounter/enc-20240305-0007"},
        "effectiveDateTime": "2024-03-05T08:30:00+08:00",
        "issued": "2024-03-05T09:12:00+08:00",
        "performer": [{"reference": f"{BASE}/Practitioner/pr-lis-li"}],
        "specimen": {"reference": "Specimen/sp-20240305-113"},
        "valueQuantity": {"value": 10.2, "unit": "10^9/L", "system": UCUM, "code": "10*9/L"},
        "interpretation": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": "H"}]}],
        "referenceRange": [{"low": {"value": 3.5, "unit": "10^9/L", "system": UCUM,
                                    "code": "10*9/L"},
                            "high": {"value": 9.5, "unit": "10^9/L", "system": UCUM,
                                     "code": "10*9/L"}}],
    }


def shan_xiongxin() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p-shanxiongxin",
        "meta": {"lastUpdated": "2024-03-05T01:00:00.000Z"},
        "identifier": [
            {"use": "official",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                  "code": "NNCHN", "display": "居民身份证"}]},
             "system": ID_CARD, "value": "11010519491231002X"},
            {"type": {"text": "病案号"}, "system": MRN, "value": "BA2024000123"},
        ],
        "active": True,
        "name": [{"use": "official", "text": "单雄信", "family": "单", "given": ["雄信"]}],
        "telecom": [{"system": "phone", "value": "13800138000", "use": "mobile"},
                    {"system": "email", "value": "shanxx@example.cn"}],
        "gender": "male",
        "birthDate": "1949-12-31",
        "address": [{"use": "home", "text": "北京市西城区西长安街1号", "line": ["西长安街1号"],
                     "city": "北京市", "district": "西城区", "postalCode": "100032",
                     "country": "CN"}],
        "managingOrganization": {"reference": "Organization/org-bjyy"},
    }


# -- whole resources ----------------------------------------------------------------------------


def test_lab_observation_codes_are_indexed_per_coding_with_display_text(
    indexer: Indexer,
) -> None:
    rows = indexer.rows(wbc())

    assert of(rows.token, "code") == [
        TokenRow("code", "http://loinc.org", "6690-2",
                 "leukocytes [#/volume] in blood by automated count"),
        TokenRow("code", LIS, "WBC", "白细胞计数"),
        TokenRow("code", None, None, "白细胞计数(wbc)"),
    ]
    assert of(rows.token, "category") == [TokenRow(
        "category", "http://terminology.hl7.org/CodeSystem/observation-category",
        "laboratory", "laboratory")]
    assert of(rows.token, "status") == [TokenRow("status", None, "final", None)]
    assert of(rows.token, "_id") == [TokenRow("_id", None, "obs-20240305-wbc-0007", None)]


def test_lab_observation_value_quantity_carries_its_precision_range(indexer: Indexer) -> None:
    rows = indexer.rows(wbc())

    assert of(rows.quantity, "value-quantity") == [
        QuantityRow("value-quantity", UCUM, "10*9/L", 10.2, 10.15, 10.25)]
    assert of(rows.quantity, "combo-value-quantity") == [
        QuantityRow("combo-value-quantity", UCUM, "10*9/L", 10.2, 10.15, 10.25)]


def test_lab_observation_dates_are_ranges_of_their_precision(indexer: Indexer) -> None:
    rows = indexer.rows(wbc())
    effective = ms("2024-03-05T08:30:00+08:00")
    updated = ms("2024-03-05T01:12:33.123+00:00")

    assert of(rows.date, "date") == [DateRow("date", effective, effective + 1000)]
    assert of(rows.date, "_lastUpdated") == [DateRow("_lastUpdated", updated, updated + 1)]


def test_lab_observation_references_are_local_targets(indexer: Indexer) -> None:
    rows = indexer.rows(wbc())

    def local(param: str, rtype: str, rid: str) -> ReferenceRow:
        return ReferenceRow(param, rtype, rid, None, None, None)

    assert of(rows.reference, "subject") == [local("subject", "Patient", "p-zhangsan")]
    assert of(rows.reference, "patient") == [local("patient", "Patient", "p-zhangsan")]
    assert of(rows.reference, "encounter") == [
        local("encounter", "Encounter", "enc-20240305-0007")]
    # An absolute reference to this server's own base is a local one.
    assert of(rows.reference, "performer") == [local("performer", "Practitioner", "pr-lis-li")]
    assert of(rows.reference, "specimen") == [local("specimen", "Specimen", "sp-20240305-113")]


def test_lab_observation_code_value_quantity_composite_pairs_each_code_with_the_value(
    indexer: Indexer,
) -> None:
    rows = indexer.rows(wbc())

    assert of(rows.composite, "code-value-quantity") == [
        CompositeRow("code-value-quantity", "http://loinc.org", "6690-2",
                     c2_system=UCUM, c2_code="10*9/L", c2_lo=10.15, c2_hi=10.25),
        CompositeRow("code-value-quantity", LIS, "WBC",
                     c2_system=UCUM, c2_code="10*9/L", c2_lo=10.15, c2_hi=10.25),
    ]
    assert of(rows.composite, "code-value-concept") == []


def test_component_composites_pair_values_within_one_component_only(indexer: Indexer) -> None:
    bp = {
        "resourceType": "Observation", "id": "obs-bp-001", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}],
                 "text": "血压"},
        "subject": {"reference": "Patient/p-zhangsan"},
        "effectiveDateTime": "2024-03-05T08:00:00+08:00",
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 150, "unit": "mmHg", "system": UCUM,
                               "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 95, "unit": "mmHg", "system": UCUM,
                               "code": "mm[Hg]"}},
        ],
    }
    rows = of(indexer.rows(bp).composite, "component-code-value-quantity")

    assert [(r.c1_code, r.c2_lo, r.c2_hi) for r in rows] == [
        ("8480-6", 149.5, 150.5), ("8462-4", 94.5, 95.5)]


def test_patient_name_is_indexed_with_surname_reading_shan_for_单(indexer: Indexer) -> None:
    rows = indexer.rows(shan_xiongxin())

    assert of(rows.string, "family") == [
        StringRow("family", "单", "单"), StringRow("family", "shan", None)]
    assert of(rows.string, "given") == [
        StringRow("given", "雄信", "雄信"), StringRow("given", "xiongxin", None)]
    assert of(rows.string, "name") == [
        StringRow("name", "单", "单"),
        StringRow("name", "雄信", "雄信"),
        StringRow("name", "单雄信", "单雄信"),
        StringRow("name", "shanxiongxin", None),
        StringRow("name", "shan xiongxin", None),
        StringRow("name", "xiongxin", None),
    ]
    assert [r.norm for r in of(rows.string, "phonetic")] == [
        r.norm for r in of(rows.string, "name")]


def test_patient_name_without_text_still_gets_the_full_chinese_name(indexer: Indexer) -> None:
    patient = {"resourceType": "Patient", "id": "p-ouyang",
               "name": [{"family": "欧阳", "given": ["娜娜"]}]}
    norms = [r.norm for r in of(indexer.rows(patient).string, "name")]

    assert "欧阳娜娜" in norms  # `name=欧阳娜娜` matches although no part equals it
    assert {"ouyangnana", "ouyang nana", "nana"} <= set(norms)


def test_patient_name_known_only_as_text_takes_the_first_character_as_surname(
    indexer: Indexer,
) -> None:
    patient = {"resourceType": "Patient", "id": "p-zeng", "name": [{"text": "曾国藩"}]}
    norms = [r.norm for r in of(indexer.rows(patient).string, "name")]

    assert norms == ["曾国藩", "zengguofan", "zeng guofan", "guofan"]


def test_pinyin_is_only_added_to_personal_name_parameters(indexer: Indexer) -> None:
    org = {"resourceType": "Organization", "id": "org-bjyy", "name": "北京协和医院"}

    rows = indexer.rows(org).string

    assert of(rows, "name") == [StringRow("name", "北京协和医院", "北京协和医院")]
    assert all(r.exact is not None for r in rows)  # Organization `phonetic` too


def test_patient_identifier_keeps_type_text_and_an_of_type_row(indexer: Indexer) -> None:
    rows = indexer.rows(shan_xiongxin())

    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    assert of(rows.token, "identifier") == [
        TokenRow("identifier", ID_CARD, "11010519491231002X", "居民身份证"),
        TokenRow("identifier", f"of-type:{v2}|NNCHN", "11010519491231002X", None),
        TokenRow("identifier", MRN, "BA2024000123", "病案号"),
    ]


def test_patient_telecom_tokens_match_on_the_value(indexer: Indexer) -> None:
    rows = indexer.rows(shan_xiongxin())

    assert of(rows.token, "phone") == [TokenRow("phone", None, "13800138000", None)]
    assert of(rows.token, "email") == [TokenRow("email", None, "shanxx@example.cn", None)]
    assert of(rows.token, "telecom") == [
        TokenRow("telecom", None, "13800138000", None),
        TokenRow("telecom", None, "shanxx@example.cn", None)]


def test_patient_birth_date_is_the_whole_day_in_china_standard_time(indexer: Indexer) -> None:
    rows = indexer.rows(shan_xiongxin())
    midnight = ms("1949-12-31T00:00:00+08:00")

    assert of(rows.date, "birthdate") == [DateRow("birthdate", midnight, midnight + 86_400_000)]


def test_patient_address_parts_are_strings(indexer: Indexer) -> None:
    rows = indexer.rows(shan_xiongxin())

    assert [r.norm for r in of(rows.string, "address")] == [
        "西长安街1号", "北京市", "西城区", "100032", "cn", "北京市西城区西长安街1号"]
    assert of(rows.string, "address-city") == [StringRow("address-city", "北京市", "北京市")]


@pytest.mark.parametrize(
    ("deceased", "code"),
    [({}, "false"), ({"deceasedBoolean": False}, "false"), ({"deceasedBoolean": True}, "true"),
     ({"deceasedDateTime": "2024-01-08T03:15:00+08:00"}, "true")],
)
def test_patient_deceased_is_a_boolean_token(
    indexer: Indexer, deceased: dict[str, Any], code: str
) -> None:
    patient = {"resourceType": "Patient", "id": "p-zhangsan", **deceased}

    assert of(indexer.rows(patient).token, "deceased") == [
        TokenRow("deceased", None, code, None)]


def test_active_boolean_is_a_true_false_token(indexer: Indexer) -> None:
    rows = indexer.rows(shan_xiongxin())

    assert of(rows.token, "active") == [TokenRow("active", None, "true", None)]


def test_condition_icd10_code_is_a_token_and_a_month_onset_is_a_month_range(
    indexer: Indexer,
) -> None:
    condition = {
        "resourceType": "Condition", "id": "cond-dm2",
        "clinicalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": "active"}]},
        "code": {"coding": [{"system": ICD10, "code": "E11.9", "display": "2型糖尿病"}]},
        "subject": {"reference": "Patient/p-zhangsan"},
        "onsetDateTime": "2019-06",
        "recordedDate": "2024-03-05",
    }
    rows = indexer.rows(condition)

    assert of(rows.token, "code") == [TokenRow("code", ICD10, "E11.9", "2型糖尿病")]
    assert of(rows.date, "onset-date") == [DateRow(
        "onset-date", ms("2019-06-01T00:00:00+08:00"), ms("2019-07-01T00:00:00+08:00"))]
    assert of(rows.quantity, "onset-age") == []


def test_condition_onset_age_range_is_a_quantity_range(indexer: Indexer) -> None:
    condition = {"resourceType": "Condition", "id": "cond-htn",
                 "subject": {"reference": "Patient/p-zhangsan"},
                 "onsetRange": {"low": {"value": 40, "unit": "岁", "system": UCUM, "code": "a"},
                                "high": {"value": 45, "unit": "岁", "system": UCUM,
                                         "code": "a"}}}

    assert of(indexer.rows(condition).quantity, "onset-age") == [
        QuantityRow("onset-age", UCUM, "a", 40.0, 39.5, 45.5)]


def test_encounter_period_with_open_end_reaches_date_max(indexer: Indexer) -> None:
    encounter = {"resourceType": "Encounter", "id": "enc-20240305-0007", "status": "in-progress",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                           "code": "IMP", "display": "住院"},
                 "subject": {"reference": "Patient/p-zhangsan"},
                 "period": {"start": "2024-03-05T10:00:00+08:00"},
                 "length": {"value": 3, "unit": "天", "system": UCUM, "code": "d"}}
    rows = indexer.rows(encounter)

    assert of(rows.date, "date") == [
        DateRow("date", ms("2024-03-05T10:00:00+08:00"), DATE_MAX)]
    assert of(rows.quantity, "length") == [QuantityRow("length", UCUM, "d", 3.0, 2.5, 3.5)]


def test_period_without_start_begins_at_date_min(indexer: Indexer) -> None:
    care_plan = {"resourceType": "CarePlan", "id": "cp-dm2", "status": "active",
                 "intent": "plan", "subject": {"reference": "Patient/p-zhangsan"},
                 "period": {"end": "2024-12-31"}}

    assert of(indexer.rows(care_plan).date, "date") == [
        DateRow("date", DATE_MIN, ms("2025-01-01T00:00:00+08:00"))]


def test_timing_is_indexed_by_its_outer_limits(indexer: Indexer) -> None:
    request = {"resourceType": "ServiceRequest", "id": "sr-dressing", "status": "active",
               "intent": "order", "subject": {"reference": "Patient/p-zhangsan"},
               "occurrenceTiming": {
                   "event": ["2024-03-06T09:00:00+08:00", "2024-03-08T09:00:00+08:00"],
                   "repeat": {"boundsPeriod": {"start": "2024-03-05", "end": "2024-03-07"}}}}

    assert of(indexer.rows(request).date, "occurrence") == [DateRow(
        "occurrence", ms("2024-03-05T00:00:00+08:00"), ms("2024-03-08T09:00:01+08:00"))]


def test_procedure_performed_age_and_string_are_not_dates(indexer: Indexer) -> None:
    procedure = {"resourceType": "Procedure", "id": "proc-appendectomy", "status": "completed",
                 "subject": {"reference": "Patient/p-zhangsan"},
                 "performedString": "童年时期"}

    assert of(indexer.rows(procedure).date, "date") == []


def test_invoice_money_is_a_quantity_in_iso_4217(indexer: Indexer) -> None:
    invoice = {"resourceType": "Invoice", "id": "inv-20240305-01", "status": "issued",
               "totalGross": {"value": 1280.50, "currency": "CNY"}}

    assert of(indexer.rows(invoice).quantity, "totalgross") == [
        QuantityRow("totalgross", "urn:iso:std:iso:4217", "CNY", 1280.5, 1280.45, 1280.55)]


def test_risk_assessment_probability_is_a_number_with_precision(indexer: Indexer) -> None:
    risk = {"resourceType": "RiskAssessment", "id": "ra-stroke", "status": "final",
            "subject": {"reference": "Patient/p-zhangsan"},
            "prediction": [{"probabilityDecimal": 0.15}]}

    assert of(indexer.rows(risk).number, "probability") == [
        NumberRow("probability", 0.15, 0.145, 0.155)]


def test_molecular_sequence_composite_reads_the_chromosome_from_the_resource(
    indexer: Indexer,
) -> None:
    sequence = {"resourceType": "MolecularSequence", "id": "ms-egfr", "coordinateSystem": 0,
                "referenceSeq": {"chromosome": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/chromosome-human",
                    "code": "7"}]}},
                "variant": [{"start": 55249070, "end": 55249071}]}
    rows = of(indexer.rows(sequence).composite, "chromosome-variant-coordinate")

    assert rows == [CompositeRow(
        "chromosome-variant-coordinate",
        "http://terminology.hl7.org/CodeSystem/chromosome-human", "7",
        c2_lo=55249069.5, c2_hi=55249070.5, c3_lo=55249070.5, c3_hi=55249071.5)]


def test_document_reference_relationship_indexes_code_then_target(indexer: Indexer) -> None:
    # R4 names the components crosswise (reference definition on `code`); the rows follow the
    # expressions: relation code first, related document second.
    doc = {"resourceType": "DocumentReference", "id": "doc-discharge-v2", "status": "current",
           "content": [{"attachment": {"contentType": "application/pdf"}}],
           "relatesTo": [{"code": "replaces",
                          "target": {"reference": "DocumentReference/doc-discharge-v1"}}]}

    assert of(indexer.rows(doc).composite, "relationship") == [CompositeRow(
        "relationship", None, "replaces",
        c2_system="DocumentReference", c2_code="doc-discharge-v1")]


def test_bundle_composition_is_the_first_entry_as_a_local_reference(indexer: Indexer) -> None:
    document = {"resourceType": "Bundle", "id": "b-discharge", "type": "document",
                "entry": [{"fullUrl": "urn:uuid:9b1c3f9e-0d7a-4c50-9a55-6c7d0f1e2a3b",
                           "resource": {"resourceType": "Composition", "id": "comp-discharge",
                                        "status": "final"}}]}

    assert of(indexer.rows(document).reference, "composition") == [
        ReferenceRow("composition", "Composition", "comp-discharge", None, None, None)]


# -- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/p-zhangsan", ("Patient", "p-zhangsan", None)),
        ("Patient/p-zhangsan/_history/4", ("Patient", "p-zhangsan", None)),
        (f"{BASE}/Patient/p-zhangsan", ("Patient", "p-zhangsan", None)),
        (f"{BASE}/Patient/p-zhangsan/_history/4", ("Patient", "p-zhangsan", None)),
        ("https://fhir.other-hospital.cn/fhir/Patient/9001/_history/2",
         (None, None, "https://fhir.other-hospital.cn/fhir/Patient/9001")),
        ("urn:uuid:7f3c1d2e-9a4b-4c1d-8e2f-0a1b2c3d4e5f",
         (None, None, "urn:uuid:7f3c1d2e-9a4b-4c1d-8e2f-0a1b2c3d4e5f")),
    ],
)
def test_reference_is_local_under_our_base_and_a_url_elsewhere(
    indexer: Indexer, reference: str, expected: tuple[str | None, str | None, str | None]
) -> None:
    obs = {"resourceType": "Observation", "id": "o1", "subject": {"reference": reference}}
    rows = of(indexer.rows(obs).reference, "subject")

    assert [(r.target_type, r.target_id, r.url) for r in rows] == [expected]


def test_contained_reference_is_skipped(indexer: Indexer) -> None:
    request = {"resourceType": "MedicationRequest", "id": "mr-metformin", "status": "active",
               "intent": "order", "subject": {"reference": "Patient/p-zhangsan"},
               "contained": [{"resourceType": "Medication", "id": "med1",
                              "code": {"text": "二甲双胍片 0.5g"}}],
               "medicationReference": {"reference": "#med1"}}

    assert of(indexer.rows(request).reference, "medication") == []


def test_logical_reference_fills_the_identifier_columns(indexer: Indexer) -> None:
    obs = {"resourceType": "Observation", "id": "o-logical",
           "subject": {"type": "Patient",
                       "identifier": {"system": ID_CARD, "value": "11010519491231002X"}}}
    rows = indexer.rows(obs)

    assert of(rows.reference, "subject") == [
        ReferenceRow("subject", None, None, None, ID_CARD, "11010519491231002X")]
    assert of(rows.reference, "patient") == [
        ReferenceRow("patient", None, None, None, ID_CARD, "11010519491231002X")]


def test_canonical_reference_drops_the_version(indexer: Indexer) -> None:
    response = {"resourceType": "QuestionnaireResponse", "id": "qr-phq9", "status": "completed",
                "questionnaire": "http://bjyy.example.cn/fhir/Questionnaire/phq-9|2.0"}

    assert of(indexer.rows(response).reference, "questionnaire") == [ReferenceRow(
        "questionnaire", None, None, "http://bjyy.example.cn/fhir/Questionnaire/phq-9",
        None, None)]


def test_reference_to_group_is_not_a_patient(indexer: Indexer) -> None:
    obs = {"resourceType": "Observation", "id": "o-ward",
           "subject": {"reference": "Group/ward-7"}}
    rows = indexer.rows(obs)

    assert of(rows.reference, "patient") == []
    assert of(rows.reference, "subject") == [
        ReferenceRow("subject", "Group", "ward-7", None, None, None)]


def test_local_reference_accepts_only_known_resource_types(indexer: Indexer) -> None:
    assert indexer.local_reference("Patient/p-zhangsan") == ("Patient", "p-zhangsan")
    assert indexer.local_reference("Hospital/bjyy") is None
    assert indexer.local_reference(f"{BASE}/Encounter/e1") == ("Encounter", "e1")
    assert indexer.local_reference("https://elsewhere.cn/fhir/Encounter/e1") is None


# -- uri and meta -------------------------------------------------------------------------------


def test_meta_profile_and_source_are_uris_and_tags_are_tokens(indexer: Indexer) -> None:
    obs = wbc()
    obs["meta"].update(
        profile=["http://bjyy.example.cn/fhir/StructureDefinition/cn-lab-observation|1.0.0"],
        source="http://lis.bjyy.example.cn",
        tag=[{"system": "http://bjyy.example.cn/fhir/tags", "code": "emergency",
              "display": "急诊"}])
    rows = indexer.rows(obs)

    assert of(rows.uri, "_profile") == [
        UriRow("_profile", "http://bjyy.example.cn/fhir/StructureDefinition/cn-lab-observation|1.0.0"),
        UriRow("_profile", "http://bjyy.example.cn/fhir/StructureDefinition/cn-lab-observation"),
    ]
    assert of(rows.uri, "_source") == [UriRow("_source", "http://lis.bjyy.example.cn")]
    assert of(rows.token, "_tag") == [
        TokenRow("_tag", "http://bjyy.example.cn/fhir/tags", "emergency", "急诊")]


def test_text_content_and_query_parameters_produce_no_rows(
    indexer: Indexer, registry: Registry
) -> None:
    obs = wbc()
    obs["text"] = {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">"
                                                  "白细胞计数 10.2</div>"}
    rows = indexer.rows(obs)
    params = {r.param for kind in ("string", "token", "date", "uri") for r in getattr(rows, kind)}

    assert not params & {"_text", "_content", "_query"}
    assert {e.code for e in indexer.plan("Location")} >= {"address"}
    assert "near" not in {e.code for e in indexer.plan("Location")}


def test_unknown_resource_type_gives_no_rows(indexer: Indexer) -> None:
    assert indexer.rows({"resourceType": "HisVisitRecord", "id": "x"}) == IndexRows()
    assert indexer.rows({"id": "no-type"}) == IndexRows()


def test_repeated_values_are_indexed_once(indexer: Indexer) -> None:
    obs = wbc()
    obs["category"] = obs["category"] * 2

    assert len(of(indexer.rows(obs).token, "category")) == 1


# -- dates and numbers --------------------------------------------------------------------------


def test_dates_without_a_zone_use_the_configured_default(registry: Registry) -> None:
    utc = Indexer(registry, default_timezone="Z")
    obs = {"resourceType": "Observation", "id": "o1", "effectiveDateTime": "2024-03-05T08:30"}

    assert of(utc.rows(obs).date, "date") == [
        DateRow("date", ms("2024-03-05T08:30:00+00:00"), ms("2024-03-05T08:31:00+00:00"))]


def test_indexer_from_settings_uses_the_configured_zone_and_base(registry: Registry) -> None:
    configured = Settings(base_url=f"{BASE}/", default_timezone="+08:00")
    indexer = Indexer.from_settings(registry, configured)

    assert indexer.default_offset_ms == CST
    assert indexer.local_reference(f"{BASE}/Patient/p1") == ("Patient", "p1")


def test_invalid_default_timezone_is_rejected_at_construction(registry: Registry) -> None:
    with pytest.raises(ValueError, match=r"\+08:00"):
        Indexer(registry, default_timezone="Asia/Shanghai")


@pytest.mark.parametrize(
    ("text", "lo", "hi"),
    [
        ("2024", "2024-01-01T00:00:00+08:00", "2025-01-01T00:00:00+08:00"),
        ("2024-02", "2024-02-01T00:00:00+08:00", "2024-03-01T00:00:00+08:00"),
        ("2024-02-29", "2024-02-29T00:00:00+08:00", "2024-03-01T00:00:00+08:00"),
        ("2024-03-05T08:30+08:00", "2024-03-05T08:30:00+08:00", "2024-03-05T08:31:00+08:00"),
        ("2024-03-05T08:30:00Z", "2024-03-05T08:30:00+00:00", "2024-03-05T08:30:01+00:00"),
        ("2024-03-05T08:30:00.5-05:00", "2024-03-05T08:30:00.500-05:00",
         "2024-03-05T08:30:00.600-05:00"),
        ("2024-03-05T08:30:00.123456+08:00", "2024-03-05T08:30:00.123+08:00",
         "2024-03-05T08:30:00.124+08:00"),
        ("1949-10-01T15:00:00+08:00", "1949-10-01T15:00:00+08:00", "1949-10-01T15:00:01+08:00"),
    ],
)
def test_date_range_ms_covers_the_precision_of_the_value(text: str, lo: str, hi: str) -> None:
    assert date_range_ms(text, CST) == (ms(lo), ms(hi))


@pytest.mark.parametrize(
    "text",
    ["2023-02-29", "2024-13-01", "2024-03-05T24:00:00Z", "2024-03-05T08:30:60Z",
     "2024-03-05T08:30:00+15:00", "2024-3-5", "二〇二四年三月五日", "2024-03-05 08:30:00",
     "０２０２４", "2024-03-05T08", ""],
)
def test_date_range_ms_rejects_what_is_not_a_fhir_date(text: str) -> None:
    assert date_range_ms(text, CST) is None


def test_date_range_ms_agrees_with_the_query_side_parser() -> None:
    tz = parse_offset("+08:00")
    samples = ["2024", "2024-03", "2024-03-05", "2024-03-05T08:30", "2024-03-05T08:30:00",
               "2024-03-05T08:30:00+08:00", "2024-03-05T08:30:00Z", "2024-03-05T08:30:00.250Z",
               "1949-12-31", "2024-03-05T08:30:00-05:30", "2000-02-29T23:59:59+14:00"]

    for text in samples:
        assert date_range_ms(text, CST) == date_range(text, tz), text


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.just(timezone(timedelta(hours=8)))))
def test_date_range_ms_is_exact_to_the_millisecond(value: datetime) -> None:
    text = value.isoformat(timespec="microseconds")
    lo, hi = date_range_ms(text, 0) or (None, None)
    exact = (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)

    assert (lo, hi) == (exact, exact + 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (100, (100.0, 99.5, 100.5)),
        (10.2, (10.2, 10.15, 10.25)),
        (Decimal("1.50"), (1.5, 1.495, 1.505)),
        (-0.05, (-0.05, -0.055, -0.045)),
        (1e-07, (1e-07, 5e-08, 1.5e-07)),
        ("135", (135.0, 134.5, 135.5)),
        (True, None),
        (math.nan, None),
        ("多", None),
        ({"value": 1}, None),
    ],
)
def test_decimal_range_is_the_implicit_precision_range(value: Any, expected: Any) -> None:
    assert decimal_range(value) == expected


def test_decimal_range_agrees_with_the_query_side_number_range() -> None:
    from app.search.query import number_range

    for text in ["100", "10.2", "1.50", "0.001", "-3.75", "6.5", "1e3", "2.5E-4"]:
        assert decimal_range(Decimal(text)) == number_range(text), text


def test_parse_offset_ms_reads_signed_hours_and_minutes_or_z() -> None:
    assert parse_offset_ms("+08:00") == CST
    assert parse_offset_ms("-05:30") == -(5 * 60 + 30) * 60_000
    assert parse_offset_ms("Z") == 0
    with pytest.raises(ValueError):
        parse_offset_ms("+15:00")


# -- robustness ---------------------------------------------------------------------------------


def test_unparseable_values_are_skipped_not_raised(indexer: Indexer) -> None:
    obs = wbc()
    obs["effectiveDateTime"] = "2024年3月5日"
    obs["valueQuantity"]["value"] = "十点二"
    obs["subject"] = "Patient/p-zhangsan"
    obs["code"]["coding"] = [{"system": 7, "code": ["6690-2"]}, "6690-2", None]
    obs["category"] = {"coding": "laboratory"}
    rows = indexer.rows(obs)

    assert of(rows.date, "date") == []
    assert of(rows.quantity, "value-quantity") == []
    assert of(rows.reference, "subject") == []
    assert of(rows.token, "code") == [TokenRow("code", None, None, "白细胞计数(wbc)")]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(["2024-03-05", "Patient/p1", "#x", "urn:uuid:1", "http://a/b|1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["value", "code", "system", "reference", "coding", "text", "start",
                         "end", "low", "high", "family", "given", "display", "event"]),
        inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted({k for k in {**wbc(), **shan_xiongxin()} if k not in (
    "resourceType",)})), junk=_json, which=st.sampled_from(["obs", "patient"]))
def test_any_json_in_any_element_never_raises(key: str, junk: Any, which: str) -> None:
    indexer = _shared_indexer()
    resource = copy.deepcopy(wbc() if which == "obs" else shan_xiongxin())
    resource[key] = junk

    assert isinstance(indexer.rows(resource), IndexRows)


_INDEXER: list[Indexer] = []


def _shared_indexer() -> Indexer:
    # Hypothesis tests cannot take function-scoped fixtures; compile the plans once.
    if not _INDEXER:
        _INDEXER.append(Indexer(load_registry(), base_urls=[BASE]))
    return _INDEXER[0]


def test_indexer_plans_compile_for_every_resource_type(
    indexer: Indexer, registry: Registry
) -> None:
    for resource_type in registry.resource_types:
        indexer.plan(resource_type)


# -- speed --------------------------------------------------------------------------------------
