"""收费明细 and 结算 rows → ChargeItem, Account, Invoice, Coverage, Claim, ClaimResponse
(app.cnemr.billing)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from app.cnemr.billing import (
    SETTLEMENT_COMPONENT,
    charge_item_system,
    map_billing_rows,
    map_settlement,
)
from app.cnemr.context import (
    Hospital,
    admission_visit_key,
    encounter_resource_id,
    organization_resource_id,
    outpatient_visit_key,
    patient_resource_id,
    registration_fee_resource_id,
)
from app.cnemr.errors import RowError
from app.cnemr.importer import DATA_ELEMENTS, Importer, ImportReport
from app.cnemr.mapping import load_mapping
from app.config import Settings
from app.definitions.profiles import load_profile_resources
from app.definitions.registry import load_registry
from app.fhir.profile_validation import ProfileValidator
from app.fhir.validation import validate_resource
from app.pipeline.hooks import Hooks
from app.search.query import parse_search
from app.server import build_service
from tests.cnemr.exports import write_csv
from tests.conftest import make_settings

HOSPITAL = Hospital("2.16.156.10011.1.5.110000101")
MAPPINGS = Path(__file__).resolve().parents[2] / "app" / "cnemr" / "mappings"
CN_CLAIM = "https://fhir.yilian.cn/StructureDefinition/cn-claim"

# One 门诊 visit of a 城镇职工 patient: 挂号费 10 元, 阿莫西林胶囊 2 盒 × 12.50 元,
# 血常规 25 元 = 60.00 元; 统筹 60 % (36.00), 个人账户 14.00, 现金 10.00.
SETTLEMENT = {"settlement_id": "JS202611200153", "patient_id": "0001023456",
              "outpatient_no": "MZ2611200087", "invoice_no": "0012611200153",
              "settlement_time": "2026-11-20 10:42:17",
              "insurance_settlement_no": "110000G2026112010421700153", "total_amount": "60.00",
              "fund_paid": "36.00", "account_paid": "14.00", "cash_paid": "10.00",
              "copay": "14.00", "self_pay": "10.00", "insurance_type": "1"}


def line(code: str, name: str, category: str, price: str, quantity: str, amount: str,
         **extra: str) -> dict[str, str]:
    return {**SETTLEMENT, "item_code": code, "item_name": name, "fee_category": category,
            "unit_price": price, "quantity": quantity, "amount": amount, **extra}


LINES = [
    line("110200001", "普通门诊挂号费", "挂号费", "10.00", "1", "10.00"),
    line("XY0105000001", "阿莫西林胶囊 0.25g×24粒", "西药费", "12.50", "2", "25.00"),
    line("250101015", "血常规 (五分类)", "化验费", "25.00", "1", "25.00"),
]


def by_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def totals(response: dict[str, Any]) -> dict[str, Any]:
    return {t["category"]["coding"][0]["code"]: t["amount"]["value"] for t in response["total"]}


def test_every_resource_of_a_settlement_is_valid_r4_and_the_claim_meets_cn_claim() -> None:
    resources, errors = map_settlement(LINES, HOSPITAL)
    assert errors == []
    assert sorted(r["resourceType"] for r in resources) == [
        "Account", "ChargeItem", "ChargeItem", "ChargeItem", "Claim", "ClaimResponse",
        "Coverage", "Invoice"]
    registry = load_registry()
    for resource in resources:
        assert validate_resource(resource, registry) == [], resource["resourceType"]
    profiles = ProfileValidator(load_profile_resources(Settings().profiles_dir), registry)
    claim = by_type(resources, "Claim")[0]
    assert profiles.validate(claim, CN_CLAIM) == []


def test_charge_items_carry_code_category_quantity_amount_patient_and_visit() -> None:
    resources, _ = map_settlement(LINES, HOSPITAL)
    items = by_type(resources, "ChargeItem")
    amoxicillin = items[1]
    assert amoxicillin["code"]["coding"][0] == {"system": charge_item_system(HOSPITAL),
                                                "code": "XY0105000001",
                                                "display": "阿莫西林胶囊 0.25g×24粒"}
    assert amoxicillin["extension"][0]["valueCodeableConcept"] == {"text": "西药费"}
    assert amoxicillin["quantity"] == {"value": 2}
    assert amoxicillin["priceOverride"] == {"value": 25, "currency": "CNY"}
    assert "factorOverride" not in amoxicillin
    assert amoxicillin["subject"]["reference"] == "Patient/" + patient_resource_id(
        HOSPITAL, "0001023456")
    # The Encounter the 挂号 mapper makes for 门诊号 MZ2611200087 on 2026-11-20.
    assert amoxicillin["context"]["reference"] == "Encounter/" + encounter_resource_id(
        HOSPITAL, outpatient_visit_key("MZ2611200087", "2026-11-20"))
    assert amoxicillin["enteredDate"] == "2026-11-20T10:42:17+08:00"
    assert [i["priceOverride"]["value"] for i in items] == [10, 25, 25]


def test_invoice_totals_and_lines_reference_the_charge_items() -> None:
    resources, _ = map_settlement(LINES, HOSPITAL)
    invoice = by_type(resources, "Invoice")[0]
    account = by_type(resources, "Account")[0]
    assert invoice["identifier"][0]["value"] == "0012611200153"
    assert invoice["totalGross"] == invoice["totalNet"] == {"value": 60, "currency": "CNY"}
    assert invoice["status"] == "balanced"
    assert invoice["account"] == {"reference": "Account/" + account["id"]}
    assert [li["chargeItemReference"]["reference"] for li in invoice["lineItem"]] == [
        "ChargeItem/" + i["id"] for i in by_type(resources, "ChargeItem")]
    assert invoice["lineItem"][1]["priceComponent"] == [
        {"type": "base", "amount": {"value": 25, "currency": "CNY"}},
        {"type": "informational", "code": {"text": "单价"},
         "amount": {"value": 12.5, "currency": "CNY"}}]


def test_claim_response_holds_the_medical_insurance_split_and_settlement_number() -> None:
    resources, _ = map_settlement(LINES, HOSPITAL)
    claim = by_type(resources, "Claim")[0]
    response = by_type(resources, "ClaimResponse")[0]
    coverage = by_type(resources, "Coverage")[0]
    assert claim["type"]["coding"][0]["code"] == "professional"
    assert claim["provider"] == {"reference": "Organization/" + organization_resource_id(
        HOSPITAL)}
    assert claim["total"] == {"value": 60, "currency": "CNY"}
    assert [i["net"]["value"] for i in claim["item"]] == [10, 25, 25]
    assert claim["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "01"
    assert coverage["type"]["coding"][0] == {"system": "urn:oid:2.16.156.10011.2.3.1.248",
                                             "code": "1", "display": "城镇职工基本医疗保险"}
    assert claim["insurance"][0]["coverage"] == {"reference": "Coverage/" + coverage["id"]}
    assert response["request"] == {"reference": "Claim/" + claim["id"]}
    assert response["identifier"][0]["value"] == "110000G2026112010421700153"
    assert totals(response) == {"submitted": 60, "fund": 36, "personal-account": 14,
                                "cash": 10, "copay": 14, "self-pay": 10}
    fund = response["total"][1]["category"]["coding"]
    assert fund[0]["system"] == SETTLEMENT_COMPONENT
    assert fund[1]["code"] == "benefit"
    assert response["payment"]["amount"] == {"value": 36, "currency": "CNY"}


def test_a_split_that_does_not_add_up_to_the_total_rejects_the_settlement() -> None:
    # 36 + 14 + 12 = 62 ≠ 60 (自付 + 自费 = 24 then differs from 个人账户 + 现金 = 26 too)
    rows = [{**r, "cash_paid": "12.00", "self_pay": "12.00"} for r in LINES]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert resources == []
    assert {(e.rule, e.severity, e.row) for e in errors} == {
        ("settlement-split-sum", "error", i) for i in range(3)}
    assert "62.00" in errors[0].message and "60.00" in errors[0].message


def test_lines_that_do_not_add_up_to_the_total_reject_the_settlement() -> None:
    rows = [*LINES[:2], {**LINES[2], "unit_price": "24.00", "amount": "24.00"}]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert resources == []
    assert {e.rule for e in errors} == {"settlement-line-sum"}


def test_a_cent_of_rounding_is_tolerated() -> None:
    rows = [{**r, "cash_paid": "10.01"} for r in LINES]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert resources
    assert errors == []


def test_patient_share_that_differs_from_copay_and_self_pay_is_a_warning() -> None:
    rows = [{**r, "copay": "4.00"} for r in LINES]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert resources
    assert [(e.rule, e.severity) for e in errors] == [("settlement-patient-share", "warning")]


def test_price_times_quantity_differing_from_the_amount_is_a_warning() -> None:
    rows = [LINES[0], {**LINES[1], "quantity": "3"}, LINES[2]]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert by_type(resources, "ChargeItem")[1]["priceOverride"]["value"] == 25
    assert [(e.rule, e.severity, e.row) for e in errors] == [("line-amount", "warning", 1)]


def test_a_unit_price_may_have_up_to_four_decimals() -> None:
    # 中药饮片 priced per gram: 黄芪 0.125 元/g × 210 g = 26.25 元
    herb = line("ZY0201001", "黄芪 (饮片)", "中草药费", "0.125", "210", "26.25")
    rows = [{**r, "total_amount": "86.25", "fund_paid": "51.75", "account_paid": "24.50",
             "copay": "24.50"} for r in (*LINES, herb)]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert errors == []
    invoice = by_type(resources, "Invoice")[0]
    price = invoice["lineItem"][3]["priceComponent"][1]
    assert price["amount"] == {"value": 0.125, "currency": "CNY"}
    bad = [{**rows[0], "unit_price": "0.12345"}, *rows[1:]]
    assert ("amount-decimals", 0) in {(e.rule, e.row) for e in map_settlement(bad, HOSPITAL)[1]}


def test_a_bad_amount_on_one_line_rejects_every_row_of_the_settlement() -> None:
    rows = [LINES[0], {**LINES[1], "amount": "25.005"}, LINES[2]]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert resources == []
    assert {(e.rule, e.row) for e in errors} == {("amount-two-decimals", 1),
                                                 ("settlement-rejected", 0),
                                                 ("settlement-rejected", 2)}


def test_rows_disagreeing_on_the_total_reject_the_settlement() -> None:
    rows = [LINES[0], {**LINES[1], "total_amount": "61.00"}, LINES[2]]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert resources == []
    assert {e.rule for e in errors} == {"settlement-consistency"}


@pytest.mark.parametrize("missing", ["patient_id", "settlement_time", "total_amount"])
def test_a_settlement_without_its_required_values_is_rejected(missing: str) -> None:
    rows = [{**r, missing: ""} for r in LINES]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert resources == []
    assert any(e.field == missing and e.rule == "required" for e in errors)


def test_a_self_pay_settlement_has_no_claim_and_a_fund_amount_without_type_is_reported() -> None:
    self_pay = [{**r, "insurance_type": "", "fund_paid": "", "account_paid": "",
                 "cash_paid": "60.00", "copay": "", "self_pay": "60.00"} for r in LINES]
    resources, errors = map_settlement(self_pay, HOSPITAL)
    assert errors == []
    assert sorted({r["resourceType"] for r in resources}) == ["Account", "ChargeItem", "Invoice"]
    _, errors = map_settlement([{**r, "insurance_type": ""} for r in LINES], HOSPITAL)
    assert [(e.rule, e.severity) for e in errors] == [("insurance-type-missing", "warning")]


def test_an_inpatient_settlement_is_an_institutional_claim_keyed_by_the_inpatient_no() -> None:
    rows = [{**r, "outpatient_no": "", "inpatient_no": "ZY20260931", "admission_count": "2",
             "insurance_type": "城乡居民"} for r in LINES]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert errors == []
    claim = by_type(resources, "Claim")[0]
    assert claim["type"]["coding"][0]["code"] == "institutional"
    assert by_type(resources, "Coverage")[0]["type"]["coding"][0]["code"] == "2"
    assert by_type(resources, "ChargeItem")[0]["context"]["reference"] == (
        "Encounter/" + encounter_resource_id(HOSPITAL, admission_visit_key("ZY20260931", 2)))


@pytest.mark.parametrize(("patient_type", "claim_type"), [
    ("3", "institutional"), ("03", "institutional"), (" 3", "institutional"),
    ("住院", "institutional"), ("1", "professional"), ("01", "professional"),
    ("门诊", "professional"), ("急诊", "professional"), ("02", "professional"),
    ("9", "professional"), ("其他", "professional")])
def test_patient_type_is_read_as_a_cv09_00_404_code_or_its_name(patient_type: str,
                                                                  claim_type: str) -> None:
    resources, errors = map_settlement([{**r, "patient_type": patient_type} for r in LINES],
                                       HOSPITAL)
    assert errors == []
    assert by_type(resources, "Claim")[0]["type"]["coding"][0]["code"] == claim_type


@pytest.mark.parametrize("patient_type", ["4", "住院部", "inpatient", "003x"])
def test_a_patient_type_that_is_no_cv09_00_404_code_is_reported_not_guessed(
        patient_type: str) -> None:
    rows = [{**r, "patient_type": ""} for r in LINES]
    rows[1] = {**rows[1], "patient_type": patient_type}
    resources, errors = map_settlement(rows, HOSPITAL)
    assert [(e.field, e.value, e.rule, e.severity, e.row) for e in errors] == [
        ("patient_type", patient_type, "cv09.00.404", "warning", 1)]
    assert by_type(resources, "Claim")[0]["type"]["coding"][0]["code"] == "professional"


def test_an_inpatient_settlement_without_admission_count_has_no_visit_link() -> None:
    rows = [{**r, "outpatient_no": "", "inpatient_no": "ZY20260931"} for r in LINES]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert [(e.field, e.severity) for e in errors] == [("admission_count", "warning")]
    assert all("context" not in i for i in by_type(resources, "ChargeItem"))


def test_the_registration_fee_line_is_the_charge_item_the_visit_mapper_makes() -> None:
    rows = [{**r, "visit_date": "20261120"} for r in LINES]
    resources, _ = map_settlement(rows, HOSPITAL)
    fee = by_type(resources, "ChargeItem")[0]
    assert fee["id"] == registration_fee_resource_id(
        HOSPITAL, outpatient_visit_key("MZ2611200087", "2026-11-20"))


def test_an_unknown_insurance_type_keeps_its_text_with_a_warning() -> None:
    resources, errors = map_settlement([{**r, "insurance_type": "异地医保"} for r in LINES],
                                       HOSPITAL)
    assert by_type(resources, "Coverage")[0]["type"] == {"text": "异地医保"}
    assert [(e.field, e.severity) for e in errors] == [("insurance_type", "warning")]
    assert "extension" not in by_type(resources, "Claim")[0]
    for resource in resources:
        assert validate_resource(resource, load_registry()) == []


def test_the_same_item_billed_twice_gets_two_charge_items() -> None:
    rows = [*LINES, line("XY0105000001", "阿莫西林胶囊 0.25g×24粒", "西药费", "12.50", "2",
                         "25.00")]
    rows = [{**r, "total_amount": "85.00", "cash_paid": "35.00", "self_pay": "35.00"}
            for r in rows]
    resources, errors = map_settlement(rows, HOSPITAL)
    assert errors == []
    ids = [i["id"] for i in by_type(resources, "ChargeItem")]
    assert len(ids) == len(set(ids)) == 4


def test_ids_are_stable_across_reimports_and_settlements_share_the_visit_account() -> None:
    second = [{**r, "settlement_id": "JS202611200154", "invoice_no": "0012611200154"}
              for r in LINES]
    resources, errors = map_billing_rows([*LINES, *second], HOSPITAL)
    again, _ = map_billing_rows([*LINES, *second], HOSPITAL)
    assert errors == []
    assert resources == again
    assert len(by_type(resources, "Account")) == 1
    assert len(by_type(resources, "Invoice")) == 2
    keys = [(r["resourceType"], r["id"]) for r in resources]
    assert len(keys) == len(set(keys))


def test_row_positions_in_errors_refer_to_the_whole_input() -> None:
    bad = [{**r, "settlement_id": "JS2", "cash_paid": "0"} for r in LINES]
    _, errors = map_billing_rows([*LINES, *bad], HOSPITAL)
    assert {e.row for e in errors} == {3, 4, 5}


def test_mapper_never_raises_on_garbage() -> None:
    garbage: list[dict[str, Any]] = [
        {"settlement_id": "X", "amount": "abc", "quantity": "x", "total_amount": "¥-",
         "settlement_time": "2026-13-45", "unit_price": "1.234"},
        {"settlement_id": ""}, {}]
    resources, errors = map_billing_rows(garbage, HOSPITAL)
    assert resources == []
    assert all(isinstance(e, RowError) and e.severity == "error" for e in errors)


HIS_HEADER = ["jsid", "patid", "mzh", "fph", "jsrq", "ybjslsh", "xmbm", "xmmc", "sfdl", "dj",
              "sl", "je", "zje", "tczf", "grzhzf", "xjzf", "zfje", "zfei", "yblx"]


def his_rows(settlement_id: str, invoice_no: str, cash: str = "10.00",
             lines: list[dict[str, str]] = LINES) -> list[list[str]]:
    return [[settlement_id, "0001023456", "MZ2611200087", invoice_no, "2026/11/20 10:42",
             "110000G20261120" + settlement_id[-5:], r["item_code"], r["item_name"],
             r["fee_category"], r["unit_price"], r["quantity"], r["amount"], "60.00", "36.00",
             "14.00", cash, "14.00", "10.00", "1"] for r in lines]


# A second settlement later that day: 尿常规 instead of another 挂号费.
LATER = [line("250102001", "尿常规", "化验费", "10.00", "1", "10.00"), *LINES[1:]]


def import_counts(tmp: Path, path: Path) -> tuple[ImportReport, dict[str, int]]:
    async def go() -> tuple[ImportReport, dict[str, int]]:
        service, _ = build_service(make_settings(tmp), Hooks())
        await service.store.start()
        try:
            mapping = load_mapping(MAPPINGS / "billing-his.yaml", DATA_ELEMENTS)
            report = await Importer(service, HOSPITAL).import_files(mapping, [path])
            counts = {}
            for rtype in ("ChargeItem", "Account", "Invoice", "Coverage", "Claim",
                          "ClaimResponse"):
                query, _ = parse_search((rtype,), [], service.parse_ctx)
                counts[rtype] = (await service.store.search(query)).total or 0
            return report, counts
        finally:
            await service.store.close()
    return asyncio.run(go())


def test_his_settlement_export_imports_and_reimports_without_duplicates(tmp_path: Path) -> None:
    # Two settlements of one visit (they share its Account and the patient's Coverage) and one
    # whose 现金支付 does not add up: the first two import, the third is reported line by line.
    rows = [*his_rows("JS202611200153", "0012611200153"),
            *his_rows("JS202611200154", "0012611200154", lines=LATER),
            *his_rows("JS202611200155", "0012611200155", cash="12.00")]
    path = write_csv(tmp_path / "mz_js.csv", HIS_HEADER, rows, "gbk")
    report, counts = import_counts(tmp_path, path)
    assert report.rows_read == 9
    assert report.rows_rejected == 3
    split = [r for r in report.rejections if r.rule == "settlement-split-sum"]
    assert [(r.line, r.column) for r in split] == [(8, "zje"), (9, "zje"), (10, "zje")]
    assert counts == {"ChargeItem": 6, "Account": 1, "Invoice": 2, "Coverage": 1, "Claim": 2,
                      "ClaimResponse": 2}
    again, counts_again = import_counts(tmp_path, path)
    assert again.rows_rejected == 3
    assert counts_again == counts


