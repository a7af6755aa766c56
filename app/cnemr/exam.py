"""WS 445-2014 part 4 (检查检验记录) 检查报告 (WS/T 500 C0006) RIS rows → FHIR R4 DiagnosticReport
(category RAD) and ImagingStudy.

A RIS/PACS export has one row per exam item of a report (most reports have one; a 胸部正侧位 +
腹部立位平片 request gives two), the report's own columns repeated on each row or given on one
of them. Rows are grouped by `report_no`. Canonical data elements (blank or missing means not
recorded):

Report level (all rows of a report must agree; a blank cell is not a disagreement):
- `report_no` (required): 检查报告单号 → DiagnosticReport.identifier
  urn:oid:2.16.156.10011.1.32; keys DiagnosticReport.id (`exam_report_resource_id`).
- `patient_id` (required): 院内患者ID → subject `Patient/<id>` as `app.cnemr.patient` keys it.
- `visit_id`: the visit key (就诊流水号, or the key `context.outpatient_visit_key` /
  `context.admission_visit_key` make) → encounter `Encounter/<id>` through
  `encounter_resource_id`, as the lab mapper does.
- `exam_time`: 检查时间 → effectiveDateTime and ImagingStudy.started.
- `report_time`: 报告时间 → issued (an instant: needs a time of day).
- `findings`: 检查所见 / 影像所见 (检查报告结果-客观所见) → presentedForm, one text/plain
  attachment (UTF-8, base64, language zh-CN, title 检查所见). Not `text`: the narrative is the
  server's human-readable rendering of the resource (XHTML, generated), while presentedForm is
  the report content as the RIS issued it, which is what the findings are.
- `impression`: 印象 / 诊断意见 (检查报告结果-主观提示, 检查结论) → conclusion.
- `department`: 检查科室 (放射科, 超声科 …) → performer (display).
- `report_doctor` 报告医生 and `review_doctor` 审核医生 → resultsInterpreter (display), in that
  order: both sign for the conclusion.

Item / study level (per row):
- `exam_code`: 检查项目代码 → DiagnosticReport.code in `exam_item_system(hospital)`.
- `exam_name`: 检查项目名称 → code.text; with LOINC (`EXAM_LOINC`) for the common exams named
  there (胸部X线正侧位, 头颅CT平扫, 上腹部CT增强, 腹部彩超, 心脏彩超, 头颅MRI …) unless the
  row's modality contradicts the LOINC code's. A report needs a code or a name on some row.
  A report of several items gets one local coding per item and the names joined with 、 as
  text, without LOINC (a single LOINC code would claim the whole report is one exam).
- `modality`: 检查类别 / 设备类型 as a DICOM modality code (CR, DX, CT, MR, US, XA, RF, MG,
  NM, PT …; DR, MRI, PET and DSA are accepted for DX, MR, PT and XA; the mapping file's
  values table translates words such as 彩超 or 核磁) → a second DiagnosticReport.category
  coded in DICOM DCM (so `DiagnosticReport?category=…DCM|CT` finds CT reports) and
  ImagingStudy.modality.
- `body_site`: 检查部位 → ImagingStudy, as the R4 core extension `bodySite` with a
  display-only reference: R4 has body site only on ImagingStudy.series, and an export
  carries no Series Instance UID that a series needs (inventing one would be wrong).
- `study_uid`: DICOM Study Instance UID → one ImagingStudy per distinct UID, identifier
  `urn:dicom:uid` / `urn:oid:<uid>` (R4 ImagingStudy), keyed by the UID
  (`imaging_study_resource_id`), status available, started = 检查时间, procedureCode = the
  exam items of its rows, description = their names, linked from DiagnosticReport.imagingStudy.
  A UID must be DICOM-shaped (PS3.5 §9.1: digit components without leading zeros, separated
  by dots, at most 64 characters); a bad one is a warning and that ImagingStudy is left out.
- `accession_no`: 检查号 / 登记号 (DICOM Accession Number) → identifier type ACSN in
  `accession_system(hospital)` on the ImagingStudy and on the DiagnosticReport (so the
  number is kept when the row has no Study UID, e.g. an ultrasound without PACS).

The report is `final`: RIS exports carry signed reports. It declares the CN profile
`cn-diagnostic-report`, which is written for both 检验 (LAB, 1.33) and 检查 (RAD, 1.32) reports.

Rejected (error, whole report): no 检查报告单号 or 院内患者ID; rows disagreeing on a report-level
value; no exam code or name on any row. Anything else bad (a date, a modality, a Study UID) is
a warning and the value is left out. Never raises on row content.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from app.cnemr.context import (
    CN_DIAGNOSTIC_REPORT,
    Hospital,
    encounter_resource_id,
    patient_resource_id,
    stable_id,
)
from app.cnemr.errors import RowError, ValueRejected, per_group
from app.cnemr.values import fold, parse_datetime, parse_instant

Resource = dict[str, Any]

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OID_EXAM_REPORT_NO = "urn:oid:2.16.156.10011.1.32"  # 检查报告单号
EXT_BODY_SITE = "http://hl7.org/fhir/StructureDefinition/bodySite"  # R4 core extension

# DICOM PS3.16 CID 29 acquisition modalities (and a few more) with their DCM displays.
MODALITIES: dict[str, str] = {
    "CR": "Computed Radiography", "DX": "Digital Radiography", "CT": "Computed Tomography",
    "MR": "Magnetic Resonance", "US": "Ultrasound", "XA": "X-Ray Angiography",
    "RF": "Radio Fluoroscopy", "MG": "Mammography", "NM": "Nuclear Medicine",
    "PT": "Positron emission tomography", "ES": "Endoscopy", "IO": "Intra-oral Radiography",
    "PX": "Panoramic X-Ray", "BMD": "Bone Mineral Densitometry", "OP": "Ophthalmic Photography",
    "ECG": "Electrocardiography", "OT": "Other",
}
# Names RIS systems use for the same modalities (Chinese words belong in the mapping file).
_MODALITY_ALIASES = {"DR": "DX", "MRI": "MR", "PET": "PT", "PET-CT": "PT", "PETCT": "PT",
                     "DSA": "XA"}
_XRAY = frozenset({"CR", "DX"})


class ExamLoinc(NamedTuple):
    """A LOINC radiology code for an exam as Chinese RIS systems name it."""

    code: str
    display: str
    modalities: frozenset[str]  # the DICOM modalities the LOINC code's method covers


_CHEST_2V = ExamLoinc("36643-5", "XR Chest 2 Views", _XRAY)
_HEAD_CT = ExamLoinc("30799-1", "CT Head WO contrast", frozenset({"CT"}))
_ABDOMEN_CT_IV = ExamLoinc("79103-8", "CT Abdomen W contrast IV", frozenset({"CT"}))
_ABDOMEN_US = ExamLoinc("24558-9", "US Abdomen", frozenset({"US"}))
_HEART_US = ExamLoinc("42148-7", "US Heart", frozenset({"US"}))
_BRAIN_MR = ExamLoinc("24590-2", "MR Brain", frozenset({"MR"}))
_BRAIN_MR_WO = ExamLoinc("30657-1", "MR Brain WO contrast", frozenset({"MR"}))

# Exam names (spaces removed, Latin letters upper-cased) → LOINC. Only exact names: 上腹部CT增强
# is not 上腹部CT平扫, and a near match would put a wrong code on the report.
EXAM_LOINC: dict[str, ExamLoinc] = {
    "胸部X线正侧位": _CHEST_2V, "胸部正侧位": _CHEST_2V, "胸片正侧位": _CHEST_2V,
    "胸部DR正侧位": _CHEST_2V, "胸部X线正侧位片": _CHEST_2V,
    "头颅CT平扫": _HEAD_CT, "颅脑CT平扫": _HEAD_CT, "头部CT平扫": _HEAD_CT,
    "上腹部CT增强": _ABDOMEN_CT_IV, "上腹部CT增强扫描": _ABDOMEN_CT_IV,
    "腹部彩超": _ABDOMEN_US, "腹部B超": _ABDOMEN_US, "腹部超声": _ABDOMEN_US,
    "心脏彩超": _HEART_US, "超声心动图": _HEART_US, "心脏超声": _HEART_US,
    "头颅MRI": _BRAIN_MR, "头颅MR": _BRAIN_MR, "颅脑MRI": _BRAIN_MR, "颅脑MR": _BRAIN_MR,
    "头颅MRI平扫": _BRAIN_MR_WO, "头颅MR平扫": _BRAIN_MR_WO, "颅脑MRI平扫": _BRAIN_MR_WO,
    "颅脑MR平扫": _BRAIN_MR_WO,
}

# DICOM PS3.5 §9.1: components are 0 or digits without a leading zero; 64 characters at most.
_DICOM_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
UID_MAX = 64

_REPORT_KEYS = ("patient_id", "visit_id", "exam_time", "report_time", "findings", "impression",
                "department", "report_doctor", "review_doctor")
_REPORT_NAMES = {"patient_id": "院内患者ID", "visit_id": "就诊流水号", "exam_time": "检查时间",
                 "report_time": "报告时间", "findings": "检查所见", "impression": "诊断意见",
                 "department": "检查科室", "report_doctor": "报告医生",
                 "review_doctor": "审核医生"}


def exam_report_resource_id(hospital: Hospital, report_no: str) -> str:
    """DiagnosticReport.id for a 检查报告单号 (its own prefix: a 检验报告单号 may be equal)."""
    return stable_id("rad", hospital, report_no)


def imaging_study_resource_id(hospital: Hospital, study_uid: str) -> str:
    """ImagingStudy.id for a DICOM Study Instance UID."""
    return stable_id("img", hospital, study_uid)


def exam_item_system(hospital: Hospital) -> str:
    """The code system of a hospital's 检查项目代码 (RIS-local)."""
    return f"urn:oid:{hospital.oid}.ris-item"


