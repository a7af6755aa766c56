"""门(急)诊病历 and 病历文书 rows → FHIR R4 Composition, Condition, DocumentReference
(app.cnemr.documents, WS 445 part 2 and WS/T 500)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from app.cnemr import documents, visit
from app.cnemr.context import (
    Hospital,
    admission_visit_key,
    encounter_resource_id,
    outpatient_visit_key,
    patient_resource_id,
)
from app.cnemr.documents import (
    DOCUMENT_ELEMENTS,
    OUTPATIENT_ELEMENTS,
    document_type,
    map_document_rows,
    map_outpatient_record,
    map_outpatient_record_rows,
)
from app.cnemr.errors import RowError, ValueRejected
from app.cnemr.homepage import map_homepage
from app.cnemr.importer import DATA_ELEMENTS, Importer, ImportReport
from app.cnemr.mapping import load_mapping
from app.cnemr.visit import map_visit
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.pipeline.hooks import Hooks
from app.search.query import parse_search
from app.server import build_service, create_app
from tests.cnemr.exports import write_csv
from tests.conftest import FHIR_JSON, make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
LOINC = "http://loinc.org"
ICD10 = "urn:oid:2.16.156.10011.2.3.3.11"
GBT_15657 = "urn:oid:2.16.156.10011.2.3.3.14"
WST500 = "urn:oid:2.16.156.10011.2.4"
SD = "https://fhir.yilian.cn/StructureDefinition/"
REGISTRY = load_registry()
PROFILES = ProfileValidator(load_profile_resources(Settings().profiles_dir), REGISTRY)
XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">'

# 门诊 visit 0000871 of 2026-11-20: 李淑芬 sees a type 2 diabetic in 内分泌科 (the same visit as
# the 挂号 fixture of test_visit.py).
RECORD: dict[str, str] = {
    "visit_no": "0000871", "visit_date": "2026-11-20", "record_time": "2026-11-20 09:18",
    "patient_id": "0001023456", "department": "内分泌科", "doctor": "李淑芬",
    "chief_complaint": "口干、多饮、多尿3月，加重1周。",
    "present_illness": "患者3月前无明显诱因出现口干、多饮，日饮水量约3000ml，"
                       "伴多尿、体重下降约4kg。\n1周前上述症状加重，自测空腹血糖12.6mmol/L。",
    "past_history": "高血压病史5年，口服氨氯地平5mg qd，血压控制可。",
    "allergy_history": "青霉素过敏（皮疹）。",
    "physical_exam": "T 36.5℃，P 82次/分，R 18次/分，BP 138/86mmHg。神清，心肺听诊未见异常。",
    "auxiliary_exam": "糖化血红蛋白 8.9%；尿常规：尿糖(+++)，酮体(-)。",
    "diagnosis_code": "E11.900", "diagnosis_name": "2型糖尿病",
    "treatment_plan": "1. 二甲双胍 0.5g tid po；\n2. 糖尿病饮食、运动指导；\n3. 2周后复诊。",
}
# 中医门诊: 冠心病 with the TCM disease 胸痹心痛病 and syndrome 气虚血瘀证 (codes of GB/T 15657
# form, carried through as the 首页 mapper does).
TCM_RECORD: dict[str, str] = {
    "visit_no": "0000905", "visit_date": "20261121", "patient_id": "0001023460",
    "department": "中医内科", "doctor": "欧阳明",
    "chief_complaint": "反复胸闷痛2年，活动后加重1月。",
    "diagnosis_code": "I25.103", "diagnosis_name": "冠状动脉粥样硬化性心脏病",
    "tcm_disease_code": "A04.01.01", "tcm_disease_name": "胸痹心痛病",
    "tcm_syndrome_code": "B04.03.02.01", "tcm_syndrome_name": "气虚血瘀证",
    "treatment_plan": "益气活血，方用补阳还五汤加减，7剂，水煎服，日一剂。",
}
REGISTRATION = {"visit_no": "0000871", "visit_date": "2026-11-20 08:12:33",
                "patient_id": "0001023456", "visit_type_code": "1", "department": "内分泌科",
                "doctor": "李淑芬", "diagnosis_code": "E11.900", "diagnosis_name": "2型糖尿病"}

# 张建国's 2nd admission (住院号 ZY20261012) for an acute MI: the 首页 key of test_homepage.py.
ADMISSION = {"document_no": "WS2026101200031", "document_type": "C0034",
             "patient_id": "BA100231", "inpatient_no": "ZY20261012", "admission_count": "2",
             "author": "李卫东", "department": "心血管内科", "document_time": "2026-10-12 16:40"}
ADMISSION_SECTIONS = [
    ("主诉", "", "突发胸骨后压榨样疼痛3小时。"),
    ("现病史", "", "患者3小时前活动中突发胸骨后压榨样疼痛，向左肩放射，伴大汗，"
                   "含服硝酸甘油不缓解。"),
    ("既往史", "", "高血压病史10年，2型糖尿病5年。"),
    ("体格检查", "", "BP 150/95mmHg，心率 98次/分，律齐，未闻及杂音。"),
    ("辅助检查", "", "心电图：II、III、aVF导联ST段抬高>0.2mV；肌钙蛋白I 3.2ng/ml。"),
    ("初步诊断", "", "1. 急性下壁心肌梗死\n2. 原发性高血压3级（很高危）\n3. 2型糖尿病"),
]
# The PDF of a signed 出院小结, as a document system stores it.
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def checked(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each resource is valid R4 and conforms to the CN profile it declares."""
    for resource in resources:
        issues = validate_resource(resource, REGISTRY)
        [profile] = resource["meta"]["profile"]
        issues += PROFILES.validate(resource, profile)
        assert [i for i in issues if i.severity in ("error", "fatal")] == [], resource
    return resources


