"""WS 445-2014 part 4 (检查检验记录) 检验报告 LIS rows → FHIR R4 ServiceRequest, Specimen,
DiagnosticReport and Observations.

A LIS export has one row per reported item. Rows are dicts keyed by these canonical data
elements (values are the exported text; blank or missing means not recorded):

- `report_id` (required): 检验报告单号 → DiagnosticReport.identifier urn:oid:2.16.156.10011.1.33;
  keys the DiagnosticReport id, and with `item_code` each Observation id.
- `patient_id` (required): 院内患者ID → subject `Patient/<id>`, the id `app.cnemr.patient`
  gives the same patient.
- `visit_id`: the visit key (就诊流水号; `context.admission_visit_key` for a 住院) → encounter.
- `visit_no`: 门(急)诊号, and `visit_date`: 就诊日期 (default: the day of `collected_time`) →
  encounter, the 挂号 Encounter of `app.cnemr.visit` (`context.outpatient_visit_key`), as
  `app.cnemr.prescription` links it. Used when `visit_id` is blank; a `visit_id` naming
  another visit wins, and the disagreement is reported.
- `item_code` (required): 检验项目代码 (LIS ItemNo) → code in `Hospital.lis_item_system`, plus
  LOINC for the 血常规/肝功能/肾功能 items of `app.samples.hospital.ANALYTES` when the unit is
  the one the LOINC code is defined for (μmol/L creatinine is 14682-9, never mg/dL's 2160-0).
- `item_name`: 检验项目名称 → code.text (and display of the local coding).
- `result` (required): 检验结果 → valueQuantity (numbers, '<0.5') or valueString (阴性, +, …).
- `unit`: 单位 → Quantity.unit as printed, with its UCUM code. The CN lab profile requires a
  UCUM code on every valueQuantity: a number printed without a unit is dimensionless (pH,
  比重, INR, ratios) and gets UCUM `1`; a number whose unit has no UCUM code here is kept as
  printed in valueString ('12 毫米/小时'), with a warning.
- `reference_range`: 参考范围 → referenceRange (low/high where numeric, text always).
- `abnormal_flag`: 异常标志 (H/L/N, 高/低, ↑/↓) → interpretation.
- `specimen_no`: 标本编号 (Barcode / SampleNo) → a Specimen (identifier
  urn:oid:2.16.156.10011.1.14, subject), referenced by DiagnosticReport.specimen,
  Observation.specimen and ServiceRequest.specimen. Its id is keyed by the 院内患者ID and the
  标本编号 together: a SampleNo is an instrument's number of the day and is given out again, so
  the number alone would file one patient's tube under another; reports of one tube (肝功能 and
  肾功能 from one serum tube) point at one Specimen.
- `specimen_type`: 标本类型 (血清, 全血, 尿液 …) → Specimen.type: the text as exported, with
  the HL7 v2 table 0487 code where the name is unambiguous (血清 SER, 全血 BLD, 血浆 PLAS,
  尿液 UR, 脑脊液 CSF, 粪便 STL; the codes themselves are read too). Any other name (静脉血,
  痰, 分泌物 …) is kept as text alone, since a guessed code would be a wrong one.
- `order_no`: 电子申请单编号 (检验申请单号) → ServiceRequest.identifier
  urn:oid:2.16.156.10011.1.24.
- `ordering_doctor`: 申请医生 → ServiceRequest.requester (display).
- `order_time`: 申请时间 → ServiceRequest.authoredOn.
- `panel_code`, `panel_name`: 检验组合 (血常规 …) → DiagnosticReport.code, with LOINC for the
  three panels of `app.samples.hospital.PANELS` when named so.
- `collected_time` (采样时间) or else `test_time` (检验时间) → effectiveDateTime; the 采样时间
  is also Specimen.collection.collectedDateTime.
- `report_time`: 报告时间 → issued (needs a time of day).
- `department`: 检验科室 → DiagnosticReport.performer (display).
- `doctor`: 报告医生 → DiagnosticReport.resultsInterpreter (display).

Report level: every element above except the item's own (`item_code`, `item_name`, `result`,
`unit`, `reference_range`, `abnormal_flag`) belongs to the report, and all rows of a report
must agree on it (a blank cell is not a disagreement: report-level values are often on one row
only). Rows that disagree reject the whole report, with an error on each row naming the column
and the values, since taking either value would file results under a wrong patient, visit,
specimen or time.

Each report also gets the 检验申请 it answers, a ServiceRequest (status completed, intent order,
category SNOMED CT 108252007 Laboratory procedure, code = the report's 检验组合 coding, subject,
encounter), whose id is keyed by the 检验报告单号: a LIS export rarely carries the 申请单 on its
own, and one 申请单 may yield several reports, each answering its own part of it.
DiagnosticReport.basedOn points at it. No ServiceRequest, Specimen or report is written when
not one item of the report could be imported.

Observations declare cn-observation-lab and the report cn-diagnostic-report (meta.profile), so
the server holds them to those profiles on every write; Specimen and ServiceRequest have no CN
profile and are held to R4. R4 has no element on Observation that points at its
DiagnosticReport; the link is DiagnosticReport.result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app.cnemr.context import (
    CN_DIAGNOSTIC_REPORT,
    CN_OBSERVATION_LAB,
    Hospital,
    encounter_resource_id,
    lab_observation_resource_id,
    lab_report_resource_id,
    outpatient_visit_key,
    patient_resource_id,
    stable_id,
)
from app.cnemr.errors import RowError, ValueRejected
from app.cnemr.values import (
    LabValue,
    fold,
    parse_datetime,
    parse_flag,
    parse_instant,
    parse_lab_result,
    parse_reference_range,
    parse_source_datetime,
    ucum_code,
)
from app.samples.hospital import ANALYTES, LOINC, OID_LAB_REPORT_NO, PANELS, Analyte

Resource = dict[str, Any]

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
OID_SPECIMEN_NO = "urn:oid:2.16.156.10011.1.14"  # 标本编号
OID_ORDER_NO = "urn:oid:2.16.156.10011.1.24"  # 电子申请单编号
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
V2_SPECIMEN_TYPE = HL7_TERM + "v2-0487"

# 标本类型 names with one meaning in HL7 v2 table 0487: code → (display, the names LIS write).
_SPECIMEN_TYPES = {
    "SER": ("Serum", ("血清",)),
    "BLD": ("Whole blood", ("全血", "全血标本")),
    "PLAS": ("Plasma", ("血浆",)),
    "UR": ("Urine", ("尿液", "尿", "尿标本", "随机尿")),
    "CSF": ("Cerebral spinal fluid", ("脑脊液",)),
    "STL": ("Stool = Fecal", ("粪便", "大便", "粪")),
}
_SPECIMEN_BY_NAME = {name: code for code, (_, names) in _SPECIMEN_TYPES.items()
                     for name in (*names, code)}

# LIS item codes differ between vendors; these are the spellings seen for the sample analytes.
_ALIASES = {"CREA": "Cr", "CRE": "Cr", "CR": "Cr", "SCR": "Cr", "UREA": "BUN", "URE": "BUN",
            "NEUT%": "NEUT%", "NEU%": "NEUT%", "LYM%": "LYMPH%", "LYMPH%": "LYMPH%",
            "HB": "HGB", "T-BIL": "TBIL", "TBILI": "TBIL"}
_BY_CODE: dict[str, Analyte] = {code.upper(): a for code, a in ANALYTES.items()} | {
    alias: ANALYTES[target] for alias, target in _ALIASES.items()}
_BY_NAME: dict[str, Analyte] = {a.name: a for a in ANALYTES.values()} | {
    "尿素氮": ANALYTES["BUN"], "谷丙转氨酶": ANALYTES["ALT"], "谷草转氨酶": ANALYTES["AST"]}

# The report-level data elements, with the names a hospital's export gives them.
_REPORT_NAMES = {"patient_id": "院内患者ID", "visit_id": "就诊流水号", "visit_no": "门(急)诊号",
                 "visit_date": "就诊日期", "specimen_no": "标本编号",
                 "panel_code": "检验组合代码", "panel_name": "检验组合名称",
                 "collected_time": "采样时间", "test_time": "检验时间", "report_time": "报告时间",
                 "department": "检验科室", "doctor": "报告医生", "specimen_type": "标本类型",
                 "order_no": "电子申请单编号", "ordering_doctor": "申请医生",
                 "order_time": "申请时间"}
_TIME_KEYS = frozenset({"visit_date", "collected_time", "test_time", "report_time",
                        "order_time"})


def specimen_resource_id(hospital: Hospital, patient_id: str, specimen_no: str) -> str:
    """Specimen.id for a 标本编号 of a patient (a SampleNo recycles; see the module doc)."""
    return stable_id("spec", hospital, patient_id, specimen_no)


def lab_order_resource_id(hospital: Hospital, report_id: str) -> str:
    """ServiceRequest.id of the 检验申请 a 检验报告单 answers."""
    return stable_id("sr", hospital, report_id)


def loinc_for(item_code: str, item_name: str, unit_text: str) -> Analyte | None:
    """The sample analyte an item is, if its code or name is known and its unit is the one
    the analyte's LOINC code measures (so a mass-unit result never gets a molar LOINC)."""
    analyte = _BY_CODE.get(fold(item_code).upper()) or _BY_NAME.get(fold(item_name))
    if analyte is None or ucum_code(unit_text) != analyte.ucum:
        return None
    return analyte


