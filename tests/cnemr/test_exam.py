"""检查报告 RIS rows → FHIR R4 DiagnosticReport (RAD) + ImagingStudy (app.cnemr.exam)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cnemr.context import Hospital, encounter_resource_id, patient_resource_id
from app.cnemr.errors import RowError
from app.cnemr.exam import (
    accession_system,
    exam_item_system,
    exam_report_resource_id,
    imaging_study_resource_id,
    map_exam_report,
    map_exam_rows,
)
from app.cnemr.importer import ImportReport
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.server import create_app
from tests.cnemr.exports import import_of_types, without_version, write_csv
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
REGISTRY = load_registry()
PROFILES = ProfileValidator(load_profile_resources(Settings().profiles_dir), REGISTRY)
CN_DIAGNOSTIC_REPORT = "https://fhir.yilian.cn/StructureDefinition/cn-diagnostic-report"
LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
RAD = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
       "display": "Radiology"}
REPORT_NO_SYSTEM = "urn:oid:2.16.156.10011.1.32"
HEAD_CT_UID = "1.2.840.113619.2.55.3.2831208705.121.1763601150.1"

HEAD_CT = {
    "report_no": "JC20261120001", "patient_id": "0001023456", "visit_id": "MZ2611200087@20261120",
    "exam_code": "CT0101", "exam_name": "头颅CT平扫", "modality": "CT", "body_site": "头颅",
    "exam_time": "2026-11-20 09:12:30", "report_time": "2026-11-20 10:30:05",
    "findings": "双侧大脑半球对称，灰白质分界清楚。\r\n脑室系统未见扩大，中线结构居中。",
    "impression": "头颅CT平扫未见明显异常。", "department": "放射科", "report_doctor": "陈志刚",
    "review_doctor": "刘建华", "accession_no": "CT2611200012", "study_uid": HEAD_CT_UID}
ABDOMEN_US = {
    "report_no": "JC20261120003", "patient_id": "0001023456", "exam_code": "US0301",
    "exam_name": "腹部彩超", "modality": "US", "body_site": "肝胆胰脾",
    "exam_time": "20261120103000", "report_time": "20261120104512",
    "findings": "肝脏大小形态正常，实质回声均匀。胆囊壁光滑，腔内未见异常回声。",
    "impression": "肝胆胰脾未见明显异常。", "department": "超声科", "report_doctor": "王丽娟",
    "review_doctor": "赵敏", "accession_no": "US2611200105"}


def mapped(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[RowError]]:
    resources, errors = map_exam_rows(rows, HOSPITAL)
    for resource in resources:
        issues = validate_resource(resource, REGISTRY)
        if resource["resourceType"] == "DiagnosticReport":
            issues += PROFILES.validate(resource, CN_DIAGNOSTIC_REPORT)
        assert [i for i in issues if i.severity in ("error", "fatal")] == [], resource
    return resources, errors


def of_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


# -- Mapping -----------------------------------------------------------------------------------


def test_a_ct_report_is_a_rad_report_with_its_imaging_study_valid_against_cn_profile() -> None:
    resources, errors = mapped([HEAD_CT])
    assert errors == []
    [study] = of_type(resources, "ImagingStudy")
    [report] = of_type(resources, "DiagnosticReport")
    assert report["id"] == exam_report_resource_id(HOSPITAL, "JC20261120001")
    assert report["meta"]["profile"] == [CN_DIAGNOSTIC_REPORT]
    assert report["identifier"][0] == {"use": "official", "type": {"text": "检查报告单号"},
                                       "system": REPORT_NO_SYSTEM, "value": "JC20261120001"}
    assert report["status"] == "final"
    assert report["category"] == [{"coding": [RAD]}, {"coding": [
        {"system": DCM, "code": "CT", "display": "Computed Tomography"}]}]
    assert report["code"] == {"text": "头颅CT平扫", "coding": [
        {"system": LOINC, "code": "30799-1", "display": "CT Head WO contrast"},
        {"system": exam_item_system(HOSPITAL), "code": "CT0101", "display": "头颅CT平扫"}]}
    assert report["subject"] == {"reference": "Patient/" + patient_resource_id(
        HOSPITAL, "0001023456")}
    assert report["encounter"] == {"reference": "Encounter/" + encounter_resource_id(
        HOSPITAL, "MZ2611200087@20261120")}
    assert report["effectiveDateTime"] == "2026-11-20T09:12:30+08:00"
    assert report["issued"] == "2026-11-20T10:30:05+08:00"
    assert report["performer"] == [{"display": "放射科"}]
    assert report["resultsInterpreter"] == [{"display": "陈志刚"}, {"display": "刘建华"}]
    assert report["conclusion"] == "头颅CT平扫未见明显异常。"
    assert report["imagingStudy"] == [{"reference": "ImagingStudy/" + study["id"]}]

    assert study["id"] == imaging_study_resource_id(HOSPITAL, HEAD_CT_UID)
    assert study["identifier"] == [
        {"system": "urn:dicom:uid", "value": "urn:oid:" + HEAD_CT_UID},
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                              "code": "ACSN", "display": "Accession ID"}], "text": "检查号"},
         "system": accession_system(HOSPITAL), "value": "CT2611200012"}]
    assert study["status"] == "available"
    assert study["modality"] == [{"system": DCM, "code": "CT", "display": "Computed Tomography"}]
    assert study["started"] == "2026-11-20T09:12:30+08:00"
    assert study["extension"] == [{"url": "http://hl7.org/fhir/StructureDefinition/bodySite",
                                   "valueReference": {"display": "头颅"}}]
    assert study["procedureCode"] == [report["code"]]
    assert study["subject"] == report["subject"]
    assert study["encounter"] == report["encounter"]


def test_findings_are_a_utf8_text_presented_form_that_keeps_line_breaks() -> None:
    [report] = of_type(mapped([HEAD_CT])[0], "DiagnosticReport")
    [form] = report["presentedForm"]
    assert form["contentType"] == "text/plain; charset=utf-8"
    assert form["title"] == "检查所见"
    assert base64.b64decode(form["data"]).decode("utf-8") == (
        "双侧大脑半球对称，灰白质分界清楚。\n脑室系统未见扩大，中线结构居中。")


@pytest.mark.parametrize(("name", "modality", "loinc"), [
    ("胸部X线正侧位", "DX", "36643-5"),
    ("胸部正侧位", "CR", "36643-5"),
    ("头颅CT平扫", "CT", "30799-1"),
    ("头颅 CT 平扫", "", "30799-1"),
    ("上腹部CT增强", "CT", "79103-8"),
    ("腹部彩超", "US", "24558-9"),
    ("心脏彩超", "US", "42148-7"),
    ("头颅MRI", "MR", "24590-2"),
    ("头颅MRI平扫", "MR", "30657-1"),
    ("上腹部CT平扫", "CT", None),  # not 增强: no LOINC rather than a wrong one
    ("胸部CT平扫", "CT", None),
])
def test_loinc_is_given_for_the_common_exams_named_exactly(name: str, modality: str,
                                                            loinc: str | None) -> None:
    [report] = of_type(mapped([{**HEAD_CT, "exam_name": name, "modality": modality}])[0],
                       "DiagnosticReport")
    codes = [c["code"] for c in report["code"]["coding"] if c["system"] == LOINC]
    assert codes == ([loinc] if loinc else [])


def test_a_modality_that_contradicts_the_exam_name_drops_the_loinc_with_a_warning() -> None:
    resources, errors = mapped([{**HEAD_CT, "exam_name": "腹部彩超", "modality": "CT"}])
    [report] = of_type(resources, "DiagnosticReport")
    assert all(c["system"] != LOINC for c in report["code"]["coding"])
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("modality", "exam-modality-mismatch", "warning")]


@pytest.mark.parametrize(("given", "code"), [("DR", "DX"), ("mri", "MR"), ("DSA", "XA"),
                                             ("ｃｔ", "CT"), ("US", "US")])
def test_modality_aliases_become_dicom_codes(given: str, code: str) -> None:
    [study] = of_type(mapped([{**HEAD_CT, "modality": given, "exam_name": "头颅"}])[0],
                      "ImagingStudy")
    assert [m["code"] for m in study["modality"]] == [code]


def test_an_unknown_modality_is_left_out_with_a_warning() -> None:
    resources, errors = mapped([{**HEAD_CT, "modality": "彩超"}])
    [report] = of_type(resources, "DiagnosticReport")
    [study] = of_type(resources, "ImagingStudy")
    assert report["category"] == [{"coding": [RAD]}]
    assert "modality" not in study
    assert [(e.field, e.value, e.rule, e.severity) for e in errors] == [
        ("modality", "彩超", "dicom-modality", "warning")]


def test_a_report_without_study_uid_has_no_imaging_study_but_keeps_its_accession() -> None:
    resources, errors = mapped([ABDOMEN_US])
    assert errors == []
    assert [r["resourceType"] for r in resources] == ["DiagnosticReport"]
    report = resources[0]
    assert "imagingStudy" not in report
    assert report["identifier"][1]["type"]["coding"][0]["code"] == "ACSN"
    assert report["identifier"][1]["value"] == "US2611200105"
    assert report["effectiveDateTime"] == "2026-11-20T10:30:00+08:00"
    assert report["code"]["coding"][0]["code"] == "24558-9"
    assert "encounter" not in report


@pytest.mark.parametrize(("uid", "rule"), [
    ("1.2.840.0113619.2.55", "dicom-uid-format"),       # leading zero in a component
    ("1.2.840.113619.2.55.", "dicom-uid-format"),       # trailing dot
    ("1.2.840.113619.2.55.3.28312O8705", "dicom-uid-format"),  # letter O for zero
    ("urn:oid:1.2.840.113619.2.55", "dicom-uid-format"),
    ("1.2.840.113619.2.55.3.2831208705.121.1763601150.1.2026112009123012345678",
     "dicom-uid-length"),
])
def test_a_bad_study_uid_is_a_warning_and_the_imaging_study_is_left_out(uid: str,
                                                                       rule: str) -> None:
    resources, errors = mapped([{**HEAD_CT, "study_uid": uid}])
    assert [r["resourceType"] for r in resources] == ["DiagnosticReport"]
    assert "imagingStudy" not in resources[0]
    assert [(e.field, e.value, e.rule, e.severity) for e in errors] == [
        ("study_uid", uid, rule, "warning")]


def test_a_64_character_uid_is_accepted() -> None:
    uid = "1.2.840.113619.2.55.3.2831208705.121.1763601150.1.20261120091230"
    assert len(uid) == 64
    resources, errors = mapped([{**HEAD_CT, "study_uid": uid}])
    assert errors == []
    assert len(of_type(resources, "ImagingStudy")) == 1


def test_a_report_of_two_items_codes_both_without_loinc_and_shares_one_study() -> None:
    rows = [{**HEAD_CT, "report_no": "JC20261120004", "exam_code": "CT0410",
             "exam_name": "上腹部CT增强", "body_site": "上腹部"},
            {**HEAD_CT, "report_no": "JC20261120004", "exam_code": "CT0412",
             "exam_name": "盆腔CT增强", "body_site": "盆腔"}]
    resources, errors = mapped(rows)
    assert errors == []
    [report] = of_type(resources, "DiagnosticReport")
    [study] = of_type(resources, "ImagingStudy")
    assert report["code"] == {"text": "上腹部CT增强、盆腔CT增强", "coding": [
        {"system": exam_item_system(HOSPITAL), "code": "CT0410", "display": "上腹部CT增强"},
        {"system": exam_item_system(HOSPITAL), "code": "CT0412", "display": "盆腔CT增强"}]}
    assert [c["coding"][0]["code"] for c in study["procedureCode"]] == ["79103-8", "CT0412"]
    assert [e["valueReference"]["display"] for e in study["extension"]] == ["上腹部", "盆腔"]
    assert study["description"] == "上腹部CT增强、盆腔CT增强"


def test_report_level_values_may_be_on_one_row_only() -> None:
    rows = [{**HEAD_CT, "findings": "", "impression": ""},
            {"report_no": HEAD_CT["report_no"], "exam_code": "CT0101",
             "exam_name": "头颅CT平扫", "impression": HEAD_CT["impression"],
             "findings": HEAD_CT["findings"]}]
    resources, errors = mapped(rows)
    assert errors == []
    [report] = of_type(resources, "DiagnosticReport")
    assert report["conclusion"] == HEAD_CT["impression"]


# -- Rejections --------------------------------------------------------------------------------


def test_a_row_without_report_no_is_rejected() -> None:
    resources, errors = map_exam_rows([{**HEAD_CT, "report_no": " "}], HOSPITAL)
    assert resources == []
    assert [(e.field, e.rule, e.severity, e.row) for e in errors] == [
        ("report_no", "required", "error", 0)]


def test_a_report_without_patient_is_rejected() -> None:
    resources, errors = map_exam_report([{**HEAD_CT, "patient_id": ""}], HOSPITAL)
    assert resources == []
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("patient_id", "required", "error")]


def test_a_report_without_exam_code_or_name_is_rejected() -> None:
    resources, errors = map_exam_report([{**HEAD_CT, "exam_code": "", "exam_name": ""}],
                                        HOSPITAL)
    assert resources == []
    assert [(e.field, e.rule, e.severity) for e in errors] == [("exam_name", "required", "error")]


@pytest.mark.parametrize("key", ["patient_id", "visit_id", "exam_time", "impression",
                                 "report_doctor"])
def test_rows_of_a_report_that_disagree_reject_the_whole_report(key: str) -> None:
    rows = [HEAD_CT, {**HEAD_CT, "exam_code": "CT0102", key: "0001099999"}]
    resources, errors = map_exam_report(rows, HOSPITAL)
    assert resources == []
    assert {(e.field, e.rule, e.severity) for e in errors} == {
        (key, "report-consistency", "error")}
    assert {e.row for e in errors} == {0, 1}


# -- Dates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    ("2026-11-20 09:12:30", "2026-11-20T09:12:30+08:00"),
    ("20261120091230", "2026-11-20T09:12:30+08:00"),
    ("2026/11/20 09:12", "2026-11-20T09:12:00+08:00"),
    ("2026年11月20日", "2026-11-20"),
])
def test_exam_time_forms(given: str, expected: str) -> None:
    [report] = of_type(mapped([{**HEAD_CT, "exam_time": given}])[0], "DiagnosticReport")
    assert report["effectiveDateTime"] == expected


def test_a_bad_exam_time_is_left_out_with_a_warning() -> None:
    resources, errors = mapped([{**HEAD_CT, "exam_time": "2026-11-31 09:12"}])
    [report] = of_type(resources, "DiagnosticReport")
    [study] = of_type(resources, "ImagingStudy")
    assert "effectiveDateTime" not in report
    assert "started" not in study
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("exam_time", "date-calendar", "warning")]


def test_a_report_time_without_time_of_day_is_not_an_instant_and_is_left_out() -> None:
    resources, errors = mapped([{**HEAD_CT, "report_time": "20261120"}])
    assert "issued" not in of_type(resources, "DiagnosticReport")[0]
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("report_time", "instant-needs-time", "warning")]


# -- Stable ids --------------------------------------------------------------------------------


def test_ids_are_stable_and_a_study_shared_by_two_reports_is_returned_once() -> None:
    second = {**HEAD_CT, "report_no": "JC20261120009", "exam_code": "CT0105",
              "exam_name": "头颅CT增强"}
    resources, errors = mapped([HEAD_CT, ABDOMEN_US, second])
    again, _ = map_exam_rows([HEAD_CT, ABDOMEN_US, second], HOSPITAL)
    assert errors == []
    assert resources == again
    assert len(of_type(resources, "DiagnosticReport")) == 3
    assert len(of_type(resources, "ImagingStudy")) == 1
    # A 检查报告单号 equal to a 检验报告单号 is still another resource.
    assert exam_report_resource_id(HOSPITAL, "JC20261120001").startswith("rad-")


def test_mapper_never_raises_on_garbage() -> None:
    garbage: list[dict[str, Any]] = [
        {"report_no": "X", "patient_id": "1", "exam_name": "？", "exam_time": "2026-13-45",
         "report_time": "abc", "study_uid": "." * 80, "modality": "12"},
        {"report_no": ""}, {}, {"report_no": "Y", "findings": "\x00"}]
    resources, errors = map_exam_rows(garbage, HOSPITAL)
    assert all(isinstance(e, RowError) for e in errors)
    assert [r["resourceType"] for r in resources] == ["DiagnosticReport"]


# -- Import: three export styles, REST read-back, $validate --------------------------------------

# (report_no, patient, visit, code, name, modality per style (ws363, shouye, his), site,
#  exam time, report time, findings, impression, dept, reporter, reviewer, accession, uid)
EXPORT = [
    ("JC20261120001", "0001023456", "MZ2611200087@20261120", "CT0101", "头颅CT平扫",
     ("CT", "CT", "CT"), "头颅", "2026-11-20 09:12:30", "2026-11-20 10:30:05",
     "双侧大脑半球对称，灰白质分界清楚。\n脑室系统未见扩大，中线结构居中。",
     "头颅CT平扫未见明显异常。", "放射科", "陈志刚", "刘建华", "CT2611200012", HEAD_CT_UID),
    ("JC20261120002", "0001023457", "MZ2611200091@20261120", "DX0201", "胸部X线正侧位",
     ("X线", "DX", "DR"), "胸部", "2026-11-20 09:40:00", "2026-11-20 11:02:41",
     "两肺纹理增粗，未见明确实变影。心影大小形态正常。", "两肺纹理增粗，请结合临床。",
     "放射科", "孙晓东", "刘建华", "DR2611200031",
     "1.2.156.112605.14038013507.20261120094000.2"),
    ("JC20261120003", "0001023456", "MZ2611200087@20261120", "US0301", "腹部彩超",
     ("彩超", "US", "彩超"), "肝胆胰脾", "2026-11-20 10:30:00", "2026-11-20 10:45:12",
     "肝脏大小形态正常，实质回声均匀。\n胆囊壁光滑，腔内未见异常回声。",
     "肝胆胰脾未见明显异常。", "超声科", "王丽娟", "赵敏", "US2611200105", ""),
    ("JC20261120004", "0001023457", "ZY20260931/2", "CT0410", "上腹部CT增强",
     ("CT", "CT", "CT"), "上腹部", "2026-11-20 14:05:00", "2026-11-20 16:20:33",
     "肝右叶见一类圆形低密度影，大小约1.2cm×1.0cm，增强后未见强化。",
     "肝右叶囊肿可能。", "放射科", "陈志刚", "刘建华", "CT2611200044",
     "1.2.840.113619.2.55.3.2831208705.121.1763618700.7"),
    ("JC20261120004", "0001023457", "ZY20260931/2", "CT0412", "盆腔CT增强",
     ("CT", "CT", "CT"), "盆腔", "2026-11-20 14:05:00", "2026-11-20 16:20:33",
     "肝右叶见一类圆形低密度影，大小约1.2cm×1.0cm，增强后未见强化。",
     "肝右叶囊肿可能。", "放射科", "陈志刚", "刘建华", "CT2611200044",
     "1.2.840.113619.2.55.3.2831208705.121.1763618700.7"),
]


def _compact(when: str) -> str:
    return when.replace("-", "").replace(" ", "").replace(":", "")


def ws363_file(tmp: Path) -> Path:
    return write_csv(tmp / "检查报告.csv", [
        "检查报告单号", "患者ID", "就诊流水号", "检查项目代码", "检查项目名称", "检查类别",
        "检查部位", "检查日期", "检查报告日期", "检查报告结果-客观所见", "检查报告结果-主观提示",
        "检查报告科室", "报告医师", "审核医师", "检查号", "研究实例UID"],
        [[r[0], r[1], r[2], r[3], r[4], r[5][0], *r[6:]] for r in EXPORT], "utf-8")


def shouye_file(tmp: Path) -> Path:
    return write_csv(tmp / "jcbg.csv", [
        "JCBGDH", "BAH", "JZLSH", "JCXMDM", "JCXM", "JCLB", "JCBW", "JCSJ", "BGSJ", "YXSJ",
        "JCJL", "JCKS", "BGYS", "SHYS", "JCH", "STUDYUID"],
        [[r[0], r[1], r[2], r[3], r[4], r[5][1], r[6], _compact(r[7]), _compact(r[8]),
          *r[9:]] for r in EXPORT], "gbk")


def his_file(tmp: Path) -> Path:
    return write_csv(tmp / "pacs_jcbg.csv", [
        "bgdh", "patid", "jzlsh", "xmdm", "jcxm", "sbcode", "jcbw", "jcsj", "bgsj", "yxsj",
        "yxzd", "jcks", "jcys", "shys", "jch", "studyuid"],
        [[r[0], r[1], r[2], r[3], r[4], r[5][2], r[6], r[7].replace("-", "/"),
          r[8].replace("-", "/"), *r[9:]] for r in EXPORT], "gb18030")


def run_import(tmp: Path, mapping_name: str, files: list[Path]
               ) -> tuple[ImportReport, list[dict[str, Any]]]:
    return import_of_types(tmp, mapping_name, files, HOSPITAL, "DiagnosticReport", "ImagingStudy")


def without_versions(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [without_version(r) for r in resources]


def test_three_export_styles_import_the_same_reports_to_the_same_fhir(tmp_path: Path) -> None:
    results = []
    for name, make in (("exam-ws363.yaml", ws363_file), ("exam-shouye.yaml", shouye_file),
                       ("exam-his.yaml", his_file)):
        work = tmp_path / name
        work.mkdir()
        report, resources = run_import(work, name, [make(work)])
        assert (report.rows_read, report.rows_rejected) == (5, 0), report.rejections
        assert report.rejections == []
        assert sorted(r["resourceType"] for r in resources) == [
            "DiagnosticReport"] * 4 + ["ImagingStudy"] * 3
        results.append(without_versions(resources))
    assert results[0] == results[1] == results[2]
    chest = next(r for r in results[0] if r.get("code", {}).get("text") == "胸部X线正侧位")
    assert chest["category"][1]["coding"][0]["code"] == "DX"
    assert chest["code"]["coding"][0]["code"] == "36643-5"


def test_reimporting_updates_the_reports_instead_of_duplicating(tmp_path: Path) -> None:
    path = his_file(tmp_path)
    _, first = run_import(tmp_path, "exam-his.yaml", [path])
    report, again = run_import(tmp_path, "exam-his.yaml", [path])
    assert report.rows_rejected == 0
    assert [r["id"] for r in again] == [r["id"] for r in first]
    assert {r["meta"]["versionId"] for r in again} == {"2"}
    assert without_versions(again) == without_versions(first)


def test_imported_reports_read_back_over_rest_and_validate_against_their_profile(
        tmp_path: Path) -> None:
    run_import(tmp_path, "exam-shouye.yaml", [shouye_file(tmp_path)])
    report_id = exam_report_resource_id(HOSPITAL, "JC20261120001")
    study_id = imaging_study_resource_id(HOSPITAL, HEAD_CT_UID)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        report = client.get(f"/fhir/DiagnosticReport/{report_id}").json()
        assert report["conclusion"] == "头颅CT平扫未见明显异常。"
        assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study_id}"}]
        study = client.get(f"/fhir/ImagingStudy/{study_id}").json()
        assert study["identifier"][0]["value"] == "urn:oid:" + HEAD_CT_UID
        found = client.get("/fhir/DiagnosticReport", params={
            "identifier": f"{REPORT_NO_SYSTEM}|JC20261120004"}).json()
        assert found["total"] == 1
        assert found["entry"][0]["resource"]["code"]["text"] == "上腹部CT增强、盆腔CT增强"
        by_category = client.get("/fhir/DiagnosticReport",
                                 params={"category": f"{DCM}|US"}).json()
        assert [e["resource"]["code"]["text"] for e in by_category["entry"]] == ["腹部彩超"]
        outcome = client.get(f"/fhir/DiagnosticReport/{report_id}/$validate").json()
        assert outcome["issue"][0]["severity"] == "information", outcome
        assert CN_DIAGNOSTIC_REPORT in outcome["issue"][0]["diagnostics"]
        checked = client.get(f"/fhir/DiagnosticReport/{report_id}/$validate",
                             params={"profile": CN_DIAGNOSTIC_REPORT}).json()
        assert [i["severity"] for i in checked["issue"]] == ["information"]
        outcome = client.get(f"/fhir/ImagingStudy/{study_id}/$validate").json()
        assert [i["severity"] for i in outcome["issue"]] == ["information"], outcome