def of_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def sections(composition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["title"]: s for s in composition["section"]}


def outcome(row: dict[str, str]) -> tuple[list[dict[str, Any]], list[RowError]]:
    resources, errors = map_outpatient_record(row, HOSPITAL)
    return checked(resources), errors


def doc_rows(header: dict[str, str], parts: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{**header, "section_name": n, "section_code": c, "section_text": t}
            for n, c, t in parts]


def file_row(**kw: str) -> dict[str, str]:
    return {**ADMISSION, "document_no": "WS2026101900007", "document_type": "出院小结",
            "document_time": "2026-10-19 09:10", "file_name": "出院小结_张建国.pdf",
            "mime_type": "application/pdf",
            "file_content": base64.b64encode(PDF).decode(), **kw}


def documents_of(rows: list[dict[str, str]]) -> tuple[list[dict[str, Any]], list[RowError]]:
    resources, errors = map_document_rows(rows, HOSPITAL)
    return checked(resources), errors


# -- 门(急)诊病历 ------------------------------------------------------------------------------


def test_an_outpatient_record_is_a_c0002_composition_with_a_loinc_coded_section_per_column(
        ) -> None:
    resources, errors = outcome(RECORD)
    assert errors == []
    [composition] = of_type(resources, "Composition")
    assert composition["meta"] == {"profile": [SD + "cn-composition"]}
    assert composition["type"]["coding"] == [
        {"system": WST500, "code": "C0002", "display": "门（急）诊病历"}]
    assert (composition["status"], composition["title"]) == ("final", "门(急)诊病历")
    assert composition["author"] == [{"display": "李淑芬"}]
    assert composition["date"] == "2026-11-20T09:18:00+08:00"
    assert composition["subject"] == {"reference": "Patient/" + patient_resource_id(
        HOSPITAL, "0001023456")}
    assert [(s["title"], s["code"]["coding"][0]["code"]) for s in composition["section"]] == [
        ("主诉", "10154-3"), ("现病史", "10164-2"), ("既往史", "11348-0"), ("过敏史", "48765-2"),
        ("体格检查", "29545-1"), ("辅助检查", "30954-2"), ("诊断", "29548-5"),
        ("处理意见", "18776-5")]
    for section in composition["section"]:
        assert section["code"]["coding"][0]["system"] == LOINC
        assert section["text"]["status"] == "generated"
        assert section["text"]["div"].startswith(XHTML)
    assert sections(composition)["主诉"]["text"]["div"] == (
        XHTML + "<p>口干、多饮、多尿3月，加重1周。</p></div>")
    # line breaks are paragraphs; the full-width punctuation of the text is kept as written
    assert sections(composition)["处理意见"]["text"]["div"] == (
        XHTML + "<p>1. 二甲双胍 0.5g tid po；</p><p>2. 糖尿病饮食、运动指导；</p>"
        "<p>3. 2周后复诊。</p></div>")


def test_clinical_text_is_xhtml_escaped_never_read_as_markup() -> None:
    row = {**RECORD, "auxiliary_exam": "空腹血糖 <7.0 & 餐后2h >11.1 mmol/L",
           "physical_exam": "<b>双肺呼吸音清</b>"}
    [composition] = of_type(outcome(row)[0], "Composition")
    assert sections(composition)["辅助检查"]["text"]["div"] == (
        XHTML + "<p>空腹血糖 &lt;7.0 &amp; 餐后2h &gt;11.1 mmol/L</p></div>")
    assert sections(composition)["体格检查"]["text"]["div"] == (
        XHTML + "<p>&lt;b&gt;双肺呼吸音清&lt;/b&gt;</p></div>")


def test_control_characters_are_removed_with_a_warning_and_the_text_kept() -> None:
    resources, errors = outcome({**RECORD, "chief_complaint": "头痛\x0b2天\x00"})
    assert sections(of_type(resources, "Composition")[0])["主诉"]["text"]["div"] == (
        XHTML + "<p>头痛2天</p></div>")
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("chief_complaint", "xml-control-characters", "warning")]


def test_blank_optional_sections_are_left_out_without_a_report() -> None:
    row = {**RECORD, "past_history": "", "allergy_history": "  ", "auxiliary_exam": "\r\n",
           "treatment_plan": ""}
    del row["physical_exam"]
    resources, errors = outcome(row)
    assert errors == []
    assert [s["title"] for s in of_type(resources, "Composition")[0]["section"]] == [
        "主诉", "现病史", "诊断"]


def test_the_diagnosis_section_references_the_icd10_condition_coded_as_visit_codes_it() -> None:
    resources, _ = outcome(RECORD)
    [composition] = of_type(resources, "Composition")
    [condition] = of_type(resources, "Condition")
    diagnosis = sections(composition)["诊断"]
    assert diagnosis["entry"] == [{"reference": f"Condition/{condition['id']}"}]
    assert diagnosis["text"]["div"] == XHTML + "<p>西医诊断: 2型糖尿病 (E11.900)</p></div>"
    [registered] = of_type(map_visit(REGISTRATION, HOSPITAL)[0], "Condition")
    assert condition["code"] == registered["code"] == {
        "coding": [{"system": ICD10, "version": "国家临床版2.0", "code": "E11.900",
                    "display": "2型糖尿病"}], "text": "2型糖尿病"}
    assert condition["category"] == registered["category"]
    assert condition["encounter"] == registered["encounter"] == composition["encounter"]
    assert condition["meta"] == {"profile": [SD + "cn-condition"]}
    # its own id: the 挂号 diagnosis and the record's diagnosis never overwrite each other
    assert condition["id"] != registered["id"]