def _item_code(row: Mapping[str, Any], hospital: Hospital) -> Resource:
    code, name, unit = fold(row.get("item_code")), fold(row.get("item_name")), fold(row.get("unit"))
    local: Resource = {"system": hospital.lis_item_system, "code": code}
    if name:
        local["display"] = name
    codings = [local]
    analyte = loinc_for(code, name, unit)
    if analyte:
        codings.insert(0, {"system": LOINC, "code": analyte.loinc,
                           "display": analyte.loinc_display})
    return {"coding": codings, "text": name or code}


def _panel_code(code: str, name: str, hospital: Hospital) -> Resource:
    codings: list[Resource] = []
    panel = PANELS.get(name)
    if panel:
        codings.append({"system": LOINC, "code": panel.loinc, "display": panel.loinc_display})
    if code:
        local: Resource = {"system": hospital.lis_panel_system, "code": code}
        if name:
            local["display"] = name
        codings.append(local)
    out: Resource = {"text": name or code or "检验报告"}
    if codings:
        out["coding"] = codings
    return out


def _first(rows: Sequence[tuple[int, Mapping[str, Any]]], key: str) -> str:
    return next((fold(r.get(key)) for _, r in rows if fold(r.get(key))), "")


def _same_value(key: str, raw: str) -> str:
    """What a report-level cell means, for comparing rows: a time written two ways
    ('2026/11/20 07:42', '20261120074200') is one time."""
    if key in _TIME_KEYS:
        try:
            return str(parse_source_datetime(raw))
        except ValueRejected:
            return raw
    return raw