def accession_system(hospital: Hospital) -> str:
    """The namespace of a hospital's 检查号 (DICOM Accession Number, issued by its RIS)."""
    return f"urn:oid:{hospital.oid}.accession"


def _exam_key(exam_name: str) -> str:
    return "".join(fold(exam_name).split()).upper()


def loinc_for_exam(exam_name: str, modality: str | None) -> ExamLoinc | None:
    """The LOINC code of an exam known by name, unless the modality contradicts it."""
    known = EXAM_LOINC.get(_exam_key(exam_name))
    if known is None or (modality and modality not in known.modalities):
        return None
    return known


def parse_modality(text: str) -> str:
    """The DICOM modality code of a 检查类别, or ValueRejected."""
    s = fold(text).upper()
    code = _MODALITY_ALIASES.get(s, s)
    if code not in MODALITIES:
        raise ValueRejected("dicom-modality",
                            "检查类别 must be a DICOM modality code (CR, DX, CT, MR, US, XA, RF, "
                            "MG, NM, PT …, or DR/MRI/PET/DSA); translate local names such as "
                            "彩超 in the mapping file's values table; left out")
    return code


def check_study_uid(text: str) -> str:
    """A DICOM Study Instance UID as given, or ValueRejected."""
    if len(text) > UID_MAX:
        raise ValueRejected("dicom-uid-length",
                            f"Study Instance UID has {len(text)} characters, DICOM allows "
                            f"{UID_MAX}; the ImagingStudy was left out")
    if not _DICOM_UID.fullmatch(text):
        raise ValueRejected("dicom-uid-format",
                            "Study Instance UID must be digits separated by dots without "
                            "leading zeros (DICOM PS3.5 §9.1), e.g. 1.2.156.112605.2026112001; "
                            "the ImagingStudy was left out")
    return text