def test_the_icd10_rule_is_the_one_the_registration_mapper_applies() -> None:
    assert documents.ICD10_PATTERN.pattern == visit._ICD10.pattern


def test_a_tcm_record_adds_a_gbt_15657_condition_with_its_syndrome() -> None:
    resources, errors = outcome(TCM_RECORD)
    assert errors == []
    western, tcm = of_type(resources, "Condition")
    assert western["code"]["coding"][0]["system"] == ICD10
    assert tcm["code"] == {"coding": [{"system": GBT_15657, "code": "A04.01.01",
                                       "display": "胸痹心痛病"}], "text": "胸痹心痛病"}
    assert tcm["extension"] == [{"url": SD + "tcm-syndrome", "valueCodeableConcept": {
        "coding": [{"system": GBT_15657, "code": "B04.03.02.01", "display": "气虚血瘀证"}],
        "text": "气虚血瘀证"}}]
    [composition] = of_type(resources, "Composition")
    diagnosis = sections(composition)["诊断"]
    assert diagnosis["entry"] == [{"reference": f"Condition/{western['id']}"},
                                  {"reference": f"Condition/{tcm['id']}"}]
    assert "中医证候: 气虚血瘀证 (B04.03.02.01)" in diagnosis["text"]["div"]
    assert composition["date"] == "2026-11-21"  # no 记录时间: the 就诊日期


def test_the_record_points_at_the_encounter_the_registration_of_that_day_writes() -> None:
    [encounter] = of_type(map_visit(REGISTRATION, HOSPITAL)[0], "Encounter")
    resources, _ = outcome(RECORD)
    assert of_type(resources, "Encounter") == []  # the 挂号 dataset owns the Encounter
    assert of_type(resources, "Composition")[0]["encounter"] == {
        "reference": f"Encounter/{encounter['id']}"}
    next_day, _ = outcome({**RECORD, "visit_date": "2026-11-21"})  # 门诊号 recycled
    assert of_type(next_day, "Composition")[0]["encounter"]["reference"] == (
        "Encounter/" + encounter_resource_id(HOSPITAL, outpatient_visit_key("0000871",
                                                                            "2026-11-21")))
    assert of_type(next_day, "Composition")[0]["id"] != of_type(resources, "Composition")[0]["id"]


def test_a_department_is_the_author_when_the_doctor_is_blank() -> None:
    resources, errors = outcome({**RECORD, "doctor": ""})
    assert errors == []
    assert of_type(resources, "Composition")[0]["author"] == [{"display": "内分泌科"}]


@pytest.mark.parametrize(("change", "field", "rule"), [
    ({"visit_no": ""}, "visit_no", "required"),
    ({"patient_id": ""}, "patient_id", "required"),
    ({"visit_date": ""}, "visit_date", "date-required"),
    ({"visit_date": "2026-11-31"}, "visit_date", "date-calendar"),
    ({"doctor": "", "department": ""}, "doctor", "required"),
])
def test_an_outpatient_record_without_its_keys_is_rejected(change: dict[str, str], field: str,
                                                           rule: str) -> None:
    resources, errors = outcome({**RECORD, **change})
    assert resources == []
    assert [(e.field, e.rule, e.severity) for e in errors] == [(field, rule, "error")]


def test_an_outpatient_record_with_no_content_is_rejected() -> None:
    empty = {k: RECORD[k] for k in ("visit_no", "visit_date", "patient_id", "doctor")}
    resources, errors = outcome(empty)
    assert resources == []
    assert [(e.field, e.rule, e.severity) for e in errors] == [
        ("chief_complaint", "empty-record", "error")]


@pytest.mark.parametrize(("change", "field", "rule"), [
    ({"diagnosis_code": "糖尿病"}, "diagnosis_code", "icd-10"),
    ({"diagnosis_code": ""}, "diagnosis_name", "icd-10-required"),
    ({"record_time": "2026-11-20 25:00"}, "record_time", "time-range"),
])
def test_bad_optional_values_are_warnings_and_the_record_is_kept(change: dict[str, str],
                                                                 field: str, rule: str) -> None:
    resources, errors = outcome({**RECORD, **change})
    assert [(e.field, e.rule, e.severity) for e in errors] == [(field, rule, "warning")]
    [composition] = of_type(resources, "Composition")
    assert len(composition["section"]) == 8
    if field != "record_time":
        assert of_type(resources, "Condition") == []
        assert "entry" not in sections(composition)["诊断"]
        assert "2型糖尿病" in sections(composition)["诊断"]["text"]["div"]
    else:
        assert composition["date"] == "2026-11-20"


@pytest.mark.parametrize(("change", "field", "rule"), [
    ({"tcm_disease_code": "A04 01"}, "tcm_disease_code", "gbt-15657-format"),
    ({"tcm_disease_code": ""}, "tcm_disease_code", "required"),
    ({"tcm_disease_code": "", "tcm_disease_name": ""}, "tcm_syndrome_code",
     "tcm-syndrome-without-disease"),
    ({"tcm_syndrome_code": "气虚血瘀"}, "tcm_syndrome_code", "gbt-15657-format"),
])
def test_bad_tcm_diagnoses_are_warnings(change: dict[str, str], field: str, rule: str) -> None:
    resources, errors = outcome({**TCM_RECORD, **change})
    assert [(e.field, e.rule, e.severity) for e in errors] == [(field, rule, "warning")]
    assert of_type(resources, "Composition")[0]["section"][1]["title"] == "诊断"


