"""WS 445-2014 part 2 (门(急)诊病历) and the WS/T 500-2016 病历文书 (入院记录 C0034, 一般手术记录
C0009, 出院小结 C0053 …) → FHIR R4 Composition, Condition and DocumentReference.

Two datasets live here, because both are clinical documents written by a doctor as text.

## `outpatient_record`: one row per 门(急)诊病历 (HIS mz_blxx)

→ a Composition (profile cn-composition, type WS/T 500 C0002, status final, title 门(急)诊病历)
with one section per non-blank narrative element, and a Condition (cn-condition,
encounter-diagnosis) per coded diagnosis, referenced from the 诊断 section's entries.

- `visit_no` (required) 门(急)诊号 and `visit_date` (required) 就诊日期: with
  `context.outpatient_visit_key` they name the visit exactly as `app.cnemr.visit` (挂号) names it
  (门诊号 recycles across days), so Composition.encounter and Condition.encounter are
  `Encounter/<encounter_resource_id>` of the Encounter the 挂号 import writes.
- `record_time` 就诊时间/记录时间 → Composition.date (else `visit_date`).
- `patient_id` (required) 院内患者ID → subject, keyed as `app.cnemr.patient` keys it.
- `doctor` 责任医师 → Composition.author (display); `department` 就诊科室 stands in when the
  doctor is blank; one of the two is required, as Composition.author is.
- narrative elements, each a section with its LOINC section code (the codes WS/T 500's CDA
  templates give these sections): `chief_complaint` 主诉 10154-3, `present_illness` 现病史
  10164-2, `past_history` 既往史 11348-0, `allergy_history` 过敏史 48765-2, `physical_exam`
  体格检查 29545-1, `auxiliary_exam` 辅助检查 30954-2, `treatment_plan` 处理意见 18776-5; 诊断
  29548-5 is made from the diagnosis elements.
- `diagnosis_code` / `diagnosis_name` 西医诊断: ICD-10 国家临床版 2.0 with the rules, system and
  version `app.cnemr.visit` applies to 门诊诊断.
- `tcm_disease_code` / `tcm_disease_name` 中医病名 and `tcm_syndrome_code` / `tcm_syndrome_name`
  中医证候 (GB/T 15657): a second Condition for the 中医病名 with the 证候 in the tcm-syndrome
  extension, as `app.cnemr.homepage` does for the 中医首页. An ICD-10 and a GB/T 15657 code are
  different diagnoses, never two codings of one.

The Encounter itself is not written here: the 挂号 (`visit`) dataset owns it, and writing even a
minimal one would overwrite the registration's class, period and participants on every
re-import. The store does not require a reference's target to exist, so the literal reference by
the stable id is kept whatever the import order (a conditional reference by 门诊号 would fail
with 412 before the 挂号 import, and 门诊号 alone matches several days' visits): the record
resolves as soon as the 挂号 rows are imported, and re-importing either side updates in place.
The Conditions have ids of their own (`cond` of the visit key and `record-icd10` /
`record-tcm`), distinct from the 挂号 diagnosis, so that the two imports never overwrite each
other's version of the 门诊诊断.

## `document`: rows grouped by `document_no` (HIS zy_blws)

- `document_no` (required) 文书编号 → identifier 文档流水号 (urn:oid:2.16.156.10011.1.1) and ids.
- `document_type` (required): a WS/T 500 code (C0034) or its title (入院记录, 手术记录 …),
  which must be in ValueSet cn-clinical-document-type (read from `fhir_profiles/`).
- `document_title` 文书名称 → title (else the WS/T 500 title).
- `patient_id` (required); `inpatient_no` 住院号 (or else `medical_record_no` 病案号) and
  `admission_count` 住院次数 (required): the admission key `context.admission_visit_key` that
  `app.cnemr.homepage` writes its Encounter under.
- `author` 签名医师 (or else `department`), `document_time` (required) 创建时间.
- a section row: `section_name` 段落名称 (or `section_code`, a LOINC section code), and
  `section_text` 段落内容 → one Composition section, in row order.
- a file row: `file_name` 文件名, `mime_type` 文件类型 (MIME type, or a file extension such as
  PDF), `file_content` (base64) and/or `file_url` → one DocumentReference.content (profile
  cn-document-reference, category clinical-note), with size and SHA-1 hash computed from inline
  content.

A document is either sections (→ Composition) or files (→ DocumentReference): rows of both kinds
under one 文书编号 reject the document, as do rows that disagree on the document's own values.

## Text

Clinical text is kept as written: it is not NFKC-folded (that would turn the full-width ，：（）
of Chinese prose into ASCII), line breaks become paragraphs, and `&`, `<`, `>` are escaped, so
text is never read as markup. Control characters XML cannot carry are removed with a warning.

## Rules

Rejected (error, nothing imported): an outpatient record without 门(急)诊号, 患者ID, a valid
就诊日期, an author, or any content; a document without 文书编号, a known 文书类型, 患者ID,
住院号/病案号, a positive 住院次数, a valid 创建时间 or an author, whose rows disagree, mix
sections and files, or leave nothing to import (its other rows are then reported as
`document-rejected`). One row alone is rejected for a section without title, or a file that is not
base64, has no content or URL, a bad URL or no content type. Left out with a warning: a malformed
ICD-10 or GB/T 15657 code (the 诊断 section's text keeps the diagnosis as written), a bad
记录时间, a non-LOINC 段落代码, a blank section, a row with neither section nor file, control
characters. Never raises on row content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from html import escape
from typing import Any

from app.cnemr.context import (
    CN_COMPOSITION,
    CN_CONDITION,
    CN_DOCUMENT_REFERENCE,
    Hospital,
    admission_visit_key,
    encounter_resource_id,
    outpatient_visit_key,
    patient_resource_id,
    stable_id,
)
from app.cnemr.errors import RowError, Severity, ValueRejected, per_group, per_row
from app.cnemr.homepage import CS_TCM, CS_WST500, EXT_TCM_SYNDROME
from app.cnemr.terminology import FHIR_PROFILES, codes
from app.cnemr.values import SourceRow, fold, parse_datetime, parse_source_datetime
from app.samples.hospital import CS_ICD10, DISEASES_BY_CODE, HL7_TERM, ICD10_VERSION, LOINC
from app.text import is_digits

Resource = dict[str, Any]

OID_DOCUMENT_NO = "urn:oid:2.16.156.10011.1.1"  # 文档流水号
CS_DOCUMENT_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"

DOCUMENT_TYPES_VS = FHIR_PROFILES / "ValueSet" / "cn-clinical-document-type.json"

OUTPATIENT_TYPE = "C0002"
OUTPATIENT_TITLE = "门(急)诊病历"

# ICD-10 国家临床版 as `app.cnemr.visit` checks 门诊诊断编码 (the same pattern; a test keeps the
# two equal), and GB/T 15657 codes as `app.cnemr.homepage` checks them.
ICD10_PATTERN = re.compile(r"[A-Z][0-9]{2}(?:\.[0-9A-Za-z+*]{1,8})?")
TCM_PATTERN = re.compile(r"[A-Za-z0-9.]{2,20}")
_LOINC_CODE = re.compile(r"[0-9]{1,7}-[0-9]")
_MIME = re.compile(r"[a-z]+/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_URL = re.compile(r"(https?|ftp)://[^\s]+")
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class SectionCode:
    loinc: str
    display: str  # the LOINC long common name


# Section titles of 门(急)诊病历 and the WS/T 500 病历文书 → the LOINC section code the WS/T 500
# CDA templates use for them. Titles not listed keep their name and get no code.
SECTION_CODES: dict[str, SectionCode] = {
    "主诉": SectionCode("10154-3", "Chief complaint Narrative - Reported"),
    "现病史": SectionCode("10164-2", "History of Present illness Narrative"),
    "既往史": SectionCode("11348-0", "History of Past illness Narrative"),
    "过敏史": SectionCode("48765-2", "Allergies and adverse reactions Document"),
    "个人史": SectionCode("29762-2", "Social history Narrative"),
    "家族史": SectionCode("10157-6", "History of family member diseases Narrative"),
    "体格检查": SectionCode("29545-1", "Physical findings Narrative"),
    "辅助检查": SectionCode("30954-2", "Relevant diagnostic tests/laboratory data Narrative"),
    "诊断": SectionCode("29548-5", "Diagnosis Narrative"),
    "初步诊断": SectionCode("46241-6", "Hospital admission diagnosis Narrative - Reported"),
    "入院诊断": SectionCode("46241-6", "Hospital admission diagnosis Narrative - Reported"),
    "出院诊断": SectionCode("11535-2", "Hospital discharge Dx Narrative"),
    "诊疗经过": SectionCode("8648-8", "Hospital course Narrative"),
    "住院经过": SectionCode("8648-8", "Hospital course Narrative"),
    "出院情况": SectionCode("10184-0", "Hospital discharge physical findings Narrative"),
    "出院医嘱": SectionCode("8653-8", "Hospital Discharge instructions"),
    "出院带药": SectionCode("10183-2", "Hospital discharge medications Narrative"),
    "处理意见": SectionCode("18776-5", "Plan of care note"),
    "治疗计划": SectionCode("18776-5", "Plan of care note"),
    "诊疗计划": SectionCode("18776-5", "Plan of care note"),
    "术前诊断": SectionCode("10219-4", "Surgical operation note preoperative Dx Narrative"),
    "术后诊断": SectionCode("10218-6", "Surgical operation note postoperative Dx Narrative"),
    "手术经过": SectionCode("8724-7", "Surgical operation note description Narrative"),
}
_LOINC_DISPLAY = {c.loinc: c.display for c in SECTION_CODES.values()}

# 门(急)诊病历 narrative elements, in the order of WS/T 500 part 2's sections; 诊断 sits between
# 辅助检查 and 处理意见 and is built from the diagnosis elements.
OUTPATIENT_SECTIONS: tuple[tuple[str, str], ...] = (
    ("chief_complaint", "主诉"), ("present_illness", "现病史"), ("past_history", "既往史"),
    ("allergy_history", "过敏史"), ("physical_exam", "体格检查"), ("auxiliary_exam", "辅助检查"),
)
OUTPATIENT_PLAN = ("treatment_plan", "处理意见")

OUTPATIENT_ELEMENTS: frozenset[str] = frozenset({
    "visit_no", "visit_date", "record_time", "patient_id", "department", "doctor",
    *(e for e, _ in OUTPATIENT_SECTIONS), OUTPATIENT_PLAN[0],
    "diagnosis_code", "diagnosis_name", "tcm_disease_code", "tcm_disease_name",
    "tcm_syndrome_code", "tcm_syndrome_name"})
_SECTION_FIELDS = ("section_name", "section_code", "section_text")
_FILE_FIELDS = ("file_name", "mime_type", "file_content", "file_url")
# Values that belong to the document, not to one of its rows: all rows must agree on them.
_DOCUMENT_FIELDS = ("document_type", "document_title", "patient_id", "inpatient_no",
                    "medical_record_no", "admission_count", "author", "department",
                    "document_time")
DOCUMENT_ELEMENTS: frozenset[str] = frozenset(
    {"document_no", *_DOCUMENT_FIELDS, *_SECTION_FIELDS, *_FILE_FIELDS})

# File extensions hospitals write into a 文件类型 column instead of a MIME type.
MIME_BY_EXTENSION: dict[str, str] = {
    "pdf": "application/pdf", "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png",
    "tif": "image/tiff", "tiff": "image/tiff", "bmp": "image/bmp", "gif": "image/gif",
    "xml": "application/xml", "htm": "text/html", "html": "text/html", "txt": "text/plain",
    "rtf": "application/rtf", "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "ofd": "application/ofd", "dcm": "application/dicom",
}
# Common ways of writing a document type's title that differ from the WS/T 500 title.
_TYPE_ALIASES = {"门诊病历": "C0002", "急诊病历": "C0002", "手术记录": "C0009"}


# -- WS/T 500 document types, from fhir_profiles/ -------------------------------------------


@lru_cache(maxsize=1)
def document_types() -> dict[str, str]:
    """WS/T 500 code → title of each type ValueSet cn-clinical-document-type allows."""
    titles = _all_wst500_titles()
    vs = json.loads(DOCUMENT_TYPES_VS.read_text(encoding="utf-8"))
    return {c["code"]: titles[c["code"]] for inc in vs["compose"]["include"]
            if inc["system"] == CS_WST500 for c in inc["concept"]}


def _all_wst500_titles() -> Mapping[str, str]:
    """Every code → title of the WS/T 500 CodeSystem of fhir_profiles/."""
    return codes(CS_WST500)


def _title_key(title: str) -> str:
    """A title compared without its brackets: 门(急)诊病历, 门（急）诊病历 and 门急诊病历 match."""
    return fold(title).replace("(", "").replace(")", "")


@lru_cache(maxsize=1)
def _codes_by_title() -> dict[str, str]:
    return {_title_key(t): c for c, t in _all_wst500_titles().items()} | _TYPE_ALIASES


def document_type(raw: str) -> tuple[str, str] | ValueRejected:
    """(WS/T 500 code, title) for a code or a title as hospitals write it, or why not."""
    allowed = document_types()
    text = fold(raw)
    code = text.upper() if re.fullmatch(r"[Cc][0-9]{4}", text) else None
    if code is None:
        code = _codes_by_title().get(_title_key(text))
    if code is None or code not in _all_wst500_titles():
        return ValueRejected("wst500-type", "文书类型 must be a WS/T 500 document code such as "
                             "C0034 or its title (入院记录, 出院小结, 手术记录 …); translate the "
                             "hospital's own codes in the mapping file's values table")
    if code not in allowed:
        known = _all_wst500_titles().get(code)
        return ValueRejected("wst500-type-not-a-record",
                             f"文书类型 {code}{' ' + known if known else ''} is not a 病历文书 "
                             "of ValueSet cn-clinical-document-type (prescriptions, reports and "
                             "orders have datasets of their own)")
    return code, allowed[code]


# -- Text and narrative ---------------------------------------------------------------------


def clinical_text(raw: Any) -> tuple[str, bool]:
    """(text, whether characters XML cannot carry were removed) of a clinical text value:
    line endings unified, blank lines and the spaces around lines dropped, nothing folded."""
    if raw is None:
        return "", False
    source = str(raw).replace("\r\n", "\n").replace("\r", "\n")
    cleaned = _XML_ILLEGAL.sub("", source)
    lines = (line.strip() for line in cleaned.split("\n"))
    return "\n".join(line for line in lines if line), cleaned != source


def narrative(text: str) -> Resource:
    """R4 Narrative of plain text: a paragraph per line, `&`, `<`, `>` escaped."""
    body = "".join(f"<p>{escape(line, quote=False)}</p>" for line in text.split("\n"))
    return {"status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


def _section(title: str, text: str, code: SectionCode | None,
             entries: Sequence[Resource] = ()) -> Resource:
    section: Resource = {"title": title}
    if code is not None:
        section["code"] = {"coding": [{"system": LOINC, "code": code.loinc,
                                       "display": code.display}], "text": title}
    if text:
        section["text"] = narrative(text)
    if entries:
        section["entry"] = [{"reference": f"{r['resourceType']}/{r['id']}"} for r in entries]
    return section


def _wst500_type(code: str, title: str) -> Resource:
    return {"coding": [{"system": CS_WST500, "code": code, "display": title}], "text": title}


# -- 门(急)诊病历 -----------------------------------------------------------------------------


class _Row(SourceRow):
    """One source row with the problems found in it so far."""

    def add(self, field: str, rule: str, message: str, severity: Severity,
            value: str | None = None) -> None:
        self.errors.append(RowError(field, self.get(field) if value is None else value, rule,
                                    message, severity))

    def text(self, element: str, what: str) -> str:
        text, cleaned = clinical_text(self.row.get(element))
        if cleaned:
            self.add(element, "xml-control-characters",
                     f"{what} contained control characters (bytes 0x00-0x1F other than tab and "
                     "line breaks) that XHTML cannot hold; they were removed, the text kept",
                     "warning", text[:40])
        return text

    def datetime(self, element: str, severity: Severity) -> str | None:
        raw = self.get(element)
        try:
            return parse_datetime(raw, self.hospital.tz)
        except ValueRejected as exc:
            self.errors.append(exc.to_row_error(element, raw, severity))
            return None


def _condition(rid: str, coding: Resource, text: str, patient_ref: Resource,
               encounter_ref: Resource, recorded: str,
               extensions: list[Resource] | None = None) -> Resource:
    condition: Resource = {"resourceType": "Condition", "id": rid,
                           "meta": {"profile": [CN_CONDITION]}}
    if extensions:
        condition["extension"] = extensions
    condition.update({
        "clinicalStatus": {"coding": [{"system": HL7_TERM + "condition-clinical",
                                       "code": "active"}]},
        "category": [{"coding": [{"system": HL7_TERM + "condition-category",
                                  "code": "encounter-diagnosis",
                                  "display": "Encounter Diagnosis"}], "text": "门诊诊断"}],
        "code": {"coding": [coding], "text": text},
        "subject": patient_ref,
        "encounter": encounter_ref,
        "recordedDate": recorded,
    })
    return condition


def _icd10_diagnosis(r: _Row, rid: str, patient_ref: Resource, encounter_ref: Resource,
                     recorded: str) -> Resource | None:
    raw, name = r.get("diagnosis_code"), r.get("diagnosis_name")
    code = raw.upper()
    if not code:
        if name:
            r.add("diagnosis_name", "icd-10-required",
                  "西医诊断 has a name but no ICD-10 code; the CN Condition profile needs a "
                  "coded diagnosis, so only the 诊断 section's text carries it", "warning")
        return None
    if not ICD10_PATTERN.fullmatch(code):
        r.add("diagnosis_code", "icd-10",
              "西医诊断编码 must be an ICD-10 国家临床版 code such as E11.900 or I10.x00x002; "
              "no Condition was made, the 诊断 section's text keeps the diagnosis as written",
              "warning")
        return None
    known = DISEASES_BY_CODE.get(code)
    display = name or (known.display if known else "")
    coding: Resource = {"system": CS_ICD10, "version": ICD10_VERSION, "code": code}
    if display:
        coding["display"] = display
    return _condition(rid, coding, display or code, patient_ref, encounter_ref, recorded)


def _tcm_diagnosis(r: _Row, rid: str, patient_ref: Resource, encounter_ref: Resource,
                   recorded: str) -> Resource | None:
    code, name = r.get("tcm_disease_code"), r.get("tcm_disease_name")
    syndrome_code, syndrome_name = r.get("tcm_syndrome_code"), r.get("tcm_syndrome_name")
    if not code:
        if name:
            r.add("tcm_disease_code", "required",
                  "中医病名 has a name but no GB/T 15657 code; no Condition was made, the 诊断 "
                  "section's text keeps it", "warning")
        elif syndrome_code or syndrome_name:
            r.add("tcm_syndrome_code", "tcm-syndrome-without-disease",
                  "中医证候 is recorded only with its 中医病名, which is missing; the 诊断 "
                  "section's text keeps it", "warning")
        return None
    if not TCM_PATTERN.fullmatch(code):
        r.add("tcm_disease_code", "gbt-15657-format",
              "中医病名 code must be a GB/T 15657 code (letters, digits and dots); no Condition "
              "was made, the 诊断 section's text keeps it", "warning")
        return None
    extensions: list[Resource] = []
    if syndrome_code and TCM_PATTERN.fullmatch(syndrome_code):
        syndrome: Resource = {"system": CS_TCM, "code": syndrome_code}
        if syndrome_name:
            syndrome["display"] = syndrome_name
        extensions.append({"url": EXT_TCM_SYNDROME, "valueCodeableConcept": {
            "coding": [syndrome], "text": syndrome_name or syndrome_code}})
    elif syndrome_code or syndrome_name:
        r.add("tcm_syndrome_code", "gbt-15657-format",
              "中医证候 needs a GB/T 15657 code (letters, digits and dots); left out of the "
              "Condition, the 诊断 section's text keeps it", "warning")
    coding: Resource = {"system": CS_TCM, "code": code}
    if name:
        coding["display"] = name
    return _condition(rid, coding, name or code, patient_ref, encounter_ref, recorded,
                      extensions)


def _diagnosis_text(r: _Row) -> str:
    """The 诊断 section's text: each recorded diagnosis as written, with its code."""
    lines = []
    for label, code_field, name_field in (
            ("西医诊断", "diagnosis_code", "diagnosis_name"),
            ("中医病名", "tcm_disease_code", "tcm_disease_name"),
            ("中医证候", "tcm_syndrome_code", "tcm_syndrome_name")):
        code, name = r.get(code_field), r.get(name_field)
        if code or name:
            lines.append(f"{label}: {name} ({code})" if code and name else f"{label}: "
                         f"{name or code}")
    return "\n".join(lines)


