"""住院病案首页 / 中医住院病案首页 rows → FHIR R4 (app.cnemr.homepage, WS 445 parts 10 and 11)."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.cnemr.context import (
    Hospital,
    admission_visit_key,
    encounter_resource_id,
    patient_resource_id,
)
from app.cnemr.errors import RowError
from app.cnemr.homepage import ELEMENTS, map_homepage, map_homepage_rows
from app.cnemr.importer import DATA_ELEMENTS, Importer
from app.cnemr.mapping import load_mapping
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.pipeline.hooks import Hooks
from app.samples.identity import make_id
from app.search.query import parse_search
from app.server import build_service
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
ICD10 = "urn:oid:2.16.156.10011.2.3.3.11"
ICD9CM3 = "urn:oid:2.16.156.10011.2.3.3.12"
GBT_15657 = "urn:oid:2.16.156.10011.2.3.3.14"
EXT = "https://fhir.yilian.cn/StructureDefinition/"
PROFILE = "https://fhir.yilian.cn/StructureDefinition/"
PROFILES = {"Encounter": "cn-encounter", "Condition": "cn-condition",
            "Procedure": "cn-procedure", "Observation": "cn-observation-lab",
            "Claim": "cn-claim", "Composition": "cn-composition", "Patient": "cn-patient"}
ZHANG = make_id("110105", date(1962, 3, 14), 31)  # 男, 北京朝阳

# 张建国, admitted through 急诊 with an acute MI, PCI on day 1, discharged home a week later.
WESTERN: dict[str, str] = {
    "patient_id": "BA100231", "medical_record_no": "BA100231", "inpatient_no": "ZY20261012",
    "admission_count": "2", "name": "张建国", "gender_code": "1", "birth_date": "19620314",
    "id_number": ZHANG, "payment_method_code": "1", "admission_route_code": "1",
    "admission_time": "2026-10-12 14:20", "admission_department": "心血管内科",
    "discharge_time": "2026-10-19 09:30", "discharge_department": "心血管内科",
    "length_of_stay": "7", "discharge_method_code": "1", "attending_doctor": "李卫东",
    "principal_diagnosis_code": "I21.000", "principal_diagnosis_name": "急性心肌梗死",
    "principal_admission_condition": "1",
    "other_diagnosis_code_1": "I10.x00x002", "other_diagnosis_name_1": "原发性高血压",
    "other_admission_condition_1": "1",
    "other_diagnosis_code_2": "E11.900", "other_diagnosis_name_2": "2型糖尿病",
    "other_admission_condition_2": "1",
    "other_diagnosis_code_3": "", "other_diagnosis_name_3": "", "other_admission_condition_3": "",
    "procedure_code_1": "00.6601", "procedure_name_1": "经皮冠状动脉腔内血管成形术",
    "procedure_date_1": "2026-10-12 16:05", "operation_level_1": "3", "anesthesia_method_1": "3",
    "surgeon_1": "王志强",
    "abo_blood_group": "1", "rh_blood_group": "2",
    "total_cost": "58632.47", "self_paid_amount": "12034.50", "western_medicine_cost": "8421.36",
    "surgery_cost": "3200.00", "laboratory_cost": "2150.00",
}

# 中医首页: 胸痹心痛病 with 气虚血瘀证. The codes have the form of GB/T 15657-2021 codes; they are
# carried through, not looked up (the table is not shipped).
TCM: dict[str, str] = {
    "patient_id": "BA100452", "medical_record_no": "BA100452", "inpatient_no": "ZY20260903",
    "admission_count": "1", "name": "欧阳秀英", "gender_code": "2", "birth_date": "19550708",
    "payment_method_code": "02", "admission_route_code": "2",
    "admission_time": "20260903", "discharge_time": "20260915",
    "discharge_department": "中医内科", "discharge_method_code": "1",
    "principal_diagnosis_code": "I20.000", "principal_diagnosis_name": "不稳定型心绞痛",
    "principal_admission_condition": "1",
    "tcm_disease_code": "A04.01.01", "tcm_disease_name": "胸痹心痛病",
    "tcm_syndrome_code": "B04.03.02.01", "tcm_syndrome_name": "气虚血瘀证",
    "abo_blood_group": "3", "rh_blood_group": "4",
    "total_cost": "21430.10", "chinese_herbal_cost": "1865.40",
}


@pytest.fixture(scope="module")
def profiles() -> ProfileValidator:
    return ProfileValidator(load_profile_resources(Settings().profiles_dir), load_registry())


def mapped(row: dict[str, str], profiles: ProfileValidator
           ) -> tuple[dict[str, list[dict[str, Any]]], list[RowError]]:
    """Resources by type, each checked against R4 and its CN profile."""
    resources, errors = map_homepage(row, HOSPITAL)
    registry = load_registry()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        rtype = resource["resourceType"]
        issues = [i for i in validate_resource(resource, registry)
                  if i.severity in ("error", "fatal")]
        issues += [i for i in profiles.validate(resource, PROFILE + PROFILES[rtype])
                   if i.severity in ("error", "fatal")]
        assert issues == [], (rtype, issues)
        by_type.setdefault(rtype, []).append(resource)
    return by_type, errors


def ext(resource: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e["valueCodeableConcept"] for e in resource.get("extension", [])
                if e["url"] == EXT + name)


def test_homepage_maps_to_encounter_ranked_diagnoses_pci_blood_group_claim_and_c0032(
        profiles: ProfileValidator) -> None:
    res, errors = mapped(WESTERN, profiles)
    assert errors == []
    assert {t: len(rs) for t, rs in res.items()} == {
        "Patient": 1, "Encounter": 1, "Condition": 3, "Procedure": 1, "Observation": 2,
        "Claim": 1, "Composition": 1}
    patient_ref = {"reference": "Patient/" + patient_resource_id(HOSPITAL, "BA100231")}

    enc = res["Encounter"][0]
    assert enc["id"] == encounter_resource_id(HOSPITAL, admission_visit_key("ZY20261012", 2))
    assert enc["class"]["code"] == "IMP"
    assert enc["subject"] == patient_ref
    assert {"use": "official", "type": {"text": "住院号"},
            "system": "urn:oid:2.16.156.10011.1.12", "value": "ZY20261012"} in enc["identifier"]
    assert enc["period"] == {"start": "2026-10-12T14:20:00+08:00",
                             "end": "2026-10-19T09:30:00+08:00"}
    assert enc["length"] == {"value": 7, "unit": "天", "system": "http://unitsofmeasure.org",
                             "code": "d"}
    assert enc["hospitalization"]["admitSource"]["coding"][0]["code"] == "1"
    assert [c["code"] for c in enc["hospitalization"]["dischargeDisposition"]["coding"]] == [
        "1", "home"]
    assert ext(enc, "payment-method")["coding"][0]["code"] == "01"
    assert enc["location"] == [{"location": {"display": "心血管内科"}, "status": "completed"}]

    conditions = {c["id"]: c for c in res["Condition"]}
    ranked = [(d["rank"], conditions[d["condition"]["reference"].split("/")[1]])
              for d in enc["diagnosis"]]
    assert [(rank, c["code"]["coding"][0]["code"]) for rank, c in ranked] == [
        (1, "I21.000"), (2, "I10.x00x002"), (3, "E11.900")]
    assert all(d["use"]["coding"][0]["code"] == "DD" for d in enc["diagnosis"])
    principal = ranked[0][1]
    assert principal["code"]["coding"][0] == {"system": ICD10, "version": "国家临床版2.0",
                                              "code": "I21.000", "display": "急性心肌梗死"}
    assert principal["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert ext(principal, "admission-condition")["coding"][0]["code"] == "1"
    assert principal["encounter"] == {"reference": f"Encounter/{enc['id']}"}

    pci = res["Procedure"][0]
    assert pci["code"]["coding"][0]["system"] == ICD9CM3
    assert pci["code"]["coding"][0]["code"] == "00.6601"
    assert pci["performedDateTime"] == "2026-10-12T16:05:00+08:00"
    assert ext(pci, "operation-level")["coding"][0]["code"] == "3"
    assert pci["performer"][0]["actor"] == {"display": "王志强"}
    assert "局部麻醉" in pci["note"][0]["text"]

    blood = {o["code"]["coding"][0]["code"]: o["valueCodeableConcept"]["coding"][0]
             for o in res["Observation"]}
    assert blood["883-9"]["code"] == "1" and blood["883-9"]["display"] == "A"
    assert blood["10331-7"]["code"] == "2" and blood["10331-7"]["display"] == "阳性"

    claim = res["Claim"][0]
    assert claim["total"] == {"value": 58632.47, "currency": "CNY"}
    assert {i["productOrService"]["text"]: i["net"]["value"] for i in claim["item"]} == {
        "实验室诊断费": 2150, "手术费": 3200, "西药费": 8421.36}
    assert claim["supportingInfo"][0]["valueQuantity"]["value"] == 12034.5

    comp = res["Composition"][0]
    assert comp["type"]["coding"][0]["code"] == "C0032"
    assert comp["status"] == "final" and comp["author"] == [{"display": "李卫东"}]
    referenced = {e["reference"] for s in comp["section"] for e in s["entry"]}
    produced = {f"{t}/{r['id']}" for t, rs in res.items() for r in rs
                if t not in ("Patient", "Encounter", "Composition")}
    assert referenced == produced


def test_tcm_homepage_gives_main_disease_with_syndrome_and_c0033(
        profiles: ProfileValidator) -> None:
    res, errors = mapped(TCM, profiles)
    assert errors == []
    tcm = next(c for c in res["Condition"] if c["code"]["coding"][0]["system"] == GBT_15657)
    assert tcm["code"]["coding"][0]["code"] == "A04.01.01"
    syndrome = ext(tcm, "tcm-syndrome")
    assert syndrome["coding"][0] == {"system": GBT_15657, "code": "B04.03.02.01",
                                     "display": "气虚血瘀证"}
    assert res["Composition"][0]["type"]["coding"][0]["code"] == "C0033"
    # Rh 4 未查: not tested, so only the ABO Observation (O) exists.
    assert [o["valueCodeableConcept"]["text"] for o in res["Observation"]] == ["O"]
    enc = res["Encounter"][0]
    assert enc["length"]["value"] == 12  # computed from the dates when SJZYTS is blank
    assert [d.get("rank") for d in enc["diagnosis"]] == [1, None]


def test_malformed_other_diagnosis_code_is_reported_and_left_out(
        profiles: ProfileValidator) -> None:
    row = WESTERN | {"other_diagnosis_code_2": "E11900"}
    res, errors = mapped(row, profiles)
    assert [(e.field, e.value, e.rule, e.severity) for e in errors] == [
        ("other_diagnosis_code_2", "E11900", "icd10-format", "warning")]
    assert [c["code"]["coding"][0]["code"] for c in res["Condition"]] == [
        "I21.000", "I10.x00x002"]


def test_malformed_principal_diagnosis_code_rejects_the_homepage() -> None:
    resources, errors = map_homepage(WESTERN | {"principal_diagnosis_code": "I21.0000.1"},
                                     HOSPITAL)
    assert resources == []
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("principal_diagnosis_code", "icd10-format", "error")]


def test_blank_optional_diagnoses_and_procedures_are_skipped_silently(
        profiles: ProfileValidator) -> None:
    row = {k: v for k, v in WESTERN.items()
           if not k.startswith(("other_", "procedure_", "operation_", "anesthesia_", "surgeon"))}
    row |= {"other_diagnosis_code_1": "  ", "other_diagnosis_name_1": "", "procedure_code_2": ""}
    res, errors = mapped(row, profiles)
    assert errors == []
    assert len(res["Condition"]) == 1 and "Procedure" not in res


def test_bad_optional_values_are_warnings_and_the_row_is_kept(
        profiles: ProfileValidator) -> None:
    row = WESTERN | {"operation_level_1": "五级", "total_cost": "58632.475",
                     "discharge_method_code": "7", "length_of_stay": "8"}
    res, errors = mapped(row, profiles)
    assert {(e.field, e.rule) for e in errors} == {
        ("operation_level_1", "cv05.10.024"), ("total_cost", "amount-two-decimals"),
        ("discharge_method_code", "shouye-lyfs"), ("length_of_stay", "los-mismatch")}
    assert all(e.severity == "warning" for e in errors)
    assert "extension" not in res["Procedure"][0]
    assert "total" not in res["Claim"][0]
    assert res["Encounter"][0]["length"]["value"] == 8  # kept as recorded


def test_missing_keys_and_dates_reject_the_row_without_raising() -> None:
    for broken, field in (({"admission_count": ""}, "admission_count"),
                          ({"admission_time": "2026-13-40"}, "admission_time"),
                          ({"discharge_time": "2026-10-01 08:00"}, "discharge_time"),
                          ({"inpatient_no": "", "medical_record_no": ""}, "inpatient_no")):
        resources, errors = map_homepage(WESTERN | broken, HOSPITAL)
        assert resources == []
        assert field in {e.field for e in errors if e.severity == "error"}
    assert map_homepage({}, HOSPITAL)[0] == []
    assert map_homepage({"abo_blood_group": None, "total_cost": 3}, HOSPITAL)[0] == []


def test_reimport_gives_the_same_ids_and_rows_are_indexed() -> None:
    first, _ = map_homepage_rows([WESTERN, TCM], HOSPITAL)
    again, _ = map_homepage_rows([WESTERN, TCM], HOSPITAL)
    assert [r["id"] for r in first] == [r["id"] for r in again]
    assert len({r["id"] for r in first}) == len(first)
    _, errors = map_homepage_rows([WESTERN, WESTERN | {"admission_count": "x"}], HOSPITAL)
    assert {e.row for e in errors} == {1}


def test_mapping_file_names_only_homepage_elements() -> None:
    mapping = load_mapping(MAPPINGS / "homepage-shouye.yaml", DATA_ELEMENTS)
    assert mapping.dataset == "homepage"
    assert {e for targets in mapping.columns.values() for e in targets} <= ELEMENTS


# The upload as a hospital writes it (GBK, pinyin-initial columns).
SHOUYE = {
    "BAH": "BA100231", "ZYH": "ZY20261012", "ZYCS": "2", "XM": "张建国", "XB": "1",
    "CSRQ": "19620314", "SFZH": ZHANG, "YLFKFS": "1", "RYTJ": "1", "RYSJ": "2026-10-12 14:20",
    "RYKB": "心血管内科", "CYSJ": "2026-10-19 09:30", "CYKB": "心血管内科", "SJZYTS": "7",
    "LYFS": "1", "ZYZD": "急性心肌梗死", "JBDM": "I21.000", "RYBQ": "1",
    "QTZD1": "原发性高血压", "JBDM1": "I10.x00x002", "RYBQ1": "1",
    "QTZD2": "2型糖尿病", "JBDM2": "E11.900", "RYBQ2": "1", "QTZD3": "", "JBDM3": "", "RYBQ3": "",
    "SSJCZBM1": "00.6601", "SSJCZMC1": "经皮冠状动脉腔内血管成形术",
    "SSJCZRQ1": "2026-10-12 16:05", "SSJB1": "3", "MZFS1": "3", "SZ1": "王志强",
    "XX": "1", "RH": "2", "ZFY": "58632.47", "ZFJE": "12034.50", "XYF": "8421.36",
}


def test_shouye_upload_imports_through_the_mapping_file(tmp_path: Path) -> None:
    bad = SHOUYE | {"BAH": "BA100232", "ZYH": "ZY20261013", "ZYCS": "1", "XM": "李秀兰",
                    "XB": "2", "CSRQ": "", "SFZH": "", "JBDM": "I21"}  # I21: valid category
    broken = SHOUYE | {"ZYH": "ZY20261099", "JBDM": "急性心梗"}  # not a code: rejected
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=list(SHOUYE))
    out.writeheader()
    out.writerows([SHOUYE, bad, broken])
    path = tmp_path / "basy.csv"
    path.write_bytes(buf.getvalue().encode("gbk"))

    async def go() -> tuple[Any, dict[str, int], list[dict[str, Any]]]:
        service, _ = build_service(make_settings(tmp_path), Hooks())
        await service.store.start()
        try:
            mapping = load_mapping(MAPPINGS / "homepage-shouye.yaml", DATA_ELEMENTS)
            report = await Importer(service, HOSPITAL).import_files(mapping, [path])
            await Importer(service, HOSPITAL).import_files(mapping, [path])  # rerun: updates
            counts = {}
            for rtype in ("Patient", "Encounter", "Condition", "Procedure", "Observation",
                          "Claim", "Composition"):
                query, _ = parse_search((rtype,), [], service.parse_ctx)
                counts[rtype] = (await service.store.search(query)).total or 0
            query, _ = parse_search(("Encounter",), [("_count", "10")], service.parse_ctx)
            encounters = [orjson.loads(v.body) for v in
                          (await service.store.search(query)).matches]
            return report, counts, encounters
        finally:
            await service.store.close()

    report, counts, encounters = asyncio.run(go())
    assert report.rows_read == 3 and report.rows_rejected == 1
    rejection = next(r for r in report.rejections if r.severity == "error")
    assert (rejection.line, rejection.column, rejection.rule) == (4, "JBDM", "icd10-format")
    assert counts == {"Patient": 2, "Encounter": 2, "Condition": 6, "Procedure": 2,
                      "Observation": 4, "Claim": 2, "Composition": 2}
    assert {e["identifier"][0]["value"] for e in encounters} == {"ZY20261012", "ZY20261013"}