def test_rows_are_mapped_independently_and_errors_carry_their_row() -> None:
    resources, errors = map_outpatient_record_rows([RECORD, {**RECORD, "visit_no": ""},
                                                    TCM_RECORD], HOSPITAL)
    assert len(of_type(resources, "Composition")) == 2
    assert [(e.row, e.field) for e in errors] == [(1, "visit_no")]


# -- 病历文书 ---------------------------------------------------------------------------------


def test_an_admission_record_is_a_c0034_composition_on_the_homepage_encounter() -> None:
    resources, errors = documents_of(doc_rows(ADMISSION, ADMISSION_SECTIONS))
    assert errors == []
    [composition] = resources
    assert composition["meta"] == {"profile": [SD + "cn-composition"]}
    assert composition["identifier"] == {"type": {"text": "文书编号"},
                                         "system": "urn:oid:2.16.156.10011.1.1",
                                         "value": "WS2026101200031"}
    assert composition["type"]["coding"] == [
        {"system": WST500, "code": "C0034", "display": "入院记录"}]
    assert (composition["title"], composition["date"], composition["author"]) == (
        "入院记录", "2026-10-12T16:40:00+08:00", [{"display": "李卫东"}])
    homepage, _ = map_homepage({
        "patient_id": "BA100231", "medical_record_no": "BA100231", "name": "张建国",
        "inpatient_no": "ZY20261012", "admission_count": "2", "admission_time": "20261012",
        "discharge_time": "20261019", "principal_diagnosis_code": "I21.000"}, HOSPITAL)
    [encounter] = of_type(homepage, "Encounter")
    assert composition["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert encounter["id"] == encounter_resource_id(
        HOSPITAL, admission_visit_key("ZY20261012", 2))
    assert [(s["title"], s["code"]["coding"][0]["code"]) for s in composition["section"]] == [
        ("主诉", "10154-3"), ("现病史", "10164-2"), ("既往史", "11348-0"),
        ("体格检查", "29545-1"), ("辅助检查", "30954-2"), ("初步诊断", "46241-6")]
    assert sections(composition)["辅助检查"]["text"]["div"] == (
        XHTML + "<p>心电图：II、III、aVF导联ST段抬高&gt;0.2mV；肌钙蛋白I 3.2ng/ml。</p></div>")


def test_an_operation_note_takes_loinc_codes_given_and_keeps_uncoded_titles() -> None:
    header = {**ADMISSION, "document_no": "WS2026101200045", "document_type": "手术记录",
              "document_title": "经皮冠状动脉介入治疗手术记录", "author": "王志强"}
    resources, errors = documents_of(doc_rows(header, [
        ("术前诊断", "", "急性下壁心肌梗死"),
        ("手术经过", "8724-7", "局麻下经右桡动脉穿刺，冠脉造影示RCA近段100%闭塞，植入支架1枚。"),
        ("术中所见", "", "右冠状动脉近段血栓影。"),
        ("术后诊断", "SS-04", "急性下壁心肌梗死 PCI术后")]))
    [composition] = resources
    assert composition["type"]["coding"][0]["code"] == "C0009"
    assert composition["title"] == "经皮冠状动脉介入治疗手术记录"
    found = sections(composition)
    assert found["术前诊断"]["code"]["coding"][0]["code"] == "10219-4"
    assert found["手术经过"]["code"]["coding"][0] == {
        "system": LOINC, "code": "8724-7",
        "display": "Surgical operation note description Narrative"}
    assert "code" not in found["术中所见"]
    assert found["术后诊断"]["code"]["coding"][0]["code"] == "10218-6"
    assert [(e.row, e.field, e.rule, e.severity) for e in errors] == [
        (3, "section_code", "loinc-section-code", "warning")]


def test_a_section_given_only_a_loinc_code_is_titled_with_its_name() -> None:
    header = {**ADMISSION, "document_no": "WS2026101900012", "document_type": "C0049"}
    rows = doc_rows(header, [("", "8653-8", "低盐低脂糖尿病饮食，按时服药。")])
    [composition] = documents_of(rows)[0]
    [section] = composition["section"]
    assert section["title"] == "Hospital Discharge instructions"
    assert section["code"]["coding"][0]["code"] == "8653-8"


@pytest.mark.parametrize(("raw", "code"), [
    ("C0034", "C0034"), ("c0053", "C0053"), ("出院小结", "C0053"), ("手术记录", "C0009"),
    ("一般手术记录", "C0009"), ("门(急)诊病历", "C0002"), ("门（急）诊病历", "C0002"),
    ("门急诊病历", "C0002"), ("麻醉记录", "C0011"), ("死亡记录", "C0050"),
    ("急诊留观病历", "C0003")])
def test_document_types_are_ws_t_500_codes_or_their_titles(raw: str, code: str) -> None:
    result = document_type(raw)
    assert not isinstance(result, ValueRejected)
    assert result[0] == code


@pytest.mark.parametrize(("raw", "rule"), [
    ("C0004", "wst500-type-not-a-record"), ("检验报告", "wst500-type-not-a-record"),
    ("日常病程记录", "wst500-type"), ("C9999", "wst500-type"), ("RYJL", "wst500-type")])
def test_document_types_outside_the_clinical_document_value_set_are_rejected(
        raw: str, rule: str) -> None:
    result = document_type(raw)
    assert isinstance(result, ValueRejected)
    assert result.rule == rule


