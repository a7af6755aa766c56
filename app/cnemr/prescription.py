"""WS 445-2014 part 3 (门(急)诊处方) 西药处方 and 中药处方 line items → FHIR R4 MedicationRequest
and, once dispensed, MedicationDispense.

A prescription export (HIS xt_dzcf + xt_dzcfmx) has one row per line item; the importer groups
them by `prescription_no`. Rows are dicts keyed by these canonical data elements (values are
the exported text; blank or missing means not recorded):

Prescription level (all rows of a 处方 must agree; a blank cell is not a disagreement):
- `prescription_no` (required): 处方编号 → groupIdentifier urn:oid:2.16.156.10011.1.20 on
  every line; keys each line's id.
- `patient_id` (required): 院内患者ID → subject, as `app.cnemr.patient` keys it.
- `visit_no`: 门(急)诊号, and `visit_date`: 就诊日期 (default: the date of
  `prescribed_time`) → encounter, the same visit key as `app.cnemr.visit`
  (`context.outpatient_visit_key`: `<门诊号>@<YYYYMMDD>`).
- `prescribed_time` (required): 处方开立日期 → authoredOn.
- `doctor` (required): 处方开立医师 → requester.display. The CN profile requires
  authoredOn and requester, so a 处方 without them is rejected rather than half imported.
- `prescription_type`: 处方类别 西药 / 中成药 (C0004 西药处方) or 中药 / 草药 / 饮片 (C0005
  中药处方), WS/T 500 codes in category next to the FHIR `outpatient` category.
- `dispensed`: 发药标志 (1/是/Y/已发药) → status completed, and a MedicationDispense per line
  (below); otherwise active.
- `dispensed_time`: 发药时间 → MedicationDispense.whenHandedOver.
- `pharmacist`: 发药药师 → MedicationDispense.performer.actor (display).
  Both describe a dispense: given for a 处方 whose 发药标志 does not say dispensed, they are
  left out with a warning rather than taken as a dispense the flag denies.
- `doses_count`: 付数 (剂数) of a 中药处方 → a note `共7付` on every herb line. Not
  dispenseRequest.numberOfRepeatsAllowed: that counts refills after the first dispense, and
  7付 is one dispense of seven daily doses.

Line level:
- `line_no`: 明细序号; with `prescription_no` keys the line. Without it the key is
  `group_no` + `drug_code` (or `drug_name`); a repeated key is reported (see map_prescription).
- `drug_code` (ypCode): 药品代码 → a coding in the hospital's drug code system
  `urn:oid:<hospital OID>.drug` (the same convention as `Hospital.patient_id_system`).
- `nhsa_drug_code`: 国家医保药品编码 (西药 23 characters starting X, 中成药 20 starting Z,
  中药饮片 starting T) → a coding in `https://fhir.yilian.cn/CodeSystem/nhsa-drug-code`, a
  URI this project defines because the 国家医保局 has published none.
- `drug_name` (ypmc): 药品名称 → medicationCodeableConcept.text. `drug_code` or `drug_name`
  is required.
- `specification` (gg): 药品规格 → note `规格: …` (R4 MedicationRequest has no element for it).
- `dose` (mcjl) and `dose_unit` (mcjldw): 每次剂量 → dosageInstruction.doseAndRate.doseQuantity,
  UCUM where the unit is one (g, mg, μg, mL, U, IU …), the printed unit only otherwise (粒, 片).
- `frequency_code` (pcCode): 用药频次 CV06.00.228 (1 bid, 2 biw, 3 hs, 4 q12h, 5 q1h, 6 q3h,
  7 q6h, 8 q8h, 9 qd, 10 qid, 11 qod, 12 qw, 13 st, 99 其他) or the abbreviation itself
  (tid, which CV06.00.228 lacks, included) → Timing.code (CV06.00.228 coding where it has one,
  v3 GTSAbbreviation where it has one, text always) and Timing.repeat (bid: 2 per 1 d,
  q8h: 1 per 8 h, st: count 1, hs: when HS …). 99 其他 gives its coding and no repeat. The
  CV06.00.228 displays are those of its CodeSystem in fhir_profiles/ (`app.cnemr.terminology`).
- `route` (yfCode): 用法 → dosageInstruction.route.text (the mapping file's values table turns
  a hospital's 用法 codes into words).
- `quantity` (sl) and `quantity_unit` (dw): 发药数量 → dispenseRequest.quantity.
- `days` (ts): 用药天数 → dispenseRequest.expectedSupplyDuration in days.
- `group_no` (zh): 组号 → lines sharing a 组号 within a 处方 (一组输液) get the note
  `组号 N: 同组 …` naming the other drugs of the group; R4 has no element for it.
- `decoction` (jzfs): 煎法 (水煎服, 先煎, 后下 …) → dosageInstruction.additionalInstruction.text.

A dispensed 处方 gets one MedicationDispense per line (status completed, the line's
medicationCodeableConcept, subject, context = the encounter, authorizingPrescription → the
line's MedicationRequest, quantity and daysSupply = the line's 发药数量 and 用药天数), its id
keyed like the line's. The 处方 dataset makes no Medication resources: a drug's identity is
fully carried by medicationCodeableConcept (the hospital's 药品代码 and the 国家医保药品编码), and
a Medication would add only what a drug catalogue export (剂型, 成分, 生产厂家, 批号) gives,
which a 处方 export does not have; one made from the line would repeat the code and invite
each 处方 to overwrite the others' copy.

Amounts (je 金额) are left for the 收费明细 dataset, where they become ChargeItems beside the
other fees; a MedicationRequest is an order, not a charge.

Rejected (error): the whole 处方 when it lacks `patient_id`, `prescribed_time` (or it is not a
date) or `doctor`, or its rows disagree on a prescription-level element; a line without
`drug_code` and `drug_name`, or repeating another line's key with different content. Anything
else bad (dose, frequency, quantity, days, 医保编码, 发药时间, dispense details of a 处方 not
flagged dispensed) is a warning and the value is left out.
Never raises on row content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from app.cnemr.context import (
    CN_MEDICATION_REQUEST,
    Hospital,
    encounter_resource_id,
    outpatient_visit_key,
    patient_resource_id,
    prescription_line_resource_id,
    stable_id,
)
from app.cnemr.errors import RowError, ValueRejected
from app.cnemr.terminology import coding
from app.cnemr.values import UCUM, fold, parse_datetime, parse_source_datetime
from app.text import is_digits

Resource = dict[str, Any]

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
OID_PRESCRIPTION_NO = "urn:oid:2.16.156.10011.1.20"  # 处方编号
CS_FREQUENCY = "urn:oid:2.16.156.10011.2.3.1.267"  # 用药频次 CV06.00.228
CS_DOCUMENT_TYPE = "urn:oid:2.16.156.10011.2.4"  # WS/T 500 共享文档
CS_GTS = HL7_TERM + "v3-GTSAbbreviation"
NHSA_DRUG_CODE = "https://fhir.yilian.cn/CodeSystem/nhsa-drug-code"  # 国家医保药品编码

PRESCRIPTION_KEYS = ("patient_id", "visit_no", "visit_date", "prescribed_time", "doctor",
                     "prescription_type", "dispensed", "doses_count", "dispensed_time",
                     "pharmacist")


def dispense_resource_id(hospital: Hospital, prescription_no: str, line: str) -> str:
    """MedicationDispense.id for the dispense of one line of a 处方编号 (keyed as the line)."""
    return stable_id("meddisp", hospital, prescription_no, line)


class Frequency(NamedTuple):
    """A 用药频次: its CV06.00.228 code (None for tid), v3 GTSAbbreviation code (None where
    the value set has none) and Timing.repeat."""

    cv: str | None
    gts: str | None
    repeat: dict[str, Any]


def _per(frequency: int, period: int, unit: str) -> dict[str, Any]:
    return {"frequency": frequency, "period": period, "periodUnit": unit}


FREQUENCIES: dict[str, Frequency] = {
    "bid": Frequency("1", "BID", _per(2, 1, "d")),
    "biw": Frequency("2", None, _per(2, 1, "wk")),
    "hs": Frequency("3", "BED", {**_per(1, 1, "d"), "when": ["HS"]}),
    "q12h": Frequency("4", None, _per(1, 12, "h")),
    "q1h": Frequency("5", "Q1H", _per(1, 1, "h")),
    "q3h": Frequency("6", "Q3H", _per(1, 3, "h")),
    "q6h": Frequency("7", "Q6H", _per(1, 6, "h")),
    "q8h": Frequency("8", "Q8H", _per(1, 8, "h")),
    "qd": Frequency("9", "QD", _per(1, 1, "d")),
    "qid": Frequency("10", "QID", _per(4, 1, "d")),
    "qod": Frequency("11", "QOD", _per(1, 2, "d")),
    "qw": Frequency("12", "WK", _per(1, 1, "wk")),
    "st": Frequency("13", None, {"count": 1}),
    "tid": Frequency(None, "TID", _per(3, 1, "d")),
}
_FREQUENCY_BY_CV = {f.cv: abbr for abbr, f in FREQUENCIES.items() if f.cv}
_FREQUENCY_ALIASES = {"qn": "hs", "once": "st", "stat": "st", "每日一次": "qd", "每日两次": "bid",
                      "每日三次": "tid", "每日四次": "qid", "立即": "st", "睡前": "hs"}

# Dose and dispense units (lower-cased, μ folded to u) that are UCUM units.
_UCUM_UNITS = {"g": "g", "mg": "mg", "ug": "ug", "μg": "ug", "kg": "kg", "ml": "mL", "l": "L",
               "u": "U", "iu": "[IU]", "mmol": "mmol", "克": "g", "毫克": "mg", "微克": "ug",
               "毫升": "mL", "单位": "U"}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NHSA = re.compile(r"X[0-9A-Z]{22}|Z[0-9A-Z]{19}|T[0-9A-Z]{9,22}")
_TCM_TYPES = {"中药", "中草药", "草药", "饮片", "中药饮片", "2", "C0005"}
_WESTERN_TYPES = {"西药", "中成药", "西药中成药", "1", "C0004"}
_DISPENSED = {"1", "是", "y", "yes", "已发药", "已发", "true"}


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def dose_quantity(value_text: str, unit_text: str) -> dict[str, Any]:
    """A Quantity for a dose or dispense amount: UCUM where the unit is one, else unit text."""
    s = fold(value_text)
    if not _NUMBER.fullmatch(s):
        raise ValueRejected("quantity-format", "must be a positive number such as 0.5 or 30")
    q: dict[str, Any] = {"value": _number(s)}
    unit = fold(unit_text)
    if unit:
        q["unit"] = unit
        code = _UCUM_UNITS.get(unit.replace("μ", "u").lower()) or _UCUM_UNITS.get(unit)
        if code:
            q["system"], q["code"] = UCUM, code
    return q


def parse_frequency(text: str) -> tuple[dict[str, Any], str]:
    """(Timing, abbreviation) for a CV06.00.228 code or abbreviation; 99 其他 gives text only."""
    s = fold(text)
    if s in ("99", "其他"):
        other = coding(CS_FREQUENCY, "99")
        return {"code": {"coding": [other], "text": other["display"]}}, other["display"]
    abbr = _FREQUENCY_BY_CV.get(s.lstrip("0") or s) or _FREQUENCY_ALIASES.get(s.lower()) \
        or _FREQUENCY_ALIASES.get(s) or s.lower()
    frequency = FREQUENCIES.get(abbr)
    if frequency is None:
        raise ValueRejected("cv06.00.228",
                            "用药频次 must be a CV06.00.228 code (1 bid, 2 biw, 3 hs, 4 q12h, "
                            "5 q1h, 6 q3h, 7 q6h, 8 q8h, 9 qd, 10 qid, 11 qod, 12 qw, 13 st, "
                            "99 其他) or one of those abbreviations or tid; timing left out")
    codings: list[Resource] = []
    if frequency.cv:
        codings.append(coding(CS_FREQUENCY, frequency.cv))
    if frequency.gts:
        codings.append({"system": CS_GTS, "code": frequency.gts})
    return {"repeat": dict(frequency.repeat), "code": {"coding": codings, "text": abbr}}, abbr


def _first(rows: Sequence[Mapping[str, Any]], key: str) -> str:
    return next((fold(r.get(key)) for r in rows if fold(r.get(key))), "")


def _row_of(rows: Sequence[Mapping[str, Any]], key: str, value: str) -> int:
    return next(i for i, r in enumerate(rows) if fold(r.get(key)) == value)


def _dosage(index: int, row: Mapping[str, Any], errors: list[RowError]) -> Resource | None:
    dosage: Resource = {}
    text: list[str] = []
    dose_raw, dose_unit = fold(row.get("dose")), fold(row.get("dose_unit"))
    dose = None
    if dose_raw:
        try:
            dose = dose_quantity(dose_raw, dose_unit)
            text.append(f"每次{dose_raw}{dose_unit}")
        except ValueRejected as exc:
            errors.append(RowError("dose", dose_raw, exc.rule, "每次剂量 " + exc.message +
                                   "; dose left out", "warning", index))
    route = fold(row.get("route"))
    if route:
        dosage["route"] = {"text": route}
        text.append(route)
    frequency_raw = fold(row.get("frequency_code"))
    if frequency_raw:
        try:
            dosage["timing"], abbr = parse_frequency(frequency_raw)
            text.append(abbr)
        except ValueRejected as exc:
            errors.append(exc.to_row_error("frequency_code", frequency_raw, "warning", index))
    decoction = fold(row.get("decoction"))
    if decoction:
        dosage["additionalInstruction"] = [{"text": decoction}]
        text.append(decoction)
    if dose:
        dosage["doseAndRate"] = [{"doseQuantity": dose}]
    if not dosage:
        return None
    return {"text": "，".join(text), **dosage}


def _medication(row: Mapping[str, Any], index: int, hospital: Hospital,
                errors: list[RowError]) -> Resource:
    code, name = fold(row.get("drug_code")), fold(row.get("drug_name"))
    codings: list[Resource] = []
    nhsa = fold(row.get("nhsa_drug_code")).upper()
    if nhsa:
        if _NHSA.fullmatch(nhsa):
            codings.append({"system": NHSA_DRUG_CODE, "code": nhsa})
        else:
            errors.append(RowError("nhsa_drug_code", nhsa, "nhsa-drug-code",
                                   "国家医保药品编码 must be 23 characters starting X (西药), 20 "
                                   "starting Z (中成药) or a T code (中药饮片); left out",
                                   "warning", index))
    if code:
        local: Resource = {"system": f"urn:oid:{hospital.oid}.drug", "code": code}
        if name:
            local["display"] = name
        codings.append(local)
    concept: Resource = {"text": name or code}
    if codings:
        concept["coding"] = codings
    return concept


def _line_key(row: Mapping[str, Any]) -> str:
    line_no = fold(row.get("line_no"))
    if line_no:
        return line_no
    return "\x1f".join((fold(row.get("group_no")),
                        fold(row.get("drug_code")) or fold(row.get("drug_name"))))


def _reject_all(rows: Sequence[Mapping[str, Any]], field: str, rule: str, message: str
                ) -> tuple[list[Resource], list[RowError]]:
    return [], [RowError(field, fold(r.get(field)), rule, message, "error", i)
                for i, r in enumerate(rows)]


def map_prescription(rows: Sequence[Mapping[str, Any]], hospital: Hospital
                     ) -> tuple[list[Resource], list[RowError]]:
    """The rows of one 处方 → one MedicationRequest per line (each followed by its
    MedicationDispense when the 处方 is dispensed), and problems. `RowError.row` is
    the index in `rows`. A line repeating another line's key is reported: with identical
    content as a warning (imported once), with different content as an error (first kept)."""
    if not rows:
        return [], []
    prescription_no = _first(rows, "prescription_no")
    if not prescription_no:
        return _reject_all(rows, "prescription_no", "required",
                           "处方编号 is required: it groups the lines of a 处方")
    for key in PRESCRIPTION_KEYS:
        values = {fold(r.get(key)) for r in rows} - {""}
        if len(values) > 1:
            return _reject_all(rows, key, "prescription-consistency",
                               f"lines of 处方 {prescription_no} disagree on {key} "
                               f"({len(values)} different values); the 处方 was not imported")
    for key, label in (("patient_id", "院内患者ID"), ("prescribed_time", "处方开立日期"),
                       ("doctor", "处方开立医师")):
        if not _first(rows, key):
            return _reject_all(rows, key, "required",
                               f"{label} is required (处方 {prescription_no}); not imported")
    raw_time = _first(rows, "prescribed_time")
    try:
        authored = parse_datetime(raw_time, hospital.tz)
        visit_day = parse_source_datetime(raw_time).day.isoformat()
    except ValueRejected as exc:
        return [], [exc.to_row_error("prescribed_time", fold(r.get("prescribed_time")), "error",
                                     i) for i, r in enumerate(rows)]
    errors: list[RowError] = []
    raw_visit_date = _first(rows, "visit_date")
    if raw_visit_date:
        try:
            visit_day = parse_source_datetime(raw_visit_date).day.isoformat()
        except ValueRejected as exc:
            errors.append(exc.to_row_error("visit_date", raw_visit_date, "warning",
                                           _row_of(rows, "visit_date", raw_visit_date)))

    dispensed = _first(rows, "dispensed").lower() in _DISPENSED
    handed_over = _handed_over(rows, dispensed, hospital, errors)
    common: Resource = {
        "groupIdentifier": {"type": {"text": "处方编号"}, "system": OID_PRESCRIPTION_NO,
                            "value": prescription_no},
        "status": "completed" if dispensed else "active",
        "intent": "order",
        "category": [{"coding": [{"system": HL7_TERM + "medicationrequest-category",
                                  "code": "outpatient", "display": "Outpatient"}]}],
    }
    kind = _first(rows, "prescription_type")
    tcm = kind in _TCM_TYPES
    if kind and not tcm and kind not in _WESTERN_TYPES:
        errors.append(RowError("prescription_type", kind, "prescription-type",
                               "处方类别 must be 西药/中成药 or 中药/草药/饮片; left out",
                               "warning", _row_of(rows, "prescription_type", kind)))
    elif kind:
        document = coding(CS_DOCUMENT_TYPE, "C0005" if tcm else "C0004")  # 中药/西药处方
        common["category"].append({"coding": [document], "text": document["display"]})
    common["subject"] = {"reference": "Patient/" + patient_resource_id(
        hospital, _first(rows, "patient_id"))}
    visit_no = _first(rows, "visit_no")
    if visit_no:
        common["encounter"] = {"reference": "Encounter/" + encounter_resource_id(
            hospital, outpatient_visit_key(visit_no, visit_day))}
    common["authoredOn"] = authored
    common["requester"] = {"display": _first(rows, "doctor")}
    doses_note = None
    doses_raw = _first(rows, "doses_count")
    if doses_raw:
        if is_digits(fold(doses_raw)) and int(fold(doses_raw)) > 0:
            doses_note = {"text": f"共{int(fold(doses_raw))}付"}
        else:
            errors.append(RowError("doses_count", doses_raw, "doses-count",
                                   "付数 must be a whole number of 付 (剂) such as 7; left out",
                                   "warning", _row_of(rows, "doses_count", doses_raw)))

    lines: list[tuple[int, Mapping[str, Any]]] = []
    seen: dict[str, tuple[str, ...]] = {}
    for index, row in enumerate(rows):
        if not fold(row.get("drug_code")) and not fold(row.get("drug_name")):
            errors.append(RowError("drug_code", "", "required",
                                   "药品代码 or 药品名称 is required for a 处方 line", "error",
                                   index))
            continue
        key = _line_key(row)
        content = tuple(fold(v) for k, v in sorted(row.items()))
        if key in seen:
            same = seen[key] == content
            errors.append(RowError(
                "line_no" if fold(row.get("line_no")) else "drug_code", key.replace("\x1f", " "),
                "duplicate-line" if same else "conflicting-line",
                f"处方 {prescription_no} lists this line again "
                + ("with the same content; imported once" if same else
                   "with different content; only the first was imported"),
                "warning" if same else "error", index))
            continue
        seen[key] = content
        lines.append((index, row))

    groups: dict[str, list[str]] = {}
    for _, row in lines:
        group_no = fold(row.get("group_no"))
        if group_no:
            groups.setdefault(group_no, []).append(
                fold(row.get("drug_name")) or fold(row.get("drug_code")))

    resources: list[Resource] = []
    for index, row in lines:
        request: Resource = {
            "resourceType": "MedicationRequest",
            "id": prescription_line_resource_id(hospital, prescription_no, _line_key(row)),
            "meta": {"profile": [CN_MEDICATION_REQUEST]},
            **common,
            "medicationCodeableConcept": _medication(row, index, hospital, errors),
        }
        notes: list[Resource] = []
        spec = fold(row.get("specification"))
        if spec:
            notes.append({"text": f"规格: {spec}"})
        group_no = fold(row.get("group_no"))
        if group_no and len(groups[group_no]) > 1:
            name = fold(row.get("drug_name")) or fold(row.get("drug_code"))
            others = [n for n in groups[group_no] if n != name]
            notes.append({"text": f"组号 {group_no}: 同组 {'、'.join(others)}"})
        if doses_note:
            notes.append(dict(doses_note))
        if notes:
            request["note"] = notes
        dosage = _dosage(index, row, errors)
        if dosage:
            request["dosageInstruction"] = [dosage]
        dispense = _dispense(index, row, errors)
        if dispense:
            request["dispenseRequest"] = dispense
        resources.append(request)
        if dispensed:
            resources.append(_dispensed(request, dispense, prescription_no, _line_key(row),
                                        handed_over, _first(rows, "pharmacist"), hospital))
    return resources, errors


def _handed_over(rows: Sequence[Mapping[str, Any]], dispensed: bool, hospital: Hospital,
                 errors: list[RowError]) -> str | None:
    """whenHandedOver of a dispensed 处方; dispense details of one not dispensed are reported."""
    raw = _first(rows, "dispensed_time")
    if not dispensed:
        for key, label in (("dispensed_time", "发药时间"), ("pharmacist", "发药药师")):
            value = _first(rows, key)
            if value:
                errors.append(RowError(
                    key, value, "dispense-not-flagged",
                    f"{label} is given but 发药标志 does not say the 处方 was dispensed "
                    "(1/是/Y/已发药); no dispense was recorded and the value was left out",
                    "warning", _row_of(rows, key, value)))
        return None
    if not raw:
        return None
    try:
        return parse_datetime(raw, hospital.tz)
    except ValueRejected as exc:
        errors.append(exc.to_row_error("dispensed_time", raw, "warning",
                                       _row_of(rows, "dispensed_time", raw)))
        return None


def _dispensed(request: Resource, dispense: Resource, prescription_no: str, line: str,
               handed_over: str | None, pharmacist: str, hospital: Hospital) -> Resource:
    """The MedicationDispense of a dispensed line, built from its MedicationRequest."""
    out: Resource = {
        "resourceType": "MedicationDispense",
        "id": dispense_resource_id(hospital, prescription_no, line),
        "status": "completed",
        "medicationCodeableConcept": request["medicationCodeableConcept"],
        "subject": request["subject"],
    }
    if "encounter" in request:
        out["context"] = request["encounter"]
    if pharmacist:
        out["performer"] = [{"actor": {"display": pharmacist}}]
    out["authorizingPrescription"] = [{"reference": f"MedicationRequest/{request['id']}"}]
    if "quantity" in dispense:
        out["quantity"] = dispense["quantity"]
    if "expectedSupplyDuration" in dispense:
        out["daysSupply"] = dispense["expectedSupplyDuration"]
    if handed_over:
        out["whenHandedOver"] = handed_over
    return out


def _dispense(index: int, row: Mapping[str, Any], errors: list[RowError]) -> Resource:
    dispense: Resource = {}
    raw = fold(row.get("quantity"))
    if raw:
        try:
            dispense["quantity"] = dose_quantity(raw, fold(row.get("quantity_unit")))
        except ValueRejected as exc:
            errors.append(RowError("quantity", raw, exc.rule, "发药数量 " + exc.message +
                                   "; left out", "warning", index))
    days = fold(row.get("days"))
    if days:
        if is_digits(days) and int(days) > 0:
            dispense["expectedSupplyDuration"] = {"value": int(days), "unit": "天",
                                                  "system": UCUM, "code": "d"}
        else:
            errors.append(RowError("days", days, "days-format",
                                   "用药天数 must be a whole number of days such as 7; left out",
                                   "warning", index))
    return dispense


def map_prescription_rows(rows: Sequence[Mapping[str, Any]], hospital: Hospital
                          ) -> tuple[list[Resource], list[RowError]]:
    """`datasets.Dataset.map_rows` over lines of any number of 处方 (grouped here by
    `prescription_no`, as the importer already does); `RowError.row` is the index in `rows`."""
    groups: dict[str, list[int]] = {}
    errors: list[RowError] = []
    for index, row in enumerate(rows):
        number = fold(row.get("prescription_no"))
        if not number:
            errors.append(RowError("prescription_no", "", "required",
                                   "处方编号 is required: it groups the lines of a 处方", "error",
                                   index))
            continue
        groups.setdefault(number, []).append(index)
    resources: list[Resource] = []
    for indices in groups.values():
        mapped, problems = map_prescription([rows[i] for i in indices], hospital)
        resources += mapped
        errors += [RowError(e.field, e.value, e.rule, e.message, e.severity,
                            None if e.row is None else indices[e.row]) for e in problems]
    errors.sort(key=lambda e: -1 if e.row is None else e.row)
    return resources, errors
