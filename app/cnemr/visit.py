"""WS 445-2014 part 2 (门(急)诊病历) 挂号 and 门(急)诊就诊记录 rows → FHIR R4 Encounter, Condition
(门诊诊断) and ChargeItem (挂号费).

One row per registration (HIS mz_gh, CLINIC_MASTER). Rows are dicts keyed by these canonical
data elements (values are the exported text; blank or missing means not recorded):

- `visit_no` (required): 门(急)诊号 → Encounter.identifier urn:oid:2.16.156.10011.1.11, with
  the visit day as the identifier's period because the number is only unique with its date.
- `visit_date` (required): 挂号日期 (a time of day, as mz_gh.ghrq carries, is kept) → with
  `visit_no` the visit key `<门诊号>@<YYYYMMDD>` (`context.outpatient_visit_key`) that keys
  Encounter.id through `encounter_resource_id`; Encounter.period.start unless `visit_time`
  is given. 门诊号 recycles across days: the same number on two days is two Encounters.
- `visit_time`: 就诊时间 (接诊) → Encounter.period.start.
- `patient_id` (required): 院内患者ID → subject `Patient/<id>` as `app.cnemr.patient` keys it.
- `visit_type_code` (required): 患者类型 CV09.00.404 (1 门诊, 2 急诊) → Encounter.type with the
  CV09.00.404 coding, and Encounter.class translated through the ConceptMap
  cv09-00-404-to-v3-actcode of fhir_profiles/ (AMB/EMER, `app.cnemr.terminology`; code and
  display from the CV09.00.404 CodeSystem there). A code the ConceptMap
  leaves unmatched (9 其他) or does not know is rejected: Encounter.class is required and this
  module does not guess it; the mapping file's `values` table may translate it first.
- `department`: 挂号科室 → Encounter.serviceType.text.
- `doctor`: 接诊医生 → Encounter.participant (type ATND, individual.display).
- `diagnosis_code`: 门诊诊断编码, ICD-10 国家临床版 2.0 → Condition.code in
  urn:oid:2.16.156.10011.2.3.3.11 with Coding.version (the 医保版 shares the system, not every
  code). A code that is not ICD-10 shaped, or a name without a code, is reported and no
  Condition is made: the CN Condition profile requires a coding.
- `diagnosis_name`: 门诊诊断名称 → Condition.code.text and the coding's display (else the
  display of `app.samples.hospital.DISEASES_BY_CODE` when the code is there).
- `registration_fee`: 挂号费 in 元 → ChargeItem (code text 挂号费, priceOverride in CNY, context
  the Encounter); negative amounts (退号冲红) are kept as given.

Status: an Encounter with a 就诊时间 or a diagnosis was seen by a doctor and is `finished`;
a bare registration is `arrived`. 退号 and the 门(急)诊病历 narrative (主诉, 现病史 …,
Composition C0002) are not mapped here. The Condition has clinicalStatus active and no
verificationStatus: an export does not say whether a 门诊诊断 is 初步 or 确诊.

Rejected (error): missing `visit_no`, `patient_id` or `visit_type_code`; `visit_date` missing
or not a date; a `visit_type_code` with no Encounter.class. Anything else bad is a warning and
the value is left out. Never raises on row content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.cnemr.context import (
    CN_CONDITION,
    CN_ENCOUNTER,
    Hospital,
    diagnosis_resource_id,
    encounter_resource_id,
    outpatient_visit_key,
    patient_resource_id,
    registration_fee_resource_id,
)
from app.cnemr.errors import RowError, ValueRejected, per_row
from app.cnemr.terminology import codes, translate
from app.cnemr.values import fold, parse_amount, parse_datetime, parse_source_datetime
from app.samples.hospital import (
    CS_ICD10,
    CS_PATIENT_TYPE,
    DISEASES_BY_CODE,
    ICD10_VERSION,
    OID_OUTPATIENT_NO,
)

Resource = dict[str, Any]

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
PATIENT_TYPE_MAP = "https://fhir.yilian.cn/ConceptMap/cv09-00-404-to-v3-actcode"

# 患者类型 as exports write it in words; the codes and displays are the CodeSystem's.
_PATIENT_TYPE_TEXT = {"门诊": "1", "急诊": "2", "住院": "3", "其他": "9"}
# ICD-10 as the 国家临床版 writes it: letter, two digits, then an extension such as .900,
# .x00x002 or .103 (the national extension codes).
_ICD10 = re.compile(r"[A-Z][0-9]{2}(?:\.[0-9A-Za-z+*]{1,8})?")


def _visit_class(raw: str) -> tuple[Resource, Resource] | ValueRejected:
    """(Encounter.class Coding, CV09.00.404 Coding) for a 患者类型 code, or why not."""
    code = _PATIENT_TYPE_TEXT.get(raw, raw)
    patient_types = codes(CS_PATIENT_TYPE)
    if code not in patient_types:
        return ValueRejected("cv09.00.404", "患者类型 must be a CV09.00.404 code (1 门诊, 2 急诊; "
                             "or 门诊/急诊); the registration was not imported")
    target = translate(PATIENT_TYPE_MAP, CS_PATIENT_TYPE, code)
    if target is None:
        return ValueRejected("cv09.00.404-unmatched",
                             f"患者类型 {code} has no Encounter.class in ConceptMap "
                             "cv09-00-404-to-v3-actcode; translate it in the mapping file's "
                             "values table; the registration was not imported")
    return target, {"system": CS_PATIENT_TYPE, "code": code, "display": patient_types[code]}


def _condition(row: Mapping[str, Any], hospital: Hospital, visit_key: str, patient_ref: str,
               recorded: str, errors: list[RowError]) -> Resource | None:
    raw = fold(row.get("diagnosis_code"))
    code, name = raw.upper(), fold(row.get("diagnosis_name"))
    if not code:
        if name:
            errors.append(RowError("diagnosis_name", name, "icd-10-required",
                                   "门诊诊断 has a name but no ICD-10 code; the CN Condition "
                                   "profile needs a coded diagnosis, so it was left out",
                                   "warning"))
        return None
    if not _ICD10.fullmatch(code):
        errors.append(RowError("diagnosis_code", raw, "icd-10",
                               "门诊诊断编码 must be an ICD-10 国家临床版 code such as E11.900 or "
                               "I10.x00x002; the diagnosis was left out", "warning"))
        return None
    known = DISEASES_BY_CODE.get(code)
    display = name or (known.display if known else "")
    coding: Resource = {"system": CS_ICD10, "version": ICD10_VERSION, "code": code}
    if display:
        coding["display"] = display
    concept: Resource = {"coding": [coding], "text": display or code}
    return {
        "resourceType": "Condition",
        "id": diagnosis_resource_id(hospital, visit_key, 1),
        "meta": {"profile": [CN_CONDITION]},
        "clinicalStatus": {"coding": [{"system": HL7_TERM + "condition-clinical",
                                       "code": "active"}]},
        "category": [{"coding": [{"system": HL7_TERM + "condition-category",
                                  "code": "encounter-diagnosis",
                                  "display": "Encounter Diagnosis"}], "text": "门诊诊断"}],
        "code": concept,
        "subject": {"reference": patient_ref},
        "encounter": {"reference": "Encounter/" + encounter_resource_id(hospital, visit_key)},
        "recordedDate": recorded,
    }


def _charge_item(row: Mapping[str, Any], hospital: Hospital, visit_key: str, patient_ref: str,
                 when: str, errors: list[RowError]) -> Resource | None:
    raw = fold(row.get("registration_fee"))
    if not raw:
        return None
    try:
        money = parse_amount(raw)
    except ValueRejected as exc:
        errors.append(exc.to_row_error("registration_fee", raw, "warning"))
        return None
    return {
        "resourceType": "ChargeItem",
        "id": registration_fee_resource_id(hospital, visit_key),
        "status": "billable",
        "code": {"text": "挂号费"},
        "subject": {"reference": patient_ref},
        "context": {"reference": "Encounter/" + encounter_resource_id(hospital, visit_key)},
        "occurrenceDateTime": when,
        "quantity": {"value": 1},
        "priceOverride": money,
    }


def map_visit(row: Mapping[str, Any], hospital: Hospital) -> tuple[list[Resource],
                                                                    list[RowError]]:
    """One 挂号 row → ([Encounter, Condition?, ChargeItem?], problems), or ([], problems)
    when the row is rejected. Never raises on row content."""
    errors: list[RowError] = []
    visit_no, patient_id = fold(row.get("visit_no")), fold(row.get("patient_id"))
    type_raw = fold(row.get("visit_type_code"))
    if not visit_no:
        errors.append(RowError("visit_no", "", "required",
                               "门(急)诊号 is required: with the visit date it keys the Encounter"))
    if not patient_id:
        errors.append(RowError("patient_id", "", "required", "院内患者ID is required"))
    if not type_raw:
        errors.append(RowError("visit_type_code", "", "required",
                               "患者类型 (1 门诊, 2 急诊) is required: it gives Encounter.class"))
    visit_date = visit_day = ""
    raw_date = fold(row.get("visit_date"))
    try:
        visit_date = parse_datetime(raw_date, hospital.tz)
        visit_day = parse_source_datetime(raw_date).day.isoformat()
    except ValueRejected as exc:
        errors.append(exc.to_row_error("visit_date", raw_date))
    classes = _visit_class(type_raw) if type_raw else None
    if isinstance(classes, ValueRejected):
        errors.append(classes.to_row_error("visit_type_code", type_raw))
    if errors or classes is None or isinstance(classes, ValueRejected):
        return [], errors

    act_class, patient_type = classes
    visit_key = outpatient_visit_key(visit_no, visit_day)
    patient_ref = "Patient/" + patient_resource_id(hospital, patient_id)
    start = visit_date
    raw_time = fold(row.get("visit_time"))
    if raw_time:
        try:
            start = parse_datetime(raw_time, hospital.tz)
        except ValueRejected as exc:
            errors.append(exc.to_row_error("visit_time", raw_time, "warning"))
            raw_time = ""

    condition = _condition(row, hospital, visit_key, patient_ref, start, errors)
    seen = fold(row.get("diagnosis_code")) or fold(row.get("diagnosis_name"))
    encounter: Resource = {
        "resourceType": "Encounter",
        "id": encounter_resource_id(hospital, visit_key),
        "meta": {"profile": [CN_ENCOUNTER]},
        "identifier": [{"use": "usual", "type": {"text": "门(急)诊号"},
                        "system": OID_OUTPATIENT_NO, "value": visit_no,
                        "period": {"start": visit_day, "end": visit_day}}],
        "status": "finished" if raw_time or seen else "arrived",
        "class": act_class,
        "type": [{"coding": [patient_type], "text": patient_type["display"]}],
        "subject": {"reference": patient_ref},
        "period": {"start": start},
    }
    department, doctor = fold(row.get("department")), fold(row.get("doctor"))
    if department:
        encounter["serviceType"] = {"text": department}
    if doctor:
        encounter["participant"] = [{
            "type": [{"coding": [{"system": HL7_TERM + "v3-ParticipationType", "code": "ATND",
                                  "display": "attender"}], "text": "接诊医生"}],
            "individual": {"display": doctor}}]
    resources = [encounter]
    if condition:
        encounter["diagnosis"] = [{"condition": {"reference": "Condition/" + condition["id"]},
                                   "rank": 1}]
        resources.append(condition)
    charge = _charge_item(row, hospital, visit_key, patient_ref, visit_date, errors)
    if charge:
        resources.append(charge)
    return resources, errors


# `datasets.Dataset.map_rows` over 挂号 rows; `RowError.row` is the index in `rows`.
map_visit_rows = per_row(map_visit)