def outpatient_record_composition_id(hospital: Hospital, visit_key: str) -> str:
    """Composition.id of the 门(急)诊病历 of a visit key (one record per visit)."""
    return stable_id("comp", hospital, visit_key, OUTPATIENT_TYPE)


def map_outpatient_record(row: Mapping[str, Any], hospital: Hospital
                          ) -> tuple[list[Resource], list[RowError]]:
    """One 门(急)诊病历 row → ([Composition, Condition…], problems), or ([], problems) when
    rejected. Never raises on row content."""
    r = _Row(row, hospital)
    visit_no, patient_id = r.get("visit_no"), r.get("patient_id")
    if not visit_no:
        r.add("visit_no", "required",
              "门(急)诊号 is required: with the 就诊日期 it names the visit", "error")
    if not patient_id:
        r.add("patient_id", "required", "院内患者ID is required", "error")
    visit_day = ""
    visit_date = r.datetime("visit_date", "error")
    if visit_date:
        visit_day = parse_source_datetime(r.get("visit_date")).day.isoformat()
    doctor, department = r.get("doctor"), r.get("department")
    if not doctor and not department:
        r.add("doctor", "required",
              "责任医师 (or else 就诊科室) is required: it is the record's author", "error")
    if r.errors or not visit_date:
        return [], r.errors

    date = visit_date
    if r.get("record_time"):
        date = r.datetime("record_time", "warning") or visit_date
    visit_key = outpatient_visit_key(visit_no, visit_day)
    patient_ref = {"reference": "Patient/" + patient_resource_id(hospital, patient_id)}
    encounter_ref = {"reference": "Encounter/" + encounter_resource_id(hospital, visit_key)}

    sections = [_section(title, text, SECTION_CODES[title])
                for element, title in OUTPATIENT_SECTIONS if (text := r.text(element, title))]
    conditions = [c for c in (
        _icd10_diagnosis(r, stable_id("cond", hospital, visit_key, "record-icd10"),
                         patient_ref, encounter_ref, date),
        _tcm_diagnosis(r, stable_id("cond", hospital, visit_key, "record-tcm"),
                       patient_ref, encounter_ref, date)) if c is not None]
    diagnosis_text = _diagnosis_text(r)
    if diagnosis_text:
        sections.append(_section("诊断", diagnosis_text, SECTION_CODES["诊断"], conditions))
    plan = r.text(*OUTPATIENT_PLAN)
    if plan:
        sections.append(_section(OUTPATIENT_PLAN[1], plan, SECTION_CODES[OUTPATIENT_PLAN[1]]))
    if not sections:
        r.add("chief_complaint", "empty-record",
              "the 门(急)诊病历 has no content: 主诉, 现病史, 既往史, 过敏史, 体格检查, 辅助检查, "
              "诊断 and 处理意见 are all blank; nothing was imported", "error")
        return [], r.errors

    composition: Resource = {
        "resourceType": "Composition",
        "id": outpatient_record_composition_id(hospital, visit_key),
        "meta": {"profile": [CN_COMPOSITION]},
        "status": "final",
        "type": _wst500_type(OUTPATIENT_TYPE, document_types()[OUTPATIENT_TYPE]),
        "subject": patient_ref,
        "encounter": encounter_ref,
        "date": date,
        "author": [{"display": doctor or department}],
        "title": OUTPATIENT_TITLE,
        "section": sections,
    }
    return [composition, *conditions], r.errors