def _consistency(rows: Sequence[tuple[int, Mapping[str, Any]]], report_id: str
                 ) -> list[RowError]:
    """An error on every row of a report whose rows disagree on a report-level element,
    naming the element and the values."""
    errors: list[RowError] = []
    for key, name in _REPORT_NAMES.items():
        values: dict[str, str] = {}  # meaning → the first spelling of it, in row order
        for _, r in rows:
            raw = fold(r.get(key))
            if raw:
                values.setdefault(_same_value(key, raw), raw)
        if len(values) < 2:
            continue
        spellings = list(values.values())
        for index, r in rows:
            raw = fold(r.get(key))
            if raw:
                own = values[_same_value(key, raw)]
                other = next(v for v in spellings if v != own)
                message = (f"{name} ({key}) {raw!r} on this row disagrees with {other!r} on "
                           f"another row of 检验报告单 {report_id}")
            else:
                message = (f"rows of 检验报告单 {report_id} disagree on {name} ({key}): "
                           + " vs ".join(repr(v) for v in spellings))
            errors.append(RowError(key, raw, "report-consistency",
                                   message + "; the whole report was not imported: correct the "
                                   "export and import the report again", "error", index))
    return errors


def _encounter(rows: Sequence[tuple[int, Mapping[str, Any]]], hospital: Hospital,
               errors: list[RowError]) -> Resource | None:
    """The reference to the report's Encounter: by `visit_id`, or else by 门(急)诊号 and 就诊日期
    (default: the 采样 day) as `app.cnemr.prescription` links its 处方."""
    visit_id, visit_no = _first(rows, "visit_id"), _first(rows, "visit_no")
    visit_key = ""
    if visit_no:
        day = ""
        for key in ("visit_date", "collected_time"):
            raw = _first(rows, key)
            if raw and not day:
                try:
                    day = parse_source_datetime(raw).day.isoformat()
                except ValueRejected as exc:
                    if key == "visit_date":
                        errors.append(exc.to_row_error(key, raw, "warning", _row_of(rows, key)))
        if day:
            visit_key = outpatient_visit_key(visit_no, day)
        elif not visit_id:
            errors.append(RowError(
                "visit_date", _first(rows, "visit_date"), "visit-date-required",
                f"门(急)诊号 {visit_no} needs a 就诊日期 (or a 采样时间) to name the visit, as "
                "门诊号 recycle; imported without a link to the Encounter", "warning",
                _row_of(rows, "visit_no")))
    if visit_id and visit_key and visit_key != visit_id:
        errors.append(RowError(
            "visit_no", visit_no, "visit-key-conflict",
            f"就诊流水号 {visit_id} and 门(急)诊号 {visit_no} + 就诊日期 ({visit_key}) name "
            "different visits; linked to the Encounter of the 就诊流水号", "warning",
            _row_of(rows, "visit_no")))
    key = visit_id or visit_key
    if not key:
        return None
    return {"reference": "Encounter/" + encounter_resource_id(hospital, key)}


