"""WS 445-2014 part 4 (检查检验记录) 检验报告 LIS rows → FHIR R4 DiagnosticReport + Observations.

A LIS export has one row per reported item. Rows are dicts keyed by these canonical data
elements (values are the exported text; blank or missing means not recorded):

- `report_id` (required): 检验报告单号 → DiagnosticReport.identifier urn:oid:2.16.156.10011.1.33;
  keys the DiagnosticReport id, and with `item_code` each Observation id.
- `patient_id` (required): 院内患者ID → subject `Patient/<id>`, the id `app.cnemr.patient`
  gives the same patient. All rows of a report must agree on it.
- `visit_id`: the visit key (就诊流水号, or 门诊号 + date where 门诊号 recycles) → encounter.
  All rows of a report must agree on it.
- `item_code` (required): 检验项目代码 (LIS ItemNo) → code in `Hospital.lis_item_system`, plus
  LOINC for the 血常规/肝功能/肾功能 items of `app.samples.hospital.ANALYTES` when the unit is
  the one the LOINC code is defined for (μmol/L creatinine is 14682-9, never mg/dL's 2160-0).
- `item_name`: 检验项目名称 → code.text (and display of the local coding).
- `result` (required): 检验结果 → valueQuantity (numbers, '<0.5') or valueString (阴性, +, …).
- `unit`: 单位 → Quantity.unit as printed, UCUM code when known.
- `reference_range`: 参考范围 → referenceRange (low/high where numeric, text always).
- `abnormal_flag`: 异常标志 (H/L/N, 高/低, ↑/↓) → interpretation.
- `specimen_no`: 标本编号 (Barcode / SampleNo) → specimen, a logical reference by identifier
  urn:oid:2.16.156.10011.1.14 until Specimen resources are imported.
- `panel_code`, `panel_name`: 检验组合 (血常规 …) → DiagnosticReport.code, with LOINC for the
  three panels of `app.samples.hospital.PANELS` when named so.
- `collected_time` (采样时间) or else `test_time` (检验时间) → effectiveDateTime.
- `report_time`: 报告时间 → issued (needs a time of day).
- `department`: 检验科室 → DiagnosticReport.performer (display).
- `doctor`: 报告医生 → DiagnosticReport.resultsInterpreter (display).

R4 has no element on Observation that points at its DiagnosticReport; the link is
DiagnosticReport.result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app.cnemr.context import (
    Hospital,
    encounter_resource_id,
    lab_observation_resource_id,
    lab_report_resource_id,
    patient_resource_id,
)
from app.cnemr.errors import RowError, ValueRejected
from app.cnemr.values import (
    fold,
    parse_datetime,
    parse_flag,
    parse_instant,
    parse_lab_result,
    parse_reference_range,
    ucum_code,
)
from app.samples.hospital import ANALYTES, LOINC, OID_LAB_REPORT_NO, PANELS, Analyte

Resource = dict[str, Any]

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
OID_SPECIMEN_NO = "urn:oid:2.16.156.10011.1.14"  # 标本编号

# LIS item codes differ between vendors; these are the spellings seen for the sample analytes.
_ALIASES = {"CREA": "Cr", "CRE": "Cr", "CR": "Cr", "SCR": "Cr", "UREA": "BUN", "URE": "BUN",
            "NEUT%": "NEUT%", "NEU%": "NEUT%", "LYM%": "LYMPH%", "LYMPH%": "LYMPH%",
            "HB": "HGB", "T-BIL": "TBIL", "TBILI": "TBIL"}
_BY_CODE: dict[str, Analyte] = {code.upper(): a for code, a in ANALYTES.items()} | {
    alias: ANALYTES[target] for alias, target in _ALIASES.items()}
_BY_NAME: dict[str, Analyte] = {a.name: a for a in ANALYTES.values()} | {
    "尿素氮": ANALYTES["BUN"], "谷丙转氨酶": ANALYTES["ALT"], "谷草转氨酶": ANALYTES["AST"]}

_REPORT_KEYS = ("patient_id", "visit_id")


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


def _times(rows: Sequence[tuple[int, Mapping[str, Any]]], hospital: Hospital,
           errors: list[RowError]) -> tuple[str | None, str | None]:
    effective = issued = None
    for key in ("collected_time", "test_time"):
        raw = _first(rows, key)
        if raw and effective is None:
            try:
                effective = parse_datetime(raw, hospital.tz)
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
    return effective, issued


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
        "status": "final",
        "category": [{"coding": [{"system": HL7_TERM + "observation-category",
                                  "code": "laboratory", "display": "Laboratory"}]}],
        "code": _item_code(row, hospital),
        **common,
        **value.element,
    }
    if unit and ucum_code(unit) is None and "valueQuantity" in value.element:
        errors.append(RowError("unit", unit, "ucum-unknown",
                               "unit has no UCUM mapping here; kept as printed text only",
                               "warning", index))
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

    The whole report is rejected if its rows disagree on the patient or the visit (a blank
    cell is not a disagreement: report-level values are often on one row only); a single
    item is rejected if it has no code or no result, or repeats an item with a different result
    (an identical repeat is reported and imported once). Never raises on row content.
    """
    errors: list[RowError] = []
    report_id = fold(rows[0][1].get("report_id")) if rows else ""
    if not rows or not report_id:
        return [], [RowError("report_id", "", "required", "检验报告单号 is required", "error",
                             rows[0][0] if rows else None)]
    for key in _REPORT_KEYS:
        values = {fold(r.get(key)) for _, r in rows} - {""}
        if len(values) > 1:
            return [], [RowError(key, fold(r.get(key)), "report-consistency",
                                 f"rows of 检验报告单 {report_id} disagree on {key} "
                                 f"({len(values)} different values); the report was not imported",
                                 "error", i) for i, r in rows]
    patient_id = _first(rows, "patient_id")
    if not patient_id:
        return [], [RowError("patient_id", "", "required",
                             f"院内患者ID is required (检验报告单 {report_id})", "error", i)
                    for i, _ in rows]

    common: Resource = {"subject": {"reference": "Patient/" + patient_resource_id(
        hospital, patient_id)}}
    visit_id = _first(rows, "visit_id")
    if visit_id:
        common["encounter"] = {"reference": "Encounter/" + encounter_resource_id(
            hospital, visit_id)}
    effective, issued = _times(rows, hospital, errors)
    if effective:
        common["effectiveDateTime"] = effective
    if issued:
        common["issued"] = issued
    specimen_no = _first(rows, "specimen_no")
    specimen = {"type": "Specimen", "identifier": {"system": OID_SPECIMEN_NO,
                                                   "value": specimen_no}} if specimen_no else None

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
            if specimen:
                obs["specimen"] = specimen
            observations.append(obs)
    if not observations:
        return [], errors

    report: Resource = {
        "resourceType": "DiagnosticReport",
        "id": lab_report_resource_id(hospital, report_id),
        "identifier": [{"type": {"text": "检验报告单号"}, "system": OID_LAB_REPORT_NO,
                        "value": report_id}],
        "status": "final",
        "category": [{"coding": [{"system": HL7_TERM + "v2-0074", "code": "LAB",
                                  "display": "Laboratory"}]}],
        "code": _panel_code(_first(rows, "panel_code"), _first(rows, "panel_name"), hospital),
        **common,
    }
    department, doctor = _first(rows, "department"), _first(rows, "doctor")
    if department:
        report["performer"] = [{"display": department}]
    if doctor:
        report["resultsInterpreter"] = [{"display": doctor}]
    if specimen:
        report["specimen"] = [specimen]
    report["result"] = [{"reference": f"Observation/{o['id']}"} for o in observations]
    return [*observations, report], errors


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
    for group in groups.values():
        mapped, problems = map_lab_report(group, hospital)
        resources.extend(mapped)
        errors.extend(problems)
    errors.sort(key=lambda e: -1 if e.row is None else e.row)
    return resources, errors
