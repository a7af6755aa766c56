"""app.cnemr.terminology: codes, displays and translations come from fhir_profiles/, and what the
mappers and the sample generator emit cannot drift from it."""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cnemr import billing, homepage, patient, prescription, visit
from app.cnemr.billing import map_billing_rows
from app.cnemr.context import Hospital
from app.cnemr.homepage import map_homepage
from app.cnemr.lab import map_lab_rows
from app.cnemr.organization import map_staff_rows
from app.cnemr.patient import map_patient
from app.cnemr.prescription import map_prescription_rows
from app.cnemr.terminology import (
    FHIR_PROFILES,
    UnknownTerminology,
    codes,
    display,
    load_terminology,
    translate,
)
from app.cnemr.visit import map_visit
from app.definitions.registry import load_registry
from app.samples import hospital as samples
from app.samples.identity import make_id
from app.server import create_app
from tests.conftest import make_settings
from tests.profiles.test_profile_files import EXTERNAL_CODES

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
BASE = "https://fhir.yilian.cn"
GB_SEX = "urn:oid:2.16.156.10011.2.3.3.4"
GB_ETHNICITY = "urn:oid:2.16.156.10011.2.3.3.3"
GB_MARITAL = "urn:oid:2.16.156.10011.2.3.3.5"
CV_PATIENT_TYPE = "urn:oid:2.16.156.10011.2.3.1.271"
CV_ADMISSION_ROUTE = "urn:oid:2.16.156.10011.2.3.1.270"
CV_INSURANCE_TYPE = "urn:oid:2.16.156.10011.2.3.1.248"
SHOUYE_LYFS = f"{BASE}/CodeSystem/discharge-disposition-shouye"
GENDER_MAP = f"{BASE}/ConceptMap/gbt-2261-1-to-administrative-gender"
MARITAL_MAP = f"{BASE}/ConceptMap/gbt-2261-2-to-v3-marital-status"
PATIENT_TYPE_MAP = f"{BASE}/ConceptMap/cv09-00-404-to-v3-actcode"
ADMIT_SOURCE_MAP = f"{BASE}/ConceptMap/cv09-00-403-to-admit-source"
DISCHARGE_MAP = f"{BASE}/ConceptMap/discharge-disposition-shouye-to-discharge-disposition"

# National and Yilian code systems the mappers use but fhir_profiles/ does not ship (large or
# licensed tables, see fhir_profiles/README.md); everything else national must be there.
NOT_SHIPPED = frozenset({
    "urn:oid:2.16.156.10011.2.3.3.11",  # ICD-10 国家临床版 / 医保版
    "urn:oid:2.16.156.10011.2.3.3.12",  # ICD-9-CM-3
    "urn:oid:2.16.156.10011.2.3.3.14",  # GB/T 15657 中医病证
    f"{BASE}/CodeSystem/nhsa-drug-code",  # 国家医保药品编码, tens of thousands of codes
})
NATIONAL_CODE_SYSTEM = ("urn:oid:2.16.156.10011.2.", f"{BASE}/CodeSystem/")
# A national identifier namespace (urn:oid:2.16.156.10011.1.x), not a hospital-local one
# under the hospital's own OID (…1.5.110000101.admission).
NATIONAL_NAMESPACE = re.compile(r"urn:oid:2\.16\.156\.10011\.1\.[0-9]+")


def _profiles(kind: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((FHIR_PROFILES / kind).glob("*.json"))]


def _target(concept_map: str, system: str, code: str) -> str | None:
    target = translate(concept_map, system, code)
    return target["code"] if target else None


# -- the module --------------------------------------------------------------------------------


def test_codes_and_displays_are_those_of_the_code_system_in_its_order() -> None:
    ethnicity = codes(GB_ETHNICITY)
    assert list(ethnicity)[:3] == ["01", "02", "03"] and list(ethnicity)[-2:] == ["97", "98"]
    assert ethnicity["05"] == "维吾尔族"
    assert display(GB_SEX, "2") == "女性"
    assert display(CV_INSURANCE_TYPE, "3") == "新型农村合作医疗"
    assert dict(codes(SHOUYE_LYFS)) == {
        "1": "医嘱离院", "2": "医嘱转院", "3": "医嘱转社区卫生服务机构/乡镇卫生院",
        "4": "非医嘱离院", "5": "死亡", "9": "其他"}
    with pytest.raises(KeyError):
        display(GB_SEX, "3")