def _first(rows: Sequence[Mapping[str, Any]], key: str) -> str:
    return next((fold(r.get(key)) for r in rows if fold(r.get(key))), "")


def _first_text(rows: Sequence[Mapping[str, Any]], key: str) -> str:
    """The first non-blank narrative value as written: line breaks and full-width punctuation
    are part of a report's text, so it is not folded (only CRLF becomes LF, ends stripped)."""
    return next((str(r.get(key)).replace("\r\n", "\n").strip() for r in rows
                 if fold(r.get(key))), "")


def _position(rows: Sequence[Mapping[str, Any]], key: str) -> int:
    return next((i for i, r in enumerate(rows) if fold(r.get(key))), 0)


class _Item(NamedTuple):
    """One exam item of the report (a distinct code/name), with the modality of its row."""

    code: str
    name: str
    modality: str | None


def _modalities(rows: Sequence[Mapping[str, Any]], errors: list[RowError]
                ) -> list[str | None]:
    out: list[str | None] = []
    for index, row in enumerate(rows):
        raw = fold(row.get("modality"))
        modality = None
        if raw:
            try:
                modality = parse_modality(raw)
            except ValueRejected as exc:
                errors.append(exc.to_row_error("modality", raw, "warning", index))
        out.append(modality)
    return out


def _items(rows: Sequence[Mapping[str, Any]], modalities: list[str | None]) -> list[_Item]:
    items: dict[tuple[str, str], _Item] = {}
    for row, modality in zip(rows, modalities, strict=True):
        code, name = fold(row.get("exam_code")), fold(row.get("exam_name"))
        if code or name:
            items.setdefault((code, name), _Item(code, name, modality))
    return list(items.values())


