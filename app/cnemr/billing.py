"""收费明细 and 结算 (WS 445-2014 part 1 病历概要 cost elements, HIS mz_js/zy_js) → FHIR R4
ChargeItem, Account, Invoice, Coverage, Claim and ClaimResponse.

A HIS settlement export has one row per fee line (收费明细), with the settlement's own columns
(结算ID, 发票号, 总金额, the 医保 split …) repeated on the lines or given on one of them. Rows
are grouped by `settlement_id`. Canonical data elements (blank or missing means not recorded):

Settlement level (all rows of a settlement must agree; a blank cell is not a disagreement):
- `settlement_id` (required): 结算ID → Invoice/Claim identifier in `urn:oid:<OID>.settlement`;
  keys every id below except Account and Coverage.
- `patient_id` (required): 院内患者ID → subject/patient `Patient/<id>` as `app.cnemr.patient`.
- the visit key → ChargeItem.context and Claim.item.encounter `Encounter/<id>` through
  `encounter_resource_id`, keyed as the other mappers key the same visit:
  `visit_id` when the export carries a ready key (as the lab mapper's `visit_id`); else
  `inpatient_no` 住院号 + `admission_count` 住院次数 → `context.admission_visit_key` (the 首页's
  Encounter; without 住院次数 the settlement is imported without a visit link and a warning,
  since many hospitals keep one 住院号 per patient for life); else `outpatient_no` 门诊号 +
  `visit_date` 就诊日期 → `context.outpatient_visit_key` (挂号's Encounter). Without a
  就诊日期 the 结算日期's day is used: 门诊 fees are settled on the day of the visit. The
  first positive 挂号费 line of a 门诊 settlement takes `registration_fee_resource_id`, so it
  and the 挂号 mapper's 挂号费 ChargeItem are one resource, not a double charge.
  住院号 (or patient_type 3) makes the Claim `institutional`, otherwise `professional` (门急诊).
- `patient_type`: 患者类型 CV09.00.404 (1 门诊, 2 急诊, 3 住院, 9 其他; zero-padded 01 … or
  the words 门诊/急诊/住院/其他); anything else is a warning and is left out.
- `invoice_no`: 发票号 → Invoice.identifier `urn:oid:<OID>.invoice`.
- `settlement_time` (required): 结算日期 → Invoice.date, Claim/ClaimResponse.created,
  ChargeItem.enteredDate.
- `insurance_settlement_no`: 医保结算流水号 → ClaimResponse.identifier in
  `INSURANCE_SETTLEMENT_SYSTEM`.
- `total_amount` (required): 总金额 → Invoice.totalGross/totalNet, Claim.total,
  ClaimResponse.total `submitted`.
- `fund_paid` 统筹支付, `account_paid` 个人账户支付, `cash_paid` 现金支付, `copay` 自付,
  `self_pay` 自费 → ClaimResponse.total in `SETTLEMENT_COMPONENT` (below); 统筹支付 is also
  ClaimResponse.payment (what the fund pays the hospital).
- `insurance_type`: 医疗保险类别 CV02.01.204 (code or name) → Coverage.type, and the
  医疗付费方式 CV07.10.005 of Account and Claim where ConceptMap cv02-01-204-to-cv07-10-005
  gives one (1, 2, 3, 7; the supplementary schemes 4-6 and 99 other do not); with it come a
  Coverage, a Claim and a ClaimResponse. Without it the settlement is self-pay: ChargeItems,
  Account and Invoice only (R4 Claim needs a Coverage), and a 统筹/个人账户 amount is reported.
- `insurer_name`: 医保经办机构 → Coverage.payor / Claim.insurer display (default by type).

Line level: `item_code` (required) 项目编码 and `item_name` 项目名称 → ChargeItem.code in
`charge_item_system(hospital)`; `fee_category` 收费大类 (西药费, 中药费, 检查费, 化验费, 治疗费,
手术费, 材料费, 床位费, 挂号费 …) → the `EXT_FEE_CATEGORY` extension (R4 ChargeItem has no
category element; StructureDefinition fee-category) and Claim.item.category, as text: HIS
收费大类 differ between hospitals and are not the 首页 cost categories of that extension's
preferred ValueSet; `unit_price` 单价, `quantity` 数量,
`amount` (required) 金额.

ChargeItem price: R4 ChargeItem takes its price from a ChargeItemDefinition (the 物价表); HIS
exports carry the billed amount instead, so the line 金额 goes to `priceOverride` (R4: the
total price of the charge overriding the list price) with `overrideReason` saying so, and
`factorOverride` is not used (exports have no discount factor). The 单价 is kept in the Invoice
lineItem (informational priceComponent) and Claim.item.unitPrice. Invoice.totalGross =
totalNet = 总金额 (exports show no discount). The Account is one per visit (or, without a
visit, per settlement), type v3 ActCode PBILLACCT.

`SETTLEMENT_COMPONENT` (https://fhir.yilian.cn/CodeSystem/cn-settlement-component, in
fhir_profiles/) codes:
`fund` 统筹基金支付, `personal-account` 个人账户支付, `cash` 现金支付 (the three payment sources),
`copay` 自付 (the patient's share of items inside the 医保 catalogue: 起付线, 乙类先自付,
按比例自付) and `self-pay` 自费 (items outside the catalogue). `fund` also carries the
adjudication `benefit` coding; 总金额 is adjudication `submitted`.

Consistency (0.01 元 tolerance), checked before anything is produced:
- the line 金额 must sum to 总金额, and 统筹 + 个人账户 + 现金 must equal 总金额: otherwise an
  **error** on every row and the settlement is not imported, because the Invoice, Claim and
  ClaimResponse would contradict each other and a reconciliation fed by them would be wrong;
  a corrected export re-imports over the same ids.
- 自付 + 自费 should equal 个人账户 + 现金 (the patient's share): a **warning**, as regions
  define 自付 differently (起付线 inside or outside it); amounts are kept as given.
- 单价 × 数量 should equal 金额: a warning; 金额 is what was billed and is kept.
Any error on one line rejects the whole settlement (an Invoice missing a line is wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from app.cnemr.context import (
    CN_CLAIM,
    Hospital,
    admission_visit_key,
    encounter_resource_id,
    organization_resource_id,
    outpatient_visit_key,
    patient_resource_id,
    registration_fee_resource_id,
    stable_id,
)
from app.cnemr.errors import RowError, ValueRejected, per_group
from app.cnemr.terminology import codes, translate
from app.cnemr.values import fold, parse_amount, parse_date, parse_datetime
from app.samples.hospital import CS_PATIENT_TYPE
from app.text import is_digits

Resource = dict[str, Any]

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
ADJUDICATION = HL7_TERM + "adjudication"
SETTLEMENT_COMPONENT = "https://fhir.yilian.cn/CodeSystem/cn-settlement-component"
EXT_FEE_CATEGORY = "https://fhir.yilian.cn/StructureDefinition/fee-category"
EXT_PAYMENT_METHOD = "https://fhir.yilian.cn/StructureDefinition/payment-method"
# 医保结算流水号 are issued by the 医保 information platform, not the hospital; no national
# namespace was found, so Yilian names one.
INSURANCE_SETTLEMENT_SYSTEM = "https://fhir.yilian.cn/NamingSystem/cn-medical-insurance-settlement"
CS_INSURANCE_TYPE = "urn:oid:2.16.156.10011.2.3.1.248"  # 医疗保险类别 CV02.01.204
CS_PAYMENT_METHOD = "urn:oid:2.16.156.10011.2.3.1.269"  # 医疗付费方式 CV07.10.005

CENT = TOLERANCE = Decimal("0.01")

# CV02.01.204 医疗保险类别, code → display: the CodeSystem of fhir_profiles/.
INSURANCE_TYPES: Mapping[str, str] = codes(CS_INSURANCE_TYPE)
# CV02.01.204 → CV07.10.005 医疗付费方式 where the two tables name the same scheme.
INSURANCE_TO_PAYMENT_MAP = "https://fhir.yilian.cn/ConceptMap/cv02-01-204-to-cv07-10-005"

# CV02.01.204 医疗保险类别 as hospitals write it besides its code and CodeSystem display.
_INSURANCE_ALIASES = {
    "城镇职工": "1", "职工医保": "1", "职工": "1", "城镇居民": "2", "居民医保": "2", "居民": "2",
    "城乡居民": "2", "新农合": "3", "公务员补助": "4", "企业补充": "5", "大额补充": "6",
    "商业": "7", "商业保险": "7", "其他": "99"}

# (data element, SETTLEMENT_COMPONENT code) of the settlement split, in ClaimResponse.total
# order; the names are the CodeSystem's displays.
SPLIT: tuple[tuple[str, str], ...] = (
    ("fund_paid", "fund"),
    ("account_paid", "personal-account"),
    ("cash_paid", "cash"),
    ("copay", "copay"),
    ("self_pay", "self-pay"),
)
_SETTLEMENT_KEYS = ("patient_id", "visit_id", "inpatient_no", "admission_count", "outpatient_no",
                    "visit_date", "patient_type",
                    "invoice_no", "settlement_time", "insurance_settlement_no", "total_amount",
                    "insurance_type", "insurer_name", *(s[0] for s in SPLIT))
_AMOUNT_NAMES = {"total_amount": "总金额", "amount": "金额", "unit_price": "单价"}


def _amount_name(key: str) -> str:
    """How an amount element is named in messages: 总金额 …, or its split component's display."""
    component = dict(SPLIT).get(key)
    return codes(SETTLEMENT_COMPONENT)[component] if component else _AMOUNT_NAMES[key]