# `datasets.Dataset.map_rows` over 门(急)诊病历 rows; `RowError.row` is the index in `rows`.
map_outpatient_record_rows = per_row(map_outpatient_record)


# -- 病历文书 ---------------------------------------------------------------------------------


def document_composition_id(hospital: Hospital, document_no: str) -> str:
    """Composition.id of the 病历文书 with this 文书编号."""
    return stable_id("comp", hospital, "document", document_no)


def document_reference_id(hospital: Hospital, document_no: str) -> str:
    """DocumentReference.id of the 病历文书 file(s) with this 文书编号."""
    return stable_id("docref", hospital, "document", document_no)


@dataclass
class _Document:
    """The values of one 文书编号 its rows agree on, and what went wrong so far."""

    rows: Sequence[Mapping[str, Any]]
    errors: list[RowError]

    def first(self, element: str) -> str:
        return next((v for r in self.rows if (v := fold(r.get(element)))), "")

    def index_of(self, element: str) -> int:
        return next((i for i, r in enumerate(self.rows) if fold(r.get(element))), 0)

    def add(self, index: int, field: str, rule: str, message: str, severity: Severity,
            value: str | None = None) -> None:
        self.errors.append(RowError(field, fold(self.rows[index].get(field)) if value is None
                                    else value, rule, message, severity, index))

    def rejected(self) -> bool:
        return any(e.severity == "error" for e in self.errors)