def _row_of(rows: Sequence[tuple[int, Mapping[str, Any]]], key: str) -> int:
    return next((i for i, r in rows if fold(r.get(key))), rows[0][0])


def _conformant_value(value: LabValue, printed: str, unit: str, index: int,
                      errors: list[RowError]) -> Resource:
    """value[x] as cn-observation-lab takes it: a valueQuantity always with a UCUM code."""
    q = value.element.get("valueQuantity")
    if q is None or "code" in q:
        return value.element
    if not unit:
        return {"valueQuantity": {**q, "system": UCUM, "code": "1"}}
    if value.printed_flag:
        printed = printed.removesuffix(value.printed_flag).strip()
    text = f"{printed} {unit}"
    errors.append(RowError("unit", unit, "ucum-unknown",
                           "unit has no UCUM code here and the CN lab profile requires one on a "
                           f"numeric result; the result was kept as printed text ({text!r})",
                           "warning", index))
    return {"valueString": text}


def _times(rows: Sequence[tuple[int, Mapping[str, Any]]], hospital: Hospital,
           errors: list[RowError]) -> tuple[str | None, str | None, str | None]:
    """(采样时间, effective time, issued) of a report; a bad value is a warning and left out."""
    collected = effective = issued = None
    for key in ("collected_time", "test_time"):
        raw = _first(rows, key)
        if raw and effective is None:
            try:
                effective = parse_datetime(raw, hospital.tz)
                if key == "collected_time":
                    collected = effective
            except ValueRejected as exc:
                row = next(i for i, r in rows if fold(r.get(key)) == raw)
                errors.append(exc.to_row_error(key, raw, "warning", row))
    raw = _first(rows, "report_time")
    if raw:
        try:
            issued = parse_instant(raw, hospital.tz)
        except ValueRejected as exc:
            row = next(i for i, r in rows if fold(r.get("report_time")) == raw)
            errors.append(exc.to_row_error("report_time", raw, "warning", row))
    return collected, effective, issued


def _specimen(rows: Sequence[tuple[int, Mapping[str, Any]]], hospital: Hospital,
              patient_id: str, subject: Resource, collected: str | None) -> Resource:
    specimen_no = _first(rows, "specimen_no")
    specimen: Resource = {
        "resourceType": "Specimen",
        "id": specimen_resource_id(hospital, patient_id, specimen_no),
        "identifier": [{"type": {"text": "标本编号"}, "system": OID_SPECIMEN_NO,
                        "value": specimen_no}],
    }
    kind = _first(rows, "specimen_type")
    if kind:
        code = _SPECIMEN_BY_NAME.get(kind) or _SPECIMEN_BY_NAME.get(kind.upper())
        specimen["type"] = {"text": kind}
        if code:
            specimen["type"]["coding"] = [{"system": V2_SPECIMEN_TYPE, "code": code,
                                           "display": _SPECIMEN_TYPES[code][0]}]
    specimen["subject"] = subject
    if collected:
        specimen["collection"] = {"collectedDateTime": collected}
    return specimen