def charge_item_system(hospital: Hospital) -> str:
    """The code system of a hospital's 收费项目编码 (its 物价表, hospital-local)."""
    return f"urn:oid:{hospital.oid}.charge-item"


def settlement_system(hospital: Hospital) -> str:
    return f"urn:oid:{hospital.oid}.settlement"


def invoice_system(hospital: Hospital) -> str:
    return f"urn:oid:{hospital.oid}.invoice"


def _first(rows: Sequence[Mapping[str, Any]], key: str) -> str:
    return next((fold(r.get(key)) for r in rows if fold(r.get(key))), "")


# 患者类型 as exports write it in words; the codes are those of the CV09.00.404 CodeSystem.
_PATIENT_TYPE_TEXT = {"门诊": "1", "急诊": "2", "住院": "3", "其他": "9"}


def _patient_type(rows: Sequence[Mapping[str, Any]], errors: list[RowError]) -> str | None:
    """The CV09.00.404 code of the settlement's 患者类型 (1 门诊, 2 急诊, 3 住院, 9 其他; also
    zero-padded, 03, or in words), None when blank or not such a code (reported)."""
    raw = _first(rows, "patient_type")
    if not raw:
        return None
    code = _PATIENT_TYPE_TEXT.get(raw) or (raw.lstrip("0") or raw if is_digits(raw) else raw)
    if code not in codes(CS_PATIENT_TYPE):
        errors.append(RowError(
            "patient_type", raw, "cv09.00.404",
            "患者类型 must be a CV09.00.404 code (1 门诊, 2 急诊, 3 住院, 9 其他) or its name; "
            "left out, so the Claim is institutional only when a 住院号 is given",
            "warning", next(i for i, r in enumerate(rows) if fold(r.get("patient_type")) == raw)))
        return None
    return code