def _local_coding(item: _Item, hospital: Hospital) -> Resource:
    coding: Resource = {"system": exam_item_system(hospital), "code": item.code}
    if item.name:
        coding["display"] = item.name
    return coding


def _item_concept(item: _Item, hospital: Hospital) -> Resource:
    codings: list[Resource] = []
    loinc = loinc_for_exam(item.name, item.modality)
    if loinc:
        codings.append({"system": LOINC, "code": loinc.code, "display": loinc.display})
    if item.code:
        codings.append(_local_coding(item, hospital))
    concept: Resource = {"text": item.name or item.code}
    if codings:
        concept["coding"] = codings
    return concept


def _report_code(items: list[_Item], hospital: Hospital) -> Resource:
    if len(items) == 1:
        return _item_concept(items[0], hospital)
    concept: Resource = {"text": "、".join(i.name or i.code for i in items)}
    codings = [_local_coding(i, hospital) for i in items if i.code]
    if codings:
        concept["coding"] = codings
    return concept


def _consistency(rows: Sequence[Mapping[str, Any]], report_no: str) -> list[RowError]:
    errors: list[RowError] = []
    for key in _REPORT_KEYS:
        values = {fold(r.get(key)) for r in rows} - {""}
        if len(values) > 1:
            errors += [RowError(key, fold(r.get(key)), "report-consistency",
                                f"rows of 检查报告单 {report_no} disagree on {_REPORT_NAMES[key]} "
                                f"({len(values)} different values); the report was not "
                                "imported", "error", i) for i, r in enumerate(rows)]
    return errors


def _times(rows: Sequence[Mapping[str, Any]], hospital: Hospital, errors: list[RowError]
           ) -> tuple[str | None, str | None]:
    effective = issued = None
    raw = _first(rows, "exam_time")
    if raw:
        try:
            effective = parse_datetime(raw, hospital.tz)
        except ValueRejected as exc:
            errors.append(exc.to_row_error("exam_time", raw, "warning",
                                           _position(rows, "exam_time")))
    raw = _first(rows, "report_time")
    if raw:
        try:
            issued = parse_instant(raw, hospital.tz)
        except ValueRejected as exc:
            errors.append(exc.to_row_error("report_time", raw, "warning",
                                           _position(rows, "report_time")))
    return effective, issued


def _accession_identifier(accession_no: str, hospital: Hospital) -> Resource:
    return {"type": {"coding": [{"system": HL7_TERM + "v2-0203", "code": "ACSN",
                                 "display": "Accession ID"}], "text": "检查号"},
            "system": accession_system(hospital), "value": accession_no}


def _imaging_studies(rows: Sequence[Mapping[str, Any]], modalities: list[str | None],
                     hospital: Hospital, common: Resource, started: str | None,
                     errors: list[RowError]) -> list[Resource]:
    """One ImagingStudy per valid distinct Study Instance UID of the report's rows."""
    by_uid: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        raw = fold(row.get("study_uid"))
        if not raw:
            continue
        try:
            by_uid.setdefault(check_study_uid(raw), []).append(index)
        except ValueRejected as exc:
            errors.append(exc.to_row_error("study_uid", raw, "warning", index))
    studies: list[Resource] = []
    for uid, positions in by_uid.items():
        study_rows = [rows[i] for i in positions]
        study_modalities = list(dict.fromkeys(m for i in positions if (m := modalities[i])))
        identifiers: list[Resource] = [{"system": "urn:dicom:uid", "value": "urn:oid:" + uid}]
        identifiers += [_accession_identifier(a, hospital) for a in dict.fromkeys(
            fold(r.get("accession_no")) for r in study_rows) if a]
        study: Resource = {
            "resourceType": "ImagingStudy",
            "id": imaging_study_resource_id(hospital, uid),
            "identifier": identifiers,
            "status": "available",
            **common,
        }
        sites = list(dict.fromkeys(s for r in study_rows if (s := fold(r.get("body_site")))))
        if sites:
            study["extension"] = [{"url": EXT_BODY_SITE, "valueReference": {"display": s}}
                                  for s in sites]
        if study_modalities:
            study["modality"] = [{"system": DCM, "code": m, "display": MODALITIES[m]}
                                 for m in study_modalities]
        if started:
            study["started"] = started
        items = _items(study_rows, [modalities[i] for i in positions])
        if items:
            study["procedureCode"] = [_item_concept(i, hospital) for i in items]
            study["description"] = "、".join(i.name or i.code for i in items)
        studies.append(study)
    return studies