def test_translate_takes_equivalent_and_wider_targets_and_nothing_narrower_or_inexact() -> None:
    assert translate(GENDER_MAP, GB_SEX, "1") == {
        "system": "http://hl7.org/fhir/administrative-gender", "code": "male",
        "display": "Male"}
    assert _target(GENDER_MAP, GB_SEX, "9") == "unknown"  # wider
    assert _target(MARITAL_MAP, GB_MARITAL, "22") == "M"  # wider
    assert _target(MARITAL_MAP, GB_MARITAL, "90") is None  # UNK is inexact
    assert _target(PATIENT_TYPE_MAP, CV_PATIENT_TYPE, "9") is None  # unmatched
    assert _target(ADMIT_SOURCE_MAP, CV_ADMISSION_ROUTE, "3") is None  # hosp-trans is narrower
    assert _target(ADMIT_SOURCE_MAP, CV_ADMISSION_ROUTE, "1") == "emd"
    assert _target(DISCHARGE_MAP, SHOUYE_LYFS, "3") == "other-hcf"  # wider
    assert _target(GENDER_MAP, GB_SEX, "7") is None  # not in the map: the caller reports it


def test_a_translation_is_a_copy_the_caller_may_change() -> None:
    first = translate(DISCHARGE_MAP, SHOUYE_LYFS, "5")
    assert first is not None
    first["code"] = "home"
    assert translate(DISCHARGE_MAP, SHOUYE_LYFS, "5") == {
        "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
        "code": "exp", "display": "Expired"}


def test_an_unknown_system_or_concept_map_is_a_programming_error() -> None:
    with pytest.raises(UnknownTerminology, match=re.escape("urn:oid:2.16.156.10011.2.3.1.999")):
        codes("urn:oid:2.16.156.10011.2.3.1.999")
    with pytest.raises(UnknownTerminology, match="no ConceptMap"):
        translate(f"{BASE}/ConceptMap/gbt-2261-1-gender", GB_SEX, "1")
    with pytest.raises(UnknownTerminology, match="does not map from"):
        translate(GENDER_MAP, GB_MARITAL, "10")


def test_tables_are_found_by_canonical_url_not_by_file_name(tmp_path: Path) -> None:
    for kind, name in (("CodeSystem", "gbt-2261-1-gender"),
                       ("ConceptMap", "gbt-2261-1-to-administrative-gender")):
        (tmp_path / kind).mkdir()
        shutil.copy(FHIR_PROFILES / kind / f"{name}.json", tmp_path / kind / "renamed.json")
    terminology = load_terminology(tmp_path)
    assert terminology.display(GB_SEX, "1") == "男性"
    assert terminology.translate(GENDER_MAP, GB_SEX, "2") == {
        "system": "http://hl7.org/fhir/administrative-gender", "code": "female",
        "display": "Female"}
    with pytest.raises(UnknownTerminology):
        terminology.codes(GB_MARITAL)


# -- the ConceptMaps ---------------------------------------------------------------------------


def _hl7_codes(system: str) -> frozenset[str]:
    """The R4 codes of an HL7 code system: from the registry's value sets where it expands
    one that includes the system, else the R4 codes tests/profiles lists."""
    found = [c for by_system in load_registry().value_set_codes.values()
             for s, c in by_system.items() if s == system]
    return frozenset().union(*found) if found else EXTERNAL_CODES.get(system, frozenset())


@pytest.mark.parametrize("cm", _profiles("ConceptMap"), ids=lambda cm: cm["id"])
def test_concept_maps_cover_their_source_table_and_point_at_existing_codes(
        cm: dict[str, Any]) -> None:
    terminology = load_terminology()
    sources = {g["source"] for g in cm["group"]}
    assert len(sources) == 1, "one source table per ConceptMap"
    [source] = sources
    table = terminology.codes(source)
    mapped = {e["code"] for g in cm["group"] for e in g["element"]}
    # Every code of the table has an entry (if only 'unmatched'), so a mapper never meets a
    # valid code the map is silent on.
    assert mapped == set(table), f"{cm['id']}: missing {sorted(set(table) - mapped)}"
    for group in cm["group"]:
        target = group["target"]
        known = terminology.codes(target) if target in terminology.code_systems \
            else _hl7_codes(target)
        assert known, f"{cm['id']}: no codes known for {target}"
        for element in group["element"]:
            assert element["display"] == table[element["code"]]
            for t in element["target"]:
                if t["equivalence"] != "unmatched":
                    assert t["code"] in known, f"{cm['id']}: {t['code']} not in {target}"
                if target in terminology.code_systems and "code" in t:
                    assert t["display"] == terminology.display(target, t["code"])


