"""就诊卡 / 医保卡 / 居民健康卡 (HIS card master, WS 445-2014 part 1 病历概要 identification and
cost elements) → FHIR R4 Coverage.

A HIS card table (xt_brkxx 病人卡信息 and the like) has one row per card issued to a patient.
Rows are dicts keyed by these canonical data elements (blank or missing means not recorded):

- `card_no` (required): 卡号 → Coverage.identifier in the card's namespace (below) and, with
  `card_type`, Coverage.id (`card_coverage_resource_id`), so a re-import updates the card.
- `card_type` (required): `health` 居民健康卡, `social-security` 社会保障卡/医保卡 or
  `hospital` 院内就诊卡 (the Chinese names are accepted too; the mapping file's values
  table translates a HIS's own codes).
- `patient_id` (required): 院内患者ID → beneficiary `Patient/<id>`, the id
  `app.cnemr.patient` gives the same patient (`patient_resource_id`).
- `card_status`: 卡状态 → Coverage.status: active (有效, 正常, 在用) or cancelled (挂失, 注销,
  作废, 停用, 冻结, 过期, 退卡); FHIR codes are accepted as given. Blank: active (a card table lists
  the cards in use). Anything else rejects the row: Coverage.status is required and not guessed.
- `issue_date`: 发卡日期 → period.start.
- `expiry_date`: 有效期 (截止日期) → period.end; 长期 / 长期有效 / 永久 mean no end.
- `insurance_type`: 医疗保险类别 CV02.01.204 (code or name) → Coverage.type in
  `CS_INSURANCE_TYPE` (the table of `app.cnemr.billing`). Without it a 医保卡 keeps no type
  (a warning: the 类别 is what a 医保 settlement needs); a 就诊卡 or 居民健康卡 is self-pay,
  type v3 ActCode `pay`.
- `insurer_name`: 医保经办机构 (…医疗保障局) → payor display; default 医疗保障经办机构.
- `insurance_area`: 医保统筹区编码 (6 digits, GB/T 2260-based, with 省本级 codes such as 439900
  that GB/T 2260 lacks) → payor identifier in `INSURANCE_AREA_SYSTEM`.
  A self-pay card's payor is the Patient.

Identifier namespaces:
- 居民健康卡号: the national `urn:oid:2.16.156.10011.1.19`.
- 社会保障卡号 / 医保卡号: no national namespace was found; Yilian defines
  `SOCIAL_SECURITY_CARD_SYSTEM` (https://fhir.yilian.cn/NamingSystem/cn-social-security-card,
  described by the NamingSystem of the same id). The number is the card's own number; a HIS
  that exports the 社会保障号码 (which is the 居民身份证号) there exports personal data the
  Patient already carries under 1.3.
- 院内就诊卡号: per hospital, `urn:oid:<hospital OID>.visit-card` (`hospital_card_system`), as
  the other hospital-local numbers (`.patient`, `.charge-item`, `.settlement`).
- 医保统筹区: Yilian's `INSURANCE_AREA_SYSTEM` (no national namespace found).

Why Coverage and not Patient.identifier: the importer writes whole resources with PUT (an
update replaces the resource). A card export carries the card and the patient's key, not the
patient's name, sex, 身份证号 …; rewriting the Patient from it would erase what the patient
export wrote, and the next patient export would erase the cards again. A Coverage per card is
the card's own resource: both exports can be re-imported in any order without either losing
anything, and Coverage (R4: "a card, policy or plan that may pay for services") is where an
insurance card belongs anyway. Cards are keyed by card type and number, not by patient and
insurance type as the settlement Coverage of `app.cnemr.billing` is, so a card export and a
settlement export never overwrite each other's Coverage either.

Rejected (error): no 卡号, 卡类型 or 院内患者ID, an unknown 卡类型 or 卡状态. Anything else bad
is a warning and the value is left out. Never raises on row content.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.cnemr.billing import CS_INSURANCE_TYPE
from app.cnemr.context import CN_COVERAGE, Hospital, patient_resource_id, stable_id
from app.cnemr.errors import RowError, ValueRejected, per_row
from app.cnemr.terminology import codes
from app.cnemr.values import fold, parse_date
from app.text import is_digits

Resource = dict[str, Any]

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
OID_HEALTH_CARD = "urn:oid:2.16.156.10011.1.19"  # 居民健康卡号
SOCIAL_SECURITY_CARD_SYSTEM = "https://fhir.yilian.cn/NamingSystem/cn-social-security-card"
INSURANCE_AREA_SYSTEM = "https://fhir.yilian.cn/NamingSystem/cn-insurance-area"
DEFAULT_INSURER = "医疗保障经办机构"

CARD_TYPES: dict[str, str] = {"health": "居民健康卡", "social-security": "社会保障卡",
                              "hospital": "就诊卡"}
_CARD_TYPE_NAMES = {"居民健康卡": "health", "健康卡": "health", "电子健康卡": "health",
                    "社会保障卡": "social-security", "社保卡": "social-security",
                    "医保卡": "social-security", "就诊卡": "hospital", "院内就诊卡": "hospital",
                    "诊疗卡": "hospital", "院内卡": "hospital"}
_CARD_NUMBER_NAMES = {"health": "居民健康卡号", "social-security": "社会保障卡号",
                      "hospital": "就诊卡号"}

STATUSES = ("active", "cancelled", "draft", "entered-in-error")
_STATUS_NAMES = {"有效": "active", "正常": "active", "在用": "active", "启用": "active",
                 "挂失": "cancelled", "注销": "cancelled", "作废": "cancelled",
                 "停用": "cancelled", "冻结": "cancelled", "过期": "cancelled",
                 "退卡": "cancelled"}
_NO_END = frozenset({"长期", "长期有效", "永久", "永久有效"})

# 医疗保险类别 as exports write it in words; the codes and displays are those of the CV02.01.204
# CodeSystem of fhir_profiles/ (`app.cnemr.terminology`).
_INSURANCE_ALIASES = {
    "城镇职工": "1", "职工医保": "1", "城镇居民": "2", "居民医保": "2", "城乡居民": "2",
    "新农合": "3", "公务员补助": "4", "企业补充": "5", "大额补充": "6", "商业保险": "7"}


def card_coverage_resource_id(hospital: Hospital, card_type: str, card_no: str) -> str:
    """Coverage.id of a card, from its type (`CARD_TYPES` key) and number."""
    return stable_id("cov", hospital, "card", card_type, card_no)


def hospital_card_system(hospital: Hospital) -> str:
    """The namespace of a hospital's own 就诊卡号."""
    return f"urn:oid:{hospital.oid}.visit-card"