def _money(value: Decimal) -> Resource:
    return {"value": int(value) if value == value.to_integral_value() else float(value),
            "currency": "CNY"}


def _amount(row: Mapping[str, Any], key: str, index: int, errors: list[RowError]
            ) -> Decimal | None:
    raw = fold(row.get(key))
    if not raw:
        return None
    try:
        if key == "unit_price":  # 中药饮片 and consumables are priced to 0.1 分 and finer
            return Decimal(str(parse_amount(raw, 4)["value"]))
        return Decimal(str(parse_amount(raw)["value"])).quantize(CENT)
    except ValueRejected as exc:
        errors.append(RowError(key, raw, exc.rule, f"{_amount_name(key)}: {exc.message}",
                               "error", index))
        return None


def _quantity(row: Mapping[str, Any], index: int, errors: list[RowError]) -> Decimal | None:
    raw = fold(row.get("quantity"))
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        errors.append(RowError("quantity", raw, "quantity-format",
                               "数量 must be a number such as 2 or 0.5", "error", index))
        return None
    return value


def _code(row: Mapping[str, Any], hospital: Hospital) -> Resource:
    code, name = fold(row.get("item_code")), fold(row.get("item_name"))
    coding: Resource = {"system": charge_item_system(hospital), "code": code}
    if name:
        coding["display"] = name
    return {"coding": [coding], "text": name or code}