def test_every_code_a_mapper_can_translate_has_a_usable_translation() -> None:
    # The codes the mappers accept and then translate must translate: a gap would be a
    # Patient without gender or a 住院 without Encounter.class.
    assert all(translate(GENDER_MAP, GB_SEX, c) for c in codes(GB_SEX))
    assert all(translate(DISCHARGE_MAP, SHOUYE_LYFS, c) for c in codes(SHOUYE_LYFS))
    assert translate(PATIENT_TYPE_MAP, CV_PATIENT_TYPE, "3") is not None
    assert [c for c in codes(GB_MARITAL) if not translate(MARITAL_MAP, GB_MARITAL, c)] == ["90"]


# -- drift: what the mappers and the sample generator emit -------------------------------------


def _codings(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
            yield node
        for value in node.values():
            yield from _codings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _codings(value)


def _identifier_systems(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("system"), str) and "value" in node and "code" not in node:
            yield node["system"]
        for value in node.values():
            yield from _identifier_systems(value)
    elif isinstance(node, list):
        for value in node:
            yield from _identifier_systems(value)


def _national_codings(resources: list[dict[str, Any]]) -> set[tuple[str, str, str | None]]:
    """(system, code, display) of every coding in a national or Yilian code system."""
    return {(c["system"], c["code"], c.get("display")) for c in _codings(resources)
            if c["system"].startswith(NATIONAL_CODE_SYSTEM) and c["system"] not in NOT_SHIPPED}


def _assert_in_code_systems(emitted: set[tuple[str, str, str | None]]) -> None:
    terminology = load_terminology()
    unknown = sorted({s for s, _, _ in emitted} - set(terminology.code_systems))
    assert unknown == [], f"no CodeSystem in fhir_profiles/ for {unknown}"
    wrong = sorted((s, c, d) for s, c, d in emitted
                   if c not in terminology.codes(s)
                   or (d is not None and d != terminology.codes(s)[c]))
    assert wrong == [], f"codes or displays not as their CodeSystem has them: {wrong}"


def _patient_rows() -> list[dict[str, str]]:
    """One row per GB 3304 民族 (and name spellings), cycling every way of writing 性别, 婚姻状况
    and 证件类别 that the patient mapper accepts."""
    genders = itertools.cycle(["1", "2", "0", "9", "男", "女性", "未说明"])
    marital = itertools.cycle([*codes(GB_MARITAL), "1", "2", "3", "4", "9"])
    documents = itertools.cycle([("", ""), ("03", "E58213377"), ("02", "110105196203140318"),
                                 ("1", ""), ("99", "港澳居民居住证 810000199001011234")])
    rows = []
    for n, ethnicity in enumerate([*codes(GB_ETHNICITY), "汉", "维吾尔族", "1", "5"]):
        gender = next(genders)
        id_type, number = next(documents)
        if not number:
            number = make_id("110105", date(1950 + n % 50, 1 + n % 12, 1 + n % 28),
                             2 * n + (1 if gender in ("1", "男") else 2))
        rows.append({"patient_id": f"00010{n:05d}", "name": "阿依古丽·买买提", "gender_code":
                     gender, "ethnicity_code": ethnicity, "marital_status_code": next(marital),
                     "id_type_code": id_type, "id_number": number,
                     "medical_record_no": f"BA{n:06d}"})
    return rows


SHOUYE = {
    "patient_id": "BA100231", "medical_record_no": "BA100231", "inpatient_no": "ZY20261012",
    "admission_count": "2", "name": "张建国", "gender_code": "1", "birth_date": "19620314",
    "admission_time": "2026-10-12 14:20", "discharge_time": "2026-10-19 09:30",
    "admission_department": "心血管内科", "discharge_department": "心血管内科",
    "attending_doctor": "李卫东",
    "principal_diagnosis_code": "I21.000", "principal_diagnosis_name": "急性心肌梗死",
    "other_diagnosis_code_1": "I10.x00x002", "other_diagnosis_name_1": "原发性高血压",
    "procedure_code_1": "00.6601", "procedure_name_1": "经皮冠状动脉腔内血管成形术",
    "procedure_date_1": "2026-10-12 16:05", "total_cost": "58632.47",
    "self_paid_amount": "12034.50",
    **{cost.element: "1000.00" for cost in homepage.COST_ITEMS},
}


def _shouye_rows() -> list[dict[str, str]]:
    """首页 rows through every 入院途径, 离院方式, 医疗付费方式 (both forms), 入院病情, 手术级别 and
    blood group code, and a 中医首页."""
    variants: list[dict[str, str]] = []
    variants += [{"admission_route_code": c} for c in [*codes(CV_ADMISSION_ROUTE), "门诊"]]
    variants += [{"discharge_method_code": c} for c in [*codes(SHOUYE_LYFS), "死亡"]]
    variants += [{"payment_method_code": c} for c in
                 [*codes(homepage.CS_PAYMENT_METHOD), *"123456789", "全自费"]]
    variants += [{"principal_admission_condition": c, "other_admission_condition_1": c}
                 for c in [*codes(homepage.CS_ADMISSION_CONDITION), "临床未确定"]]
    variants += [{"operation_level_1": c} for c in
                 [*codes(homepage.CS_OPERATION_LEVEL), "三级", "四级手术"]]
    variants += [{"abo_blood_group": a, "rh_blood_group": r} for a, r in itertools.zip_longest(
        [*codes(homepage.CS_ABO), "AB", "未查"], [*codes(homepage.CS_RH), "阳", "RH-"],
        fillvalue="")]
    variants.append({"tcm_disease_code": "A04.01.01", "tcm_disease_name": "胸痹心痛病",
                     "tcm_syndrome_code": "B04.03.02.01", "tcm_syndrome_name": "气虚血瘀证"})
    return [SHOUYE | v for v in variants]


def _settlement_rows() -> list[dict[str, str]]:
    """One 医保 settlement per 医疗保险类别 (code and a short name), each with the full split."""
    rows = []
    for n, insurance in enumerate([*codes(CV_INSURANCE_TYPE), "新农合", "职工医保"]):
        rows.append({
            "settlement_id": f"JS2026112001{n:02d}", "patient_id": "0001023456",
            "inpatient_no": "ZY20261012", "admission_count": "2",
            "settlement_time": "2026-10-19 10:42:17", "total_amount": "60.00",
            "fund_paid": "36.00", "account_paid": "14.00", "cash_paid": "10.00",
            "copay": "14.00", "self_pay": "10.00", "insurance_type": insurance,
            "item_code": "XY0105000001", "item_name": "阿莫西林胶囊 0.25g×24粒",
            "fee_category": "西药费", "unit_price": "30.00", "quantity": "2", "amount": "60.00"})
    return rows


def _prescription_rows() -> list[dict[str, str]]:
    """A 西药处方 with a line per CV06.00.228 用药频次 (and tid), and a 中药处方."""
    header = {"patient_id": "0001023456", "visit_no": "0000871", "doctor": "李淑芬",
              "prescribed_time": "2026-11-20 09:20:00"}
    rows = [{**header, "prescription_no": "CF202611200153", "prescription_type": "西药",
             "line_no": str(n), "drug_code": f"Y00120{n:02d}", "drug_name": "盐酸二甲双胍片",
             "dose": "0.5", "dose_unit": "g", "frequency_code": frequency}
            for n, frequency in enumerate([*codes(prescription.CS_FREQUENCY), "tid", "qn"], 1)]
    rows.append({**header, "prescription_no": "CF202611200188", "prescription_type": "中药",
                 "line_no": "1", "drug_code": "ZY0101", "drug_name": "黄芪", "dose": "30",
                 "dose_unit": "g", "frequency_code": "bid", "doses_count": "7"})
    return rows


def _mapped() -> dict[str, list[dict[str, Any]]]:
    """What each mapper produces from the rows above (no errors expected), by mapper."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in _patient_rows():
        resources, errors = map_patient(row, HOSPITAL)
        assert [e for e in errors if e.rule != "id-mismatch-sex"] == [], errors
        out.setdefault("patient", []).extend(resources)
    for type_code in ("1", "2", "3", "急诊"):
        resources, errors = map_visit({"visit_no": "0000871", "visit_date": "2026-11-20",
                                       "patient_id": "0001023456",
                                       "visit_type_code": type_code}, HOSPITAL)
        assert errors == []
        out.setdefault("visit", []).extend(resources)
    for row in _shouye_rows():
        resources, errors = map_homepage(row, HOSPITAL)
        assert errors == [], errors
        out.setdefault("homepage", []).extend(resources)
    for name, rows, mapper in (("billing", _settlement_rows(), map_billing_rows),
                               ("prescription", _prescription_rows(), map_prescription_rows)):
        out[name], errors = mapper(rows, HOSPITAL)
        assert errors == [], errors
    out["lab"], errors = map_lab_rows([{
        "report_id": "JY20261120000731", "patient_id": "0001023456", "visit_id": "MZ2611200087",
        "specimen_no": "2611200731", "report_time": "2026-11-20 09:15:30", "item_code": "GLU",
        "item_name": "葡萄糖", "result": "7.8", "unit": "mmol/L", "reference_range": "3.9-6.1",
        "abnormal_flag": "H"}], HOSPITAL)
    assert errors == []
    out["organization"], errors = map_staff_rows([{
        "hospital_name": "北京东华协和医院", "department_code": "0301",
        "department_name": "心血管内科", "staff_id": "D0107", "staff_name": "李志刚",
        "title": "主任医师", "license_no": "110110000012345",
        "id_number": make_id("110108", date(1971, 5, 3), 13)}], HOSPITAL)
    assert errors == []
    return out


@pytest.fixture(scope="module")
def by_mapper() -> dict[str, list[dict[str, Any]]]:
    return _mapped()


@pytest.fixture(scope="module")
def mapped(by_mapper: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for resources in by_mapper.values() for r in resources]


def test_every_national_code_the_mappers_emit_is_in_its_code_system_with_its_display(
        mapped: list[dict[str, Any]]) -> None:
    emitted = _national_codings(mapped)
    _assert_in_code_systems(emitted)
    # The rows above reach every code of these tables, so a code dropped from a CodeSystem
    # or renamed in a mapper shows up here.
    for system in (GB_SEX, GB_ETHNICITY, GB_MARITAL, CV_ADMISSION_ROUTE, SHOUYE_LYFS,
                   CV_INSURANCE_TYPE, billing.SETTLEMENT_COMPONENT, homepage.CS_PAYMENT_METHOD,
                   homepage.CS_OPERATION_LEVEL, homepage.CS_ADMISSION_CONDITION,
                   prescription.CS_FREQUENCY):
        assert {c for s, c, _ in emitted if s == system} == set(codes(system)), system


def test_the_mappers_translate_through_the_concept_maps(
        by_mapper: dict[str, list[dict[str, Any]]]) -> None:
    encounters = [r for r in by_mapper["homepage"] if r["resourceType"] == "Encounter"]
    admit = {c["code"] for e in encounters
             for c in e.get("hospitalization", {}).get("admitSource", {}).get("coding", [])}
    assert admit == {"1", "2", "3", "9", "emd", "outp", "other"}  # 3 has no hosp-trans
    discharge = {c["system"].rsplit("/", 1)[1]: c["code"] for e in encounters
                 for c in e.get("hospitalization", {}).get("dischargeDisposition", {}).get(
                     "coding", []) if c["code"] == "4" or c["code"] == "aadvice"}
    assert discharge == {"discharge-disposition-shouye": "4",
                         "discharge-disposition": "aadvice"}
    genders = {p["_gender"]["extension"][0]["valueCoding"]["code"]: p["gender"]
               for p in by_mapper["patient"] if "_gender" in p}
    assert genders == {"0": "unknown", "1": "male", "2": "female", "9": "unknown"}
    claims = [c.get("extension", [{}])[0].get("valueCodeableConcept", {}).get("coding", [{}])[0]
              .get("code") for c in by_mapper["billing"] if c["resourceType"] == "Claim"]
    # CV02.01.204 1 2 3 4 5 6 7 99 新农合 职工医保: the supplementary schemes and 其他 give none.
    assert claims == ["01", "02", "03", None, None, None, "05", None, "03", "01"]


def test_the_mappers_aliases_all_resolve_to_codes_of_the_tables() -> None:
    # Source quirks stay in the mappers; what they resolve to must be a code.
    assert set(patient._GENDER_TEXT.values()) <= set(codes(GB_SEX))
    assert set(patient._MARITAL_SHORT.values()) <= set(codes(GB_MARITAL))
    assert set(visit._PATIENT_TYPE_TEXT.values()) <= set(codes(CV_PATIENT_TYPE))
    assert set(homepage._LEVEL_TEXT.values()) <= set(codes(homepage.CS_OPERATION_LEVEL))
    assert set(homepage._ABO_TEXT.values()) - set(codes(homepage.CS_ABO)) == {"6"}  # 未查
    assert set(homepage._RH_TEXT.values()) <= set(codes(homepage.CS_RH))
    assert set(billing._INSURANCE_ALIASES.values()) <= set(codes(CV_INSURANCE_TYPE))
    assert {c for _, c in billing.SPLIT} == set(codes(billing.SETTLEMENT_COMPONENT))
    assert {c.cv for c in prescription.FREQUENCIES.values() if c.cv} | {"99"} == set(
        codes(prescription.CS_FREQUENCY))


def test_every_national_code_the_sample_generator_emits_is_in_its_code_system() -> None:
    population = list(samples.HospitalGenerator().population(patients=120,
                                                              observations_per_patient=3))
    emitted = _national_codings(population)
    _assert_in_code_systems(emitted)
    assert {s for s, _, _ in emitted} >= {GB_SEX, GB_ETHNICITY, GB_MARITAL, CV_PATIENT_TYPE,
                                          CV_ADMISSION_ROUTE, samples.CS_ID_TYPE}
    # The generator's own tables, whether or not this population drew every entry.
    assert {(samples.CS_ETHNICITY, c, d) for c, d in samples.ETHNICITIES.items()} <= {
        (GB_ETHNICITY, c, d) for c, d in codes(GB_ETHNICITY).items()}


# -- NamingSystems -----------------------------------------------------------------------------


def test_every_national_identifier_namespace_the_mappers_use_has_a_naming_system(
        mapped: list[dict[str, Any]]) -> None:
    named = {u["value"] for ns in _profiles("NamingSystem") for u in ns["uniqueId"]
             if u["type"] == "uri"}
    used = set(_identifier_systems(mapped))
    national = {s for s in used if NATIONAL_NAMESPACE.fullmatch(s)}
    assert national >= {"urn:oid:2.16.156.10011.1.3", "urn:oid:2.16.156.10011.1.11",
                        "urn:oid:2.16.156.10011.1.12", "urn:oid:2.16.156.10011.1.13",
                        "urn:oid:2.16.156.10011.1.20", "urn:oid:2.16.156.10011.1.33"}
    yilian = {s for s in used if s.startswith(f"{BASE}/NamingSystem/")}
    assert sorted((national | yilian) - named) == []


def test_naming_systems_give_the_oid_both_ways() -> None:
    for ns in _profiles("NamingSystem"):
        oids = [u["value"] for u in ns["uniqueId"] if u["type"] == "oid"]
        uris = [u["value"] for u in ns["uniqueId"] if u["type"] == "uri"]
        assert ns["kind"] == "identifier" and ns["status"] == "active", ns["id"]
        assert [f"urn:oid:{o}" for o in oids] == [u for u in uris if u.startswith("urn:oid:")]
        assert sum(u.get("preferred", False) for u in ns["uniqueId"]) == 1, ns["id"]


def test_naming_systems_are_served_and_searchable_by_their_oid(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        read = client.get("/fhir/NamingSystem/inpatient-no")
        assert read.status_code == 200
        assert {"type": "oid", "value": "2.16.156.10011.1.12", "preferred": True} in read.json()[
            "uniqueId"]
        found = client.get("/fhir/NamingSystem?value=2.16.156.10011.1.33").json()
        assert [e["resource"]["id"] for e in found["entry"]] == ["lab-report-no"]