def map_exam_report(rows: Sequence[Mapping[str, Any]], hospital: Hospital
                    ) -> tuple[list[Resource], list[RowError]]:
    """The rows of one 检查报告单 → [ImagingStudy…, DiagnosticReport], or ([], problems) when
    the report is rejected. `RowError.row` is the position in `rows`. Never raises."""
    if not rows:
        return [], []
    report_no = _first(rows, "report_no")
    if not report_no or any(not fold(r.get("report_no")) for r in rows):
        return [], [RowError("report_no", "", "required",
                             "检查报告单号 is required: it keys the report and groups its rows",
                             "error", i) for i, r in enumerate(rows)
                    if not fold(r.get("report_no")) or not report_no]
    errors = _consistency(rows, report_no)
    if errors:
        return [], errors
    patient_id = _first(rows, "patient_id")
    if not patient_id:
        return [], [RowError("patient_id", "", "required",
                             f"院内患者ID is required (检查报告单 {report_no})", "error", i)
                    for i in range(len(rows))]
    modalities = _modalities(rows, errors)
    items = _items(rows, modalities)
    if not items:
        return [], errors + [RowError("exam_name", "", "required",
                                      f"检查报告单 {report_no} has neither 检查项目代码 nor "
                                      "检查项目名称: DiagnosticReport.code needs one", "error", i)
                             for i in range(len(rows))]
    for item in items:
        name_known = EXAM_LOINC.get(_exam_key(item.name))
        if name_known and item.modality and loinc_for_exam(item.name, item.modality) is None:
            index = next(i for i, r in enumerate(rows) if fold(r.get("exam_name")) == item.name)
            errors.append(RowError(
                "modality", fold(rows[index].get("modality")), "exam-modality-mismatch",
                f"检查项目 {item.name} is a {'/'.join(sorted(name_known.modalities))} exam but "
                f"检查类别 says {item.modality}; LOINC {name_known.code} was left out",
                "warning", index))

    common: Resource = {"subject": {"reference": "Patient/" + patient_resource_id(
        hospital, patient_id)}}
    visit_id = _first(rows, "visit_id")
    if visit_id:
        common["encounter"] = {"reference": "Encounter/" + encounter_resource_id(
            hospital, visit_id)}
    effective, issued = _times(rows, hospital, errors)
    studies = _imaging_studies(rows, modalities, hospital, common, effective, errors)

    identifiers: list[Resource] = [{"use": "official", "type": {"text": "检查报告单号"},
                                    "system": OID_EXAM_REPORT_NO, "value": report_no}]
    identifiers += [_accession_identifier(a, hospital) for a in dict.fromkeys(
        fold(r.get("accession_no")) for r in rows) if a]
    categories: list[Resource] = [{"coding": [{"system": HL7_TERM + "v2-0074", "code": "RAD",
                                               "display": "Radiology"}]}]
    categories += [{"coding": [{"system": DCM, "code": m, "display": MODALITIES[m]}]}
                   for m in dict.fromkeys(m for m in modalities if m)]
    report: Resource = {
        "resourceType": "DiagnosticReport",
        "id": exam_report_resource_id(hospital, report_no),
        "meta": {"profile": [CN_DIAGNOSTIC_REPORT]},
        "identifier": identifiers,
        "status": "final",
        "category": categories,
        "code": _report_code(items, hospital),
        **common,
    }
    if effective:
        report["effectiveDateTime"] = effective
    if issued:
        report["issued"] = issued
    department = _first(rows, "department")
    if department:
        report["performer"] = [{"display": department}]
    doctors = [d for d in (_first(rows, "report_doctor"), _first(rows, "review_doctor")) if d]
    if doctors:
        report["resultsInterpreter"] = [{"display": d} for d in dict.fromkeys(doctors)]
    if studies:
        report["imagingStudy"] = [{"reference": "ImagingStudy/" + s["id"]} for s in studies]
    impression = _first_text(rows, "impression")
    if impression:
        report["conclusion"] = impression
    findings = _first_text(rows, "findings")
    if findings:
        report["presentedForm"] = [{
            "contentType": "text/plain; charset=utf-8", "language": "zh-CN",
            "data": base64.b64encode(findings.encode("utf-8")).decode("ascii"),
            "title": "检查所见"}]
    return [*studies, report], errors


map_exam_rows = per_group(lambda row: fold(row.get("report_no")), map_exam_report)
"""RIS rows of any number of reports (any order) → resources and problems; an ImagingStudy two
reports share is returned once."""