def _insurance_type(raw: str, errors: list[RowError]) -> Resource:
    by_name = {name: code for code, name in INSURANCE_TYPES.items()} | _INSURANCE_ALIASES
    code = by_name.get(raw) or (raw.lstrip("0") or raw if is_digits(raw) else raw)
    if code not in INSURANCE_TYPES:
        errors.append(RowError("insurance_type", raw, "cv02.01.204",
                               "医疗保险类别 must be a CV02.01.204 code (1 城镇职工, "
                               "2 城镇居民, 3 新农合, 4 公务员补助, 5 企业补充, 6 大额补充, "
                               "7 商业, 99 其他) or its name; Coverage.type keeps the text only",
                               "warning", 0))
        return {"text": raw}
    return {"coding": [{"system": CS_INSURANCE_TYPE, "code": code,
                        "display": INSURANCE_TYPES[code]}], "text": INSURANCE_TYPES[code]}


class _Line(NamedTuple):
    position: int  # in the settlement's rows
    row: Mapping[str, Any]
    amount: Decimal
    unit_price: Decimal | None
    quantity: Decimal | None
    resource_id: str


def _lines(rows: Sequence[Mapping[str, Any]], hospital: Hospital, settlement_id: str,
           outpatient_visit: str, errors: list[RowError]) -> list[_Line]:
    lines: list[_Line] = []
    occurrences: dict[str, int] = {}
    registration_taken = False
    for index, row in enumerate(rows):
        item_code = fold(row.get("item_code"))
        if not item_code:
            errors.append(RowError("item_code", "", "required",
                                   "项目编码 is required: it codes the fee line", "error", index))
            continue
        amount = _amount(row, "amount", index, errors)
        if amount is None:
            if not fold(row.get("amount")):
                errors.append(RowError("amount", "", "required",
                                       f"金额 is required for fee line {item_code}", "error",
                                       index))
            continue
        unit_price = _amount(row, "unit_price", index, errors)
        quantity = _quantity(row, index, errors)
        if unit_price is not None and quantity is not None and \
                abs(unit_price * quantity - amount) > TOLERANCE:
            billed = (unit_price * quantity).quantize(CENT)
            errors.append(RowError("amount", fold(row.get("amount")), "line-amount",
                                   f"单价 {unit_price} × 数量 {quantity} = "
                                   f"{billed}, but 金额 is {amount}; 金额 was "
                                   "kept as billed", "warning", index))
        # The same item may be billed twice in one settlement (two prescriptions): the n-th
        # line of an item keeps its id across re-imports of the same export.
        n = occurrences.get(item_code, 0) + 1
        occurrences[item_code] = n
        resource_id = stable_id("chg", hospital, settlement_id, item_code, str(n))
        if outpatient_visit and not registration_taken and amount > 0 and \
                fold(row.get("fee_category")) == "挂号费":
            # The 挂号 mapper makes a ChargeItem for the same fee; one id keeps it one resource.
            # A 退号 refund line (negative) stays its own ChargeItem.
            resource_id = registration_fee_resource_id(hospital, outpatient_visit)
            registration_taken = True
        lines.append(_Line(index, row, amount, unit_price, quantity, resource_id))
    return lines