def test_a_signed_pdf_is_a_document_reference_with_size_and_hash() -> None:
    resources, errors = documents_of([file_row(mime_type="PDF")])
    assert errors == []
    [reference] = resources
    assert reference["meta"] == {"profile": [SD + "cn-document-reference"]}
    assert reference["type"]["coding"] == [
        {"system": WST500, "code": "C0053", "display": "出院小结"}]
    assert reference["category"][0]["coding"][0]["code"] == "clinical-note"
    assert (reference["status"], reference["docStatus"]) == ("current", "final")
    assert reference["date"] == "2026-10-19T09:10:00+08:00"
    assert reference["context"] == {"encounter": [{"reference": "Encounter/" + (
        encounter_resource_id(HOSPITAL, admission_visit_key("ZY20261012", 2)))}]}
    [content] = reference["content"]
    assert content["attachment"] == {
        "contentType": "application/pdf", "data": base64.b64encode(PDF).decode(),
        "size": len(PDF), "hash": base64.b64encode(hashlib.sha1(PDF).digest()).decode(),
        "title": "出院小结_张建国.pdf", "creation": "2026-10-19T09:10:00+08:00"}


def test_files_by_url_take_their_type_from_the_file_name_and_share_one_reference() -> None:
    first = file_row(file_content="", mime_type="", file_name="出院小结第1页.jpg",
                     file_url="https://pacs.dhxh.example/emr/WS2026101900007/1.jpg",
                     document_time="2026-10-19")
    second = {**first, "file_name": "出院小结第2页.jpg",
              "file_url": "https://pacs.dhxh.example/emr/WS2026101900007/2.jpg"}
    resources, errors = documents_of([first, second])
    assert errors == []
    [reference] = resources
    assert "date" not in reference  # an instant needs a time; the date is in creation
    assert [c["attachment"] for c in reference["content"]] == [
        {"contentType": "image/jpeg", "url": first["file_url"], "title": "出院小结第1页.jpg",
         "creation": "2026-10-19"},
        {"contentType": "image/jpeg", "url": second["file_url"], "title": "出院小结第2页.jpg",
         "creation": "2026-10-19"}]


def test_the_same_rows_give_the_same_ids() -> None:
    rows = doc_rows(ADMISSION, ADMISSION_SECTIONS)
    assert documents_of(rows)[0][0]["id"] == documents_of([dict(r) for r in rows])[0][0]["id"]
    assert documents_of([file_row()])[0][0]["id"] == documents_of([file_row()])[0][0]["id"]


def errors_of(rows: list[dict[str, str]]) -> tuple[list[dict[str, Any]],
                                                    list[tuple[int | None, str, str, str]]]:
    resources, errors = documents_of(rows)
    return resources, [(e.row, e.field, e.rule, e.severity) for e in errors]


@pytest.mark.parametrize(("change", "field", "rule"), [
    ({"document_type": ""}, "document_type", "required"),
    ({"document_type": "病程记录"}, "document_type", "wst500-type"),
    ({"document_type": "西药处方"}, "document_type", "wst500-type-not-a-record"),
    ({"patient_id": ""}, "patient_id", "required"),
    ({"inpatient_no": ""}, "inpatient_no", "required"),
    ({"admission_count": ""}, "admission_count", "required"),
    ({"admission_count": "第二次"}, "admission_count", "positive-integer"),
    ({"admission_count": "0"}, "admission_count", "positive-integer"),
    ({"document_time": ""}, "document_time", "required"),
    ({"document_time": "2026-10-32 16:40"}, "document_time", "date-calendar"),
    ({"author": "", "department": ""}, "author", "required"),
])
def test_a_document_without_its_header_values_is_rejected_on_every_row(
        change: dict[str, str], field: str, rule: str) -> None:
    resources, errors = errors_of(doc_rows({**ADMISSION, **change}, ADMISSION_SECTIONS[:2]))
    assert resources == []
    assert errors == [(0, field, rule, "error"), (1, "document_no", "document-rejected", "error")]


def test_the_medical_record_number_keys_the_admission_when_the_inpatient_no_is_blank() -> None:
    header = {**ADMISSION, "inpatient_no": "", "medical_record_no": "BA100231"}
    [composition] = documents_of(doc_rows(header, ADMISSION_SECTIONS[:1]))[0]
    assert composition["encounter"]["reference"] == "Encounter/" + encounter_resource_id(
        HOSPITAL, admission_visit_key("BA100231", 2))


def test_a_document_without_a_number_is_rejected_row_by_row() -> None:
    resources, errors = errors_of(doc_rows({**ADMISSION, "document_no": ""},
                                           ADMISSION_SECTIONS[:2]))
    assert resources == []
    assert errors == [(0, "document_no", "required", "error"),
                      (1, "document_no", "required", "error")]


def test_rows_disagreeing_on_the_document_reject_it() -> None:
    rows = doc_rows(ADMISSION, ADMISSION_SECTIONS[:3])
    rows[2]["admission_count"] = "3"
    resources, errors = errors_of(rows)
    assert resources == []
    assert errors == [(0, "admission_count", "document-consistency", "error"),
                      (1, "admission_count", "document-consistency", "error"),
                      (2, "admission_count", "document-consistency", "error")]


def test_a_blank_cell_on_a_continuation_row_is_not_a_disagreement() -> None:
    rows = doc_rows(ADMISSION, ADMISSION_SECTIONS[:2])
    rows[1] = {k: v for k, v in rows[1].items() if k.startswith(("section", "document_no"))}
    [composition] = documents_of(rows)[0]
    assert len(composition["section"]) == 2


