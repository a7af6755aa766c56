"""检验报告 LIS rows → FHIR R4 ServiceRequest, Specimen, DiagnosticReport and Observations
(app.cnemr.lab)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.cnemr.context import (
    Hospital,
    encounter_resource_id,
    lab_observation_resource_id,
    lab_report_resource_id,
    outpatient_visit_key,
    patient_resource_id,
)
from app.cnemr.errors import RowError
from app.cnemr.lab import lab_order_resource_id, map_lab_rows, specimen_resource_id
from app.cnemr.patient import map_patient
from app.cnemr.visit import map_visit
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from tests.cnemr.exports import import_export, write_csv

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
PROFILE = "https://fhir.yilian.cn/StructureDefinition/"
CN_PROFILE = {"Observation": PROFILE + "cn-observation-lab",
              "DiagnosticReport": PROFILE + "cn-diagnostic-report"}
NO_PROFILE = {"Specimen", "ServiceRequest"}  # held to R4 alone: fhir_profiles/ has none
REGISTRY = load_registry()
PROFILES = ProfileValidator(load_profile_resources(Settings().profiles_dir), REGISTRY)

REPORT = {"report_id": "JY20261120000731", "patient_id": "0001023456", "visit_id": "MZ2611200087",
          "specimen_no": "2611200731", "collected_time": "2026/11/20 07:42",
          "test_time": "2026-11-20 08:15:00", "report_time": "20261120091530",
          "department": "检验科", "doctor": "单雄信"}


def item(code: str, name: str, result: str, unit: str = "", rng: str = "", flag: str = "",
         **extra: Any) -> dict[str, Any]:
    return {**REPORT, "item_code": code, "item_name": name, "result": result, "unit": unit,
            "reference_range": rng, "abnormal_flag": flag, **extra}


CBC = [
    item("WBC", "白细胞计数", "11.62", "10^9/L", "3.5-9.5", "H", panel_code="XCG",
         panel_name="血常规"),
    item("RBC", "红细胞计数", "4.21", "10^12/L", "3.8~5.1", "", panel_code="XCG",
         panel_name="血常规"),
    item("HGB", "血红蛋白", "98", "g/L", "115-150", "↓", panel_code="XCG", panel_name="血常规"),
    item("PLT", "血小板计数", "256", "10^9/L", "125-350", "N", panel_code="XCG",
         panel_name="血常规"),
]


def mapped(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[RowError]]:
    resources, errors = map_lab_rows(rows, HOSPITAL)
    for resource in resources:
        if resource["resourceType"] in NO_PROFILE:
            assert "meta" not in resource
        else:
            assert resource["meta"]["profile"] == [CN_PROFILE[resource["resourceType"]]]
        issues = [i for i in validate_resource(resource, REGISTRY)
                  + PROFILES.declared_issues(resource) if i.severity in ("error", "fatal")]
        assert issues == [], (resource["resourceType"], issues)
    return resources, errors


def by_code(resources: list[dict[str, Any]], local: str) -> dict[str, Any]:
    return next(r for r in resources if r["resourceType"] == "Observation"
                and any(c["code"] == local for c in r["code"]["coding"]))


def only(resources: list[dict[str, Any]], rtype: str) -> dict[str, Any]:
    [resource] = [r for r in resources if r["resourceType"] == rtype]
    return resource


def report_of(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return only(resources, "DiagnosticReport")


def observations(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == "Observation"]


def test_a_cbc_report_maps_to_a_lab_report_with_one_observation_per_item() -> None:
    resources, errors = mapped(CBC)
    assert errors == []
    assert [r["resourceType"] for r in resources] == [
        "Specimen", "ServiceRequest", *["Observation"] * 4, "DiagnosticReport"]
    report = report_of(resources)
    assert report["id"] == lab_report_resource_id(HOSPITAL, "JY20261120000731")
    assert report["identifier"][0]["system"] == "urn:oid:2.16.156.10011.1.33"
    assert report["identifier"][0]["value"] == "JY20261120000731"
    assert report["category"][0]["coding"][0]["code"] == "LAB"
    assert report["code"]["coding"][0] == {"system": LOINC, "code": "58410-2",
                                           "display": "CBC panel - Blood by Automated count"}
    assert report["result"] == [{"reference": f"Observation/{r['id']}"}
                                for r in observations(resources)]
    assert report["performer"] == [{"display": "检验科"}]
    assert report["resultsInterpreter"] == [{"display": "单雄信"}]


def test_every_resource_points_at_the_same_patient_and_encounter_as_the_patient_mapper() -> None:
    patient = map_patient({"patient_id": "0001023456", "name": "欧阳娜娜"}, HOSPITAL)[0][0]
    resources, _ = mapped(CBC)
    for resource in resources:
        assert resource["subject"] == {"reference": f"Patient/{patient['id']}"}
        if resource["resourceType"] == "Specimen":
            continue
        assert resource["encounter"] == {
            "reference": "Encounter/" + encounter_resource_id(HOSPITAL, "MZ2611200087")}
        if resource["resourceType"] == "ServiceRequest":
            continue
        assert resource["effectiveDateTime"] == "2026-11-20T07:42:00+08:00"
        assert resource["issued"] == "2026-11-20T09:15:30+08:00"
    assert patient["id"] == patient_resource_id(HOSPITAL, "0001023456")


def test_observation_ids_are_stable_across_reimports_and_keyed_by_report_and_item() -> None:
    first, _ = mapped(CBC)
    again, _ = mapped(list(reversed(CBC)))
    assert {r["id"] for r in first} == {r["id"] for r in again}
    assert by_code(first, "WBC")["id"] == lab_observation_resource_id(
        HOSPITAL, "JY20261120000731", "WBC")


def test_items_get_loinc_and_the_local_lis_code_and_ucum_units() -> None:
    resources, _ = mapped(CBC)
    wbc = by_code(resources, "WBC")
    assert wbc["category"][0]["coding"][0]["code"] == "laboratory"
    assert wbc["code"]["coding"][0]["system"] == LOINC
    assert wbc["code"]["coding"][0]["code"] == "6690-2"
    assert wbc["code"]["coding"][1] == {"system": HOSPITAL.lis_item_system, "code": "WBC",
                                        "display": "白细胞计数"}
    assert HOSPITAL.lis_item_system == "urn:oid:2.16.156.10011.1.5.110000101.lis-item"
    assert wbc["valueQuantity"] == {"value": 11.62, "unit": "10^9/L", "system": UCUM,
                                    "code": "10*9/L"}
    assert wbc["referenceRange"][0]["low"]["value"] == 3.5
    assert wbc["referenceRange"][0]["high"]["code"] == "10*9/L"
    assert wbc["interpretation"][0]["coding"][0]["code"] == "H"
    assert by_code(resources, "RBC")["valueQuantity"]["code"] == "10*12/L"
    assert by_code(resources, "HGB")["interpretation"][0]["coding"][0]["code"] == "L"
    assert by_code(resources, "PLT")["code"]["coding"][0]["code"] == "777-3"
    assert "interpretation" not in by_code(resources, "RBC")


def test_liver_and_kidney_items_use_the_molar_loinc_codes_chinese_units_measure() -> None:
    rows = [item("ALT", "丙氨酸氨基转移酶", "56", "U/L", "7-40", "H"),
            item("AST", "天门冬氨酸氨基转移酶", "31", "U/L", "13-35"),
            item("TBIL", "总胆红素", "12.4", "μmol/L", "3.4-20.5"),
            item("ALB", "白蛋白", "41.2", "g/L", "40-55"),
            item("CREA", "肌酐", "68", "umol/L", "41-73"),
            item("UREA", "尿素", "5.1", "mmol/L", "2.6-7.5"),
            item("UA", "尿酸", "402", "µmol/L", "155-357", "↑")]
    resources, errors = mapped(rows)
    assert errors == []
    loinc = {r["code"]["coding"][1]["code"]: r["code"]["coding"][0]["code"]
             for r in resources if r["resourceType"] == "Observation"}
    assert loinc == {"ALT": "1742-6", "AST": "1920-8", "TBIL": "14631-6", "ALB": "1751-7",
                     "CREA": "14682-9", "UREA": "22664-7", "UA": "14933-6"}
    assert by_code(resources, "TBIL")["valueQuantity"]["unit"] == "μmol/L"
    assert by_code(resources, "TBIL")["valueQuantity"]["code"] == "umol/L"


def test_a_creatinine_in_mass_units_gets_no_molar_loinc_code() -> None:
    resources, _ = mapped([item("CREA", "肌酐", "0.9", "mg/dL", "0.5-1.1")])
    codes = [c["system"] for c in by_code(resources, "CREA")["code"]["coding"]]
    assert codes == [HOSPITAL.lis_item_system]


def test_less_than_results_and_negative_results_are_kept_faithfully() -> None:
    rows = [item("CRP", "C反应蛋白", "<0.5", "mg/L", "<5"),
            item("HBsAg", "乙型肝炎表面抗原", "阴性", "", "阴性"),
            item("URO", "尿蛋白", "++", "", "阴性", "阳性")]
    resources, errors = mapped(rows)
    assert errors == []
    crp = by_code(resources, "CRP")
    assert crp["valueQuantity"]["comparator"] == "<"
    assert crp["valueQuantity"]["value"] == 0.5
    assert crp["referenceRange"] == [{"high": {"value": 5, "unit": "mg/L", "system": UCUM,
                                               "code": "mg/L"}, "text": "<5"}]
    hbsag = by_code(resources, "HBsAg")
    assert hbsag["valueString"] == "阴性"
    assert hbsag["referenceRange"] == [{"text": "阴性"}]
    assert "valueQuantity" not in hbsag
    urine = by_code(resources, "URO")
    assert urine["valueString"] == "++"
    assert urine["interpretation"][0]["coding"][0]["code"] == "POS"


def test_full_width_digits_in_results_are_read_as_numbers() -> None:
    resources, _ = mapped([item("GLU", "葡萄糖", "５.６", "mmol/L", "3.9-6.1")])
    assert by_code(resources, "GLU")["valueQuantity"]["value"] == 5.6


def test_a_blank_result_rejects_only_that_item_and_names_its_row() -> None:
    rows = [*CBC[:2], item("HCT", "红细胞压积", "", "%", "35-45")]
    resources, errors = mapped(rows)
    assert [r["resourceType"] for r in observations(resources)] == ["Observation"] * 2
    assert len(report_of(resources)["result"]) == 2
    [error] = errors
    assert (error.field, error.rule, error.severity, error.row) == (
        "result", "result-required", "error", 2)


def test_rows_of_one_report_that_disagree_on_the_patient_reject_the_report() -> None:
    rows = [*CBC[:2], {**CBC[2], "patient_id": "0001029999"}]
    resources, errors = mapped(rows)
    assert resources == []
    assert {e.rule for e in errors} == {"report-consistency"}
    assert sorted(e.row for e in errors if e.row is not None) == [0, 1, 2]
    assert all(e.severity == "error" and e.field == "patient_id" for e in errors)
    # The row that disagrees names its own value and the other one.
    assert errors[2].value == "0001029999"
    assert "'0001029999'" in errors[2].message and "'0001023456'" in errors[2].message
    assert "'0001029999'" in errors[0].message


@pytest.mark.parametrize(("key", "other"), [
    ("visit_id", "MZ2611200088"), ("visit_no", "0000872"), ("visit_date", "2026-11-21"),
    ("specimen_no", "2611200732"), ("panel_code", "SHQ"), ("panel_name", "肝功能"),
    ("collected_time", "2026/11/20 07:50"), ("test_time", "2026-11-20 08:30:00"),
    ("report_time", "20261120101500"), ("department", "急诊检验科"), ("doctor", "王海涛"),
    ("specimen_type", "血浆"), ("order_no", "SQ2611200332"), ("ordering_doctor", "李卫东"),
    ("order_time", "2026-11-20 07:20")])
def test_rows_that_disagree_on_any_report_level_value_reject_the_whole_report(
        key: str, other: str) -> None:
    rows = [{**r, "visit_no": "0000871", "visit_date": "2026-11-20", "specimen_type": "全血",
             "order_no": "SQ2611200331", "ordering_doctor": "王建华",
             "order_time": "2026-11-20 07:15"} for r in CBC]
    rows[3] = {**rows[3], key: other}
    resources, errors = mapped(rows)
    assert resources == []
    assert [(e.row, e.field, e.rule, e.severity) for e in errors] == [
        (i, key, "report-consistency", "error") for i in range(4)]
    assert errors[3].value == other
    assert repr(other) in errors[3].message and repr(rows[0][key]) in errors[3].message


def test_a_time_written_two_ways_on_two_rows_is_not_a_disagreement() -> None:
    rows = [CBC[0], {**CBC[1], "collected_time": "20261120074200"}]
    resources, errors = mapped(rows)
    assert errors == []
    assert report_of(resources)["effectiveDateTime"] == "2026-11-20T07:42:00+08:00"


def test_an_outpatient_number_and_visit_date_link_to_the_registration_encounter() -> None:
    registration, _ = map_visit({"visit_no": "0000871", "visit_date": "2026-11-20 07:12:33",
                                 "patient_id": "0001023456", "visit_type_code": "1"}, HOSPITAL)
    rows = [{**r, "visit_id": "", "visit_no": "0000871", "visit_date": "20261120"} for r in CBC]
    resources, errors = mapped(rows)
    assert errors == []
    expected = {"reference": "Encounter/" + registration[0]["id"]}
    assert expected == {"reference": "Encounter/" + encounter_resource_id(
        HOSPITAL, outpatient_visit_key("0000871", "2026-11-20"))}
    assert all(r["encounter"] == expected for r in resources if r["resourceType"] != "Specimen")


def test_without_a_visit_date_the_outpatient_visit_is_that_of_the_collection_day() -> None:
    rows = [{**item("GLU", "葡萄糖", "7.8", "mmol/L", "3.9-6.1", "H"), "visit_id": "",
             "visit_no": "0000871", "collected_time": "2026-11-20 10:05"}]
    resources, errors = mapped(rows)
    assert errors == []
    assert report_of(resources)["encounter"]["reference"] == "Encounter/" + \
        encounter_resource_id(HOSPITAL, "0000871@20261120")


def test_an_outpatient_number_without_any_date_is_imported_unlinked_with_a_warning() -> None:
    rows = [{"report_id": "JY20261120000998", "patient_id": "0001023456", "visit_no": "0000871",
             "item_code": "K", "item_name": "钾", "result": "4.1", "unit": "mmol/L"}]
    resources, errors = mapped(rows)
    assert "encounter" not in report_of(resources)
    assert [(e.field, e.rule, e.severity, e.row) for e in errors] == [
        ("visit_date", "visit-date-required", "warning", 0)]


def test_a_visit_id_naming_another_visit_than_the_outpatient_number_wins_and_is_reported() -> None:
    rows = [{**r, "visit_no": "0000871", "visit_date": "2026-11-20"} for r in CBC]
    resources, errors = mapped(rows)
    assert report_of(resources)["encounter"]["reference"] == "Encounter/" + \
        encounter_resource_id(HOSPITAL, "MZ2611200087")
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("visit_no", "visit-key-conflict", "warning")]
    same = [{**r, "visit_id": "0000871@20261120", "visit_no": "0000871",
             "visit_date": "2026-11-20"} for r in CBC]
    assert mapped(same)[1] == []


def test_a_number_in_a_unit_without_ucum_code_is_kept_as_printed_text() -> None:
    resources, errors = mapped([item("CEA-R", "癌胚抗原比值", "12.50↑", "倍", "<1.00"),
                                item("HBsAg-Q", "乙肝表面抗原定量", "<0.05", "IU/瓶", "<1")])
    assert by_code(resources, "CEA-R")["valueString"] == "12.50 倍"
    assert by_code(resources, "CEA-R")["interpretation"][0]["coding"][0]["code"] == "H"
    assert by_code(resources, "HBsAg-Q")["valueString"] == "<0.05 IU/瓶"
    assert [(e.field, e.value, e.rule, e.severity, e.row) for e in errors] == [
        ("unit", "倍", "ucum-unknown", "warning", 0),
        ("unit", "IU/瓶", "ucum-unknown", "warning", 1)]


def test_immunoassay_ratios_and_chinese_unit_names_get_their_ucum_codes() -> None:
    resources, errors = mapped([item("HCV-Ab", "丙型肝炎抗体", "12.50↑", "S/CO", "<1.00"),
                                item("HBsAg-Q", "乙肝表面抗原定量", "<0.05", "COI", "<1"),
                                item("ESR", "血沉", "12", "毫米/小时", "0-20")])
    assert errors == []
    assert by_code(resources, "HCV-Ab")["valueQuantity"] == {
        "value": 12.5, "unit": "S/CO", "system": UCUM, "code": "{s_co_ratio}"}
    assert by_code(resources, "HBsAg-Q")["valueQuantity"]["comparator"] == "<"
    assert by_code(resources, "HBsAg-Q")["valueQuantity"]["code"] == "{COI}"
    assert by_code(resources, "ESR")["valueQuantity"]["code"] == "mm/h"


def test_a_number_printed_without_a_unit_is_a_dimensionless_ucum_quantity() -> None:
    resources, errors = mapped([item("INR", "国际标准化比值", "1.02", "", "0.8-1.2"),
                                item("PH", "尿酸碱度", "6.5", "", "4.5-8.0")])
    assert errors == []
    assert by_code(resources, "INR")["valueQuantity"] == {"value": 1.02, "system": UCUM,
                                                          "code": "1"}


def test_an_identical_duplicate_row_is_imported_once_and_reported() -> None:
    resources, errors = mapped([*CBC, CBC[0]])
    assert len(report_of(resources)["result"]) == 4
    [error] = errors
    assert (error.rule, error.severity, error.row) == ("duplicate-item", "warning", 4)


def test_a_conflicting_duplicate_item_is_rejected_and_reported() -> None:
    resources, errors = mapped([*CBC, {**CBC[0], "result": "12.00"}])
    assert by_code(resources, "WBC")["valueQuantity"]["value"] == 11.62
    [error] = errors
    assert (error.rule, error.severity) == ("conflicting-item", "error")


def test_rows_of_several_reports_are_grouped_by_report_id() -> None:
    liver = [{**item("ALT", "丙氨酸氨基转移酶", "23", "U/L", "9-50"),
              "report_id": "JY20261120000732", "panel_name": "肝功能"}]
    resources, errors = mapped([CBC[0], liver[0], CBC[1]])
    assert errors == []
    reports = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    assert [len(r["result"]) for r in reports] == [2, 1]
    assert reports[1]["code"]["coding"][0]["code"] == "24325-3"


def test_rows_without_report_id_or_item_code_are_rejected_with_their_position() -> None:
    rows = [CBC[0], {**CBC[1], "report_id": ""}, {**CBC[2], "item_code": " "}]
    resources, errors = mapped(rows)
    assert len(report_of(resources)["result"]) == 1
    assert [(e.row, e.field, e.rule) for e in errors] == [
        (1, "report_id", "required"), (2, "item_code", "required")]


def test_bad_optional_values_are_left_out_with_warnings() -> None:
    rows = [item("WBC", "白细胞计数", "6.1", "10^9/L", "9.5-3.5", "?",
                 report_time="2026-11-20"),
            item("ESR", "血沉", "12", "毫米每时", "0-20", report_time="2026-11-20")]
    resources, errors = mapped(rows)
    wbc = by_code(resources, "WBC")
    assert "referenceRange" not in wbc and "interpretation" not in wbc and "issued" not in wbc
    assert {(e.field, e.rule) for e in errors} == {
        ("reference_range", "range-order"), ("abnormal_flag", "flag-unknown"),
        ("report_time", "instant-needs-time"), ("unit", "ucum-unknown")}
    assert all(e.severity == "warning" for e in errors)
    # cn-observation-lab requires a UCUM code on a valueQuantity: the result stays as printed.
    esr = by_code(resources, "ESR")
    assert "valueQuantity" not in esr
    assert esr["valueString"] == "12 毫米每时"


def test_a_report_without_specimen_visit_or_times_still_maps() -> None:
    rows = [{"report_id": "JY20261120000999", "patient_id": "0001023456", "item_code": "K",
             "item_name": "钾", "result": "4.1", "unit": "mmol/L"}]
    resources, errors = mapped(rows)
    assert errors == []
    report = report_of(resources)
    assert report["code"] == {"text": "检验报告"}
    assert not {"encounter", "specimen", "effectiveDateTime", "issued"} & set(report)


CELL = st.one_of(st.none(), st.text(max_size=16), st.integers(), st.floats(allow_nan=True),
                 st.sampled_from(["", "<0.5", "≥5", "阴性", "3.5-9.5", "9-3", "↑", "5.6↑",
                                  "10^9/L", "20261120", "2026/11/20 25:61", "R1", "P1"]))
LAB_FIELDS = ("report_id", "patient_id", "visit_id", "visit_no", "visit_date", "item_code",
              "item_name", "result", "unit",
              "reference_range", "abnormal_flag", "specimen_no", "panel_code", "panel_name",
              "collected_time", "test_time", "report_time", "department", "doctor",
              "specimen_type", "order_no", "ordering_doctor", "order_time")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({}, optional={f: CELL for f in LAB_FIELDS}), max_size=5))
def test_no_row_content_makes_the_mapper_raise_or_emit_invalid_fhir(
        rows: list[dict[str, Any]]) -> None:
    resources, errors = map_lab_rows(rows, HOSPITAL)
    for resource in resources:
        issues = validate_resource(resource, REGISTRY) + PROFILES.declared_issues(resource)
        assert [i for i in issues if i.severity in ("error", "fatal")] == []
    assert all(e.rule and e.message for e in errors)


def test_report_level_values_given_on_one_row_only_apply_to_the_whole_report() -> None:
    rows = [CBC[0], {**CBC[1], "patient_id": "", "visit_id": "", "report_time": ""}]
    resources, errors = mapped(rows)
    assert errors == []
    assert {r["subject"]["reference"] for r in resources} == {
        "Patient/" + patient_resource_id(HOSPITAL, "0001023456")}
    assert all("encounter" in r and "issued" in r
               for r in [*observations(resources), report_of(resources)])


def test_line_breaks_inside_exported_cells_give_valid_codes() -> None:
    # Spreadsheet cells carry line breaks; a FHIR code may not contain them (found by hypothesis).
    resources, _ = mapped([item("WBC\r\n01", "白细胞\n计数", "6.5", "10^9/L", "3.5-9.5")])
    obs = by_code(resources, "WBC 01")
    assert obs["code"]["text"] == "白细胞 计数"


ORDERED = [{**r, "specimen_type": "全血", "order_no": "SQ2611200331", "ordering_doctor": "王建华",
            "order_time": "2026-11-20 07:15"} for r in CBC]


def test_the_specimen_number_becomes_a_specimen_every_result_of_the_report_points_at() -> None:
    resources, errors = mapped(ORDERED)
    assert errors == []
    specimen = only(resources, "Specimen")
    assert specimen["id"] == specimen_resource_id(HOSPITAL, "0001023456", "2611200731")
    assert specimen["identifier"] == [{"type": {"text": "标本编号"},
                                       "system": "urn:oid:2.16.156.10011.1.14",
                                       "value": "2611200731"}]
    assert specimen["type"] == {"text": "全血", "coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v2-0487", "code": "BLD",
        "display": "Whole blood"}]}
    assert specimen["subject"] == {"reference": "Patient/" + patient_resource_id(
        HOSPITAL, "0001023456")}
    # The 采样时间, not the 检验时间.
    assert specimen["collection"] == {"collectedDateTime": "2026-11-20T07:42:00+08:00"}
    link = [{"reference": f"Specimen/{specimen['id']}"}]
    assert report_of(resources)["specimen"] == link
    assert only(resources, "ServiceRequest")["specimen"] == link
    assert all(o["specimen"] == link[0] for o in observations(resources))


@pytest.mark.parametrize(("written", "code"), [
    ("血清", "SER"), ("血浆", "PLAS"), ("尿液", "UR"), ("脑脊液", "CSF"), ("粪便", "STL"),
    ("ser", "SER")])
def test_specimen_types_with_one_meaning_get_their_hl7_v2_0487_code(written: str,
                                                                    code: str) -> None:
    resources, errors = mapped([item("K", "钾", "4.1", "mmol/L", "3.5-5.3",
                                     specimen_type=written)])
    assert errors == []
    specimen_type = only(resources, "Specimen")["type"]
    assert specimen_type["text"] == written
    assert specimen_type["coding"][0]["code"] == code


def test_a_specimen_type_without_one_v2_code_is_kept_as_text_alone() -> None:
    resources, errors = mapped([item("K", "钾", "4.1", "mmol/L", "3.5-5.3",
                                     specimen_type="静脉血")])
    assert errors == []
    assert only(resources, "Specimen")["type"] == {"text": "静脉血"}


def test_a_specimen_without_a_collection_time_has_no_collection() -> None:
    rows = [{**r, "collected_time": ""} for r in CBC]
    resources, errors = mapped(rows)
    assert errors == []
    assert "collection" not in only(resources, "Specimen")
    assert report_of(resources)["effectiveDateTime"] == "2026-11-20T08:15:00+08:00"


def test_each_report_answers_a_completed_lab_order_with_the_same_panel_code() -> None:
    resources, errors = mapped(ORDERED)
    assert errors == []
    order = only(resources, "ServiceRequest")
    report = report_of(resources)
    assert order["id"] == lab_order_resource_id(HOSPITAL, "JY20261120000731")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]
    assert order["identifier"] == [{"type": {"text": "电子申请单编号"},
                                    "system": "urn:oid:2.16.156.10011.1.24",
                                    "value": "SQ2611200331"}]
    assert (order["status"], order["intent"]) == ("completed", "order")
    assert order["category"] == [{"coding": [{"system": "http://snomed.info/sct",
                                              "code": "108252007",
                                              "display": "Laboratory procedure"}]}]
    assert order["code"] == report["code"]
    assert order["code"]["coding"][0]["code"] == "58410-2"
    assert order["subject"] == report["subject"]
    assert order["encounter"] == report["encounter"]
    assert order["requester"] == {"display": "王建华"}
    assert order["authoredOn"] == "2026-11-20T07:15:00+08:00"


def test_a_report_without_order_details_still_has_its_order_without_them() -> None:
    resources, errors = mapped(CBC)
    assert errors == []
    order = only(resources, "ServiceRequest")
    assert not {"identifier", "requester", "authoredOn"} & set(order)
    assert report_of(resources)["basedOn"] == [{"reference": f"ServiceRequest/{order['id']}"}]


def test_a_bad_order_time_is_left_out_with_a_warning() -> None:
    rows = [{**r, "order_time": "2026-11-31 07:15"} for r in ORDERED]
    resources, errors = mapped(rows)
    assert "authoredOn" not in only(resources, "ServiceRequest")
    assert [(e.field, e.value, e.rule, e.severity, e.row) for e in errors] == [
        ("order_time", "2026-11-31 07:15", "date-calendar", "warning", 0)]


def test_a_report_whose_every_item_is_rejected_writes_no_order_or_specimen() -> None:
    resources, errors = mapped([{**ORDERED[0], "result": ""}])
    assert resources == []
    assert [(e.field, e.severity) for e in errors] == [("result", "error")]


def test_two_reports_of_one_tube_share_one_specimen() -> None:
    serum = {"specimen_no": "2611200740", "specimen_type": "血清",
             "collected_time": "2026-11-20 07:45"}
    liver = {**item("ALT", "丙氨酸氨基转移酶", "23", "U/L", "9-50"), **serum,
             "report_id": "JY20261120000740", "panel_name": "肝功能"}
    kidney = {**item("CREA", "肌酐", "68", "umol/L", "41-73"), **serum,
              "report_id": "JY20261120000741", "panel_name": "肾功能"}
    resources, errors = mapped([liver, kidney])
    assert errors == []
    [specimen] = [r for r in resources if r["resourceType"] == "Specimen"]
    reports = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    assert [r["specimen"] for r in reports] == [[{"reference": f"Specimen/{specimen['id']}"}]] * 2
    assert len({r["id"] for r in resources if r["resourceType"] == "ServiceRequest"}) == 2


def test_reports_describing_one_tube_differently_keep_the_first_and_warn() -> None:
    liver = {**item("ALT", "丙氨酸氨基转移酶", "23", "U/L", "9-50"),
             "report_id": "JY20261120000740", "specimen_no": "2611200740",
             "specimen_type": "血清"}
    kidney = {**item("CREA", "肌酐", "68", "umol/L", "41-73"),
              "report_id": "JY20261120000741", "specimen_no": "2611200740",
              "specimen_type": "血浆"}
    resources, errors = mapped([liver, kidney])
    [specimen] = [r for r in resources if r["resourceType"] == "Specimen"]
    assert specimen["type"]["text"] == "血清"
    assert [(e.field, e.value, e.rule, e.severity, e.row) for e in errors] == [
        ("specimen_type", "血浆", "specimen-conflict", "warning", 1)]
    assert "2611200740" in errors[0].message


def test_one_sample_number_of_two_patients_is_two_specimens() -> None:
    # A SampleNo is an instrument's number of the day: two patients may carry the same one.
    first = item("K", "钾", "4.1", "mmol/L", "3.5-5.3", specimen_no="0017")
    second = {**item("K", "钾", "3.2", "mmol/L", "3.5-5.3", "L", specimen_no="0017"),
              "report_id": "JY20261121000017", "patient_id": "0001023999"}
    resources, errors = mapped([first, second])
    assert errors == []
    specimens = [r for r in resources if r["resourceType"] == "Specimen"]
    assert len({s["id"] for s in specimens}) == 2
    assert {s["subject"]["reference"] for s in specimens} == {
        "Patient/" + patient_resource_id(HOSPITAL, p) for p in ("0001023456", "0001023999")}


def test_a_lis_export_with_order_and_tube_columns_imports_one_tube_for_two_reports(
        tmp_path: Path) -> None:
    header = ["ReportID", "PatientID", "Barcode", "SampleType", "RequestNo", "RequestDoctor",
              "RequestTime", "GroupName", "ItemNo", "ItemName", "Result", "Units", "RefRange",
              "SampleTime", "ReportTime"]
    tube = ["0001023456", "2611200740", "血清"]
    rows = [["JY20261120000740", *tube, "SQ2611200412", "李卫东", "2026-11-20 07:20:00", "肝功能",
             "ALT", "丙氨酸氨基转移酶", "56", "U/L", "7-40", "2026-11-20 07:45:00",
             "2026-11-20 10:05:00"],
            ["JY20261120000741", *tube, "SQ2611200412", "李卫东", "2026-11-20 07:20:00", "肾功能",
             "CREA", "肌酐", "68", "umol/L", "41-73", "2026-11-20 07:45:00",
             "2026-11-20 10:06:00"]]
    path = write_csv(tmp_path / "lis_result.csv", header, rows)
    report, stored = import_export(tmp_path, "lab-lis.yaml", [path], HOSPITAL)
    assert (report.rows_rejected, report.rejections) == (0, [])
    [specimen] = [r for (t, _), r in stored.items() if t == "Specimen"]
    assert specimen["type"]["coding"][0]["code"] == "SER"
    assert specimen["collection"] == {"collectedDateTime": "2026-11-20T07:45:00+08:00"}
    reports = [r for (t, _), r in stored.items() if t == "DiagnosticReport"]
    assert [r["specimen"] for r in reports] == [[{"reference": f"Specimen/{specimen['id']}"}]] * 2
    orders = {r["id"]: r for (t, _), r in stored.items() if t == "ServiceRequest"}
    assert {r["basedOn"][0]["reference"].removeprefix("ServiceRequest/")
            for r in reports} == set(orders)
    assert {o["identifier"][0]["value"] for o in orders.values()} == {"SQ2611200412"}
    assert {o["authoredOn"] for o in orders.values()} == {"2026-11-20T07:20:00+08:00"}