def _settlement_values(rows: Sequence[Mapping[str, Any]], settlement_id: str
                       ) -> list[RowError]:
    errors: list[RowError] = []
    for key in _SETTLEMENT_KEYS:
        values = {fold(r.get(key)) for r in rows} - {""}
        if len(values) > 1:
            errors += [RowError(key, fold(r.get(key)), "settlement-consistency",
                                f"rows of 结算 {settlement_id} disagree on {key} "
                                f"({len(values)} different values); the settlement was not "
                                "imported", "error", i) for i, r in enumerate(rows)]
    return errors


def _split(rows: Sequence[Mapping[str, Any]], errors: list[RowError]
           ) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for key, _ in SPLIT:
        raw = _first(rows, key)
        if raw:
            index = next(i for i, r in enumerate(rows) if fold(r.get(key)) == raw)
            value = _amount(rows[index], key, index, errors)
            if value is not None:
                out[key] = value
    return out


def _check_sums(rows: Sequence[Mapping[str, Any]], settlement_id: str, total: Decimal,
                lines: list[_Line], split: dict[str, Decimal], errors: list[RowError]) -> None:
    line_sum = sum((line.amount for line in lines), Decimal(0))
    if abs(line_sum - total) > TOLERANCE:
        errors += [RowError("amount", fold(r.get("amount")), "settlement-line-sum",
                            f"结算 {settlement_id}: the {len(lines)} fee lines sum to {line_sum} "
                            f"元 but 总金额 is {total} 元; the settlement was not imported",
                            "error", i) for i, r in enumerate(rows)]
    sources = [k for k in ("fund_paid", "account_paid", "cash_paid") if k in split]
    if sources:
        paid = sum((split[k] for k in sources), Decimal(0))
        if abs(paid - total) > TOLERANCE:
            errors += [RowError("total_amount", fold(r.get("total_amount")),
                                "settlement-split-sum",
                                f"结算 {settlement_id}: 统筹支付 + 个人账户支付 + 现金支付 = "
                                f"{paid} 元 but 总金额 is {total} 元; the settlement was not "
                                "imported",
                                "error", i) for i, r in enumerate(rows)]
    if "copay" in split or "self_pay" in split:
        share = split.get("copay", Decimal(0)) + split.get("self_pay", Decimal(0))
        paid_by_patient = split.get("account_paid", Decimal(0)) + split.get("cash_paid",
                                                                            Decimal(0))
        if abs(share - paid_by_patient) > TOLERANCE:
            errors.append(RowError("copay", _first(rows, "copay"), "settlement-patient-share",
                                   f"结算 {settlement_id}: 自付 + 自费 = {share} 元 but 个人账户 + "
                                   f"现金 = {paid_by_patient} 元; kept as given", "warning", 0))


