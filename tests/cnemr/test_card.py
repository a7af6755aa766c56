"""就诊卡 / 医保卡 / 居民健康卡 rows → FHIR R4 Coverage (app.cnemr.card)."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cnemr.card import (
    INSURANCE_AREA_SYSTEM,
    SOCIAL_SECURITY_CARD_SYSTEM,
    card_coverage_resource_id,
    hospital_card_system,
    map_card_rows,
)
from app.cnemr.context import Hospital, patient_resource_id, stable_id
from app.cnemr.errors import RowError
from app.cnemr.importer import DATA_ELEMENTS, Importer, ImportReport
from app.cnemr.mapping import load_mapping
from app.cnemr.patient import map_patient
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.pipeline.hooks import Hooks
from app.samples.identity import make_id
from app.server import build_service, create_app
from tests.cnemr.exports import import_of_types, without_version, write_csv
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
REGISTRY = load_registry()
PROFILES = ProfileValidator(load_profile_resources(Settings().profiles_dir), REGISTRY)
CN_COVERAGE = "https://fhir.yilian.cn/StructureDefinition/cn-coverage"
HEALTH_CARD = "urn:oid:2.16.156.10011.1.19"
INSURANCE_TYPE = "urn:oid:2.16.156.10011.2.3.1.248"
SELF_PAY = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "pay",
            "display": "pay"}

SOCIAL_SECURITY = {"card_no": "B23456781", "card_type": "social-security",
                   "patient_id": "0001023456", "card_status": "有效", "issue_date": "2019-03-01",
                   "expiry_date": "长期", "insurance_type": "1", "insurer_name": "北京市医疗保障局",
                   "insurance_area": "110100"}
VISIT_CARD = {"card_no": "100187643", "card_type": "hospital", "patient_id": "0001023456",
              "card_status": "挂失", "issue_date": "20180412"}


def mapped(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[RowError]]:
    resources, errors = map_card_rows(rows, HOSPITAL)
    for resource in resources:
        issues = validate_resource(resource, REGISTRY) + PROFILES.validate(resource, CN_COVERAGE)
        assert [i for i in issues if i.severity in ("error", "fatal")] == [], resource
    return resources, errors


def one(row: dict[str, Any]) -> tuple[dict[str, Any], list[RowError]]:
    [coverage], errors = mapped([row])
    return coverage, errors


# -- Mapping -----------------------------------------------------------------------------------


def test_a_social_security_card_is_an_insured_coverage_valid_against_cn_coverage() -> None:
    coverage, errors = one(SOCIAL_SECURITY)
    assert errors == []
    patient = {"reference": "Patient/" + patient_resource_id(HOSPITAL, "0001023456")}
    assert coverage == {
        "resourceType": "Coverage",
        "id": card_coverage_resource_id(HOSPITAL, "social-security", "B23456781"),
        "meta": {"profile": [CN_COVERAGE]},
        "identifier": [{"use": "official", "type": {"text": "社会保障卡号"},
                        "system": SOCIAL_SECURITY_CARD_SYSTEM, "value": "B23456781"}],
        "status": "active",
        "type": {"coding": [{"system": INSURANCE_TYPE, "code": "1",
                             "display": "城镇职工基本医疗保险"}], "text": "城镇职工基本医疗保险"},
        "beneficiary": patient,
        "relationship": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
            "code": "self", "display": "Self"}]},
        "period": {"start": "2019-03-01"},
        "payor": [{"display": "北京市医疗保障局", "identifier": {
            "type": {"text": "医保统筹区编码"}, "system": INSURANCE_AREA_SYSTEM,
            "value": "110100"}}],
    }


def test_a_hospital_card_is_self_pay_paid_by_the_patient_in_the_hospitals_namespace() -> None:
    coverage, errors = one(VISIT_CARD)
    assert errors == []
    assert coverage["identifier"][0]["system"] == "urn:oid:2.16.156.10011.1.5.110000101.visit-card"
    assert coverage["identifier"][0]["type"] == {"text": "就诊卡号"}
    assert coverage["type"] == {"coding": [SELF_PAY], "text": "自费"}
    assert coverage["payor"] == [coverage["beneficiary"]]
    assert coverage["status"] == "cancelled"
    assert "relationship" not in coverage
    other = Hospital("2.16.156.10011.1.5.440000201")
    assert hospital_card_system(other) != hospital_card_system(HOSPITAL)


def test_a_health_card_uses_the_national_namespace_and_is_insured_when_a_type_is_given() -> None:
    plain, _ = one({"card_no": "H44010600812345", "card_type": "居民健康卡",
                    "patient_id": "0001023457"})
    assert plain["identifier"][0]["system"] == HEALTH_CARD
    assert plain["identifier"][0]["type"] == {"text": "居民健康卡号"}
    assert plain["type"]["coding"] == [SELF_PAY]
    insured, errors = one({"card_no": "H44010600812345", "card_type": "health",
                           "patient_id": "0001023457", "insurance_type": "城镇居民"})
    assert errors == []
    assert insured["type"]["coding"][0]["code"] == "2"
    assert insured["payor"] == [{"display": "医疗保障经办机构"}]
    assert insured["id"] == plain["id"]


def test_the_beneficiary_is_the_patient_the_patient_dataset_writes() -> None:
    [patient], _ = map_patient({"patient_id": "0001023456", "name": "张建国"}, HOSPITAL)
    coverage, _ = one(SOCIAL_SECURITY)
    assert coverage["beneficiary"] == {"reference": "Patient/" + patient["id"]}


@pytest.mark.parametrize(("given", "status"), [
    ("有效", "active"), ("正常", "active"), ("", "active"), ("挂失", "cancelled"),
    ("注销", "cancelled"), ("作废", "cancelled"), ("停用", "cancelled"), ("Cancelled", "cancelled"),
    ("entered-in-error", "entered-in-error")])
def test_card_status_becomes_coverage_status(given: str, status: str) -> None:
    coverage, _ = one({**VISIT_CARD, "card_status": given})
    assert coverage["status"] == status


@pytest.mark.parametrize(("given", "code"), [
    ("社会保障卡", "social-security"), ("社保卡", "social-security"), ("医保卡", "social-security"),
    ("就诊卡", "hospital"), ("Hospital", "hospital"), ("电子健康卡", "health")])
def test_card_type_names_are_accepted(given: str, code: str) -> None:
    coverage, _ = one({**SOCIAL_SECURITY, "card_type": given})
    assert coverage["id"] == card_coverage_resource_id(HOSPITAL, code, "B23456781")


@pytest.mark.parametrize(("given", "code"), [("城镇职工", "1"), ("01", "1"), ("新农合", "3"),
                                             ("99", "99"), ("商业医疗保险", "7")])
def test_insurance_type_codes_and_names(given: str, code: str) -> None:
    coverage, errors = one({**SOCIAL_SECURITY, "insurance_type": given})
    assert errors == []
    assert coverage["type"]["coding"][0] == {"system": INSURANCE_TYPE, "code": code,
                                             "display": coverage["type"]["text"]}


def test_an_unknown_insurance_type_keeps_its_text_with_a_warning() -> None:
    coverage, errors = one({**SOCIAL_SECURITY, "insurance_type": "异地医保"})
    assert coverage["type"] == {"text": "异地医保"}
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("insurance_type", "cv02.01.204", "warning")]


def test_a_social_security_card_without_insurance_type_has_no_type_and_a_warning() -> None:
    coverage, errors = one({**SOCIAL_SECURITY, "insurance_type": ""})
    assert "type" not in coverage
    assert coverage["payor"][0]["display"] == "北京市医疗保障局"
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("insurance_type", "insurance-type-missing", "warning")]


def test_a_bad_insurance_area_is_left_out_with_a_warning() -> None:
    coverage, errors = one({**SOCIAL_SECURITY, "insurance_area": "北京"})
    assert coverage["payor"] == [{"display": "北京市医疗保障局"}]
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("insurance_area", "insurance-area", "warning")]


def test_an_insurer_on_a_self_pay_card_is_reported_not_silently_dropped() -> None:
    coverage, errors = one({**VISIT_CARD, "insurer_name": "北京市医疗保障局"})
    assert coverage["payor"] == [coverage["beneficiary"]]
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("insurer_name", "self-pay-insurer", "warning")]


# -- Dates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("issue", "expiry", "period"), [
    ("2019-03-01", "2029-02-28", {"start": "2019-03-01", "end": "2029-02-28"}),
    ("20190301", "长期有效", {"start": "2019-03-01"}),
    ("2019/03/01 08:30:00", "永久", {"start": "2019-03-01"}),
    ("", "2029年2月28日", {"end": "2029-02-28"}),
])
def test_issue_and_expiry_dates_become_the_period(issue: str, expiry: str,
                                                  period: dict[str, str]) -> None:
    coverage, errors = one({**SOCIAL_SECURITY, "issue_date": issue, "expiry_date": expiry})
    assert errors == []
    assert coverage["period"] == period


def test_a_bad_date_is_left_out_with_a_warning() -> None:
    coverage, errors = one({**SOCIAL_SECURITY, "issue_date": "2019-02-30",
                            "expiry_date": "长期"})
    assert "period" not in coverage
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("issue_date", "date-calendar", "warning")]


def test_an_expiry_before_the_issue_date_keeps_only_the_start() -> None:
    coverage, errors = one({**SOCIAL_SECURITY, "expiry_date": "2018-12-31"})
    assert coverage["period"] == {"start": "2019-03-01"}
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("expiry_date", "period-order", "warning")]


# -- Rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["card_no", "card_type", "patient_id"])
def test_a_card_without_its_required_values_is_rejected(missing: str) -> None:
    resources, errors = map_card_rows([{**SOCIAL_SECURITY, missing: "  "}], HOSPITAL)
    assert resources == []
    assert [(e.field, e.rule, e.severity, e.row) for e in errors] == [
        (missing, "required", "error", 0)]


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("card_type", "银行卡", "card-type"), ("card_status", "锁定", "card-status")])
def test_an_unknown_card_type_or_status_rejects_the_row(field: str, value: str,
                                                        rule: str) -> None:
    resources, errors = map_card_rows([{**SOCIAL_SECURITY, field: value}], HOSPITAL)
    assert resources == []
    assert [(e.field, e.value, e.rule, e.severity) for e in errors] == [
        (field, value, rule, "error")]


def test_mapper_never_raises_on_garbage() -> None:
    garbage: list[dict[str, Any]] = [
        {"card_no": "１２３", "card_type": "hospital", "patient_id": "1",
         "issue_date": "2019-13-45", "expiry_date": "明年", "insurance_area": "１１０１００",
         "insurance_type": "0"},
        {"card_no": ""}, {}, {"card_type": "x" * 500}]
    resources, errors = map_card_rows(garbage, HOSPITAL)
    assert all(isinstance(e, RowError) for e in errors)
    assert [r["identifier"][0]["value"] for r in resources] == ["123"]


# -- Stable ids --------------------------------------------------------------------------------


def test_ids_are_stable_per_card_and_never_the_settlement_coverage() -> None:
    first, _ = mapped([SOCIAL_SECURITY, VISIT_CARD])
    again, _ = mapped([SOCIAL_SECURITY, VISIT_CARD])
    assert first == again
    assert len({c["id"] for c in first}) == 2
    # app.cnemr.billing keys its Coverage by patient and 医疗保险类别: a card never overwrites it.
    assert first[0]["id"] != stable_id("cov", HOSPITAL, "0001023456", "1")


# -- Import: three export styles, REST read-back, $validate --------------------------------------

# (patient, card type per style (ws363, shouye, his), card no, status per style, issue date,
#  expiry, insurance type per style, insurer, 统筹区)
EXPORT = [
    ("0001023456", ("社会保障卡", "YBK", "2"), "B23456781", ("有效", "1", "0"), "2019-03-01",
     "", ("1", "1", "城镇职工"), "北京市医疗保障局", "110100"),
    ("0001023456", ("就诊卡", "JZK", "1"), "100187643", ("挂失", "2", "1"), "2018-04-12", "",
     ("", "", ""), "", ""),
    ("0001023457", ("居民健康卡", "JKK", "3"), "H44010600812345", ("有效", "1", "0"),
     "2021-06-15", "2031-06-14", ("2", "2", "城镇居民"), "广州市医疗保障局", "440100"),
    ("0001023458", ("医保卡", "SBK", "2"), "C98765432", ("注销", "3", "2"), "2015-07-01",
     "2025-06-30", ("3", "3", "新农合"), "", ""),
    ("0001023458", ("就诊卡", "JZK", "1"), "100203311", ("有效", "1", "0"), "2020-09-10", "",
     ("", "", ""), "", ""),
]


def ws363_file(tmp: Path) -> Path:
    return write_csv(tmp / "就诊卡.csv", [
        "患者ID", "卡类型", "卡号", "卡状态", "发卡日期", "有效期截止日期", "医疗保险类别代码",
        "医保经办机构名称", "医保统筹区编码"],
        [[r[0], r[1][0], r[2], r[3][0], r[4], r[5] or "长期", r[6][0], r[7], r[8]]
         for r in EXPORT], "utf-8")


def shouye_file(tmp: Path) -> Path:
    return write_csv(tmp / "kxx.csv", ["BAH", "KH", "KLX", "KZT", "FKRQ", "YXQ", "YBLX", "YBJG",
                                       "TCQ"],
                     [[r[0], r[2], r[1][1], r[3][1], r[4].replace("-", ""),
                       r[5].replace("-", ""), r[6][1], r[7], r[8]] for r in EXPORT], "gbk")


def his_file(tmp: Path) -> Path:
    return write_csv(tmp / "xt_brkxx.csv", ["patid", "kh", "klx", "zt", "fkrq", "yxq", "yblx",
                                            "ybjg", "tcqdm"],
                     [[r[0], r[2], r[1][2], r[3][2], r[4].replace("-", "/") + " 00:00:00",
                       r[5].replace("-", "/"), r[6][2], r[7], r[8]] for r in EXPORT], "gb18030")


def run_import(tmp: Path, mapping_name: str, files: list[Path]
               ) -> tuple[ImportReport, list[dict[str, Any]]]:
    return import_of_types(tmp, mapping_name, files, HOSPITAL, "Coverage")


def without_versions(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [without_version(r) for r in resources]


def test_three_export_styles_import_the_same_cards_to_the_same_fhir(tmp_path: Path) -> None:
    results = []
    for name, make in (("card-ws363.yaml", ws363_file), ("card-shouye.yaml", shouye_file),
                       ("card-his.yaml", his_file)):
        work = tmp_path / name
        work.mkdir()
        report, coverages = run_import(work, name, [make(work)])
        assert (report.rows_read, report.rows_rejected) == (5, 0), report.rejections
        assert report.rejections == []
        assert len(coverages) == 5
        results.append(without_versions(coverages))
    assert results[0] == results[1] == results[2]
    by_number = {c["identifier"][0]["value"]: c for c in results[0]}
    assert by_number["C98765432"]["status"] == "cancelled"
    assert by_number["C98765432"]["period"] == {"start": "2015-07-01", "end": "2025-06-30"}
    assert by_number["H44010600812345"]["identifier"][0]["system"] == HEALTH_CARD
    assert by_number["100203311"]["type"]["coding"] == [SELF_PAY]


def test_reimporting_cards_updates_them_instead_of_duplicating(tmp_path: Path) -> None:
    path = shouye_file(tmp_path)
    _, first = run_import(tmp_path, "card-shouye.yaml", [path])
    report, again = run_import(tmp_path, "card-shouye.yaml", [path])
    assert report.rows_rejected == 0
    assert [c["id"] for c in again] == [c["id"] for c in first]
    assert {c["meta"]["versionId"] for c in again} == {"2"}
    assert without_versions(again) == without_versions(first)


def test_a_card_import_reads_back_over_rest_validates_and_leaves_the_patient_alone(
        tmp_path: Path) -> None:
    people = write_csv(tmp_path / "患者基本信息.csv",
                       ["患者ID", "姓名", "性别代码", "出生日期", "身份证件类别代码",
                        "身份证件号码"],
                       [["0001023456", "张建国", "1", "1962-03-14", "01",
                         make_id("110105", date(1962, 3, 14), 31)]], "utf-8")

    async def import_patient() -> None:
        service, _ = build_service(make_settings(tmp_path), Hooks())
        await service.store.start()
        try:
            mapping = load_mapping(MAPPINGS / "patient-ws363.yaml", DATA_ELEMENTS)
            report = await Importer(service, HOSPITAL).import_files(mapping, [people])
            assert report.rows_rejected == 0
        finally:
            await service.store.close()

    asyncio.run(import_patient())
    run_import(tmp_path, "card-his.yaml", [his_file(tmp_path)])
    patient_id = patient_resource_id(HOSPITAL, "0001023456")
    card_id = card_coverage_resource_id(HOSPITAL, "social-security", "B23456781")
    with TestClient(create_app(make_settings(tmp_path))) as client:
        patient = client.get(f"/fhir/Patient/{patient_id}").json()
        assert patient["meta"]["versionId"] == "1"
        assert patient["name"][0]["text"] == "张建国"
        coverage = client.get(f"/fhir/Coverage/{card_id}").json()
        assert coverage["beneficiary"] == {"reference": f"Patient/{patient_id}"}
        cards = client.get("/fhir/Coverage", params={
            "beneficiary": f"Patient/{patient_id}", "_sort": "_id"}).json()
        assert sorted(e["resource"]["identifier"][0]["value"] for e in cards["entry"]) == [
            "100187643", "B23456781"]
        found = client.get("/fhir/Coverage", params={
            "identifier": f"{SOCIAL_SECURITY_CARD_SYSTEM}|B23456781"}).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [card_id]
        outcome = client.get(f"/fhir/Coverage/{card_id}/$validate").json()
        assert [i["severity"] for i in outcome["issue"]] == ["information"], outcome
        assert CN_COVERAGE in outcome["issue"][0]["diagnostics"]
        bad = {k: v for k, v in coverage.items() if k != "identifier"}
        rejected = client.post("/fhir/Coverage/$validate", json=bad,
                               headers={"Content-Type": "application/fhir+json"}).json()
        assert any(i["severity"] == "error" and "Coverage.identifier" in i["diagnostics"]
                   for i in rejected["issue"])