def _order(rows: Sequence[tuple[int, Mapping[str, Any]]], hospital: Hospital, report_id: str,
           code: Resource, common: Resource, specimen: Resource | None,
           errors: list[RowError]) -> Resource:
    """The ServiceRequest (检验申请) a report answers."""
    order: Resource = {"resourceType": "ServiceRequest",
                       "id": lab_order_resource_id(hospital, report_id)}
    order_no = _first(rows, "order_no")
    if order_no:
        order["identifier"] = [{"type": {"text": "电子申请单编号"}, "system": OID_ORDER_NO,
                                "value": order_no}]
    order |= {
        "status": "completed",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED, "code": "108252007",
                                  "display": "Laboratory procedure"}]}],
        "code": code,
        "subject": common["subject"],
    }
    if "encounter" in common:
        order["encounter"] = common["encounter"]
    raw = _first(rows, "order_time")
    if raw:
        try:
            order["authoredOn"] = parse_datetime(raw, hospital.tz)
        except ValueRejected as exc:
            errors.append(exc.to_row_error("order_time", raw, "warning",
                                           _row_of(rows, "order_time")))
    doctor = _first(rows, "ordering_doctor")
    if doctor:
        order["requester"] = {"display": doctor}
    if specimen:
        order["specimen"] = [{"reference": f"Specimen/{specimen['id']}"}]
    return order


def _observation(index: int, row: Mapping[str, Any], hospital: Hospital, report_id: str,
                 common: Resource, errors: list[RowError]) -> Resource | None:
    unit = fold(row.get("unit"))
    try:
        value = parse_lab_result(row.get("result"), unit)
    except ValueRejected as exc:
        errors.append(exc.to_row_error("result", fold(row.get("result")), "error", index))
        return None
    item_code = fold(row.get("item_code"))
    obs: Resource = {
        "resourceType": "Observation",
        "id": lab_observation_resource_id(hospital, report_id, item_code),
        "meta": {"profile": [CN_OBSERVATION_LAB]},
        "status": "final",
        "category": [{"coding": [{"system": HL7_TERM + "observation-category",
                                  "code": "laboratory", "display": "Laboratory"}]}],
        "code": _item_code(row, hospital),
        **common,
        **_conformant_value(value, fold(row.get("result")), unit, index, errors),
    }
    flag_text = fold(row.get("abnormal_flag")) or value.printed_flag
    if flag_text:
        try:
            flag = parse_flag(flag_text)
            if flag:
                obs["interpretation"] = [flag]
        except ValueRejected as exc:
            errors.append(exc.to_row_error("abnormal_flag", flag_text, "warning", index))
    if fold(row.get("reference_range")):
        try:
            obs["referenceRange"] = [parse_reference_range(row.get("reference_range"), unit)]
        except ValueRejected as exc:
            errors.append(exc.to_row_error("reference_range", fold(row.get("reference_range")),
                                           "warning", index))
    return obs