def map_settlement(rows: Sequence[Mapping[str, Any]], hospital: Hospital
                   ) -> tuple[list[Resource], list[RowError]]:
    """The fee-line rows of one 结算 → ChargeItems, Account, Invoice and, with a 医疗保险类别,
    Coverage, Claim and ClaimResponse; or ([], problems) if the settlement is rejected.

    `RowError.row` is the position in `rows`. Never raises on row content.
    """
    if not rows:
        return [], []
    settlement_id = _first(rows, "settlement_id")
    if not settlement_id or any(not fold(r.get("settlement_id")) for r in rows):
        return [], [RowError("settlement_id", "", "required",
                             "结算ID is required: it groups fee lines into a settlement",
                             "error", i) for i, r in enumerate(rows)
                    if not fold(r.get("settlement_id")) or not settlement_id]
    errors = _settlement_values(rows, settlement_id)
    if errors:
        return [], errors
    for key, name in (("patient_id", "院内患者ID"), ("settlement_time", "结算日期"),
                      ("total_amount", "总金额")):
        if not _first(rows, key):
            errors.append(RowError(key, "", "required",
                                   f"{name} is required (结算 {settlement_id})", "error", 0))
    created = ""
    if _first(rows, "settlement_time"):
        try:
            created = parse_datetime(_first(rows, "settlement_time"), hospital.tz)
        except ValueRejected as exc:
            errors.append(exc.to_row_error("settlement_time", _first(rows, "settlement_time"),
                                           "error", 0))
    total: Decimal | None = None
    if _first(rows, "total_amount"):
        index = next(i for i, r in enumerate(rows) if fold(r.get("total_amount")))
        total = _amount(rows[index], "total_amount", index, errors)
    visit, outpatient = _visit_key(rows, created, errors)
    lines = _lines(rows, hospital, settlement_id, visit if outpatient else "", errors)
    split = _split(rows, errors)
    if total is not None and not any(e.severity == "error" for e in errors):
        _check_sums(rows, settlement_id, total, lines, split, errors)
    if total is None or any(e.severity == "error" for e in errors):
        bad = {e.row for e in errors if e.severity == "error"}
        errors += [RowError("settlement_id", settlement_id, "settlement-rejected",
                            f"结算 {settlement_id} was not imported because of the errors on its "
                            "other rows", "error", i) for i in range(len(rows)) if i not in bad]
        return [], errors
    return _resources(rows, hospital, settlement_id, visit, created, total, lines, split,
                      errors), errors


def _visit_key(rows: Sequence[Mapping[str, Any]], created: str, errors: list[RowError]
               ) -> tuple[str, bool]:
    """(visit key or "", whether it is a 门诊 key) as the module doc describes."""
    if _first(rows, "visit_id"):
        return _first(rows, "visit_id"), False
    inpatient_no, count = _first(rows, "inpatient_no"), _first(rows, "admission_count")
    if inpatient_no:
        if is_digits(count) and int(count) > 0:
            return admission_visit_key(inpatient_no, int(count)), False
        errors.append(RowError(
            "admission_count", count, "admission-count",
            f"住院次数 must be a positive integer to name the admission of 住院号 {inpatient_no}; "
            "the settlement was imported without a link to its Encounter", "warning", 0))
        return "", False
    outpatient_no = _first(rows, "outpatient_no")
    if not outpatient_no:
        return "", False
    day = created[:10]
    if _first(rows, "visit_date"):
        try:
            day = parse_date(_first(rows, "visit_date"))
        except ValueRejected as exc:
            errors.append(exc.to_row_error("visit_date", _first(rows, "visit_date"),
                                           "error", 0))
            return "", False
    return (outpatient_visit_key(outpatient_no, day), True) if day else ("", False)