def card_system(hospital: Hospital, card_type: str) -> str:
    """The identifier namespace of a card type."""
    return {"health": OID_HEALTH_CARD, "social-security": SOCIAL_SECURITY_CARD_SYSTEM}.get(
        card_type) or hospital_card_system(hospital)


def parse_card_type(text: str) -> str:
    s = fold(text)
    code = _CARD_TYPE_NAMES.get(s, s.lower())
    if code not in CARD_TYPES:
        raise ValueRejected("card-type", "卡类型 must be health (居民健康卡), social-security "
                            "(社会保障卡/医保卡) or hospital (就诊卡); translate the HIS's own "
                            "codes in the mapping file's values table; the card was not imported")
    return code


def parse_card_status(text: str) -> str:
    s = fold(text)
    if not s:
        return "active"
    status = _STATUS_NAMES.get(s, s.lower())
    if status not in STATUSES:
        raise ValueRejected("card-status",
                            "卡状态 must be 有效/正常 (active) or 挂失/注销/作废/停用 (cancelled), "
                            "or a FHIR Coverage status; the card was not imported")
    return status


def _insurance_type(raw: str, errors: list[RowError]) -> Resource | None:
    table = codes(CS_INSURANCE_TYPE)
    by_name = {name: code for code, name in table.items()} | _INSURANCE_ALIASES
    code = by_name.get(raw) or (raw.lstrip("0") or raw if is_digits(raw) else raw)
    if code not in table:
        errors.append(RowError("insurance_type", raw, "cv02.01.204",
                               "医疗保险类别 must be a CV02.01.204 code (1 城镇职工, "
                               "2 城镇居民, 3 新农合, 4 公务员补助, 5 企业补充, 6 大额补充, "
                               "7 商业, 99 其他) or its name; Coverage.type keeps the text only",
                               "warning"))
        return {"text": raw}
    return {"coding": [{"system": CS_INSURANCE_TYPE, "code": code,
                        "display": table[code]}], "text": table[code]}