def _reject_rest(doc: _Document, document_no: str) -> tuple[list[Resource], list[RowError]]:
    """Reject the document: every row not already in error gets one, so that the importer
    reports all of the document's lines as not imported."""
    flagged = {e.row for e in doc.errors if e.severity == "error"}
    for index in range(len(doc.rows)):
        if index not in flagged:
            doc.add(index, "document_no", "document-rejected",
                    f"文书 {document_no} was not imported because of the error reported on "
                    "another of its rows", "error", document_no)
    doc.errors.sort(key=lambda e: -1 if e.row is None else e.row)
    return [], doc.errors


def _consistent(doc: _Document, document_no: str) -> None:
    for element in _DOCUMENT_FIELDS:
        values = {fold(r.get(element)) for r in doc.rows} - {""}
        if len(values) > 1:
            for index, r in enumerate(doc.rows):
                if fold(r.get(element)):
                    doc.add(index, element, "document-consistency",
                            f"rows of 文书 {document_no} disagree on {element} ({len(values)} "
                            "different values); the document was not imported", "error")


def _section_row(doc: _Document, index: int) -> Resource | None:
    row = doc.rows[index]
    name, code = fold(row.get("section_name")), fold(row.get("section_code"))
    text, cleaned = clinical_text(row.get("section_text"))
    if cleaned:
        doc.add(index, "section_text", "xml-control-characters",
                "段落内容 contained control characters that XHTML cannot hold; they were "
                "removed, the text kept", "warning", text[:40])
    if not name and not code:
        doc.add(index, "section_name", "required",
                "段落名称 (or a LOINC 段落代码) is required: it is the section's title; the "
                "section was not imported", "error")
        return None
    if not text:
        doc.add(index, "section_text", "blank-section",
                f"段落 {name or code} has no text; left out", "warning", "")
        return None
    section_code = SECTION_CODES.get(name)
    if code:
        if _LOINC_CODE.fullmatch(code):
            section_code = SectionCode(code, _LOINC_DISPLAY.get(code, name or code))
        else:
            doc.add(index, "section_code", "loinc-section-code",
                    "段落代码 must be a LOINC section code such as 10154-3 (主诉); left out, "
                    "the section keeps its 段落名称", "warning")
    # A section given only a LOINC code is titled with the code's name.
    title = name or (section_code.display if section_code else code)
    return _section(title, text, section_code)