def test_sections_and_files_under_one_number_reject_the_document() -> None:
    rows = [*doc_rows({**ADMISSION, "document_no": "WS2026101900007"}, ADMISSION_SECTIONS[:1]),
            file_row(document_type="C0034", document_time="2026-10-12 16:40")]
    resources, errors = errors_of(rows)
    assert resources == []
    assert errors == [(0, "section_name", "sections-and-files", "error"),
                      (1, "file_name", "sections-and-files", "error")]


def test_a_section_without_a_title_is_rejected_alone_and_a_blank_one_left_out() -> None:
    rows = doc_rows(ADMISSION, [*ADMISSION_SECTIONS[:2], ("", "", "无特殊。"), ("个人史", "", " ")])
    resources, errors = errors_of(rows)
    assert [s["title"] for s in resources[0]["section"]] == ["主诉", "现病史"]
    assert errors == [(2, "section_name", "required", "error"),
                      (3, "section_text", "blank-section", "warning")]


def test_a_document_whose_sections_are_all_blank_is_rejected() -> None:
    resources, errors = errors_of(doc_rows(ADMISSION, [("主诉", "", ""), ("现病史", "", "")]))
    assert resources == []
    assert errors == [(0, "section_text", "blank-section", "warning"),
                      (0, "section_text", "empty-document", "error"),
                      (1, "section_text", "blank-section", "warning"),
                      (1, "document_no", "document-rejected", "error")]


def test_a_row_with_neither_section_nor_file_is_a_warning() -> None:
    rows = [ADMISSION, *doc_rows(ADMISSION, ADMISSION_SECTIONS[:1])]
    resources, errors = errors_of(rows)
    assert len(resources[0]["section"]) == 1
    assert errors == [(0, "section_text", "empty-row", "warning")]


@pytest.mark.parametrize(("change", "field", "rule"), [
    ({"file_content": "JVBERi0xLjQK$$$"}, "file_content", "base64"),
    ({"file_content": "", "file_url": ""}, "file_content", "required"),
    ({"file_content": "", "file_url": "\\\\fileserver\\emr\\出院小结.pdf"}, "file_url", "url"),
    ({"mime_type": "Adobe PDF 文档"}, "mime_type", "mime-type"),
    ({"mime_type": "", "file_name": "出院小结"}, "mime_type", "required"),
])
def test_a_file_that_cannot_be_attached_rejects_its_only_document(
        change: dict[str, str], field: str, rule: str) -> None:
    resources, errors = errors_of([file_row(**change)])
    assert resources == []
    assert errors == [(0, field, rule, "error")]


def test_a_bad_file_among_good_ones_is_rejected_alone() -> None:
    resources, errors = errors_of([file_row(), file_row(file_content="****")])
    assert len(resources[0]["content"]) == 1
    assert errors == [(1, "file_content", "base64", "error")]


def test_rows_of_several_documents_are_grouped_and_report_their_own_row() -> None:
    rows = [*doc_rows(ADMISSION, ADMISSION_SECTIONS[:2]), file_row(mime_type="exe"),
            *doc_rows(ADMISSION, ADMISSION_SECTIONS[2:3])]
    resources, errors = errors_of(rows)
    assert [len(r["section"]) for r in resources] == [3]
    assert errors == [(2, "mime_type", "mime-type", "error")]


def test_the_datasets_declare_the_elements_their_mapping_files_use() -> None:
    for name, dataset, elements in (
            ("outpatient-record", "outpatient_record", OUTPATIENT_ELEMENTS),
            ("document", "document", DOCUMENT_ELEMENTS)):
        for style in ("ws363", "shouye", "his"):
            mapping = load_mapping(MAPPINGS / f"{name}-{style}.yaml", DATA_ELEMENTS)
            assert mapping.dataset == dataset
            mapped = {e for t in mapping.columns.values() for e in t}
            # zy_blws has no 病案号: its admissions are keyed by 住院号 alone
            assert mapped <= elements and elements - mapped <= {"medical_record_no"}, style


# -- Importing the three export styles ---------------------------------------------------------

# The same two outpatient records (a 西医 and a 中医 visit) as each style writes them.
OUTPATIENT_COLUMNS = {
    "ws363": ["门（急）诊号", "就诊日期时间", "记录日期时间", "患者ID", "就诊科室名称",
              "责任医师姓名", "主诉", "现病史", "既往史", "过敏史", "体格检查", "辅助检查结果",
              "西医诊断编码", "西医诊断名称", "中医病名代码", "中医病名名称", "中医证候代码",
              "中医证候名称", "处理及指导意见"],
    "shouye": ["MZH", "JZRQ", "JLSJ", "BRID", "JZKS", "JZYS", "ZS", "XBS", "JWS", "GMS", "TGJC",
               "FZJC", "ZDBM", "ZDMC", "ZYBMDM", "ZYBM", "ZYZHDM", "ZYZH", "CLYJ"],
    "his": ["mzh", "jzrq", "jlsj", "patid", "ks", "ysxm", "zs", "xbs", "jws", "gms", "tgjc",
            "fzjc", "zdicd10", "zdmc", "zybmdm", "zybm", "zyzhdm", "zyzh", "clyj"],
}
OUTPATIENT_ORDER = ["visit_no", "visit_date", "record_time", "patient_id", "department",
                    "doctor", "chief_complaint", "present_illness", "past_history",
                    "allergy_history", "physical_exam", "auxiliary_exam", "diagnosis_code",
                    "diagnosis_name", "tcm_disease_code", "tcm_disease_name",
                    "tcm_syndrome_code", "tcm_syndrome_name", "treatment_plan"]