def _period(row: Mapping[str, Any], errors: list[RowError]) -> Resource:
    period: Resource = {}
    for key, part in (("issue_date", "start"), ("expiry_date", "end")):
        raw = fold(row.get(key))
        if not raw or (raw in _NO_END and key == "expiry_date"):
            continue
        try:
            period[part] = parse_date(raw)
        except ValueRejected as exc:
            errors.append(exc.to_row_error(key, raw, "warning"))
    if "start" in period and "end" in period and period["end"] < period["start"]:
        errors.append(RowError("expiry_date", fold(row.get("expiry_date")), "period-order",
                               "有效期 is before 发卡日期; the end of the period was left out",
                               "warning"))
        del period["end"]
    return period


def _payor(row: Mapping[str, Any], errors: list[RowError]) -> Resource:
    payor: Resource = {"display": fold(row.get("insurer_name")) or DEFAULT_INSURER}
    area = fold(row.get("insurance_area"))
    if area:
        if is_digits(area) and len(area) == 6:
            payor["identifier"] = {"type": {"text": "医保统筹区编码"},
                                   "system": INSURANCE_AREA_SYSTEM, "value": area}
        else:
            errors.append(RowError("insurance_area", area, "insurance-area",
                                   "医保统筹区编码 must be 6 digits (e.g. 110100); left out",
                                   "warning"))
    return payor


def map_card(row: Mapping[str, Any], hospital: Hospital) -> tuple[list[Resource],
                                                                  list[RowError]]:
    """One card row → ([Coverage], problems), or ([], problems) when the row is rejected."""
    errors: list[RowError] = []
    card_no = "".join(fold(row.get("card_no")).split())
    type_raw, patient_id = fold(row.get("card_type")), fold(row.get("patient_id"))
    for key, value, name in (("card_no", card_no, "卡号"), ("card_type", type_raw, "卡类型"),
                             ("patient_id", patient_id, "院内患者ID")):
        if not value:
            errors.append(RowError(key, "", "required", f"{name} is required"))
    card_type = status = ""
    if type_raw:
        try:
            card_type = parse_card_type(type_raw)
        except ValueRejected as exc:
            errors.append(exc.to_row_error("card_type", type_raw))
    try:
        status = parse_card_status(fold(row.get("card_status")))
    except ValueRejected as exc:
        errors.append(exc.to_row_error("card_status", fold(row.get("card_status"))))
    if errors:
        return [], errors

    patient_ref = {"reference": "Patient/" + patient_resource_id(hospital, patient_id)}
    coverage: Resource = {
        "resourceType": "Coverage",
        "id": card_coverage_resource_id(hospital, card_type, card_no),
        "meta": {"profile": [CN_COVERAGE]},
        "identifier": [{"use": "official", "type": {"text": _CARD_NUMBER_NAMES[card_type]},
                        "system": card_system(hospital, card_type), "value": card_no}],
        "status": status,
    }
    insurance_raw = fold(row.get("insurance_type"))
    insured = card_type == "social-security" or bool(insurance_raw)
    if insurance_raw:
        cov_type = _insurance_type(insurance_raw, errors)
        if cov_type:
            coverage["type"] = cov_type
    elif insured:
        errors.append(RowError("insurance_type", "", "insurance-type-missing",
                               "医保卡 without 医疗保险类别 (CV02.01.204): imported without "
                               "Coverage.type", "warning"))
    else:
        coverage["type"] = {"coding": [{"system": HL7_TERM + "v3-ActCode", "code": "pay",
                                        "display": "pay"}], "text": "自费"}
    coverage["beneficiary"] = patient_ref
    if insured:
        coverage["relationship"] = {"coding": [{"system": HL7_TERM + "subscriber-relationship",
                                                "code": "self", "display": "Self"}]}
    period = _period(row, errors)
    if period:
        coverage["period"] = period
    coverage["payor"] = [_payor(row, errors) if insured else patient_ref]
    if not insured:
        for key in ("insurer_name", "insurance_area"):
            if fold(row.get(key)):
                errors.append(RowError(key, fold(row.get(key)), "self-pay-insurer",
                                       f"a self-pay {CARD_TYPES[card_type]} has no insurer; "
                                       "left out (give 医疗保险类别 if the card is insured)",
                                       "warning"))
    return [coverage], errors


# `datasets.Dataset.map_rows` over card rows; `RowError.row` is the index in `rows`.
map_card_rows = per_row(map_card)