def _content_type(doc: _Document, index: int) -> str | None:
    row = doc.rows[index]
    raw, file_name = fold(row.get("mime_type")), fold(row.get("file_name"))
    if raw:
        lowered = raw.lower()
        if _MIME.fullmatch(lowered):
            return lowered
        mime = MIME_BY_EXTENSION.get(lowered.removeprefix("."))
        if mime:
            return mime
        doc.add(index, "mime_type", "mime-type",
                "文件类型 must be a MIME type such as application/pdf or a file extension "
                f"({', '.join(sorted(MIME_BY_EXTENSION))}); the file was not imported", "error")
        return None
    extension = file_name.rpartition(".")[2].lower() if "." in file_name else ""
    mime = MIME_BY_EXTENSION.get(extension)
    if mime is None:
        doc.add(index, "mime_type", "required",
                "文件类型 is required (a MIME type, or a file name ending in a known extension "
                "such as .pdf): FHIR needs the content type of a document file; the file was "
                "not imported", "error")
    return mime


def _attachment(doc: _Document, index: int, created: str) -> Resource | None:
    row = doc.rows[index]
    content = "".join(str(row.get("file_content") or "").split())
    url, title = fold(row.get("file_url")), fold(row.get("file_name"))
    if not content and not url:
        doc.add(index, "file_content", "required",
                "a file row needs the file's content (base64) or its URL; the file was not "
                "imported", "error", "")
        return None
    data = None
    if content:
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            data = None
        if not data:
            doc.add(index, "file_content", "base64",
                    "文件内容 is not base64 (RFC 4648: A-Z a-z 0-9 + /, padded with =) or is "
                    "empty; the file was not imported", "error", content[:40])
            return None
    if url and not _URL.fullmatch(url):
        doc.add(index, "file_url", "url",
                "文件地址 must be an absolute http(s):// or ftp:// URL without spaces; the file "
                "was not imported", "error")
        return None
    content_type = _content_type(doc, index)
    if content_type is None:
        return None
    attachment: Resource = {"contentType": content_type}
    if data is not None:
        attachment["data"] = content
        attachment["size"] = len(data)
        # R4 Attachment.hash is the base64 of the SHA-1 of the data.
        attachment["hash"] = base64.b64encode(hashlib.sha1(data).digest()).decode()
    if url:
        attachment["url"] = url
    if title:
        attachment["title"] = title
    attachment["creation"] = created
    return attachment


