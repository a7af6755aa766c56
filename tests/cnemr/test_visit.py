"""挂号 rows → FHIR R4 Encounter, Condition and ChargeItem (app.cnemr.visit)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from app.cnemr.context import (
    Hospital,
    encounter_resource_id,
    outpatient_visit_key,
    patient_resource_id,
)
from app.cnemr.errors import RowError
from app.cnemr.importer import DATA_ELEMENTS, Importer
from app.cnemr.mapping import load_mapping
from app.cnemr.visit import map_visit_rows
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.pipeline.hooks import Hooks
from app.search.query import parse_search
from app.server import build_service
from tests.cnemr.exports import write_csv
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
ICD10 = "urn:oid:2.16.156.10011.2.3.3.11"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
REGISTRY = load_registry()
PROFILES = ProfileValidator(load_profile_resources(Settings().profiles_dir), REGISTRY)
CN_PROFILE = {"Encounter": "https://fhir.yilian.cn/StructureDefinition/cn-encounter",
              "Condition": "https://fhir.yilian.cn/StructureDefinition/cn-condition"}

OUTPATIENT = {"visit_no": "0000871", "visit_date": "2026-11-20 08:12:33",
              "visit_time": "2026-11-20 09:05", "patient_id": "0001023456",
              "visit_type_code": "1", "department": "内分泌科", "doctor": "李淑芬",
              "diagnosis_code": "E11.900", "diagnosis_name": "2型糖尿病",
              "registration_fee": "50.00"}
EMERGENCY = {"visit_no": "JZ0000112", "visit_date": "20261121023000", "patient_id": "0001023457",
             "visit_type_code": "2", "department": "急诊科", "doctor": "王海涛",
             "diagnosis_code": "K35.800", "diagnosis_name": "急性阑尾炎",
             "registration_fee": "¥25"}




def mapped(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[RowError]]:
    resources, errors = map_visit_rows(rows, HOSPITAL)
    for resource in resources:
        issues = validate_resource(resource, REGISTRY)
        if resource["resourceType"] in CN_PROFILE:
            issues += PROFILES.validate(resource, CN_PROFILE[resource["resourceType"]])
        assert [i for i in issues if i.severity in ("error", "fatal")] == [], resource
    return resources, errors


def of_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def test_an_outpatient_registration_maps_to_an_amb_encounter_with_diagnosis_and_fee() -> None:
    resources, errors = mapped([OUTPATIENT])
    assert errors == []
    [encounter] = of_type(resources, "Encounter")
    key = outpatient_visit_key("0000871", "2026-11-20")
    assert key == "0000871@20261120"
    assert encounter["id"] == encounter_resource_id(HOSPITAL, key)
    assert encounter["class"] == {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"}
    assert encounter["type"][0]["coding"][0] == {
        "system": "urn:oid:2.16.156.10011.2.3.1.271", "code": "1", "display": "门诊"}
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": "2026-11-20T09:05:00+08:00"}
    assert encounter["identifier"][0]["system"] == "urn:oid:2.16.156.10011.1.11"
    assert encounter["identifier"][0]["value"] == "0000871"
    assert encounter["serviceType"] == {"text": "内分泌科"}
    assert encounter["participant"][0]["individual"] == {"display": "李淑芬"}
    assert encounter["subject"] == {"reference": "Patient/" + patient_resource_id(
        HOSPITAL, "0001023456")}

    [condition] = of_type(resources, "Condition")
    assert condition["code"]["coding"] == [{"system": ICD10, "version": "国家临床版2.0",
                                            "code": "E11.900", "display": "2型糖尿病"}]
    assert condition["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert condition["encounter"] == {"reference": "Encounter/" + encounter["id"]}
    assert condition["subject"] == encounter["subject"]
    assert encounter["diagnosis"][0]["condition"] == {"reference": f"Condition/{condition['id']}"}

    [fee] = of_type(resources, "ChargeItem")
    assert fee["priceOverride"] == {"value": 50, "currency": "CNY"}
    assert fee["context"] == {"reference": "Encounter/" + encounter["id"]}
    assert fee["code"] == {"text": "挂号费"}


def test_an_emergency_registration_is_an_emer_encounter_starting_at_registration() -> None:
    resources, errors = mapped([EMERGENCY])
    assert errors == []
    [encounter] = of_type(resources, "Encounter")
    assert encounter["class"]["code"] == "EMER"
    assert encounter["type"][0]["coding"][0]["display"] == "急诊"
    assert encounter["period"] == {"start": "2026-11-21T02:30:00+08:00"}
    assert of_type(resources, "ChargeItem")[0]["priceOverride"] == {"value": 25,
                                                                    "currency": "CNY"}


def test_a_reused_outpatient_number_on_two_days_gives_two_encounters() -> None:
    next_day = {**OUTPATIENT, "visit_date": "2026/11/21 08:01", "visit_time": "",
                "patient_id": "0001029999", "diagnosis_code": "", "diagnosis_name": ""}
    resources, errors = mapped([OUTPATIENT, next_day])
    assert errors == []
    first, second = of_type(resources, "Encounter")
    assert first["identifier"][0]["value"] == second["identifier"][0]["value"] == "0000871"
    assert first["id"] != second["id"]
    assert second["identifier"][0]["period"] == {"start": "2026-11-21", "end": "2026-11-21"}
    assert second["status"] == "arrived"  # registered, not yet seen: no 就诊时间, no diagnosis


def test_reimporting_the_same_registration_gives_the_same_ids() -> None:
    assert [r["id"] for r in mapped([OUTPATIENT])[0]] == [r["id"] for r in mapped(
        [dict(OUTPATIENT)])[0]]


def test_an_unparseable_visit_date_rejects_the_row_naming_the_field() -> None:
    resources, errors = mapped([EMERGENCY, {**OUTPATIENT, "visit_date": "2026-13-45"}])
    assert of_type(resources, "Encounter")[0]["class"]["code"] == "EMER"
    assert len(of_type(resources, "Encounter")) == 1
    [error] = errors
    assert (error.field, error.value, error.rule, error.severity, error.row) == (
        "visit_date", "2026-13-45", "date-calendar", "error", 1)


def test_a_patient_type_without_encounter_class_is_rejected_not_guessed() -> None:
    resources, errors = mapped([{**OUTPATIENT, "visit_type_code": "9"},
                                {**OUTPATIENT, "visit_type_code": "5"}])
    assert resources == []
    assert [(e.field, e.rule, e.row) for e in errors] == [
        ("visit_type_code", "cv09.00.404-unmatched", 0), ("visit_type_code", "cv09.00.404", 1)]


def test_bad_optional_values_are_warnings_and_left_out() -> None:
    resources, errors = mapped([{**OUTPATIENT, "diagnosis_code": "糖尿病",
                                 "registration_fee": "12.345"}])
    assert {(e.field, e.rule, e.severity) for e in errors} == {
        ("diagnosis_code", "icd-10", "warning"),
        ("registration_fee", "amount-two-decimals", "warning")}
    assert of_type(resources, "Condition") == []
    assert of_type(resources, "ChargeItem") == []
    [encounter] = of_type(resources, "Encounter")
    assert "diagnosis" not in encounter


def test_missing_keys_are_reported_per_field() -> None:
    resources, errors = mapped([{"visit_date": "20261120"}])
    assert resources == []
    assert {e.field for e in errors} == {"visit_no", "patient_id", "visit_type_code"}


def test_his_registration_export_imports_through_the_mapping_file(tmp_path: Path) -> None:
    header = ["mzh", "ghrq", "ks", "ys", "mjzbz", "ghf", "zdicd10", "zdmc", "patid"]
    rows = [["0000871", "2026-11-20 08:12:33", "内分泌科", "李淑芬", "1", "50.00", "E11.900",
             "2型糖尿病", "0001023456"],
            ["0000871", "2026-11-21 08:01:10", "心血管内科", "赵志刚", "门诊", "50.00",
             "I10.x00x002", "原发性高血压", "0001029999"],
            ["JZ0000112", "2026-11-21 02:30:00", "急诊科", "王海涛", "2", "25.00", "K35.800",
             "急性阑尾炎", "0001023457"],
            ["0000872", "2026-11-31 09:00:00", "骨科", "孙立", "1", "50.00", "M51.202",
             "腰椎间盘突出症", "0001023458"]]
    path = write_csv(tmp_path / "mz_gh.csv", header, rows, "gbk")

    async def go() -> tuple[Any, list[dict[str, Any]], dict[str, int]]:
        service, _ = build_service(make_settings(tmp_path), Hooks())
        await service.store.start()
        try:
            mapping = load_mapping(MAPPINGS / "visit-his.yaml", DATA_ELEMENTS)
            report = await Importer(service, HOSPITAL).import_files(mapping, [path])
            counts = {}
            for rtype in ("Condition", "ChargeItem"):
                query, _ = parse_search((rtype,), [], service.parse_ctx)
                counts[rtype] = (await service.store.search(query)).total or 0
            query, _ = parse_search(("Encounter",), [("_count", "10")], service.parse_ctx)
            page = await service.store.search(query)
            return report, [orjson.loads(v.body) for v in page.matches], counts
        finally:
            await service.store.close()

    report, encounters, counts = asyncio.run(go())
    assert report.rows_read == 4
    assert report.rows_rejected == 1
    [rejected] = [r for r in report.rejections if r.severity == "error"]
    assert (rejected.line, rejected.column, rejected.rule) == (5, "ghrq", "date-calendar")
    assert sorted(e["class"]["code"] for e in encounters) == ["AMB", "AMB", "EMER"]
    assert counts == {"Condition": 3, "ChargeItem": 3}