def map_lab_report(rows: Sequence[tuple[int, Mapping[str, Any]]], hospital: Hospital
                   ) -> tuple[list[Resource], list[RowError]]:
    """The (index, row) pairs of one 检验报告单 → Observations then their DiagnosticReport.

    The whole report is rejected if its rows disagree on a report-level element (a blank
    cell is not a disagreement: report-level values are often on one row only); a single
    item is rejected if it has no code or no result, or repeats an item with a different result
    (an identical repeat is reported and imported once). Never raises on row content.
    """
    errors: list[RowError] = []
    report_id = fold(rows[0][1].get("report_id")) if rows else ""
    if not rows or not report_id:
        return [], [RowError("report_id", "", "required", "检验报告单号 is required", "error",
                             rows[0][0] if rows else None)]
    disagreements = _consistency(rows, report_id)
    if disagreements:
        return [], disagreements
    patient_id = _first(rows, "patient_id")
    if not patient_id:
        return [], [RowError("patient_id", "", "required",
                             f"院内患者ID is required (检验报告单 {report_id})", "error", i)
                    for i, _ in rows]

    common: Resource = {"subject": {"reference": "Patient/" + patient_resource_id(
        hospital, patient_id)}}
    encounter = _encounter(rows, hospital, errors)
    if encounter:
        common["encounter"] = encounter
    collected, effective, issued = _times(rows, hospital, errors)
    if effective:
        common["effectiveDateTime"] = effective
    if issued:
        common["issued"] = issued
    specimen = _specimen(rows, hospital, patient_id, common["subject"], collected) \
        if _first(rows, "specimen_no") else None
    specimen_ref = {"reference": f"Specimen/{specimen['id']}"} if specimen else None

    observations: list[Resource] = []
    seen: dict[str, tuple[str, ...]] = {}
    for index, row in rows:
        item_code = fold(row.get("item_code"))
        if not item_code:
            errors.append(RowError("item_code", "", "required",
                                   "检验项目代码 is required: it keys the result", "error", index))
            continue
        content = tuple(fold(row.get(k)) for k in ("result", "unit", "reference_range",
                                                   "abnormal_flag"))
        if item_code in seen:
            same = seen[item_code] == content
            errors.append(RowError(
                "item_code", item_code, "duplicate-item" if same else "conflicting-item",
                f"检验报告单 {report_id} lists item {item_code} again "
                + ("with the same result; imported once" if same else
                   "with a different result; only the first was imported"),
                "warning" if same else "error", index))
            continue
        seen[item_code] = content
        obs = _observation(index, row, hospital, report_id, common, errors)
        if obs is not None:
            if specimen_ref:
                obs["specimen"] = dict(specimen_ref)
            observations.append(obs)
    if not observations:
        return [], errors

    code = _panel_code(_first(rows, "panel_code"), _first(rows, "panel_name"), hospital)
    order = _order(rows, hospital, report_id, code, common, specimen, errors)
    report: Resource = {
        "resourceType": "DiagnosticReport",
        "id": lab_report_resource_id(hospital, report_id),
        "meta": {"profile": [CN_DIAGNOSTIC_REPORT]},
        "identifier": [{"type": {"text": "检验报告单号"}, "system": OID_LAB_REPORT_NO,
                        "value": report_id}],
        "basedOn": [{"reference": f"ServiceRequest/{order['id']}"}],
        "status": "final",
        "category": [{"coding": [{"system": HL7_TERM + "v2-0074", "code": "LAB",
                                  "display": "Laboratory"}]}],
        "code": code,
        **common,
    }
    department, doctor = _first(rows, "department"), _first(rows, "doctor")
    if department:
        report["performer"] = [{"display": department}]
    if doctor:
        report["resultsInterpreter"] = [{"display": doctor}]
    if specimen_ref:
        report["specimen"] = [dict(specimen_ref)]
    report["result"] = [{"reference": f"Observation/{o['id']}"} for o in observations]
    return [*([specimen] if specimen else []), order, *observations, report], errors


def map_lab_rows(rows: Iterable[Mapping[str, Any]], hospital: Hospital
                 ) -> tuple[list[Resource], list[RowError]]:
    """LIS rows of any number of reports (in any order) → resources and problems.

    Rows are grouped by 检验报告单号; `RowError.row` is the 0-based position in `rows`.
    """
    groups: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    errors: list[RowError] = []
    for index, row in enumerate(rows):
        report_id = fold(row.get("report_id"))
        if not report_id:
            errors.append(RowError("report_id", "", "required",
                                   "检验报告单号 is required: it groups items into a report",
                                   "error", index))
            continue
        groups.setdefault(report_id, []).append((index, row))
    resources: list[Resource] = []
    specimens: dict[str, Resource] = {}
    for group in groups.values():
        mapped, problems = map_lab_report(group, hospital)
        errors.extend(problems)
        for resource in mapped:
            if resource["resourceType"] == "Specimen":
                first = specimens.setdefault(resource["id"], resource)
                if first is not resource:
                    if first != resource:
                        errors.append(_specimen_conflict(group, first, resource))
                    continue
            resources.append(resource)
    errors.sort(key=lambda e: -1 if e.row is None else e.row)
    return resources, errors


def _specimen_conflict(rows: Sequence[tuple[int, Mapping[str, Any]]], first: Resource,
                       again: Resource) -> RowError:
    """Two reports of one tube that describe the tube differently: the first description stands,
    as a transaction writes a resource once."""
    differ = [k for k in ("type", "collection") if first.get(k) != again.get(k)]
    field = "specimen_type" if "type" in differ else "collected_time"
    specimen_no = again["identifier"][0]["value"]
    return RowError(field, _first(rows, field), "specimen-conflict",
                    f"标本编号 {specimen_no} is described differently by another 检验报告单 of "
                    f"the same patient ({', '.join(differ)}); the first report's 标本类型 and "
                    "采样时间 were kept for the Specimen: correct the export so every report of "
                    "one tube gives the same values", "warning", _row_of(rows, field))