DOCUMENT_COLUMNS = {
    "ws363": ["文档流水号", "文档类型", "文档标题", "患者ID", "住院号", "病案号", "住院次数",
              "签名医师姓名", "科室名称", "文档创建日期时间", "章节名称", "章节代码", "章节内容",
              "文件名称", "文件类型", "文件内容", "文件地址"],
    "shouye": ["WSBH", "WSLX", "WSMC", "BAH", "ZYH", "ZYCS", "QMYS", "KS", "CJSJ", "DLMC",
               "DLDM", "DLNR", "WJM", "WJLX", "WJNR", "WJDZ"],
    "his": ["wsbh", "wslx", "wsmc", "patid", "zyh", "zycs", "ysxm", "ks", "cjsj", "dlmc",
            "dldm", "dlnr", "wjm", "wjlx", "wjnr", "wjdz"],
}
DOCUMENT_ORDER = {
    "ws363": ["document_no", "document_type", "document_title", "patient_id", "inpatient_no",
              "medical_record_no", "admission_count", "author", "department", "document_time",
              "section_name", "section_code", "section_text", "file_name", "mime_type",
              "file_content", "file_url"],
    "shouye": ["document_no", "document_type", "document_title", "patient_id", "inpatient_no",
               "admission_count", "author", "department", "document_time", "section_name",
               "section_code", "section_text", "file_name", "mime_type", "file_content",
               "file_url"],
}
DOCUMENT_ORDER["his"] = DOCUMENT_ORDER["shouye"]
ENCODINGS = {"ws363": "utf-8", "shouye": "gbk", "his": "gb18030"}
STYLES = ("ws363", "shouye", "his")


def outpatient_file(tmp: Path, style: str, rows: list[dict[str, str]]) -> Path:
    return write_csv(tmp / f"outpatient-{style}.csv", OUTPATIENT_COLUMNS[style],
                     [[r.get(k, "") for k in OUTPATIENT_ORDER] for r in rows], ENCODINGS[style])


def document_rows_for_import() -> list[dict[str, str]]:
    admission = [{**r, "medical_record_no": "BA100231"}
                 for r in doc_rows(ADMISSION, ADMISSION_SECTIONS)]
    summary = {**file_row(), "medical_record_no": "BA100231"}
    return [*admission, summary]


def document_file(tmp: Path, style: str, rows: list[dict[str, str]]) -> Path:
    # The HIS writes the type as its title, the uploads as the WS/T 500 code.
    def cell(row: dict[str, str], key: str) -> str:
        if key == "document_type" and style == "his":
            return {"C0034": "入院记录"}.get(row[key], row[key])
        return row.get(key, "")
    return write_csv(tmp / f"document-{style}.csv", DOCUMENT_COLUMNS[style],
                     [[cell(r, k) for k in DOCUMENT_ORDER[style]] for r in rows],
                     ENCODINGS[style])


def run(tmp: Path, steps: list[tuple[str, Path]], types: tuple[str, ...]
        ) -> tuple[list[ImportReport], dict[str, list[dict[str, Any]]]]:
    """Import each (mapping file, export) in order into the store under `tmp`; the stored
    resources of `types`, sorted by id."""
    async def go() -> tuple[list[ImportReport], dict[str, list[dict[str, Any]]]]:
        service, _ = build_service(make_settings(tmp), Hooks())
        await service.store.start()
        try:
            reports = []
            for mapping_name, path in steps:
                mapping = load_mapping(MAPPINGS / mapping_name, DATA_ELEMENTS)
                reports.append(await Importer(service, HOSPITAL).import_files(mapping, [path]))
            stored = {}
            for rtype in types:
                query, _ = parse_search((rtype,), [("_count", "100"), ("_sort", "_id")],
                                        service.parse_ctx)
                stored[rtype] = [orjson.loads(v.body)
                                 for v in (await service.store.search(query)).matches]
            return reports, stored
        finally:
            await service.store.close()
    return asyncio.run(go())