def _resources(rows: Sequence[Mapping[str, Any]], hospital: Hospital, settlement_id: str,
               visit: str, created: str, total: Decimal, lines: list[_Line],
               split: dict[str, Decimal], errors: list[RowError]) -> list[Resource]:
    patient_id = _first(rows, "patient_id")
    patient_ref = {"reference": "Patient/" + patient_resource_id(hospital, patient_id)}
    hospital_ref = {"reference": "Organization/" + organization_resource_id(hospital)}
    inpatient_no = _first(rows, "inpatient_no")
    encounter_ref = {"reference": "Encounter/" + encounter_resource_id(hospital, visit)} \
        if visit else None
    account_id = stable_id("acct", hospital, visit) if visit else \
        stable_id("acct", hospital, "settlement", settlement_id)
    account_ref = {"reference": "Account/" + account_id}
    settlement_identifier = {"type": {"text": "结算ID"}, "system": settlement_system(hospital),
                             "value": settlement_id}

    insurance_raw = _first(rows, "insurance_type")
    coverage: Resource | None = None
    payment_method: Resource | None = None
    insurer_name = _first(rows, "insurer_name")
    if insurance_raw:
        cov_type = _insurance_type(insurance_raw, errors)
        code = cov_type["coding"][0]["code"] if "coding" in cov_type else insurance_raw
        insurer_name = insurer_name or ("商业保险公司" if code == "7" else "医疗保障经办机构")
        coverage = {
            "resourceType": "Coverage",
            "id": stable_id("cov", hospital, patient_id, code),
            "status": "active",
            "type": cov_type,
            "beneficiary": patient_ref,
            "payor": [{"display": insurer_name}],
        }
        method = translate(INSURANCE_TO_PAYMENT_MAP, CS_INSURANCE_TYPE, code) \
            if "coding" in cov_type else None
        if method:
            payment_method = {"url": EXT_PAYMENT_METHOD, "valueCodeableConcept": {
                "coding": [method], "text": method["display"]}}
    elif any(split.get(k, Decimal(0)) != 0 for k in ("fund_paid", "account_paid")):
        errors.append(RowError("insurance_type", "", "insurance-type-missing",
                               f"结算 {settlement_id} has 统筹/个人账户 payments but no "
                               "医疗保险类别: imported as self-pay, without Coverage, Claim and "
                               "ClaimResponse",
                               "warning", 0))

    charge_items: list[Resource] = []
    for line in lines:
        item: Resource = {
            "resourceType": "ChargeItem",
            "id": line.resource_id,
            "status": "billed",
            "code": _code(line.row, hospital),
            "subject": patient_ref,
        }
        category = fold(line.row.get("fee_category"))
        if category:
            item["extension"] = [{"url": EXT_FEE_CATEGORY,
                                  "valueCodeableConcept": {"text": category}}]
        if encounter_ref:
            item["context"] = encounter_ref
        if line.quantity is not None:
            item["quantity"] = {"value": _number(line.quantity)}
        item["priceOverride"] = _money(line.amount)
        item["overrideReason"] = "HIS 收费明细金额 (billed amount of the line)"
        item["enteredDate"] = created
        item["account"] = [account_ref]
        charge_items.append(item)

    account: Resource = {
        "resourceType": "Account",
        "id": account_id,
        "status": "active",
        "type": {"coding": [{"system": HL7_TERM + "v3-ActCode", "code": "PBILLACCT",
                             "display": "patient billing account"}]},
        "name": f"就诊 {visit}" if visit else f"结算 {settlement_id}",
        "subject": [patient_ref],
        "owner": hospital_ref,
    }
    if payment_method:
        account["extension"] = [payment_method]
    if coverage:
        account["coverage"] = [{"coverage": {"reference": "Coverage/" + coverage["id"]}}]

    invoice_identifiers = [settlement_identifier]
    invoice_no = _first(rows, "invoice_no")
    if invoice_no:
        invoice_identifiers.insert(0, {"use": "official", "type": {"text": "发票号"},
                                       "system": invoice_system(hospital), "value": invoice_no})
    invoice: Resource = {
        "resourceType": "Invoice",
        "id": stable_id("inv", hospital, settlement_id),
        "identifier": invoice_identifiers,
        "status": "balanced",
        "subject": patient_ref,
        "date": created,
        "issuer": hospital_ref,
        "account": account_ref,
        "lineItem": [_invoice_line(n, line) for n, line in enumerate(lines, 1)],
        "totalNet": _money(total),
        "totalGross": _money(total),
    }
    resources = [*charge_items, account, invoice]
    patient_type = _patient_type(rows, errors)
    if coverage is None:
        return resources

    claim_id = stable_id("clm", hospital, settlement_id)
    claim_type = "institutional" if inpatient_no or patient_type == "3" else "professional"
    claim: Resource = {
        "resourceType": "Claim",
        "id": claim_id,
        "meta": {"profile": [CN_CLAIM]},
        "identifier": [settlement_identifier],
        "status": "active",
        "type": {"coding": [{"system": HL7_TERM + "claim-type", "code": claim_type}]},
        "use": "claim",
        "patient": patient_ref,
        "created": created,
        "insurer": {"display": insurer_name},
        "provider": hospital_ref,
        "priority": {"coding": [{"system": HL7_TERM + "processpriority", "code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True,
                       "coverage": {"reference": "Coverage/" + coverage["id"]}}],
        "item": [_claim_item(n, line, hospital, encounter_ref) for n, line in enumerate(lines, 1)],
        "total": _money(total),
    }
    if payment_method:
        claim["extension"] = [payment_method]
    totals: list[Resource] = [{"category": {"coding": [{
        "system": ADJUDICATION, "code": "submitted", "display": "Submitted Amount"}],
        "text": "总金额"}, "amount": _money(total)}]
    for key, code in SPLIT:
        if key not in split:
            continue
        display = codes(SETTLEMENT_COMPONENT)[code]
        codings = [{"system": SETTLEMENT_COMPONENT, "code": code, "display": display}]
        if code == "fund":
            codings.append({"system": ADJUDICATION, "code": "benefit",
                            "display": "Benefit Amount"})
        totals.append({"category": {"coding": codings, "text": display},
                       "amount": _money(split[key])})
    response: Resource = {
        "resourceType": "ClaimResponse",
        "id": stable_id("clmr", hospital, settlement_id),
        "status": "active",
        "type": claim["type"],
        "use": "claim",
        "patient": patient_ref,
        "created": created,
        "insurer": {"display": insurer_name},
        "requestor": hospital_ref,
        "request": {"reference": "Claim/" + claim_id},
        "outcome": "complete",
        "total": totals,
    }
    settlement_no = _first(rows, "insurance_settlement_no")
    if settlement_no:
        response["identifier"] = [{"type": {"text": "医保结算流水号"},
                                   "system": INSURANCE_SETTLEMENT_SYSTEM,
                                   "value": settlement_no}]
    if "fund_paid" in split:
        response["payment"] = {
            "type": {"coding": [{"system": HL7_TERM + "ex-paymenttype", "code": "complete",
                                 "display": "Complete"}], "text": "统筹基金支付"},
            "amount": _money(split["fund_paid"])}
        response["payment"]["date"] = created[:10]
    return [*resources, coverage, claim, response]


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _invoice_line(sequence: int, line: _Line) -> Resource:
    components: list[Resource] = [{"type": "base", "amount": _money(line.amount)}]
    if line.unit_price is not None:
        component: Resource = {"type": "informational", "code": {"text": "单价"},
                               "amount": _money(line.unit_price)}
        components.append(component)
    return {"sequence": sequence,
            "chargeItemReference": {"reference": "ChargeItem/" + line.resource_id},
            "priceComponent": components}


def _claim_item(sequence: int, line: _Line, hospital: Hospital,
                encounter_ref: Resource | None) -> Resource:
    item: Resource = {"sequence": sequence, "productOrService": _code(line.row, hospital)}
    category = fold(line.row.get("fee_category"))
    if category:
        item["category"] = {"text": category}
    if line.quantity is not None:
        item["quantity"] = {"value": _number(line.quantity)}
    if line.unit_price is not None:
        item["unitPrice"] = _money(line.unit_price)
    item["net"] = _money(line.amount)
    if encounter_ref:
        item["encounter"] = [encounter_ref]
    return item


map_billing_rows = per_group(lambda row: fold(row.get("settlement_id")), map_settlement)
"""Fee-line rows of any number of settlements (any order) → resources and problems; resources
shared by settlements (the visit's Account, the patient's Coverage) are returned once."""