def map_document(rows: Sequence[Mapping[str, Any]], hospital: Hospital
                 ) -> tuple[list[Resource], list[RowError]]:
    """The rows of one 文书编号 → [Composition] or [DocumentReference], with problems;
    ([], problems) when the document is rejected. Never raises on row content."""
    doc = _Document(rows, [])
    document_no = doc.first("document_no")
    if not rows:
        return [], []
    if not document_no:
        for index in range(len(rows)):
            doc.add(index, "document_no", "required",
                    "文书编号 is required: it groups the rows of one document", "error")
        return [], doc.errors
    _consistent(doc, document_no)
    if doc.rejected():
        return _reject_rest(doc, document_no)

    raw_type = doc.first("document_type")
    kind = document_type(raw_type) if raw_type else ValueRejected(
        "required", "文书类型 (a WS/T 500 code such as C0034, or its title) is required")
    if isinstance(kind, ValueRejected):
        doc.errors.append(kind.to_row_error("document_type", raw_type, "error",
                                            doc.index_of("document_type")))
    patient_id = doc.first("patient_id")
    if not patient_id:
        doc.add(0, "patient_id", "required", "院内患者ID is required", "error")
    admission_no = doc.first("inpatient_no") or doc.first("medical_record_no")
    if not admission_no:
        doc.add(0, "inpatient_no", "required",
                "住院号 (or else 病案号) is required: with 住院次数 it names the admission whose "
                "Encounter the 首页 import writes", "error")
    raw_count = doc.first("admission_count")
    count = int(raw_count) if is_digits(raw_count) and int(raw_count) > 0 else 0
    if not count:
        doc.add(doc.index_of("admission_count"), "admission_count",
                "required" if not raw_count else "positive-integer",
                "住院次数 must be a positive whole number: with the 住院号 it names the admission",
                "error")
    raw_time = doc.first("document_time")
    created = None
    if not raw_time:
        doc.add(0, "document_time", "required",
                "创建时间 (the document's date) is required", "error")
    else:
        try:
            created = parse_datetime(raw_time, hospital.tz)
        except ValueRejected as exc:
            doc.errors.append(exc.to_row_error("document_time", raw_time, "error",
                                               doc.index_of("document_time")))
    author = doc.first("author") or doc.first("department")
    if not author:
        doc.add(0, "author", "required",
                "签名医师 (or else 科室) is required: it is the document's author", "error")
    if doc.rejected() or isinstance(kind, ValueRejected) or created is None:
        return _reject_rest(doc, document_no)

    section_rows = [i for i, r in enumerate(rows) if any(fold(r.get(f)) for f in _SECTION_FIELDS)]
    file_rows = [i for i, r in enumerate(rows) if any(fold(r.get(f)) for f in _FILE_FIELDS)]
    if section_rows and file_rows:
        for index in sorted(set(section_rows) | set(file_rows)):
            doc.add(index, "section_name" if index in section_rows else "file_name",
                    "sections-and-files",
                    f"文书 {document_no} has both 段落 (section text) and 文件 (file) rows: a "
                    "document is either structured text or a file; export them under two "
                    "文书编号", "error")
        return _reject_rest(doc, document_no)
    for index in range(len(rows)):
        if index not in section_rows and index not in file_rows:
            doc.add(index, "section_text", "empty-row",
                    f"this row of 文书 {document_no} has neither 段落 nor 文件; nothing was "
                    "imported from it", "warning", "")

    code, type_title = kind
    visit_key = admission_visit_key(admission_no, count)
    patient_ref = {"reference": "Patient/" + patient_resource_id(hospital, patient_id)}
    encounter_ref = {"reference": "Encounter/" + encounter_resource_id(hospital, visit_key)}
    identifier = [{"type": {"text": "文书编号"}, "system": OID_DOCUMENT_NO, "value": document_no}]
    title = doc.first("document_title") or type_title
    if section_rows:
        sections = [s for i in section_rows if (s := _section_row(doc, i)) is not None]
        if not sections:
            return _reject_rest(doc, document_no) if doc.rejected() else (
                _empty(doc, document_no))
        return [{
            "resourceType": "Composition",
            "id": document_composition_id(hospital, document_no),
            "meta": {"profile": [CN_COMPOSITION]},
            "identifier": identifier[0],
            "status": "final",
            "type": _wst500_type(code, type_title),
            "subject": patient_ref,
            "encounter": encounter_ref,
            "date": created,
            "author": [{"display": author}],
            "title": title,
            "section": sections,
        }], doc.errors
    if not file_rows:
        return _empty(doc, document_no)
    attachments = [a for i in file_rows if (a := _attachment(doc, i, created)) is not None]
    if not attachments:
        return _reject_rest(doc, document_no)
    reference: Resource = {
        "resourceType": "DocumentReference",
        "id": document_reference_id(hospital, document_no),
        "meta": {"profile": [CN_DOCUMENT_REFERENCE]},
        "identifier": identifier,
        "status": "current",
        "docStatus": "final",
        "type": _wst500_type(code, type_title),
        "category": [{"coding": [{"system": CS_DOCUMENT_CATEGORY, "code": "clinical-note",
                                  "display": "Clinical Note"}], "text": "病历文书"}],
        "subject": patient_ref,
    }
    if "T" in created:  # DocumentReference.date is an instant: it needs a time of day
        reference["date"] = created
    reference.update({
        "author": [{"display": author}],
        "description": title,
        "content": [{"attachment": a} for a in attachments],
        "context": {"encounter": [encounter_ref]},
    })
    return [reference], doc.errors


def _empty(doc: _Document, document_no: str) -> tuple[list[Resource], list[RowError]]:
    doc.add(0, "section_text", "empty-document",
            f"文书 {document_no} has no section with text and no file; nothing was imported",
            "error", "")
    return _reject_rest(doc, document_no)


map_document_rows = per_group(lambda row: fold(row.get("document_no")), map_document)
"""`datasets.Dataset.map_rows` over the rows of one or more 文书编号 (the importer groups them)."""