def without_version(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in resources:
        meta = {k: v for k, v in r.get("meta", {}).items()
                if k not in ("versionId", "lastUpdated")}
        out.append({**r, "meta": meta})
    return out


def test_three_outpatient_styles_import_to_identical_fhir_content(tmp_path: Path) -> None:
    stored = []
    for style in STYLES:
        folder = tmp_path / style
        folder.mkdir()
        path = outpatient_file(folder, style, [RECORD, TCM_RECORD,
                                               {**RECORD, "visit_no": "0000872", "doctor": "",
                                                "department": ""}])
        [report], found = run(folder, [(f"outpatient-record-{style}.yaml", path)],
                              ("Composition", "Condition", "Encounter"))
        assert (report.rows_read, report.rows_rejected) == (3, 1), style
        [rejected] = report.rejections
        # the third record ends on line 10: the cells with line breaks span lines 2-5 and 7-10
        assert (rejected.line, rejected.column, rejected.rule) == (
            10, OUTPATIENT_COLUMNS[style][5], "required")
        assert [len(found[t]) for t in ("Composition", "Condition", "Encounter")] == [2, 3, 0]
        stored.append({t: without_version(v) for t, v in found.items()})
    assert stored[0] == stored[1] == stored[2]
    [comp] = [c for c in stored[0]["Composition"] if c["author"] == [{"display": "李淑芬"}]]
    assert sections(comp)["现病史"]["text"]["div"].count("<p>") == 2  # the cell's line break


def test_three_document_styles_import_to_identical_fhir_content(tmp_path: Path) -> None:
    stored = []
    for style in STYLES:
        folder = tmp_path / style
        folder.mkdir()
        path = document_file(folder, style, document_rows_for_import())
        [report], found = run(folder, [(f"document-{style}.yaml", path)],
                              ("Composition", "DocumentReference"))
        assert (report.rows_read, report.rows_rejected, report.rejections) == (7, 0, []), style
        assert [len(found[t]) for t in ("Composition", "DocumentReference")] == [1, 1]
        stored.append({t: without_version(v) for t, v in found.items()})
    assert stored[0] == stored[1] == stored[2]
    [reference] = stored[0]["DocumentReference"]
    assert base64.b64decode(reference["content"][0]["attachment"]["data"]) == PDF


def test_reimporting_updates_instead_of_duplicating(tmp_path: Path) -> None:
    records = outpatient_file(tmp_path, "his", [RECORD, TCM_RECORD])
    docs = document_file(tmp_path, "his", document_rows_for_import())
    steps = [("outpatient-record-his.yaml", records), ("document-his.yaml", docs)]
    _, found = run(tmp_path, steps + steps, ("Composition", "Condition", "DocumentReference"))
    assert [len(found[t]) for t in ("Composition", "Condition", "DocumentReference")] == [3, 3, 1]
    assert {r["meta"]["versionId"] for t in found.values() for r in t} == {"2"}


def test_the_record_links_to_the_encounter_a_registration_import_wrote(tmp_path: Path) -> None:
    registrations = write_csv(
        tmp_path / "mz_gh.csv", ["mzh", "ghrq", "ks", "ys", "mjzbz", "ghf", "zdicd10", "zdmc",
                                 "patid"],
        [["0000871", "2026-11-20 08:12:33", "内分泌科", "李淑芬", "1", "50.00", "E11.900",
          "2型糖尿病", "0001023456"]], "gbk")
    records = outpatient_file(tmp_path, "his", [RECORD])
    reports, found = run(tmp_path, [("visit-his.yaml", registrations),
                                    ("outpatient-record-his.yaml", records)],
                         ("Encounter", "Composition", "Condition"))
    assert [r.rows_rejected for r in reports] == [0, 0]
    [encounter] = found["Encounter"]
    [composition] = found["Composition"]
    assert composition["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert encounter["meta"]["versionId"] == "1"  # the record did not write the Encounter
    assert encounter["class"]["code"] == "AMB" and encounter["status"] == "finished"
    # the 挂号 diagnosis and the record's diagnosis are both kept, each on the same visit
    assert {c["encounter"]["reference"] for c in found["Condition"]} == {
        f"Encounter/{encounter['id']}"}
    assert len(found["Condition"]) == 2


def test_a_record_imported_before_its_registration_resolves_once_the_visit_arrives(
        tmp_path: Path) -> None:
    records = outpatient_file(tmp_path, "his", [RECORD])
    registrations = write_csv(
        tmp_path / "mz_gh.csv", ["mzh", "ghrq", "ks", "ys", "mjzbz", "patid"],
        [["0000871", "2026-11-20 08:12:33", "内分泌科", "李淑芬", "1", "0001023456"]], "gbk")
    reports, found = run(tmp_path, [("outpatient-record-his.yaml", records),
                                    ("visit-his.yaml", registrations),
                                    ("outpatient-record-his.yaml", records)],
                         ("Encounter", "Composition"))
    assert [r.rows_rejected for r in reports] == [0, 0, 0]
    assert reports[0].resources_written == 2
    [encounter], [composition] = found["Encounter"], found["Composition"]
    assert composition["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert encounter["meta"]["versionId"] == "1"
    assert composition["meta"]["versionId"] == "2"


def test_imported_documents_read_back_through_rest_and_validate_with_their_profiles(
        tmp_path: Path) -> None:
    records = outpatient_file(tmp_path, "shouye", [TCM_RECORD])
    docs = document_file(tmp_path, "shouye", document_rows_for_import())
    _, found = run(tmp_path, [("outpatient-record-shouye.yaml", records),
                              ("document-shouye.yaml", docs)],
                   ("Composition", "Condition", "DocumentReference"))
    with TestClient(create_app(make_settings(tmp_path))) as client:
        for rtype, profile in (("Composition", "cn-composition"),
                               ("Condition", "cn-condition"),
                               ("DocumentReference", "cn-document-reference")):
            for stored in found[rtype]:
                read = client.get(f"/fhir/{rtype}/{stored['id']}", headers=FHIR_JSON)
                assert read.status_code == 200
                assert read.json() == stored
                result = client.post(f"/fhir/{rtype}/{stored['id']}/$validate",
                                     params={"profile": SD + profile}, headers=FHIR_JSON).json()
                assert [i for i in result["issue"] if i["severity"] in ("error", "fatal")] == []
                assert SD + profile in result["issue"][0]["diagnostics"]
        encounter = "Encounter/" + encounter_resource_id(HOSPITAL, admission_visit_key(
            "ZY20261012", 2))
        bundle = client.get("/fhir/DocumentReference", params={"encounter": encounter},
                            headers=FHIR_JSON).json()
        assert [e["resource"]["type"]["coding"][0]["code"] for e in bundle["entry"]] == ["C0053"]
        broken = {**found["DocumentReference"][0], "type": {"coding": [
            {"system": WST500, "code": "C0004"}]}}
        result = client.post("/fhir/DocumentReference/$validate", json=broken,
                             headers=FHIR_JSON).json()
        assert any(i["severity"] == "error" for i in result["issue"])
